//! `portcullis extend GRANT_ID --ttl D`: a live grant lasts `D` more from
//! now, in place: the kernel entries get the later expiry by an update of
//! the same keys (never a delete and insert, so no packet meets a gap), and
//! never past the segment's `max_ttl` counted from the grant's original
//! start. Root and the segment's approvers may extend (approvers not a
//! grant that covers themselves, as for `grant`).
//!
//! Order: journal (`Op::Extend`, with the previous expiry) → kernel →
//! audit (`extend`) → reply. A kernel write or audit record that fails puts
//! the previous expiry back; a crash before the audit record is settled at
//! start (`restore.rs`) by putting the previous expiry back.
use std::time::{Duration, SystemTime};

use tracing::info;

use super::{
    authz::{check_reason, credential_matches, jit_rules},
    errors::CoreError,
    refuse, Agent,
};
use crate::{
    audit::AuditEvent,
    clock,
    control::{PeerCred, Refusal, RefusalCode, Reply},
    identity::Identity,
    journal::Op,
    ledger::Source,
    resolve::Resolver,
    state::{self, Actor, Grant},
};

/// Whether the caller is the grant's own person: a `user:` or `uid:`
/// grant naming the caller's uid (a group's member is not its grantee).
fn is_grantee(identity: &Identity, cred: &PeerCred, resolver: &Resolver) -> bool {
    matches!(identity, Identity::User(_) | Identity::Uid(_))
        && credential_matches(identity, cred, resolver)
}

impl Agent {
    /// `portcullis extend ID --ttl D [--reason TEXT]`.
    pub(crate) fn extend(
        &mut self,
        cred: &PeerCred,
        id: u64,
        ttl: Duration,
        reason: Option<&str>,
    ) -> Result<Reply, Refusal> {
        let segment = self
            .grants
            .get(&id)
            .map(|g| g.segment.to_string())
            .unwrap_or_default();
        let result = self.extend_checked(cred, id, ttl, reason);
        self.audited(cred, "extend", &segment, result)
    }

