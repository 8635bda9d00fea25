//! Applying a policy, as one transaction, and what becomes of the grants of
//! a segment that leaves the policy.
//!
//! Owns `apply_policy`: the new policy is planned on copies of the ledger
//! and the segment ids, the plan's writes are checked whole (capacity, then
//! each write with an undo log, see `dataplane::txn`), and only when the
//! kernel holds all of it does the agent's state move. A refused change
//! leaves the kernel and the agent exactly as they were.
//!
//! Also owns *suspended* grants: a grant whose segment disappears from the
//! policy (a file being rewritten, a directory replaced by a deploy) opens
//! nothing while its segment is gone, but is kept for a grace period
//! (`grant_grace`, default 10 minutes) and is live again, with its original
//! expiry, if the segment comes back in time. Suspension, resumption and the
//! end of the grace are audited.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use agent_common::{Proto, MAX_SEGMENTS, NEVER};
use tracing::{info, warn};

use super::{proto_of, windowed::WindowState, Agent};
use crate::{
    audit::AuditEvent,
    clock,
    control::{PeerCred, Refusal, Reply},
    identity::Identity,
    ledger::Source,
    policy::{Mode, Policy},
    state::{Actor, Grant},
};

/// How long a grant outlives its segment's absence from the policy.
pub(crate) const DEFAULT_GRANT_GRACE: Duration = Duration::from_secs(10 * 60);

/// Why a grant is suspended at start: its segment left while the agent was down.
pub(super) const AT_START: &str = "segment not in the policy at start";

/// A grant whose segment is not in the policy in force.
#[derive(Clone, Debug)]
pub(super) struct Suspended {
    pub grant: Grant,
    /// Boot-clock instant at which the grant is dropped for good.
    pub until: u64,
    /// Its segment was found gone at start (it left while the agent was
    /// down): its end record says `while_down`.
    pub while_down: bool,
    /// The ports its segment covered when it left (`None`: not known, the
    /// segment was gone at start). The grant resumes only onto a segment
    /// of the same name covering exactly these ports: what was granted is
    /// access to those ports, not to whatever a segment of that name
    /// covers later.
    pub ports: Option<Vec<String>>,
}

/// The first free segment id for `name` in `ids` (or its id if it has one).
fn assign_id(ids: &mut BTreeMap<String, u32>, name: &str) -> anyhow::Result<u32> {
    if let Some(id) = ids.get(name) {
        return Ok(*id);
    }
    let used: BTreeSet<u32> = ids.values().copied().collect();
    let id = (1..MAX_SEGMENTS)
        .find(|i| !used.contains(i))
        .ok_or_else(|| anyhow::anyhow!("more than {} segments", MAX_SEGMENTS - 1))?;
    ids.insert(name.to_string(), id);
    Ok(id)
}

