//! Break-glass: `portcullis request SEGMENT --break-glass --reason TEXT`
//! opens the segment to the caller at once, without an approver, on a
//! segment whose `jit` table says `break_glass = true`.
//!
//! What bounds it (docs/security.md, "Break-glass"):
//! - only the caller's own `user:` (or `uid:`) identity, as for `request`;
//!   only the people `break_glass_by` lists, when it lists anyone;
//! - at most `break_glass_max_ttl` (itself at most `max_ttl`): a longer
//!   `--ttl` is refused, not cut, so nobody is surprised by the end;
//! - a non-empty reason, always (whatever `require_reason` says);
//! - refused for a locked identity or uid, as every grant is;
//! - access windows do NOT apply: break-glass exists for the incident at
//!   3 a.m. outside them. The policy author opts in per segment.
//!
//! Order: the `break_glass` record (naming the grant id the grant will
//! get), then the grant through the one path (`open_grant`: journal,
//! `grant` record, kernel). A grant that then fails leaves the
//! `break_glass` record followed by `grant_failed`, so reviewers see the
//! attempt either way.
use std::time::Duration;

use super::{
    authz::{credential_matches, jit_rules},
    errors::CoreError,
    jit::own_identity,
    refuse, Agent,
};
use crate::{
    audit::AuditEvent,
    clock,
    control::{PeerCred, Refusal, RefusalCode, Reply},
    identity::Identity,
    state::Actor,
};

impl Agent {
    /// `portcullis request SEGMENT --break-glass --reason TEXT [--ttl D]`.
    pub(crate) fn break_glass(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        ttl: Option<Duration>,
        reason: &str,
    ) -> Result<Reply, Refusal> {
        let result = self.break_glass_checked(cred, segment, ttl, reason);
        self.audited(cred, "break_glass", segment, result)
    }

    fn break_glass_checked(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        ttl: Option<Duration>,
        reason: &str,
    ) -> Result<Reply, Refusal> {
        let seg = self.segment(segment)?.clone();
        let jit = jit_rules(&seg)?;
        let Some(rules) = jit.break_glass.clone() else {
            return Err(CoreError::NoBreakGlass {
                segment: seg.name.clone(),
            }
            .into());
        };
        if !rules.by.is_empty()
            && !rules
                .by
                .iter()
                .any(|who| credential_matches(who, cred, &self.resolver))
        {
            return Err(self.forbidden(
                cred,
                "break_glass",
                &seg.name,
                CoreError::NotBreakGlassUser {
                    who: Actor::from_uid(cred.uid, None).to_string(),
                    segment: seg.name.clone(),
                    allowed: rules
                        .by
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            ));
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(CoreError::BreakGlassWithoutReason.into());
        }
        let ttl = ttl.unwrap_or(rules.max_ttl);
        if ttl > rules.max_ttl {
            return Err(CoreError::BreakGlassTooLong {
                segment: seg.name.clone(),
                asked: ttl,
                max: rules.max_ttl,
            }
            .into());
        }
        let identity = own_identity(cred.uid);
        self.refuse_locked(cred, "break_glass", &seg.name, &identity)?;
        self.refuse_locked(cred, "break_glass", &seg.name, &Identity::Uid(cred.uid))?;
        if self.audit.backlog() > 0 {
            return Err(refuse(
                RefusalCode::Unavailable,
                "break-glass refused: the audit log cannot be written",
            ));
        }
        // The id `open_grant` takes next: nothing runs in between (the
        // agent is locked for the whole request).
        let grant_id = self.next_id;
        let actor = Actor::from_uid(cred.uid, cred.pid);
        let expires = std::time::SystemTime::now() + ttl;
        self.audit
            .record(AuditEvent::BreakGlass {
                grant_id,
                segment: seg.name.clone(),
                identity: identity.to_string(),
                ports: self.ports_of(&seg.name),
                ttl_secs: ttl.as_secs(),
                expires_at: clock::rfc3339(expires),
                reason: reason.to_string(),
                actor: actor.clone(),
            })
            .map_err(|e| {
                refuse(
                    RefusalCode::Unavailable,
                    format!("break-glass refused: the audit log cannot be written ({e})"),
                )
            })?;
        let grant = self.open_grant(cred, &seg, identity, ttl, Some(reason.to_string()), None)?;
        debug_assert_eq!(grant.id, grant_id);
        tracing::warn!(grant = grant.id, segment = %seg.name, actor = %actor, ttl = %clock::human(ttl), "break-glass: access opened without an approver");
        Ok(Reply::BrokeGlass {
            grant: Box::new(self.view(&grant)),
        })
    }
}
