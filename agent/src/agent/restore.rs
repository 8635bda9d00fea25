//! Start-up from the journal, and the journal's side of every change.
//!
//! At start: the last change in the journal may have been cut off from
//! its audit record by a crash (the journal is written first); the audit
//! chain's head tells (`settle_owed`). Grants that ended while the agent
//! was down get their end records, marked `while_down` (`restore_grants`):
//! those past their deadline (`expire`, at their expiry instant), and those
//! whose kernel entries are gone although their segment is still enforced
//! (`revoke`: deleted by hand, or never written because of a crash between
//! the audit record and the kernel write). An end already in the audit log
//! (an end written while the journal could not take it) is not written twice.
//!
//! While running: `memory` is what a snapshot holds; `journal_end` and
//! `journal_request` write the changes that happen anyway, queued when the
//! journal cannot take them.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufRead, BufReader},
    time::{Duration, UNIX_EPOCH},
};

use agent_common::{GrantKey, Proto};
use tracing::{info, warn};

use super::{Agent, Grant};
use crate::{
    audit::{AuditEvent, ROTATE},
    clock,
    dataplane::PeerEntry,
    identity::Identity,
    journal::{Memory, Op},
    ledger::{Change, EntryKey, Source},
    requests::RequestState,
    state::Actor,
};

/// What the kernel maps held at start, before anything was written.
pub(super) struct KernelBefore<'a> {
    /// Sorted by key (looked up by binary search: a million entries are
    /// cheaper sorted once than hashed).
    pub locals: &'a [(GrantKey, u64)],
    pub peers: &'a [PeerEntry],
    pub ports: &'a BTreeMap<(Proto, u16), u32>,
}

const NOT_AUDITED: &str = "the agent stopped after writing the grant to its journal and before auditing it: it was never enforced nor reported";
const GONE: &str = "its entries were gone from the kernel maps while the agent was down";

fn rfc3339_ms(unix_ms: u64) -> String {
    clock::rfc3339(UNIX_EPOCH + Duration::from_millis(unix_ms))
}

impl Agent {
    /// Everything the journal must hold, as a snapshot.
    pub(super) fn memory(&self) -> Memory {
        Memory {
            next_id: self.next_id,
            segment_ids: self.segment_ids.clone(),
            grants: self
                .grants
                .values()
                .chain(self.suspended.values().map(|s| &s.grant))
                .map(|g| (g.id, g.clone()))
                .collect(),
            requests: self
                .requests
                .saved()
                .into_iter()
                .map(|r| (r.id, r))
                .collect(),
            locks: self.locks.clone(),
        }
    }

    /// The audit chain's head, once queued records are written: the next
    /// record written chains to it.
    pub(super) fn audit_head(&mut self) -> String {
        self.audit.retry();
        self.audit.last_hash().to_string()
    }

    /// Journals the end of `grant` before it is acted on; `event` is the
    /// audit record it owes. Never refuses: an end happens anyway.
    pub(super) fn journal_end(&mut self, grant_id: u64, event: &AuditEvent) {
        let op = Op::End {
            grant_id,
            audit_prev: Some(self.audit_head()),
            event: Some(Box::new(event.clone())),
        };
        if let Err(e) = self.journal.append_or_queue(op) {
            warn!(grant = grant_id, error = %e, "the end of this grant is not journaled yet");
        }
    }

    /// Writes the end of grant `grant_id` to the journal without waiting
    /// for the disk (see `Journal::stage`): a revoke reaches the kernel
    /// without an fdatasync in front of it. `None` when it was queued.
    pub(super) fn stage_journal_end(
        &mut self,
        grant_id: u64,
        event: &AuditEvent,
    ) -> Option<crate::journal::Staged> {
        let op = Op::End {
            grant_id,
            audit_prev: Some(self.audit_head()),
            event: Some(Box::new(event.clone())),
        };
        match self.journal.stage(op) {
            Ok(staged) => Some(staged),
            Err(e) => {
                warn!(grant = grant_id, error = %e, "the end of this grant is not journaled yet");
                None
            }
        }
    }

    /// Makes a staged end durable (before its audit record and the reply).
    pub(super) fn commit_journal_end(
        &mut self,
        grant_id: u64,
        staged: Option<crate::journal::Staged>,
    ) {
        if let Some(staged) = staged {
            if let Err(e) = self.journal.commit(staged) {
                warn!(grant = grant_id, error = %e, "the end of this grant is not journaled yet");
            }
        }
    }

