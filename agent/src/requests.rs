//! The book of access requests: who asked for which segment, for how long
//! and why, and what became of it: pending, then approved, denied or expired.
//!
//! Pure bookkeeping. It owns request records, their deadlines and the rules
//! of their life cycle (a request is decided once; a request past its
//! deadline can no longer be decided; one pending request per identity and
//! segment). It does not decide who may ask or approve, does not audit and
//! does not grant: the agent does all three, and turns an approval into a
//! grant through the same path as `portcullis grant`. Times are passed in
//! ([`Now`]) so the rules are testable without a clock.
use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{actor::Actor, identity::Identity};

mod approvals;
/// Requests that extend a live grant instead of opening one.
mod extends;
pub(crate) use approvals::Approval;

/// How long a decided request stays in the book, so that a waiting
/// requester (`request --wait`) and `list` can still see the outcome.
pub(crate) const KEEP_DECIDED: Duration = Duration::from_secs(600);
/// Most pending requests at once. Any local user may ask, so the book is
/// bounded: nobody can grow the state file without limit.
pub(crate) const MAX_PENDING: usize = 1024;
/// Most decided requests remembered (oldest forgotten first).
pub(crate) const MAX_DECIDED: usize = 1024;

/// One instant on both clocks: wall (for people and across reboots) and
/// boot (what deadlines are compared with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Now {
    pub unix_ms: u64,
    pub boot_ns: u64,
}

impl Now {
    pub(crate) fn current() -> Self {
        Self {
            unix_ms: crate::actor::unix_ms(std::time::SystemTime::now()),
            boot_ns: crate::clock::boot_ns(),
        }
    }
}

/// Where a request is in its life.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RequestState {
    Pending,
    Approved {
        grant_id: u64,
        by: Actor,
        at_unix_ms: u64,
        /// The TTL granted (at most the one asked for).
        ttl_secs: u64,
    },
    Denied {
        by: Actor,
        at_unix_ms: u64,
        reason: String,
    },
    Expired {
        at_unix_ms: u64,
    },
}

impl RequestState {
    /// One word for tables and scripts.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved { .. } => "approved",
            RequestState::Denied { .. } => "denied",
            RequestState::Expired { .. } => "expired",
        }
    }

    /// A phrase: "approved by alice (uid 1001) as grant 7".
    pub(crate) fn describe(&self) -> String {
        match self {
            RequestState::Pending => "pending".into(),
            RequestState::Approved { grant_id, by, .. } => {
                format!("approved by {by} as grant {grant_id}")
            }
            RequestState::Denied { by, reason, .. } => format!("denied by {by}: {reason}"),
            RequestState::Expired { .. } => "expired without a decision".into(),
        }
    }

    fn decided_unix_ms(&self) -> Option<u64> {
        match self {
            RequestState::Pending => None,
            RequestState::Approved { at_unix_ms, .. }
            | RequestState::Denied { at_unix_ms, .. }
            | RequestState::Expired { at_unix_ms } => Some(*at_unix_ms),
        }
    }
}

/// A person asking for access to one segment for a bounded time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessRequest {
    /// Drawn from the agent's id counter, shared with grants.
    pub id: u64,
    pub segment: String,
    /// Always the requester's own `user:` (or `uid:`) identity.
    pub identity: Identity,
    /// Who asked, from the control socket's peer credentials.
    pub requester: Actor,
    /// The TTL asked for; an approver may shorten it.
    pub ttl_secs: u64,
    pub reason: Option<String>,
    pub created_unix_ms: u64,
    /// When the request lapses if nobody decides, in Unix milliseconds.
    pub expires_unix_ms: u64,
    /// The same instant on the boot clock, valid for `boot_id`.
    pub expires_boot_ns: u64,
    pub boot_id: String,
    pub state: RequestState,
    /// Approvals given so far while more are required (`approvals_required`);
    /// the last approval is the state's `by`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// The live grant this request asks to extend (a grantee's `extend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<u64>,
}

/// What a new request asks for; the book assigns nothing but its deadline.
#[derive(Clone, Debug)]
pub(crate) struct Ask {
    pub id: u64,
    pub segment: String,
    pub identity: Identity,
    pub requester: Actor,
    pub ttl: Duration,
    pub reason: Option<String>,
    /// How long the request stays pending without a decision.
    pub pending_for: Duration,
    pub boot_id: String,
}