impl Agent {
    /// Applies a validated policy, all of it or none of it: on error the
    /// kernel and the agent's state are what they were before the call.
    ///
    /// The writes are a diff against what is in force, in an order that
    /// never refuses what both policies allow: new allows first, then
    /// ports, then removals.
    pub(crate) fn apply_policy(&mut self, policy: Policy) -> anyhow::Result<()> {
        // 1. Plan, on copies.
        let mut ids = self.segment_ids.clone();
        for name in policy.segments.keys() {
            assign_id(&mut ids, name)?;
        }
        let mut ledger = self.ledger.clone();
        let mut unresolved = BTreeMap::new();
        let mut wanted: BTreeSet<Source> = BTreeSet::new();
        // Windowed allows: where each stands now (one reading of both clocks).
        let mut windows = BTreeMap::new();
        let (wall_now, boot_now) = (jiff::Timestamp::now(), clock::boot_ns());
        for seg in policy.segments.values() {
            let id = ids[&seg.name];
            for identity in &seg.allow {
                let source = Source::Standing {
                    segment: seg.name.clone(),
                    identity: identity.to_string(),
                };
                // Suspended by a lock: not wanted, so removed below.
                if let Some(lock) = self.standing_locked(identity) {
                    unresolved.insert(
                        (seg.name.clone(), identity.to_string()),
                        format!("suspended: {} is locked ({})", lock.identity, lock.reason),
                    );
                    continue;
                }
                match self.resolver.keys(identity, id) {
                    Ok(mut keys) => {
                        if matches!(identity, Identity::Group(_)) {
                            let locked = self.locked_uids(true);
                            keys.retain(|k| {
                                !super::groups::uids_of(&[*k])
                                    .iter()
                                    .any(|u| locked.contains(u))
                            });
                        }
                        ledger.set(source.clone(), &keys, NEVER);
                    }
                    // Not there yet (a unit that has not started): keep
                    // whatever it had, retry at the next refresh.
                    Err(e) => {
                        unresolved.insert((seg.name.clone(), identity.to_string()), e.to_string());
                    }
                }
                wanted.insert(source);
            }
            for w in &seg.windowed {
                let slot = (seg.name.clone(), w.identity.to_string());
                let mut state = Self::window_at(w, wall_now, boot_now);
                if let (WindowState::Open { .. }, Some(lock)) =
                    (&state, self.standing_locked(&w.identity))
                {
                    let why = format!("{} is locked ({})", lock.identity, lock.reason);
                    unresolved.insert(slot.clone(), format!("suspended: {why}"));
                    state = WindowState::Closed {
                        next: None,
                        why: Some(why),
                    };
                }
                if let WindowState::Open { expiry, .. } = &state {
                    let source = Source::Standing {
                        segment: seg.name.clone(),
                        identity: w.identity.to_string(),
                    };
                    match self.resolver.keys(&w.identity, id) {
                        Ok(mut keys) => {
                            if matches!(w.identity, Identity::Group(_)) {
                                let locked = self.locked_uids(true);
                                keys.retain(|k| {
                                    !super::groups::uids_of(&[*k])
                                        .iter()
                                        .any(|u| locked.contains(u))
                                });
                            }
                            ledger.set(source.clone(), &keys, *expiry);
                        }
                        Err(e) => {
                            unresolved.insert(slot.clone(), e.to_string());
                        }
                    }
                    wanted.insert(source);
                }
                windows.insert(slot, state);
            }
        }
        let mut desired: BTreeMap<(Proto, u16), u32> = BTreeMap::new();
        for seg in policy.segments.values() {
            // The mode rides in the port entry: a switch is a port write,
            // part of the same transaction as everything else.
            let audit = self.mode_of(seg) == Mode::Audit;
            let id = agent_common::port_entry::new(ids[&seg.name], audit);
            for range in &seg.ports {
                for port in range.ports() {
                    desired.insert((proto_of(range.proto), port), id);
                }
            }
        }
        let mut port_writes: Vec<(Proto, u16, u32)> = desired
            .iter()
            .filter(|(k, id)| self.ports.get(k) != Some(id))
            .map(|(&(p, port), &id)| (p, port, id))
            .collect();
        port_writes.extend(
            self.ports
                .keys()
                .filter(|k| !desired.contains_key(k))
                .map(|&(p, port)| (p, port, 0)),
        );
        let stale: Vec<Source> = ledger
            .standing_sources()
            .filter(|s| !wanted.contains(*s))
            .cloned()
            .collect();
        for s in &stale {
            ledger.remove(s);
        }
        // Grants of segments that left: they open nothing from now on.
        let leaving: Vec<u64> = self
            .grants
            .values()
            .filter(|g| !policy.segments.contains_key(g.segment.as_str()))
            .map(|g| g.id)
            .collect();
        for id in &leaving {
            ledger.remove(&Source::Grant(*id));
        }
        // Suspended grants whose segment is back: live again, same expiry.
        let now = clock::boot_ns();
        let mut returning = Vec::new();
        for (&gid, s) in &self.suspended {
            let Some(&seg) = ids.get(s.grant.segment.as_str()) else {
                continue;
            };
            if !policy.segments.contains_key(s.grant.segment.as_str())
                || s.grant.expires_boot_ns <= now
            {
                continue;
            }
            let mut back_on = self.ports_of_in(&policy, &s.grant.segment);
            back_on.sort();
            if s.ports.as_ref() != Some(&back_on) {
                // Stays suspended (opening nothing) until its grace or
                // expiry ends it, or it is revoked.
                warn!(grant = gid, segment = %s.grant.segment, was = ?s.ports, now = ?back_on,
                    "segment is back with other ports; grant stays suspended and does not open them");
                continue;
            }
            match self.resolver.keys(&s.grant.identity, seg) {
                Ok(keys) => {
                    ledger.set(
                        Source::Grant(gid),
                        &keys,
                        s.grant.kernel_value(s.grant.expires_boot_ns),
                    );
                }
                Err(e) => {
                    warn!(grant = gid, error = %e, "resumed grant does not resolve now; kept, retried later")
                }
            }
            returning.push(gid);
        }

        // 2. Write, all or nothing. New segment ids are journaled first
        // (with the old ones, so either outcome finds its ids at start).
        if ids != self.segment_ids {
            let mut both = self.segment_ids.clone();
            both.extend(ids.iter().map(|(n, i)| (n.clone(), *i)));
            self.journal_segments(both);
        }
        let changes = self.ledger.diff(&ledger);
        self.kernel.apply_atomic(&changes, &port_writes)?;

        // 3. Commit.
        self.ledger = ledger;
        self.ports = desired;
        self.unresolved = unresolved;
        // `self.policy` is still the old one: windows are committed below.
        for id in leaving {
            if let Some(g) = self.grants.remove(&id) {
                // `self.policy` is still the one the segment left.
                let mut ports = self.ports_of_in(&self.policy, &g.segment);
                ports.sort();
                self.suspend(g, "segment removed from policy", Some(ports));
            }
        }
        for id in returning {
            if let Some(s) = self.suspended.remove(&id) {
                let _ = self.audit.record(AuditEvent::GrantResumed {
                    grant_id: id,
                    segment: s.grant.segment.to_string(),
                    identity: s.grant.identity.to_string(),
                    ports: self.ports_of_in(&policy, &s.grant.segment),
                    expires_at: clock::rfc3339(clock::wall_of(s.grant.expires_boot_ns)),
                    actor: Actor::agent(),
                });
                info!(grant = id, segment = %s.grant.segment, identity = %s.grant.identity, "segment is back; grant resumed");
                self.grants.insert(id, s.grant);
            }
        }
        // Segment ids are kept while a policy segment or a suspended grant
        // uses them.
        let suspended: BTreeSet<&str> = self
            .suspended
            .values()
            .map(|s| s.grant.segment.as_str())
            .collect();
        ids.retain(|name, _| {
            policy.segments.contains_key(name) || suspended.contains(name.as_str())
        });
        if ids != self.segment_ids {
            self.journal_segments(ids.clone());
        }
        self.segment_ids = ids;
        self.policy = policy;
        self.commit_windows(windows, (wall_now, boot_now));
        self.sync_cover();
        self.drop_requests_of_gone_segments();
        Ok(())
    }