    /// Journals request `id` as it is now (or that it was forgotten).
    pub(super) fn journal_request(&mut self, id: u64) {
        let op = match self.requests.get(id) {
            Some(r) => Op::Request {
                request: r.clone(),
                audit_prev: None,
            },
            None => Op::ForgetRequest { request_id: id },
        };
        if let Err(e) = self.journal.append_or_queue(op) {
            warn!(request = id, error = %e, "this request's change is not journaled yet");
        }
    }

    /// Whether nothing was audited after the record whose hash is `prev`
    /// (but perhaps the `rotate` record that opens a new file).
    fn unaudited(&self, prev: &str) -> bool {
        if self.audit.last_hash() == prev {
            return true;
        }
        let Ok(file) = File::open(self.audit.path()) else {
            return false;
        };
        let last = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .last();
        last.and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .is_some_and(|v| v["event"] == ROTATE && v["prev"] == prev)
    }

    /// Settles the journal's last change if a crash cut it off from its
    /// audit record: a grant or a request is undone (its id stays used; a
    /// grant says so in a `grant_failed` record), an end gets its record.
    pub(super) fn settle_owed(&mut self, memory: &mut Memory, last: Option<Op>) {
        let Some(op) = last else { return };
        let Some(prev) = op.audit_prev() else { return };
        if !self.unaudited(prev) {
            return;
        }
        match op {
            Op::Grant { grant, .. } => {
                memory.grants.remove(&grant.id);
                let mut undo = vec![Op::End {
                    grant_id: grant.id,
                    audit_prev: None,
                    event: None,
                }];
                if let Some(rid) = grant.request_id {
                    if let Some(r) = memory.requests.get_mut(&rid) {
                        if matches!(r.state, RequestState::Approved { grant_id, .. } if grant_id == grant.id)
                        {
                            r.state = RequestState::Pending;
                            undo.push(Op::Request {
                                request: r.clone(),
                                audit_prev: None,
                            });
                        }
                    }
                }
                for op in undo {
                    let _ = self.journal.append_or_queue(op);
                }
                warn!(grant = grant.id, "{NOT_AUDITED}; recorded as failed");
                let _ = self.audit.record(AuditEvent::GrantFailed {
                    grant_id: grant.id,
                    segment: grant.segment.to_string(),
                    identity: grant.identity.to_string(),
                    actor: grant.actor,
                    request_id: grant.request_id,
                    error: NOT_AUDITED.into(),
                });
            }
            Op::Request { request, .. } => {
                memory.requests.remove(&request.id);
                let _ = self.journal.append_or_queue(Op::ForgetRequest {
                    request_id: request.id,
                });
                warn!(
                    request = request.id,
                    "the agent stopped before auditing this request; it was never made"
                );
            }
            Op::Approval {
                request_id,
                approval,
                ..
            } => {
                if let Some(r) = memory.requests.get_mut(&request_id) {
                    r.approvals.retain(|a| a.by.uid != approval.by.uid);
                    let _ = self.journal.append_or_queue(Op::Request {
                        request: r.clone(),
                        audit_prev: None,
                    });
                }
                warn!(
                    request = request_id,
                    "the agent stopped before auditing an approval of this request; it was never given"
                );
            }
            Op::Extend {
                grant_id,
                previous_unix_ms,
                previous_boot_ns,
                boot_id,
                ..
            } => {
                if let Some(g) = memory.grants.get_mut(&grant_id) {
                    g.expires_unix_ms = previous_unix_ms;
                    g.expires_boot_ns = previous_boot_ns;
                    g.boot_id = crate::name::Name::from(boot_id);
                    let _ = self.journal.append_or_queue(Op::Grant {
                        grant: g.clone(),
                        audit_prev: None,
                    });
                }
                warn!(
                    grant = grant_id,
                    "the agent stopped before auditing an extension of this grant; its previous expiry stands"
                );
            }
            Op::End {
                grant_id,
                event: Some(event),
                ..
            } => {
                info!(
                    grant = grant_id,
                    "writing the end record a crash kept from the audit log"
                );
                let _ = self.audit.record(*event);
            }
            _ => {}
        }
    }

