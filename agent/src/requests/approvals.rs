//! Approvals short of the number a segment requires (`approvals_required`):
//! each is recorded on the pending request, one per approver uid, never the
//! requester's; the approval that completes the count decides the request
//! (`RequestBook::decide`).
use serde::{Deserialize, Serialize};

use super::{AccessRequest, Now, RequestBook, RequestError};
use crate::actor::Actor;

/// One approver's yes on a request that needs more than one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Approval {
    pub by: Actor,
    pub at_unix_ms: u64,
    /// The TTL this approver allowed (at most the one asked for); the grant
    /// gets the shortest any approver allowed.
    pub ttl_secs: u64,
}

impl AccessRequest {
    /// Whether uid `uid` already approved this request.
    pub(crate) fn approved_by(&self, uid: u32) -> bool {
        self.approvals.iter().any(|a| a.by.uid == uid)
    }

    /// Approvals given so far (decided requests: those before the last).
    pub(crate) fn approval_count(&self) -> u32 {
        u32::try_from(self.approvals.len()).unwrap_or(u32::MAX)
    }

    /// The shortest TTL any recorded approver allowed, if any.
    pub(crate) fn approved_ttl_secs(&self) -> Option<u64> {
        self.approvals.iter().map(|a| a.ttl_secs).min()
    }
}

impl RequestBook {
    /// Whether `by` may add an approval to request `id` now: the request is
    /// decidable, `by` is not its requester and has not approved it yet.
    pub(crate) fn may_add_approval(
        &self,
        id: u64,
        by: &Actor,
        now: Now,
    ) -> Result<&AccessRequest, RequestError> {
        let r = self.decidable(id, now)?;
        if r.approved_by(by.uid) {
            return Err(RequestError::AlreadyApproved {
                id,
                by: by.to_string(),
            });
        }
        Ok(r)
    }

    /// Records `approval` on pending request `id` without deciding it.
    /// The requester never counts: the agent refuses self-approval first,
    /// and the book refuses it again.
    pub(crate) fn add_approval(
        &mut self,
        id: u64,
        approval: Approval,
        now: Now,
    ) -> Result<AccessRequest, RequestError> {
        let r = self.may_add_approval(id, &approval.by, now)?;
        assert_ne!(
            r.requester.uid, approval.by.uid,
            "the agent refuses self-approval before the book sees it"
        );
        let r = self.requests.get_mut(&id).expect("checked above");
        r.approvals.push(approval);
        Ok(r.clone())
    }

    /// Takes back uid `uid`'s approval of request `id` (one that could not
    /// be journaled or audited is not given).
    pub(crate) fn withdraw_approval(&mut self, id: u64, uid: u32) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.approvals.retain(|a| a.by.uid != uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::requests::{Ask, Decision, RequestState};

    fn at(secs: u64) -> Now {
        Now {
            unix_ms: 1_700_000_000_000 + secs * 1000,
            boot_ns: (1000 + secs) * 1_000_000_000,
        }
    }

    fn actor(uid: u32) -> Actor {
        Actor {
            uid,
            user: Some(format!("u{uid}").into()),
            pid: None,
        }
    }

    fn approval(uid: u32, secs: u64, ttl_secs: u64) -> Approval {
        Approval {
            by: actor(uid),
            at_unix_ms: at(secs).unix_ms,
            ttl_secs,
        }
    }

    fn book() -> RequestBook {
        let mut book = RequestBook::new();
        book.open(
            Ask {
                id: 1,
                segment: "db".into(),
                identity: "user:alice".parse().unwrap(),
                requester: actor(1000),
                ttl: Duration::from_secs(1800),
                reason: Some("INC-1".into()),
                pending_for: Duration::from_secs(3600),
                boot_id: "b".into(),
            },
            at(0),
        )
        .unwrap();
        book
    }

    #[test]
    fn each_approver_counts_once_and_the_request_stays_pending() {
        let mut book = book();
        let r = book
            .add_approval(1, approval(2000, 1, 1800), at(1))
            .unwrap();
        assert_eq!(r.state, RequestState::Pending);
        assert_eq!(r.approval_count(), 1);
        let again = book.add_approval(1, approval(2000, 2, 600), at(2));
        assert_eq!(
            again.unwrap_err(),
            RequestError::AlreadyApproved {
                id: 1,
                by: "u2000 (uid 2000)".into()
            }
        );
        let r = book.add_approval(1, approval(3000, 3, 600), at(3)).unwrap();
        assert_eq!(r.approval_count(), 2);
        assert_eq!(r.approved_ttl_secs(), Some(600), "the shortest TTL wins");
        assert!(book.get(1).unwrap().is_pending());
        // A decided request takes no more approvals.
        book.decide(
            1,
            Decision::Deny {
                by: actor(0),
                reason: "no".into(),
            },
            at(4),
        )
        .unwrap();
        assert!(matches!(
            book.add_approval(1, approval(4000, 5, 600), at(5)),
            Err(RequestError::Decided { .. })
        ));
    }

    #[test]
    fn an_approval_past_the_deadline_is_refused_and_one_can_be_withdrawn() {
        let mut book = book();
        book.add_approval(1, approval(2000, 1, 1800), at(1))
            .unwrap();
        book.withdraw_approval(1, 2000);
        assert_eq!(book.get(1).unwrap().approval_count(), 0);
        assert_eq!(
            book.add_approval(1, approval(2000, 3600, 1800), at(3600))
                .unwrap_err(),
            RequestError::Expired { id: 1 }
        );
    }

    #[test]
    fn approvals_survive_the_journal_form() {
        let mut book = book();
        book.add_approval(1, approval(2000, 1, 1800), at(1))
            .unwrap();
        let json = serde_json::to_string(&book.saved()).unwrap();
        let back: Vec<AccessRequest> = serde_json::from_str(&json).unwrap();
        assert_eq!(back[0].approvals, vec![approval(2000, 1, 1800)]);
        // A request without approvals keeps its old form.
        let plain = self::book();
        let json = serde_json::to_string(&plain.saved()).unwrap();
        assert!(!json.contains("approvals"), "{json}");
    }
}
