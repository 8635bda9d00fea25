//! Requests that need more than one approver (`approvals_required` in a
//! segment's `jit` table): an approval short of the count is journaled,
//! then audited as `approval`, and the request stays pending; the approval
//! that completes the count grants (`jit.rs`, as a single approval does).
//! Approvers are counted by uid: distinct uids, never the requester's.
use std::time::Duration;

use tracing::info;

use super::{jit::book_refusal, refuse, Agent};
use crate::{
    audit::AuditEvent,
    control::{ApprovalView, Refusal, RefusalCode, Reply},
    journal::Op,
    requests::{AccessRequest, Approval, Now, RequestError, RequestState},
    state::Actor,
};

/// What an approval does to a request.
pub(super) enum Step {
    /// More approvals are needed: recorded, still pending.
    Recorded(Box<Reply>),
    /// This approval completes the count: grant for this TTL (the shortest
    /// any approver allowed).
    Grant(Duration),
}

impl Agent {
    /// How many approvals segment `segment` requires now (1 without a
    /// `jit` table, or for a segment that left the policy).
    pub(super) fn approvals_required(&self, segment: &str) -> u32 {
        self.policy
            .segments
            .get(segment)
            .and_then(|s| s.jit.as_ref())
            .map_or(1, |j| j.approvals_required)
    }

    /// `by`'s approval of `req` (already checked: `by` may approve, is not
    /// the requester, `ttl` is within the rules). Either records it, when
    /// more are required, or says to grant.
    pub(super) fn approval_step(
        &mut self,
        req: &AccessRequest,
        by: &Actor,
        ttl: Duration,
        now: Now,
    ) -> Result<Step, Refusal> {
        if req.approved_by(by.uid) {
            return Err(book_refusal(RequestError::AlreadyApproved {
                id: req.id,
                by: by.to_string(),
            }));
        }
        let required = self.approvals_required(&req.segment);
        if req.approval_count().saturating_add(1) >= required {
            let shortest = req
                .approved_ttl_secs()
                .map_or(ttl, |s| ttl.min(Duration::from_secs(s)));
            return Ok(Step::Grant(shortest));
        }
        let approval = Approval {
            by: by.clone(),
            at_unix_ms: now.unix_ms,
            ttl_secs: ttl.as_secs(),
        };
        // Journal, then audit: an approval nobody can trace is not given.
        if self.audit.backlog() > 0 {
            return Err(refuse(
                RefusalCode::Unavailable,
                "approval refused: the audit log cannot be written",
            ));
        }
        let head = self.audit_head();
        let updated = self
            .requests
            .add_approval(req.id, approval.clone(), now)
            .map_err(book_refusal)?;
        if let Err(e) = self.journal.append(&Op::Approval {
            request_id: req.id,
            approval,
            audit_prev: Some(head),
        }) {
            self.requests.withdraw_approval(req.id, by.uid);
            return Err(refuse(
                RefusalCode::Unavailable,
                format!("approval refused: the agent cannot write its journal, so it could not remember this approval ({e})"),
            ));
        }
        let audited = self.audit.record(AuditEvent::Approval {
            request_id: req.id,
            segment: req.segment.clone(),
            identity: req.identity.to_string(),
            approvals: updated.approval_count(),
            required,
            ttl_secs: ttl.as_secs(),
            requested_by: req.requester.clone(),
            actor: by.clone(),
        });
        if let Err(e) = audited {
            self.requests.withdraw_approval(req.id, by.uid);
            self.journal_request(req.id);
            return Err(refuse(
                RefusalCode::Unavailable,
                format!("approval refused: the audit log cannot be written ({e})"),
            ));
        }
        info!(
            request = req.id,
            actor = %by,
            approvals = updated.approval_count(),
            required,
            "approval recorded; more are required"
        );
        Ok(Step::Recorded(Box::new(Reply::Request {
            request: Box::new(self.request_view(&updated)),
        })))
    }

    /// Every approval of `r`, oldest first: the recorded ones, then the
    /// one that decided it.
    pub(super) fn approval_views(&self, r: &AccessRequest) -> Vec<ApprovalView> {
        let mut out: Vec<ApprovalView> = r
            .approvals
            .iter()
            .map(|a| ApprovalView {
                by: a.by.to_string(),
                uid: a.by.uid,
                at: super::jit::rfc3339_ms(a.at_unix_ms),
                ttl_secs: a.ttl_secs,
            })
            .collect();
        if let RequestState::Approved {
            by,
            at_unix_ms,
            ttl_secs,
            ..
        } = &r.state
        {
            out.push(ApprovalView {
                by: by.to_string(),
                uid: by.uid,
                at: super::jit::rfc3339_ms(*at_unix_ms),
                ttl_secs: *ttl_secs,
            });
        }
        out
    }
}