    /// Puts the journal's grants back: live ones into the ledger and the
    /// kernel, those of a segment not in the policy into suspension, and
    /// those that ended while the agent was down out, with their records.
    ///
    /// Returns, for each of `before.locals`, whether a restored grant
    /// claimed it (the ledger holds it now): the stale sweep asks the
    /// ledger only about the others.
    pub(super) fn restore_grants(
        &mut self,
        grants: Vec<Grant>,
        before: &KernelBefore<'_>,
    ) -> Result<Vec<bool>, crate::dataplane::DataplaneError> {
        let now = clock::boot_ns();
        let mut writes = Vec::new();
        // What the kernel holds, with its value: on a restart the pinned
        // maps already hold most grants' entries, and an entry the kernel
        // holds with the very value the ledger wants is not written again.
        debug_assert!(before.locals.windows(2).all(|w| w[0].0 <= w[1].0));
        let mut peers: Vec<(EntryKey, u64)> = before
            .peers
            .iter()
            .map(|p| {
                let k = EntryKey::Peer {
                    segment: p.segment,
                    addr: p.addr,
                    prefix: p.prefix,
                };
                (k, p.expiry)
            })
            .collect();
        peers.sort_unstable();
        let in_kernel = InKernel {
            locals: before.locals,
            peers,
        };
        let mut claimed = vec![false; before.locals.len()];
        // Per grant, where each of its keys is among the kernel's entries
        // (one lookup per key, used three times below).
        let mut found: Vec<Option<(usize, u64)>> = Vec::new();
        let mut ended: Vec<(Grant, AuditEvent)> = Vec::new();
        let mut live = Vec::with_capacity(grants.len());
        self.ledger.reserve(grants.len());
        for g in grants {
            let deadline = g.deadline(&self.boot_id);
            let this_boot = g.boot_id == self.boot_id;
            if deadline <= now {
                let event = self.while_down_expire(&g);
                ended.push((g, event));
                continue;
            }
            let g = Grant {
                expires_boot_ns: deadline,
                boot_id: self.boot_id.clone(),
                ..g
            };
            if !self.policy.segments.contains_key(g.segment.as_str()) {
                // Suspended before the restart, or its segment left while
                // the agent was down: kept for the grace, opens nothing.
                self.suspend(g, super::apply::AT_START, None);
                continue;
            }
            let Some(&seg) = self.segment_ids.get(g.segment.as_str()) else {
                continue;
            };
            match self.resolver.keys(&g.identity, seg) {
                Ok(keys) => {
                    found.clear();
                    found.extend(keys.iter().map(|k| in_kernel.find(k)));
                    // Only where the keys cannot have changed by themselves
                    // (not units and cgroups, re-created with new ids), and
                    // only if the segment was enforced when the agent
                    // stopped (not suspended then, so its entries were there).
                    let stable = !matches!(g.identity, Identity::Unit(_) | Identity::Cgroup(_));
                    let enforced = before.ports.values().any(|&id| id == seg);
                    if stable
                        && this_boot
                        && enforced
                        && !keys.is_empty()
                        && found.iter().all(Option::is_none)
                    {
                        let event = self.while_down_revoke(&g);
                        ended.push((g, event));
                        continue;
                    }
                    // Written together after the loop: runs of puts go to
                    // the kernel in batches.
                    let changes =
                        self.ledger
                            .set(Source::Grant(g.id), &keys, g.kernel_value(deadline));
                    for (k, f) in keys.iter().zip(&found) {
                        if let (EntryKey::Local(_), Some((i, _))) = (k, f) {
                            claimed[*i] = true;
                        }
                    }
                    writes.extend(
                        changes
                            .into_iter()
                            .filter(|c| !already_there(c, &keys, &found)),
                    );
                }
                Err(e) => {
                    warn!(grant = g.id, error = %e, "restored grant does not resolve now; kept, retried later")
                }
            }
            self.next_id = self.next_id.max(g.id + 1);
            live.push(g);
        }
        // In id order (the journal's order): built in one go, the index's
        // nodes are full instead of half full.
        self.grants.fill(live);
        crate::startup::mark("restore_ledger");
        drop(in_kernel);
        self.apply_changes(&writes)?;
        drop(writes);
        if ended.is_empty() {
            return Ok(claimed);
        }
        let ids: BTreeSet<u64> = ended.iter().map(|(g, _)| g.id).collect();
        let recorded = self.audited_ends(&ids);
        for (g, event) in ended {
            self.journal_end(g.id, &event);
            if recorded.contains(&g.id) {
                continue;
            }
            info!(grant = g.id, segment = %g.segment, identity = %g.identity, event = event.kind(), "grant ended while the agent was down");
            let _ = self.audit.record(event);
        }
        Ok(claimed)
    }

