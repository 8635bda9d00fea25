//! Recovery when the journal is missing or damaged: the kernel maps
//! still hold every live grant, so they are the source.
//!
//! Segment ids come back from the kernel's port map (a segment's ports map
//! to its id), and every map entry with a finite expiry that no standing
//! allow claims becomes a recovered grant, with its identity read back from
//! the key. A strict entry is not recovered: it is a fleet grant's, whose
//! source is the fleet store (re-listed when the agent reconnects); read
//! as a local grant it would lose its strictness, so it is swept (fail
//! closed). Nothing live is lost; what cannot be named (a segment no longer
//! in the policy, a cgroup that no longer exists) is swept as before.
use std::{net::Ipv6Addr, time::SystemTime};

use agent_common::{expiry, kind, GrantKey, NEVER};
use tracing::warn;

use super::{proto_of, Agent};
use crate::{
    audit::AuditEvent,
    clock,
    dataplane::PeerEntry,
    identity::Identity,
    ledger::{EntryKey, Source},
    policy::Policy,
    state::{self, Actor, Grant},
};

const RECOVERED: &str = "recovered from the kernel maps: the journal was missing or damaged";

impl Agent {
    /// Takes the ids of segments that are already enforced from the kernel's
    /// port map, so that their grant entries keep meaning the same segment.
    pub(super) fn adopt_segment_ids(&mut self, policy: &Policy) {
        for seg in policy.segments.values() {
            let Some(range) = seg.ports.first() else {
                continue;
            };
            let Some(&entry) = self.ports.get(&(proto_of(range.proto), range.first)) else {
                continue;
            };
            let id = agent_common::port_entry::segment(entry);
            if id != 0 && !self.segment_ids.values().any(|v| *v == id) {
                self.segment_ids.insert(seg.name.clone(), id);
            }
        }
    }

    /// Turns live kernel entries that no source claims into grants.
    pub(super) fn recover_grants(
        &mut self,
        locals: &[(GrantKey, u64)],
        peers: &[PeerEntry],
    ) -> Result<usize, crate::dataplane::DataplaneError> {
        let now = clock::boot_ns();
        let names: std::collections::BTreeMap<u32, String> = self
            .segment_ids
            .iter()
            .map(|(n, id)| (*id, n.clone()))
            .collect();
        let mut found: Vec<(EntryKey, Identity, String, u64)> = Vec::new();
        for &(key, expiry) in locals {
            let k = EntryKey::Local(key);
            if expiry == NEVER
                || expiry::is_strict(expiry)
                || expiry <= now
                || self.ledger.value(&k).is_some()
            {
                continue;
            }
            let Some(segment) = names.get(&key.segment) else {
                continue;
            };
            let identity = match key.kind {
                kind::UID => Identity::Uid(key.id as u32),
                kind::GID => Identity::Gid(key.id as u32),
                kind::CGROUP => match self.resolver.hierarchy.path_of_id(key.id) {
                    Some(path) => Identity::Cgroup(path),
                    None => continue,
                },
                _ => continue,
            };
            found.push((k, identity, segment.clone(), expiry));
        }
        for p in peers {
            let k = EntryKey::Peer {
                segment: p.segment,
                addr: p.addr,
                prefix: p.prefix,
            };
            if p.expiry == NEVER
                || expiry::is_strict(p.expiry)
                || p.expiry <= now
                || self.ledger.value(&k).is_some()
            {
                continue;
            }
            let Some(segment) = names.get(&p.segment) else {
                continue;
            };
            let ip = Ipv6Addr::from(p.addr);
            let text = match ip.to_ipv4_mapped() {
                Some(v4) if p.prefix >= 96 => format!("peer:{v4}/{}", p.prefix - 96),
                _ => format!("peer:{ip}/{}", p.prefix),
            };
            match text.parse::<Identity>() {
                Ok(identity) => found.push((k, identity, segment.clone(), p.expiry)),
                Err(e) => {
                    warn!(entry = %text, error = %e, "kernel peer entry cannot be named; swept")
                }
            }
        }
        let n = found.len();
        for (key, identity, segment, expiry) in found {
            let id = self.next_id;
            self.next_id += 1;
            let wall = clock::wall_of(expiry);
            let grant = Grant {
                id,
                segment: crate::name::Name::from(segment.clone()),
                identity: identity.clone(),
                created_unix_ms: state::unix_ms(SystemTime::now()),
                expires_unix_ms: state::unix_ms(wall),
                expires_boot_ns: expiry,
                boot_id: self.boot_id.clone(),
                actor: Actor::agent(),
                reason: Some(RECOVERED.into()),
                request_id: None,
                fleet: None,
            };
            let changes = self.ledger.set(Source::Grant(id), &[key], expiry);
            self.apply_changes(&changes)?;
            let _ = self.audit.record(AuditEvent::GrantRecovered {
                grant_id: id,
                segment: segment.clone(),
                identity: identity.to_string(),
                ports: self.ports_of(&segment),
                actor: Actor::agent(),
                expires_at: clock::rfc3339(wall),
                reason: RECOVERED.into(),
            });
            self.grants.insert(id, grant);
        }
        if n > 0 {
            warn!(grants = n, "recovered live grants from the kernel maps");
        }
        Ok(n)
    }
}
