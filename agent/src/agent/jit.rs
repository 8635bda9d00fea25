//! The just-in-time workflow on the agent's state: a person asks for access
//! to a segment (`request`), someone entitled says yes (`approve`, which
//! grants through the same path as `portcullis grant`) or no (`deny`), and
//! an undecided request lapses. Also `explain`, which reads the kernel maps.
//!
//! Who may do what is decided here, from the control socket's peer
//! credentials only:
//! - any local user may request access for their own `user:` identity
//!   (`uid:N` when the uid has no name) to a segment with a `jit` table;
//! - root and the segment's approvers may approve and deny;
//! - nobody approves their own request, root included.
//!
//! Every refusal is audited once (see `Agent::audited`). The request book
//! itself (ids, deadlines, state transitions) lives in `crate::requests`.
use std::{collections::BTreeMap, time::Duration};

use tracing::{info, warn};

use super::{
    approvals::Step,
    authz::{check_reason, check_ttl, jit_rules, requested_ttl, window_ttl},
    errors::CoreError,
    refuse, Agent,
};
use crate::{
    audit::AuditEvent,
    clock,
    control::{PeerCred, Refusal, RefusalCode, Reply, RequestView},
    explain::{self, Subject},
    identity::Identity,
    journal::Op,
    ledger::Source,
    requests::{AccessRequest, Ask, Decision, Now, RequestError, RequestState},
    state::Actor,
};

/// How long a request stays pending when the agent is not told otherwise.
pub(crate) const DEFAULT_REQUEST_TTL: Duration = Duration::from_secs(3600);

/// A refusal of the request book, at the edge.
pub(super) fn book_refusal(e: RequestError) -> Refusal {
    CoreError::Book(e).into()
}

/// The caller's own identity: `user:NAME`, or `uid:N` when the uid has no name.
pub(super) fn own_identity(uid: u32) -> Identity {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .and_then(|u| format!("user:{}", u.name).parse().ok())
        .unwrap_or(Identity::Uid(uid))
}