    fn extend_checked(
        &mut self,
        cred: &PeerCred,
        id: u64,
        ttl: Duration,
        reason: Option<&str>,
    ) -> Result<Reply, Refusal> {
        let Some(old) = self.grants.get(&id).cloned() else {
            return Err(CoreError::NoSuchGrant { id }.into());
        };
        let seg = self.segment(&old.segment)?.clone();
        let jit = jit_rules(&seg)?;
        // The grantee asks; approvers decide (root extends directly).
        if cred.uid != 0 && is_grantee(&old.identity, cred, &self.resolver) {
            return self.extension_request(cred, &old, &seg, ttl, reason);
        }
        if !self.may_administer(cred, &seg) {
            return Err(self.forbidden(
                cred,
                "extend",
                &seg.name,
                CoreError::NotApprover {
                    who: Actor::from_uid(cred.uid, None).to_string(),
                    action: format!("extend grant {id}"),
                    segment: seg.name.clone(),
                },
            ));
        }
        if let Some(why) = super::authz::refusal(&old.identity, cred, &self.resolver) {
            return Err(self.refused(
                cred,
                "extend",
                &seg.name,
                format!(
                    "{} may not extend grant {id} of {} on segment {}: {why}; approvers do not keep segments open to themselves, only root may",
                    Actor::from_uid(cred.uid, None),
                    old.identity,
                    seg.name
                ),
            ));
        }
        let reason = check_reason(&seg, jit, reason)?;
        let now_wall = SystemTime::now();
        let new_unix_ms = state::unix_ms(now_wall + ttl);
        let limit_unix_ms = old
            .created_unix_ms
            .saturating_add(u64::try_from(jit.max_ttl.as_millis()).unwrap_or(u64::MAX));
        if new_unix_ms > limit_unix_ms {
            let left =
                Duration::from_millis(limit_unix_ms.saturating_sub(state::unix_ms(now_wall)));
            return Err(refuse(
                RefusalCode::Invalid,
                format!(
                    "grant {id} may not be extended by {}: segment {} allows at most {} from the grant's start ({}), so at most {} from now",
                    clock::human(ttl),
                    seg.name,
                    clock::human(jit.max_ttl),
                    clock::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(old.created_unix_ms)),
                    clock::human(left)
                ),
            ));
        }
        if new_unix_ms <= old.expires_unix_ms {
            return Err(refuse(
                RefusalCode::Invalid,
                format!(
                    "grant {id} already lasts {} more; extend gives a later end, never an earlier one (use `portcullis revoke {id}` to end it)",
                    clock::human(clock::remaining(old.expires_boot_ns))
                ),
            ));
        }
        let by = Actor::from_uid(cred.uid, cred.pid);
        let grant = self.apply_extension(&old, ttl, reason, &by, None)?;
        Ok(Reply::Extended {
            grant: Box::new(self.view(&grant)),
        })
    }

    /// Gives `old` the expiry `ttl` from now, in place: journal, kernel,
    /// audit (`extend`, naming the request it decides, if any). The caller
    /// checked who and how long.
    pub(super) fn apply_extension(
        &mut self,
        old: &Grant,
        ttl: Duration,
        reason: Option<String>,
        by: &Actor,
        request_id: Option<u64>,
    ) -> Result<Grant, Refusal> {
        let id = old.id;
        if self.audit.backlog() > 0 {
            return Err(refuse(
                RefusalCode::Unavailable,
                "extend refused: the audit log cannot be written",
            ));
        }
        let mut grant = old.clone();
        grant.expires_unix_ms = state::unix_ms(SystemTime::now() + ttl);
        grant.expires_boot_ns = clock::deadline_after(ttl);
        grant.boot_id = self.boot_id.clone();
        let head = self.audit_head();
        self.journal
            .append(&Op::Extend {
                grant_id: id,
                expires_unix_ms: grant.expires_unix_ms,
                expires_boot_ns: grant.expires_boot_ns,
                previous_unix_ms: old.expires_unix_ms,
                previous_boot_ns: old.expires_boot_ns,
                boot_id: grant.boot_id.to_string(),
                audit_prev: Some(head),
            })
            .map_err(|e| refuse(RefusalCode::Unavailable, format!("extend refused: the agent cannot write its journal, so it could not remember the new expiry ({e})")))?;
        if let Err(e) = self.set_expiry(&grant) {
            self.undo_extend(old);
            return Err(refuse(
                RefusalCode::Unavailable,
                format!("extend refused: {e}"),
            ));
        }
        let audited = self.audit.record(AuditEvent::Extend {
            grant_id: id,
            segment: grant.segment.to_string(),
            identity: grant.identity.to_string(),
            ttl_secs: ttl.as_secs(),
            expires_at: clock::rfc3339(clock::wall_of(grant.expires_boot_ns)),
            previous_expires_at: clock::rfc3339(
                std::time::UNIX_EPOCH + Duration::from_millis(old.expires_unix_ms),
            ),
            reason,
            actor: by.clone(),
            request_id,
        });
        if let Err(e) = audited {
            self.undo_extend(old);
            return Err(refuse(
                RefusalCode::Unavailable,
                format!("extend refused: the audit log cannot be written ({e})"),
            ));
        }
        info!(grant = id, ttl = %clock::human(ttl), actor = %by, request = request_id, "grant extended");
        Ok(grant)
    }

    /// Gives `g`'s kernel entries its expiry, in place (same keys: puts only).
    fn set_expiry(&mut self, g: &Grant) -> Result<(), crate::dataplane::DataplaneError> {
        let source = Source::Grant(g.id);
        let keys = self.ledger.keys_of(&source).to_vec();
        let changes = self
            .ledger
            .set(source, &keys, g.kernel_value(g.expires_boot_ns));
        debug_assert!(changes
            .iter()
            .all(|c| matches!(c, crate::ledger::Change::Put(..))));
        self.kernel.apply(&changes)?;
        self.grants.insert(g.id, g.clone());
        Ok(())
    }

    /// Puts `old`'s expiry back (memory, kernel, journal).
    fn undo_extend(&mut self, old: &Grant) {
        let _ = self.set_expiry(old);
        let _ = self.journal.append_or_queue(Op::Grant {
            grant: old.clone(),
            audit_prev: None,
        });
    }
}