/// A decision on a pending request.
#[derive(Clone, Debug)]
pub(crate) enum Decision {
    Approve {
        grant_id: u64,
        by: Actor,
        ttl: Duration,
    },
    Deny {
        by: Actor,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("no request with id {0} (see `portcullis list --pending`)")]
    NotFound(u64),
    #[error("request {id} is no longer pending: it was {outcome}")]
    Decided { id: u64, outcome: String },
    #[error("request {id} expired without a decision; the requester must ask again")]
    Expired { id: u64 },
    #[error("{identity} already has pending request {existing} for segment {segment}; wait for a decision on it")]
    Duplicate {
        existing: u64,
        identity: String,
        segment: String,
    },
    #[error("{MAX_PENDING} requests are already pending; ask an approver to decide some first")]
    Full,
    #[error("{by} already approved request {id}; it needs approvals from distinct approvers")]
    AlreadyApproved { id: u64, by: String },
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl AccessRequest {
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.state == RequestState::Pending
    }
}

/// Every request the agent remembers, by id.
#[derive(Debug, Default)]
pub(crate) struct RequestBook {
    requests: BTreeMap<u64, AccessRequest>,
}

impl RequestBook {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Takes back saved requests. Deadlines saved on another boot are moved
    /// onto this boot's clock through their wall-clock time.
    pub(crate) fn restore(saved: Vec<AccessRequest>, boot_id: &str, now: Now) -> Self {
        let requests = saved
            .into_iter()
            .map(|mut r| {
                if r.boot_id != boot_id {
                    let ahead = r.expires_unix_ms.saturating_sub(now.unix_ms);
                    r.expires_boot_ns = now.boot_ns.saturating_add(ahead.saturating_mul(1_000_000));
                    r.boot_id = boot_id.to_string();
                }
                (r.id, r)
            })
            .collect();
        Self { requests }
    }

    /// Everything to save, in id order.
    pub(crate) fn saved(&self) -> Vec<AccessRequest> {
        self.requests.values().cloned().collect()
    }