    /// Journals the segment ids (queued when the journal cannot take them:
    /// a reload is not refused for it; at start, ids are re-assigned and
    /// the kernel's unclaimed entries swept).
    fn journal_segments(&mut self, ids: BTreeMap<String, u32>) {
        if let Err(e) = self
            .journal
            .append_or_queue(crate::journal::Op::Segments { ids })
        {
            warn!(error = %e, "segment ids not journaled yet");
        }
    }

    fn ports_of_in(&self, policy: &Policy, segment: &str) -> Vec<String> {
        policy
            .segments
            .get(segment)
            .map(|s| s.ports.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// Keeps `g` (whose segment is not in the policy, and which opens
    /// nothing) for the grace period.
    pub(super) fn suspend(&mut self, g: Grant, why: &str, ports: Option<Vec<String>>) {
        let until = clock::boot_ns().saturating_add(self.grant_grace.as_nanos() as u64);
        let _ = self.audit.record(AuditEvent::GrantSuspended {
            grant_id: g.id,
            segment: g.segment.to_string(),
            identity: g.identity.to_string(),
            why: why.to_string(),
            grace_secs: self.grant_grace.as_secs(),
            until: clock::rfc3339(clock::wall_of(until.min(g.expires_boot_ns))),
            expires_at: clock::rfc3339(clock::wall_of(g.expires_boot_ns)),
            actor: Actor::agent(),
        });
        warn!(grant = g.id, segment = %g.segment, identity = %g.identity, grace = %clock::human(self.grant_grace),
            "segment left the policy; grant suspended (live again if the segment comes back within the grace)");
        let while_down = why == AT_START;
        self.suspended.insert(
            g.id,
            Suspended {
                grant: g,
                until,
                while_down,
                ports,
            },
        );
    }

    /// Drops suspended grants that expired or outlived the grace (audited).
    pub(super) fn expire_suspended(&mut self) -> bool {
        let now = clock::boot_ns();
        let due: Vec<u64> = self
            .suspended
            .values()
            .filter(|s| s.until <= now || s.grant.expires_boot_ns <= now)
            .map(|s| s.grant.id)
            .collect();
        for id in &due {
            let s = self.suspended.remove(id).expect("listed above");
            let g = s.grant;
            let while_down = s.while_down.then_some(true);
            let expires_at = clock::rfc3339(clock::wall_of(g.expires_boot_ns));
            let (event, why) = if g.expires_boot_ns <= now {
                let why = "expired while its segment was not in the policy";
                let event = AuditEvent::Expire {
                    grant_id: *id,
                    segment: g.segment.to_string(),
                    identity: g.identity.to_string(),
                    ports: None,
                    actor: Actor::agent(),
                    request_id: g.request_id,
                    expired_at: None,
                    cleaned_at: None,
                    expires_at: Some(expires_at),
                    why: Some(why.to_string()),
                    while_down,
                    reason: Some("ttl".into()),
                    usage: None,
                };
                (event, why)
            } else {
                let why = "segment removed from policy and not back within the grace";
                let event = AuditEvent::Revoke {
                    grant_id: *id,
                    segment: g.segment.to_string(),
                    identity: g.identity.to_string(),
                    ports: None,
                    actor: Actor::agent(),
                    expires_at,
                    request_id: g.request_id,
                    why: Some(why.to_string()),
                    usage: None,
                    suspended: None,
                    while_down,
                };
                (event, why)
            };
            self.journal_end(*id, &event);
            let _ = self.audit.record(event);
            info!(grant = id, segment = %g.segment, identity = %g.identity, "{why}; grant dropped");
        }
        !due.is_empty()
    }

    /// `revoke ID` of a suspended grant: root or the grantee only.
    pub(super) fn revoke_suspended(
        &mut self,
        cred: &PeerCred,
        gid: u64,
    ) -> Result<(Reply, Vec<Grant>), Refusal> {
        let g = &self.suspended[&gid].grant;
        let own = super::credential_matches(&g.identity, cred, &self.resolver)
            && matches!(g.identity, Identity::User(_) | Identity::Uid(_));
        if !(own || cred.uid == 0) {
            let why = format!("uid {} may not revoke grant {gid}: its segment {} is not in the policy, so only root and the grantee may", cred.uid, g.segment);
            let seg = g.segment.clone();
            return Err(self.refused(cred, "revoke", &seg, why));
        }
        let s = self.suspended.remove(&gid).expect("checked above");
        let actor = Actor::from_uid(cred.uid, cred.pid);
        let event = AuditEvent::Revoke {
            grant_id: gid,
            segment: s.grant.segment.to_string(),
            identity: s.grant.identity.to_string(),
            ports: None,
            actor: actor.clone(),
            expires_at: clock::rfc3339(clock::wall_of(s.grant.expires_boot_ns)),
            request_id: s.grant.request_id,
            why: None,
            suspended: Some(true),
            while_down: None,
            usage: None,
        };
        self.journal_end(gid, &event);
        let _ = self.audit.record(event);
        info!(grant = gid, segment = %s.grant.segment, actor = %actor, "revoked (suspended)");
        let view = self.view(&s.grant);
        Ok((Reply::Revoked { grants: vec![view] }, vec![s.grant]))
    }

    /// The earliest instant a suspended grant must be looked at.
    pub(super) fn next_suspended_deadline(&self) -> Option<u64> {
        self.suspended
            .values()
            .map(|s| s.until.min(s.grant.expires_boot_ns))
            .min()
    }
}