pub(super) fn rfc3339_ms(unix_ms: u64) -> String {
    clock::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms))
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Agent {
    /// How long requests stay pending (the agent's `--request-expiry`).
    pub(crate) fn set_request_ttl(&mut self, ttl: Duration) {
        self.request_ttl = ttl;
    }

    /// `portcullis request SEGMENT`: the caller asks for access for themselves.
    pub(crate) fn request(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        ttl: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<Reply, Refusal> {
        let result = self.request_checked(cred, segment, ttl, reason);
        self.audited(cred, "request", segment, result)
    }

    fn request_checked(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        ttl: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<Reply, Refusal> {
        self.expire_requests();
        let seg = self.segment(segment)?.clone();
        let jit = jit_rules(&seg)?;
        let ttl = requested_ttl(jit, ttl)?;
        check_ttl(&seg, jit, ttl)?;
        let reason = check_reason(&seg, jit, reason)?;
        // Taken inside a window only (the grant's TTL is cut at approval).
        window_ttl(&seg, jit, ttl)?;
        let identity = own_identity(cred.uid);
        self.refuse_locked(cred, "request", &seg.name, &identity)?;
        self.refuse_locked(cred, "request", &seg.name, &Identity::Uid(cred.uid))?;
        self.requests
            .admissible(&identity, &seg.name)
            .map_err(book_refusal)?;
        let id = self.next_id;
        let requester = Actor::from_uid(cred.uid, cred.pid);
        let now = Now::current();
        let ask = Ask {
            id,
            segment: seg.name.clone(),
            identity: identity.clone(),
            requester: requester.clone(),
            ttl,
            reason: reason.clone(),
            pending_for: self.request_ttl,
            boot_id: self.boot_id.clone(),
        };
        // Journal, then audit, as for grants: a request the agent cannot
        // remember or nobody can trace is not made; its id stays used.
        let expires_unix_ms = now
            .unix_ms
            .saturating_add(self.request_ttl.as_millis() as u64);
        let head = self.audit_head();
        if self.audit.backlog() > 0 {
            return Err(refuse(
                RefusalCode::Unavailable,
                "request refused: the audit log cannot be written",
            ));
        }
        let request = self.requests.open(ask, now).map_err(book_refusal)?.clone();
        let journaled = self.journal.append(&Op::Request {
            request: request.clone(),
            audit_prev: Some(head),
        });
        self.next_id += 1;
        if let Err(e) = journaled {
            self.requests.forget(id);
            return Err(refuse(
                RefusalCode::Unavailable,
                format!("request refused: the agent cannot write its journal, so it could not remember this request ({e})"),
            ));
        }
        let audited = self.audit.record(AuditEvent::Request {
            request_id: id,
            segment: seg.name.clone(),
            identity: identity.to_string(),
            ports: self.ports_of(&seg.name),
            ttl_secs: ttl.as_secs(),
            reason: reason.clone(),
            expires_at: rfc3339_ms(expires_unix_ms),
            actor: requester.clone(),
        });
        if let Err(e) = audited {
            self.requests.forget(id);
            self.journal_request(id);
            return Err(CoreError::RequestNotAudited { why: e.to_string() }.into());
        }
        info!(request = id, segment = %seg.name, %identity, ttl = %clock::human(ttl), "access requested");
        Ok(Reply::Requested {
            request: Box::new(self.request_view(&request)),
        })
    }

    /// `portcullis approve ID [--ttl D]`: turns a pending request into a grant.
    pub(crate) fn approve(
        &mut self,
        cred: &PeerCred,
        id: u64,
        ttl: Option<Duration>,
    ) -> Result<Reply, Refusal> {
        let segment = self.request_segment(id);
        let result = self.approve_checked(cred, id, ttl);
        self.audited(cred, "approve", &segment, result)
    }

    fn approve_checked(
        &mut self,
        cred: &PeerCred,
        id: u64,
        ttl: Option<Duration>,
    ) -> Result<Reply, Refusal> {
        // An overdue request is expired (and audited as such) before anything else.
        self.expire_requests();
        let now = Now::current();
        let req = self
            .requests
            .decidable(id, now)
            .map_err(book_refusal)?
            .clone();
        let seg = self.segment(&req.segment)?.clone();
        if !self.may_administer(cred, &seg) {
            return Err(self.forbidden(
                cred,
                "approve",
                &seg.name,
                CoreError::NotApprover {
                    who: Actor::from_uid(cred.uid, None).to_string(),
                    action: format!("approve request {id}"),
                    segment: seg.name.clone(),
                },
            ));
        }
        if cred.uid == req.requester.uid {
            return Err(self.forbidden(
                cred,
                "approve",
                &seg.name,
                CoreError::SelfApproval {
                    id,
                    requester: req.requester.to_string(),
                },
            ));
        }
        self.refuse_locked(cred, "approve", &seg.name, &req.identity)?;
        if let Some(why) = super::authz::refusal(&req.identity, cred, &self.resolver) {
            return Err(self.refused(
                cred,
                "approve",
                &seg.name,
                format!(
                    "{} may not approve request {id} on segment {}: {why}; approvers do not open segments to themselves, only root may",
                    Actor::from_uid(cred.uid, None),
                    seg.name
                ),
            ));
        }
        // The policy may have changed since the request was made.
        let jit = jit_rules(&seg)?;
        let ttl = match ttl {
            Some(asked) => {
                if asked > req.ttl() {
                    return Err(CoreError::LongerThanRequested {
                        id,
                        requested: req.ttl(),
                        asked,
                    }
                    .into());
                }
                asked
            }
            None => req.ttl(),
        };
        check_ttl(&seg, jit, ttl)?;
        // Approved inside a window only; the grant closes at its end.
        let ttl = window_ttl(&seg, jit, ttl)?;
        let by = Actor::from_uid(cred.uid, cred.pid);
        let ttl = match self.approval_step(&req, &by, ttl, now)? {
            Step::Recorded(reply) => return Ok(*reply),
            Step::Grant(ttl) => ttl,
        };
        let grant = self.open_grant(
            cred,
            &seg,
            req.identity.clone(),
            ttl,
            req.reason.clone(),
            Some(id),
        )?;
        // Decided at the instant it was found decidable: nothing can have
        // changed in between, the agent is locked.
        let decided = self
            .requests
            .decide(
                id,
                Decision::Approve {
                    grant_id: grant.id,
                    by: by.clone(),
                    ttl,
                },
                now,
            )
            .map_err(book_refusal)?;
        if let Err(e) = self.audit.record(AuditEvent::Approve {
            request_id: id,
            grant_id: grant.id,
            segment: seg.name.clone(),
            identity: req.identity.to_string(),
            ttl_secs: ttl.as_secs(),
            requested_ttl_secs: req.ttl_secs,
            requested_by: req.requester.clone(),
            actor: by.clone(),
        }) {
            warn!(request = id, error = %e, "approved (the grant is audited), but the approve record could not be written");
        }
        self.journal_request(id);
        info!(request = id, grant = grant.id, actor = %by, "request approved");
        Ok(Reply::Approved {
            request: Box::new(self.request_view(&decided)),
            grant: Box::new(self.view(&grant)),
        })
    }

    /// `portcullis deny ID --reason TEXT`.
    pub(crate) fn deny(
        &mut self,
        cred: &PeerCred,
        id: u64,
        reason: &str,
    ) -> Result<Reply, Refusal> {
        let segment = self.request_segment(id);
        let result = self.deny_checked(cred, id, reason);
        self.audited(cred, "deny", &segment, result)
    }

    fn deny_checked(&mut self, cred: &PeerCred, id: u64, reason: &str) -> Result<Reply, Refusal> {
        self.expire_requests();
        let now = Now::current();
        let req = self
            .requests
            .decidable(id, now)
            .map_err(book_refusal)?
            .clone();
        // A request on a segment that left the policy can still be denied, by root.
        let authorized = match self.policy.segments.get(&req.segment) {
            Some(seg) => self.may_administer(cred, seg),
            None => cred.uid == 0,
        };
        if !authorized {
            return Err(self.forbidden(
                cred,
                "deny",
                &req.segment,
                CoreError::NotApprover {
                    who: Actor::from_uid(cred.uid, None).to_string(),
                    action: format!("deny request {id}"),
                    segment: req.segment.clone(),
                },
            ));
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(CoreError::DenialWithoutReason.into());
        }
        let by = Actor::from_uid(cred.uid, cred.pid);
        let decided = self
            .requests
            .decide(
                id,
                Decision::Deny {
                    by: by.clone(),
                    reason: reason.to_string(),
                },
                now,
            )
            .map_err(book_refusal)?;
        // Denying opens nothing, so it stands even when the audit log fails.
        if let Err(e) = self.audit.record(AuditEvent::Deny {
            request_id: id,
            segment: req.segment.clone(),
            identity: req.identity.to_string(),
            reason: reason.to_string(),
            requested_by: req.requester.clone(),
            actor: by.clone(),
        }) {
            warn!(request = id, error = %e, "denied, but the audit record could not be written");
        }
        self.journal_request(id);
        info!(request = id, actor = %by, "request denied");
        Ok(Reply::Denied {
            request: Box::new(self.request_view(&decided)),
        })
    }

    /// One request, pending or recently decided (polled by `request --wait`).
    pub(crate) fn show_request(&mut self, cred: &PeerCred, id: u64) -> Result<Reply, Refusal> {
        self.expire_requests();
        let result = match self.requests.get(id) {
            Some(r) => Ok(Reply::Request {
                request: Box::new(self.request_view(r)),
            }),
            None => Err(book_refusal(RequestError::NotFound(id))),
        };
        self.audited(cred, "show_request", "", result)
    }

    /// Pending requests, oldest first.
    pub(crate) fn pending(&mut self) -> Reply {
        self.expire_requests();
        Reply::Pending {
            requests: self.pending_views(),
        }
    }

    pub(super) fn pending_views(&self) -> Vec<RequestView> {
        self.requests
            .pending()
            .map(|r| self.request_view(r))
            .collect()
    }

    /// Marks pending requests past their deadline as expired, audits each,
    /// and forgets decided requests that are old enough.
    pub(super) fn expire_requests(&mut self) {
        let before: Vec<u64> = self.requests.ids().collect();
        let expired = self.requests.expire_due(Now::current());
        for r in &expired {
            let _ = self.audit.record(AuditEvent::RequestExpire {
                request_id: r.id,
                segment: r.segment.clone(),
                identity: r.identity.to_string(),
                requested_by: r.requester.clone(),
                expired_at: rfc3339_ms(r.expires_unix_ms),
            });
            info!(request = r.id, segment = %r.segment, identity = %r.identity, "request expired without a decision");
        }
        // Expired ones in their new state, forgotten ones gone.
        let changed: Vec<u64> = before
            .into_iter()
            .filter(|id| self.requests.get(*id).is_none() || expired.iter().any(|r| r.id == *id))
            .collect();
        for id in changed {
            self.journal_request(id);
        }
    }

    /// Ends the pending requests of segments that left the policy: nobody
    /// could approve them, and `list --pending` would show them forever.
    pub(super) fn drop_requests_of_gone_segments(&mut self) {
        let policy = &self.policy;
        let dropped = self
            .requests
            .drop_pending(|s| !policy.segments.contains_key(s), Now::current());
        for r in &dropped {
            self.journal_request(r.id);
            let _ = self.audit.record(AuditEvent::RequestDropped {
                request_id: r.id,
                segment: r.segment.clone(),
                identity: r.identity.to_string(),
                requested_by: r.requester.clone(),
                why: format!("segment {} left the policy", r.segment),
            });
            info!(request = r.id, segment = %r.segment, "pending request dropped: its segment left the policy");
        }
    }

    fn request_segment(&self, id: u64) -> String {
        self.requests
            .get(id)
            .map(|r| r.segment.clone())
            .unwrap_or_default()
    }

    pub(super) fn request_view(&self, r: &AccessRequest) -> RequestView {
        let (grant_id, granted_ttl_secs, decided_by, decided_at, decision_reason) = match &r.state {
            RequestState::Pending => (None, None, None, None, None),
            RequestState::Approved {
                grant_id,
                by,
                at_unix_ms,
                ttl_secs,
            } => (
                Some(*grant_id),
                Some(*ttl_secs),
                Some(by.to_string()),
                Some(rfc3339_ms(*at_unix_ms)),
                None,
            ),
            RequestState::Denied {
                by,
                at_unix_ms,
                reason,
            } => (
                None,
                None,
                Some(by.to_string()),
                Some(rfc3339_ms(*at_unix_ms)),
                Some(reason.clone()),
            ),
            RequestState::Expired { at_unix_ms } => {
                (None, None, None, Some(rfc3339_ms(*at_unix_ms)), None)
            }
        };
        RequestView {
            id: r.id,
            segment: r.segment.clone(),
            identity: r.identity.to_string(),
            ports: self.ports_of(&r.segment),
            requester: r.requester.to_string(),
            ttl_secs: r.ttl_secs,
            reason: r.reason.clone(),
            created_at: rfc3339_ms(r.created_unix_ms),
            expires_at: rfc3339_ms(r.expires_unix_ms),
            remaining_secs: if r.is_pending() {
                clock::remaining(r.expires_boot_ns).as_secs()
            } else {
                0
            },
            state: r.state.name().to_string(),
            outcome: r.state.describe(),
            grant_id,
            granted_ttl_secs,
            decided_by,
            decided_at,
            decision_reason,
            approvals: self.approval_views(r),
            approvals_required: self.approvals_required(&r.segment),
        }
    }

    /// `portcullis explain`: which segment, entry and source decide for a
    /// subject on a port, read from the kernel maps.
    pub(crate) fn explain(
        &mut self,
        cred: &PeerCred,
        identity: Option<&str>,
        pid: Option<u32>,
        port: &str,
    ) -> Result<Reply, Refusal> {
        let result = self.explain_checked(identity, pid, port);
        self.audited(cred, "explain", "", result)
    }

    fn explain_checked(
        &self,
        identity: Option<&str>,
        pid: Option<u32>,
        port: &str,
    ) -> Result<Reply, Refusal> {
        let subject = match (identity, pid) {
            (Some(i), None) => {
                Subject::Identity(i.parse().map_err(|e| CoreError::BadIdentity {
                    text: i.to_string(),
                    why: format!("{e}"),
                })?)
            }
            (None, Some(p)) => Subject::Pid(p),
            _ => return Err(CoreError::ExplainWhat.into()),
        };
        let port =
            explain::parse_port(port).map_err(|e| CoreError::ExplainPort { why: chain(&e) })?;
        let resolved = explain::resolve(&subject, &self.resolver)
            .map_err(|e| CoreError::ExplainSubject { why: chain(&e) })?;
        let names: BTreeMap<u32, String> = self
            .segment_ids
            .iter()
            .map(|(name, id)| (*id, name.clone()))
            .collect();
        let view = explain::evaluate(
            &*self.kernel,
            &self.ledger,
            &resolved,
            port,
            clock::boot_ns(),
            &|id| names.get(&id).cloned(),
            &|s| self.describe_source(s),
        )
        .map_err(|e| CoreError::ExplainMaps { why: chain(&e) })?;
        Ok(Reply::Explained(Box::new(view)))
    }

    /// What a ledger source is, for people.
    fn describe_source(&self, source: &Source) -> String {
        match source {
            Source::Standing { segment, identity } => {
                let through = through_group(identity);
                match self.policy.segments.get(segment) {
                    Some(seg) => format!(
                        "standing allow {identity} of segment {segment} (policy {}){through}",
                        seg.origin.file.display()
                    ),
                    None => format!("standing allow {identity} of segment {segment}{through}"),
                }
            }
            Source::Grant(id) => match self.grants.get(id) {
                Some(g) => {
                    let mut s = format!(
                        "grant {id} of {} by {}, {} left",
                        g.identity,
                        g.actor,
                        clock::human(clock::remaining(g.expires_boot_ns))
                    );
                    if let Some(r) = g.request_id {
                        s.push_str(&format!(", approving request {r}"));
                    }
                    if let Some(reason) = &g.reason {
                        s.push_str(&format!(" ({reason})"));
                    }
                    s.push_str(&through_group(&g.identity.to_string()));
                    s
                }
                None => format!("grant {id} (no longer recorded)"),
            },
        }
    }
}

/// ", through membership of group NAME" for a `group:` identity's source.
fn through_group(identity: &str) -> String {
    match identity.strip_prefix("group:") {
        Some(name) => format!(", through membership of group {name}"),
        None => String::new(),
    }
}
