//! Usage: what the kernel counted for each allow and grant, shown by
//! `list`, written into the audit record of a grant's end, and used to
//! lapse grants nothing used for their segment's `idle_timeout`.
//!
//! Owns reading the usage map through the seam, summing it per source
//! (a grant or allow may span several kernel entries), the idle check and
//! forgetting the use of entries that left the grant map. The arithmetic
//! is `crate::usage`'s.
use std::collections::BTreeMap;

use agent_common::GrantKey;

use super::*;
use crate::{
    control::UsageView,
    ledger::EntryKey,
    usage::{self, Totals},
};

/// The usage map as read once, by kernel entry.
pub(super) type UsageMap = BTreeMap<GrantKey, Totals>;

impl Agent {
    /// Per segment in the policy: connections its current local entries
    /// admitted, for the metrics.
    pub fn usage_by_segment(&self) -> Vec<(String, u64)> {
        let map = self.read_usage();
        self.policy
            .segments
            .keys()
            .map(|name| {
                let id = self.segment_ids.get(name).copied().unwrap_or(0);
                let sum = map
                    .iter()
                    .filter(|(k, _)| k.segment == id)
                    .fold(0u64, |acc, (_, t)| acc.saturating_add(t.connections));
                (name.clone(), sum)
            })
            .collect()
    }

    /// The whole usage map (empty, with a warning, if it cannot be read:
    /// usage is information, never a reason to refuse).
    pub(super) fn read_usage(&self) -> UsageMap {
        match self.kernel.read_usage() {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                warn!(error = %e, "reading the usage map failed");
                UsageMap::new()
            }
        }
    }

    /// The use of every local kernel entry `source` holds, summed.
    pub(super) fn usage_of(&self, source: &Source, map: &UsageMap) -> Totals {
        self.ledger
            .keys_of(source)
            .iter()
            .filter_map(|k| match k {
                EntryKey::Local(k) => map.get(k),
                EntryKey::Peer { .. } => None,
            })
            .fold(Totals::default(), |acc, t| acc.merge(*t))
    }

    /// What `list` shows for a source.
    pub(super) fn usage_view(t: &Totals, now: u64) -> UsageView {
        UsageView {
            connections: t.connections,
            first_use: t.first_boot_ns.map(|ns| clock::rfc3339(clock::wall_of(ns))),
            last_use: t.last_boot_ns.map(|ns| clock::rfc3339(clock::wall_of(ns))),
            idle_secs: t
                .last_boot_ns
                .map(|ns| now.saturating_sub(ns) / 1_000_000_000),
        }
    }

    /// The usage part of a grant's end record; read before its entries go.
    pub(super) fn usage_record(&self, grant_id: u64) -> Option<usage::Record> {
        let map = self.read_usage();
        let t = self.usage_of(&Source::Grant(grant_id), &map);
        Some(usage::Record::new(&t, |ns| {
            clock::rfc3339(clock::wall_of(ns))
        }))
    }

    /// Deletes the usage of kernel entries no source holds any more, so a
    /// later grant of the same identity starts from zero and the map never
    /// fills with the dead. Best effort: a failure is retried next time.
    pub(super) fn forget_unused_usage(&mut self) {
        let map = self.read_usage();
        let dead: Vec<GrantKey> = map
            .keys()
            .filter(|k| self.ledger.value(&EntryKey::Local(**k)).is_none())
            .copied()
            .collect();
        if dead.is_empty() {
            return;
        }
        if let Err(e) = self.kernel.forget_usage(&dead) {
            warn!(error = %e, "forgetting the usage of removed entries failed; retried later");
        }
    }

    /// The boot-clock instant each grant with an idle timeout lapses at,
    /// from the kernel's last use (or the grant's start).
    fn idle_deadlines(&self, map: &UsageMap) -> Vec<(u64, u64)> {
        self.grants
            .values()
            .filter_map(|g| {
                let timeout = self
                    .policy
                    .segments
                    .get(&g.segment)?
                    .jit
                    .as_ref()?
                    .idle_timeout?;
                let start = clock::boot_of(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(g.created_unix_ms),
                );
                let t = self.usage_of(&Source::Grant(g.id), map);
                Some((usage::idle_deadline(start, &t, timeout), g.id))
            })
            .collect()
    }

    /// The earliest idle deadline, for the expiry timer.
    pub(super) fn next_idle_deadline(&self) -> Option<u64> {
        if !self.any_idle_timeout() {
            return None;
        }
        let map = self.read_usage();
        self.idle_deadlines(&map)
            .into_iter()
            .map(|(at, _)| at)
            .min()
    }

    fn any_idle_timeout(&self) -> bool {
        self.policy
            .segments
            .values()
            .any(|s| s.jit.as_ref().is_some_and(|j| j.idle_timeout.is_some()))
    }

    /// Revokes the grants nothing used for their segment's idle timeout,
    /// audited as expiries with the reason `idle` and their use, and
    /// returns them (the caller sweeps their flows).
    pub(super) fn lapse_idle(&mut self) -> Vec<Grant> {
        if !self.any_idle_timeout() {
            return Vec::new();
        }
        let now = clock::boot_ns();
        let map = self.read_usage();
        let due: Vec<u64> = self
            .idle_deadlines(&map)
            .into_iter()
            .filter(|&(at, _)| at <= now)
            .map(|(_, id)| id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            let t = self.usage_of(&Source::Grant(id), &map);
            let keys = self.ledger.keys_of(&Source::Grant(id)).to_vec();
            let changes = self.ledger.remove(&Source::Grant(id));
            if let Err(e) = self.kernel.apply(&changes) {
                // Put back what the ledger forgot; tried again next time.
                warn!(grant = id, error = %e, "revoking an idle grant failed; retried");
                if let Some(g) = self.grants.get(&id) {
                    let deadline = g.expires_boot_ns;
                    let _ = self.ledger.set(Source::Grant(id), &keys, deadline);
                }
                continue;
            }
            let g = self.grants.remove(&id).expect("listed above");
            let _ = self.audit.record(AuditEvent::Expire {
                grant_id: id,
                segment: g.segment.clone(),
                identity: g.identity.to_string(),
                ports: Some(self.ports_of(&g.segment)),
                actor: Actor::agent(),
                request_id: g.request_id,
                expired_at: Some(clock::rfc3339(SystemTime::now())),
                cleaned_at: None,
                expires_at: Some(clock::rfc3339(clock::wall_of(g.expires_boot_ns))),
                why: None,
                reason: Some("idle".into()),
                usage: Some(usage::Record::new(&t, |ns| {
                    clock::rfc3339(clock::wall_of(ns))
                })),
            });
            info!(grant = id, segment = %g.segment, identity = %g.identity, "lapsed: idle");
            out.push(g);
        }
        if !out.is_empty() {
            self.forget_unused_usage();
            self.save();
        }
        out
    }
}
