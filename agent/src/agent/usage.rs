//! Usage: what the kernel counted for each allow and grant, shown by
//! `list`, written into the audit record of a grant's end, and used to
//! lapse grants nothing used for their segment's `idle_timeout`.
//!
//! Owns reading the usage map through the seam (one lookup per kernel
//! entry of a source: a grant or allow may span several), the idle check,
//! and forgetting the use of entries that left the grant map. The
//! arithmetic is `crate::usage`'s. The metrics read the map on their own
//! descriptor (`observe::scrape`), never through here.
use agent_common::GrantKey;

use super::*;
use crate::{
    control::UsageView,
    ledger::EntryKey,
    usage::{self, Totals},
};

impl Agent {
    /// The use of every local kernel entry `source` holds, summed (an
    /// entry that cannot be read counts as unused, with a warning: usage
    /// is information, never a reason to refuse).
    pub(super) fn usage_of(&self, source: &Source) -> Totals {
        self.ledger
            .keys_of(source)
            .iter()
            .filter_map(|k| match k {
                EntryKey::Local(k) => match self.kernel.usage(k) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(error = %e, "reading the usage map failed");
                        None
                    }
                },
                EntryKey::Peer { .. } => None,
            })
            .fold(Totals::default(), Totals::merge)
    }

    /// What `list` shows for a source.
    pub(super) fn usage_view(&self, source: &Source, now: u64) -> UsageView {
        let t = self.usage_of(source);
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
        let t = self.usage_of(&Source::Grant(grant_id));
        Some(usage::Record::new(&t, |ns| {
            clock::rfc3339(clock::wall_of(ns))
        }))
    }

    /// Deletes the use of the local entries `changes` deleted (after they
    /// reached the kernel), so a later grant of the same key starts from
    /// zero. Best effort: what is left is found by [`Self::forget_unused_usage`].
    pub(super) fn forget_usage_of(&mut self, changes: &[Change]) {
        let gone: Vec<GrantKey> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Delete(EntryKey::Local(k)) => Some(*k),
                _ => None,
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        if let Err(e) = self.kernel.forget_usage(&gone) {
            warn!(error = %e, "forgetting the usage of removed entries failed; retried later");
        }
    }

    /// Deletes the use of every kernel entry no source holds any more
    /// (allows a reload removed, a count a hook made just as its entry
    /// went). One walk of the usage map, on the identity rescan.
    pub(crate) fn forget_unused_usage(&mut self) {
        let map = match self.kernel.read_usage() {
            Ok(map) => map,
            Err(e) => {
                warn!(error = %e, "reading the usage map failed");
                return;
            }
        };
        let dead: Vec<GrantKey> = map
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| self.ledger.value(&EntryKey::Local(*k)).is_none())
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
    fn idle_deadlines(&self) -> Vec<(u64, u64)> {
        self.grants
            .values()
            .filter_map(|g| {
                let timeout = self
                    .policy
                    .segments
                    .get(g.segment.as_str())?
                    .jit
                    .as_ref()?
                    .idle_timeout?;
                let start = clock::boot_of(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(g.created_unix_ms),
                );
                let t = self.usage_of(&Source::Grant(g.id));
                Some((usage::idle_deadline(start, &t, timeout), g.id))
            })
            .collect()
    }

    /// The earliest idle deadline, for the expiry timer.
    pub(super) fn next_idle_deadline(&self) -> Option<u64> {
        if !self.any_idle_timeout() {
            return None;
        }
        self.idle_deadlines().into_iter().map(|(at, _)| at).min()
    }

    fn any_idle_timeout(&self) -> bool {
        self.policy
            .segments
            .values()
            .any(|s| s.jit.as_ref().is_some_and(|j| j.idle_timeout.is_some()))
    }

    /// Ends the grants nothing used for their segment's idle timeout, as
    /// any end (journal → kernel → audit), audited as expiries with the
    /// reason `idle` and their use, and returns them (the caller sweeps
    /// their flows).
    pub(super) fn lapse_idle(&mut self) -> Vec<Grant> {
        if !self.any_idle_timeout() {
            return Vec::new();
        }
        let now = clock::boot_ns();
        let due: Vec<u64> = self
            .idle_deadlines()
            .into_iter()
            .filter(|&(at, _)| at <= now)
            .map(|(_, id)| id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            let usage = self.usage_record(id);
            let g = self.grants.get(&id).expect("listed above").clone();
            let event = AuditEvent::Expire {
                grant_id: id,
                segment: g.segment.to_string(),
                identity: g.identity.to_string(),
                ports: Some(self.ports_of(&g.segment)),
                actor: Actor::agent(),
                request_id: g.request_id,
                expired_at: Some(clock::rfc3339(SystemTime::now())),
                cleaned_at: None,
                expires_at: Some(clock::rfc3339(clock::wall_of(g.expires_boot_ns))),
                why: None,
                while_down: None,
                reason: Some("idle".into()),
                usage,
            };
            self.journal_end(id, &event);
            let keys = self.ledger.keys_of(&Source::Grant(id)).to_vec();
            let changes = self.ledger.remove(&Source::Grant(id));
            if let Err(e) = self.kernel.apply(&changes) {
                // Still live: the journal and the ledger say so again;
                // tried again at the next deadline.
                warn!(grant = id, error = %e, "ending an idle grant failed; retried");
                let _ =
                    self.ledger
                        .set(Source::Grant(id), &keys, g.kernel_value(g.expires_boot_ns));
                let _ = self.journal.append_or_queue(Op::Grant {
                    grant: g,
                    audit_prev: None,
                });
                continue;
            }
            self.forget_usage_of(&changes);
            self.grants.remove(&id);
            let _ = self.audit.record(event);
            info!(grant = id, segment = %g.segment, identity = %g.identity, "lapsed: idle");
            out.push(g);
        }
        out
    }
}