    /// Every id in the book, in order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.requests.keys().copied()
    }

    /// Drops request `id` (a request the agent could not journal or audit
    /// is not made).
    pub(crate) fn forget(&mut self, id: u64) -> Option<AccessRequest> {
        self.requests.remove(&id)
    }

    pub(crate) fn get(&self, id: u64) -> Option<&AccessRequest> {
        self.requests.get(&id)
    }

    /// Pending requests, oldest first.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &AccessRequest> {
        self.requests.values().filter(|r| r.is_pending())
    }

    /// Whether a new request by `identity` for `segment` would be accepted.
    pub(crate) fn admissible(
        &self,
        identity: &Identity,
        segment: &str,
    ) -> Result<(), RequestError> {
        if let Some(existing) = self
            .pending()
            .find(|r| &r.identity == identity && r.segment == segment)
        {
            return Err(RequestError::Duplicate {
                existing: existing.id,
                identity: identity.to_string(),
                segment: segment.to_string(),
            });
        }
        if self.pending().count() >= MAX_PENDING {
            return Err(RequestError::Full);
        }
        Ok(())
    }

    /// Records a new pending request.
    pub(crate) fn open(&mut self, ask: Ask, now: Now) -> Result<&AccessRequest, RequestError> {
        self.admissible(&ask.identity, &ask.segment)?;
        assert!(
            !self.requests.contains_key(&ask.id),
            "request ids come from a counter and are never reused"
        );
        let request = AccessRequest {
            id: ask.id,
            segment: ask.segment,
            identity: ask.identity,
            requester: ask.requester,
            ttl_secs: ask.ttl.as_secs(),
            reason: ask.reason,
            created_unix_ms: now.unix_ms,
            expires_unix_ms: now.unix_ms.saturating_add(ms(ask.pending_for)),
            expires_boot_ns: now.boot_ns.saturating_add(ns(ask.pending_for)),
            boot_id: ask.boot_id,
            state: RequestState::Pending,
            approvals: Vec::new(),
            extends: None,
        };
        Ok(self.requests.entry(request.id).or_insert(request))
    }

    /// The request `id` if it can still be decided now.
    pub(crate) fn decidable(&self, id: u64, now: Now) -> Result<&AccessRequest, RequestError> {
        let r = self.requests.get(&id).ok_or(RequestError::NotFound(id))?;
        match &r.state {
            RequestState::Pending if r.expires_boot_ns <= now.boot_ns => {
                Err(RequestError::Expired { id })
            }
            RequestState::Pending => Ok(r),
            RequestState::Expired { .. } => Err(RequestError::Expired { id }),
            other => Err(RequestError::Decided {
                id,
                outcome: other.describe(),
            }),
        }
    }

    /// Decides a pending request once and for all.
    pub(crate) fn decide(
        &mut self,
        id: u64,
        decision: Decision,
        now: Now,
    ) -> Result<AccessRequest, RequestError> {
        self.decidable(id, now)?;
        let r = self.requests.get_mut(&id).expect("checked above");
        r.state = match decision {
            Decision::Approve { grant_id, by, ttl } => RequestState::Approved {
                grant_id,
                by,
                at_unix_ms: now.unix_ms,
                ttl_secs: ttl.as_secs(),
            },
            Decision::Deny { by, reason } => RequestState::Denied {
                by,
                at_unix_ms: now.unix_ms,
                reason,
            },
        };
        Ok(r.clone())
    }

    /// Marks every pending request past its deadline as expired and returns
    /// them; forgets decided requests older than [`KEEP_DECIDED`] (and the
    /// oldest beyond [`MAX_DECIDED`]).
    pub(crate) fn expire_due(&mut self, now: Now) -> Vec<AccessRequest> {
        let mut expired = Vec::new();
        for r in self.requests.values_mut() {
            if r.is_pending() && r.expires_boot_ns <= now.boot_ns {
                r.state = RequestState::Expired {
                    at_unix_ms: r.expires_unix_ms.min(now.unix_ms),
                };
                expired.push(r.clone());
            }
        }
        let keep_ms = ms(KEEP_DECIDED);
        self.requests.retain(|_, r| {
            r.state
                .decided_unix_ms()
                .is_none_or(|at| now.unix_ms.saturating_sub(at) < keep_ms)
        });
        let decided: Vec<u64> = self
            .requests
            .values()
            .filter(|r| !r.is_pending())
            .map(|r| r.id)
            .collect();
        if decided.len() > MAX_DECIDED {
            for id in &decided[..decided.len() - MAX_DECIDED] {
                self.requests.remove(id);
            }
        }
        expired
    }

    /// Ends every pending request for a segment `gone` says has left the
    /// policy (it could never be approved) and returns them.
    pub(crate) fn drop_pending(
        &mut self,
        gone: impl Fn(&str) -> bool,
        now: Now,
    ) -> Vec<AccessRequest> {
        let mut dropped = Vec::new();
        for r in self.requests.values_mut() {
            if r.is_pending() && gone(&r.segment) {
                r.state = RequestState::Expired {
                    at_unix_ms: now.unix_ms,
                };
                dropped.push(r.clone());
            }
        }
        dropped
    }

    /// The earliest deadline of a pending request, for the agent's timer.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.pending().map(|r| r.expires_boot_ns).min()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn at(secs: u64) -> Now {
        Now {
            unix_ms: 1_700_000_000_000 + secs * 1000,
            boot_ns: 1000 * SEC + secs * SEC,
        }
    }

    fn actor(uid: u32) -> Actor {
        Actor {
            uid,
            user: Some(format!("u{uid}").into()),
            pid: None,
        }
    }

    fn ask(id: u64, who: &str, segment: &str) -> Ask {
        Ask {
            id,
            segment: segment.into(),
            identity: who.parse().unwrap(),
            requester: actor(1000),
            ttl: Duration::from_secs(1800),
            reason: Some("INC-1".into()),
            pending_for: Duration::from_secs(3600),
            boot_id: "boot-a".into(),
        }
    }

    #[test]
    fn a_new_request_is_pending_until_its_deadline() {
        let mut book = RequestBook::new();
        let r = book
            .open(ask(5, "user:alice", "db"), at(0))
            .unwrap()
            .clone();
        assert_eq!(r.state, RequestState::Pending);
        assert_eq!(r.ttl(), Duration::from_secs(1800));
        assert_eq!(r.expires_boot_ns, at(3600).boot_ns);
        assert_eq!(r.expires_unix_ms, at(3600).unix_ms);
        assert_eq!(book.next_deadline(), Some(at(3600).boot_ns));
        assert!(book.expire_due(at(3599)).is_empty());
        let expired = book.expire_due(at(3600));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].state.name(), "expired");
        assert_eq!(book.next_deadline(), None);
        assert_eq!(
            book.decidable(5, at(3601)).unwrap_err(),
            RequestError::Expired { id: 5 }
        );
    }

    #[test]
    fn a_request_is_decided_once() {
        let mut book = RequestBook::new();
        book.open(ask(1, "user:alice", "db"), at(0)).unwrap();
        let approved = book
            .decide(
                1,
                Decision::Approve {
                    grant_id: 2,
                    by: actor(0),
                    ttl: Duration::from_secs(600),
                },
                at(10),
            )
            .unwrap();
        assert!(matches!(
            approved.state,
            RequestState::Approved {
                grant_id: 2,
                ttl_secs: 600,
                ..
            }
        ));
        let again = book.decide(
            1,
            Decision::Deny {
                by: actor(0),
                reason: "no".into(),
            },
            at(11),
        );
        assert_eq!(
            again.unwrap_err().to_string(),
            "request 1 is no longer pending: it was approved by u0 (uid 0) as grant 2"
        );
        assert_eq!(book.pending().count(), 0);
    }

    #[test]
    fn a_request_past_its_deadline_cannot_be_decided_even_before_the_sweep() {
        let mut book = RequestBook::new();
        book.open(ask(1, "user:alice", "db"), at(0)).unwrap();
        let late = book.decide(
            1,
            Decision::Deny {
                by: actor(0),
                reason: "late".into(),
            },
            at(3600),
        );
        assert_eq!(late.unwrap_err(), RequestError::Expired { id: 1 });
        assert_eq!(
            book.decidable(9, at(0)).unwrap_err(),
            RequestError::NotFound(9)
        );
    }

    #[test]
    fn one_pending_request_per_identity_and_segment() {
        let mut book = RequestBook::new();
        book.open(ask(1, "user:alice", "db"), at(0)).unwrap();
        let dup = book.open(ask(2, "user:alice", "db"), at(1)).unwrap_err();
        assert_eq!(
            dup,
            RequestError::Duplicate {
                existing: 1,
                identity: "user:alice".into(),
                segment: "db".into()
            }
        );
        book.open(ask(3, "user:alice", "cache"), at(1)).unwrap();
        book.open(ask(4, "user:bob", "db"), at(1)).unwrap();
        // Once decided, the same person may ask again.
        book.decide(
            1,
            Decision::Deny {
                by: actor(0),
                reason: "no".into(),
            },
            at(2),
        )
        .unwrap();
        book.open(ask(5, "user:alice", "db"), at(3)).unwrap();
        assert_eq!(
            book.pending().map(|r| r.id).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = RequestBook::new();
        for i in 0..MAX_PENDING as u64 {
            book.open(ask(i, &format!("uid:{i}"), "db"), at(0)).unwrap();
        }
        assert_eq!(
            book.open(ask(99_999, "uid:99999", "db"), at(0))
                .unwrap_err(),
            RequestError::Full
        );
    }

    #[test]
    fn decided_requests_are_forgotten_after_a_while() {
        let mut book = RequestBook::new();
        book.open(ask(1, "user:alice", "db"), at(0)).unwrap();
        book.decide(
            1,
            Decision::Deny {
                by: actor(0),
                reason: "no".into(),
            },
            at(5),
        )
        .unwrap();
        book.expire_due(at(5 + KEEP_DECIDED.as_secs() - 1));
        assert!(
            book.get(1).is_some(),
            "kept while the outcome may be polled"
        );
        book.expire_due(at(5 + KEEP_DECIDED.as_secs()));
        assert!(book.get(1).is_none());
        assert!(book.is_empty());
    }

    #[test]
    fn saved_requests_survive_a_reboot_by_wall_clock() {
        let mut book = RequestBook::new();
        book.open(ask(1, "user:alice", "db"), at(0)).unwrap();
        let saved = book.saved();
        let json = serde_json::to_string(&saved).unwrap();
        let back: Vec<AccessRequest> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);
        // Same boot: deadlines kept as they are.
        let same = RequestBook::restore(back.clone(), "boot-a", at(100));
        assert_eq!(same.get(1).unwrap().expires_boot_ns, at(3600).boot_ns);
        // Another boot 100 s later on the wall clock, boot clock restarted at 5 s.
        let now = Now {
            unix_ms: at(100).unix_ms,
            boot_ns: 5 * SEC,
        };
        let rebooted = RequestBook::restore(back, "boot-b", now);
        let r = rebooted.get(1).unwrap();
        assert_eq!(r.expires_boot_ns, 5 * SEC + 3500 * SEC);
        assert_eq!(r.boot_id, "boot-b");
    }
}