    fn while_down_expire(&self, g: &Grant) -> AuditEvent {
        AuditEvent::Expire {
            grant_id: g.id,
            segment: g.segment.to_string(),
            identity: g.identity.to_string(),
            ports: Some(self.ports_of(&g.segment)),
            actor: Actor::agent(),
            request_id: g.request_id,
            // The kernel stopped honouring it at its deadline.
            expired_at: Some(rfc3339_ms(g.expires_unix_ms)),
            cleaned_at: Some(clock::rfc3339(std::time::SystemTime::now())),
            expires_at: None,
            why: None,
            while_down: Some(true),
            reason: Some("ttl".into()),
            // What the kernel counted went with its entries at the restart.
            usage: None,
        }
    }

    fn while_down_revoke(&self, g: &Grant) -> AuditEvent {
        AuditEvent::Revoke {
            grant_id: g.id,
            segment: g.segment.to_string(),
            identity: g.identity.to_string(),
            ports: Some(self.ports_of(&g.segment)),
            actor: Actor::agent(),
            expires_at: rfc3339_ms(g.expires_unix_ms),
            request_id: g.request_id,
            why: Some(GONE.into()),
            suspended: None,
            while_down: Some(true),
            usage: None,
        }
    }

    /// The highest grant or request id in the audit log's current and last
    /// rotated file: with a damaged journal, ids continue above it, so a
    /// grant recovered from the kernel maps never takes a used id.
    pub(super) fn max_audited_id(&self) -> u64 {
        let path = self.audit.path();
        let mut max = 0;
        for file in [crate::audit::rotated_path(path, 1), path.to_path_buf()] {
            let Ok(f) = File::open(&file) else { continue };
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if !line.contains("_id\"") {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                for key in ["grant_id", "request_id"] {
                    max = max.max(v[key].as_u64().unwrap_or(0));
                }
            }
        }
        max
    }

    /// Which of `ids` already have an end record in the audit log's
    /// current and last rotated file (ends recorded while the journal could
    /// not take them). Read only when grants ended while the agent was down.
    fn audited_ends(&self, ids: &BTreeSet<u64>) -> BTreeSet<u64> {
        let path = self.audit.path();
        let mut found = BTreeSet::new();
        for file in [crate::audit::rotated_path(path, 1), path.to_path_buf()] {
            let Ok(f) = File::open(&file) else { continue };
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if !line.contains("\"grant_id\"") {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let ends = ["revoke", "expire", "grant_failed"];
                if !ends.iter().any(|e| v["event"] == *e) {
                    continue;
                }
                if let Some(id) = v["grant_id"].as_u64().filter(|id| ids.contains(id)) {
                    found.insert(id);
                }
            }
        }
        found
    }
}

/// The kernel's entries at start, by key.
struct InKernel<'a> {
    /// Sorted by key.
    locals: &'a [(GrantKey, u64)],
    /// Sorted by key.
    peers: Vec<(EntryKey, u64)>,
}

impl InKernel<'_> {
    /// Where `key` is (an index into `locals` or `peers`, by the key's
    /// kind), with the kernel's value.
    fn find(&self, key: &EntryKey) -> Option<(usize, u64)> {
        match key {
            EntryKey::Local(k) => self
                .locals
                .binary_search_by(|(x, _)| x.cmp(k))
                .ok()
                .map(|i| (i, self.locals[i].1)),
            EntryKey::Peer { .. } => self
                .peers
                .binary_search_by(|(x, _)| x.cmp(key))
                .ok()
                .map(|i| (i, self.peers[i].1)),
        }
    }
}

/// Whether `change` puts a local uid or gid entry the kernel already holds
/// with this value (cgroup entries are always written: the fast path
/// counts them per level as they are put). `found` is where each of
/// `keys` (the grant's, among which the change's) is in the kernel.
fn already_there(change: &Change, keys: &[EntryKey], found: &[Option<(usize, u64)>]) -> bool {
    match change {
        Change::Put(k @ EntryKey::Local(key), at) if key.kind != agent_common::kind::CGROUP => keys
            .iter()
            .position(|x| x == k)
            .and_then(|i| found[i])
            .is_some_and(|(_, v)| v == *at),
        _ => false,
    }
}
