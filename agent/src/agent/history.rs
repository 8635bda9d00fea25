//! `portcullis request show ID`: one request, everything that happened to
//! it, and the grant it produced with the kernel's count of its use.
//!
//! The request comes from the agent's book while it holds it (pending, or
//! decided less than `requests::KEEP_DECIDED` ago), else it is rebuilt from
//! its audit records, which last as long as the log's rotation keeps them.
//! The records are read by the caller without the agent's lock
//! (`audit::history`), then joined here.
//!
//! Who may see a request: its requester, the approvers of its segment, and
//! root. Anyone else is refused (and audited): walking ids tells which
//! exist (they are sequential anyway), never who asked, why, or who decided.
use std::{io, path::PathBuf};

use serde_json::{Map, Value};

use super::{errors::CoreError, jit::book_refusal, Agent};
use crate::{
    clock,
    control::{
        ApprovalView, GrantEndView, HistoryEntry, PeerCred, Refusal, Reply, RequestHistoryView,
        RequestView, UsageView,
    },
    ledger::Source,
    requests::RequestError,
    state::Actor,
};

type Record = Map<String, Value>;

fn text(r: &Record, key: &str) -> Option<String> {
    r.get(key).and_then(Value::as_str).map(str::to_string)
}

fn num(r: &Record, key: &str) -> Option<u64> {
    r.get(key).and_then(Value::as_u64)
}

/// `user (uid N)` from a record's actor (or `requested_by`) object.
fn who(r: &Record, key: &str) -> Option<String> {
    let a: Actor = serde_json::from_value(r.get(key)?.clone()).ok()?;
    Some(a.to_string())
}

fn uid_of(r: &Record, key: &str) -> Option<u32> {
    r.get(key)?
        .get("uid")?
        .as_u64()
        .and_then(|u| u32::try_from(u).ok())
}

fn human_secs(s: Option<u64>) -> String {
    clock::human(std::time::Duration::from_secs(s.unwrap_or(0)))
}

/// One record in words.
fn entry(r: &Record) -> HistoryEntry {
    let event = text(r, "event").unwrap_or_default();
    let grant = num(r, "grant_id").map_or_else(String::new, |g| format!("grant {g}"));
    let detail = match event.as_str() {
        "request" => {
            let mut d = format!("asked for {}", human_secs(num(r, "ttl_secs")));
            if let Some(g) = num(r, "extends") {
                d.push_str(&format!(" more on grant {g}"));
            }
            if let Some(why) = text(r, "reason") {
                d.push_str(&format!(": {why}"));
            }
            d
        }
        "approval" => format!(
            "approval {} of {}, for {}",
            num(r, "approvals").unwrap_or(0),
            num(r, "required").unwrap_or(0),
            human_secs(num(r, "ttl_secs"))
        ),
        "approve" => format!("approved as {grant} for {}", human_secs(num(r, "ttl_secs"))),
        "deny" => format!("denied: {}", text(r, "reason").unwrap_or_default()),
        "request_expire" => "lapsed: nobody decided in time".into(),
        "request_dropped" => format!("dropped: {}", text(r, "why").unwrap_or_default()),
        "grant" => format!(
            "{grant} opened until {}",
            text(r, "expires_at").unwrap_or_default()
        ),
        "extend" => format!(
            "{grant} extended until {} (was {})",
            text(r, "expires_at").unwrap_or_default(),
            text(r, "previous_expires_at").unwrap_or_default()
        ),
        "revoke" => {
            let mut d = format!("{grant} revoked");
            if let Some(why) = text(r, "why") {
                d.push_str(&format!(": {why}"));
            }
            d
        }
        "expire" => format!("{grant} expired"),
        "grant_failed" => format!("{grant} failed: {}", text(r, "error").unwrap_or_default()),
        other => format!("{other} {grant}").trim().to_string(),
    };
    HistoryEntry {
        at: text(r, "ts").unwrap_or_default(),
        by: who(r, "actor"),
        event,
        detail,
    }
}

/// The records that end a grant (a suspension may end it later: it is
/// shown as the end until the grant resumes or is revoked).
const ENDS: [&str; 4] = ["revoke", "expire", "grant_failed", "membership_revoke"];

impl Agent {
    /// Where the audit log is, for readers outside the lock.
    pub(crate) fn audit_path(&self) -> PathBuf {
        self.audit.path().to_path_buf()
    }

    /// Whether `cred` may see a request of `requester_uid` on `segment`.
    pub(super) fn may_see_request(
        &self,
        cred: &PeerCred,
        requester_uid: u32,
        segment: &str,
    ) -> bool {
        cred.uid == 0
            || cred.uid == requester_uid
            || self
                .policy
                .segments
                .get(segment)
                .is_some_and(|s| self.may_administer(cred, s))
    }

    /// `request show ID`, given what the audit log holds about it.
    pub(crate) fn request_history(
        &mut self,
        cred: &PeerCred,
        id: u64,
        records: io::Result<Vec<Record>>,
    ) -> Result<Reply, Refusal> {
        self.expire_requests();
        let (records, history_error) = match records {
            Ok(r) => (r, None),
            Err(e) => (
                Vec::new(),
                Some(format!("the audit log could not be read: {e}")),
            ),
        };
        let (request, source) = match self.requests.get(id) {
            Some(r) => (self.request_view(r), "agent"),
            None => match self.request_from_records(id, &records) {
                Some(v) => (v, "audit log"),
                None => {
                    let refusal = book_refusal(RequestError::NotFound(id));
                    return self.audited(cred, "show_request", "", Err(refusal));
                }
            },
        };
        let requester_uid = records
            .iter()
            .find(|r| text(r, "event").as_deref() == Some("request"))
            .and_then(|r| uid_of(r, "actor"))
            .or_else(|| self.requests.get(id).map(|r| r.requester.uid));
        if !requester_uid.is_some_and(|u| self.may_see_request(cred, u, &request.segment)) {
            return Err(self.forbidden(
                cred,
                "show_request",
                &request.segment,
                CoreError::MayNotSeeRequest {
                    who: Actor::from_uid(cred.uid, None).to_string(),
                    id,
                },
            ));
        }
        let history = records.iter().map(entry).collect();
        let grant_id = request.grant_id;
        let now = clock::boot_ns();
        let grant = grant_id.and_then(|g| self.grants.get(&g)).map(|g| {
            let mut v = self.view(g);
            v.usage = Some(Box::new(self.usage_view(&Source::Grant(g.id), now)));
            v
        });
        let grant_end = match (grant_id, &grant) {
            (Some(g), None) => records
                .iter()
                .rev()
                .find(|r| {
                    num(r, "grant_id") == Some(g)
                        && text(r, "event").is_some_and(|e| ENDS.contains(&e.as_str()))
                })
                .map(|r| GrantEndView {
                    event: text(r, "event").unwrap_or_default(),
                    at: text(r, "ts").unwrap_or_default(),
                    by: who(r, "actor"),
                    why: text(r, "why").or_else(|| text(r, "error")),
                    usage: r.get("usage").and_then(|u| {
                        let u: crate::usage::Record = serde_json::from_value(u.clone()).ok()?;
                        Some(UsageView {
                            connections: u.connections,
                            first_use: u.first_use,
                            last_use: u.last_use,
                            idle_secs: None,
                        })
                    }),
                }),
            _ => None,
        };
        Ok(Reply::RequestHistory(Box::new(RequestHistoryView {
            request,
            source: source.into(),
            history,
            grant,
            grant_end,
            history_error,
        })))
    }

    /// A request the book no longer holds, as its audit records tell it.
    fn request_from_records(&self, id: u64, records: &[Record]) -> Option<RequestView> {
        let asked = records
            .iter()
            .find(|r| text(r, "event").as_deref() == Some("request"))?;
        let segment = text(asked, "segment").unwrap_or_default();
        let mut v = RequestView {
            id,
            segment: segment.clone(),
            identity: text(asked, "identity").unwrap_or_default(),
            ports: asked
                .get("ports")
                .and_then(|p| serde_json::from_value(p.clone()).ok())
                .unwrap_or_default(),
            requester: who(asked, "actor").unwrap_or_default(),
            ttl_secs: num(asked, "ttl_secs").unwrap_or(0),
            reason: text(asked, "reason"),
            created_at: text(asked, "ts").unwrap_or_default(),
            expires_at: text(asked, "expires_at").unwrap_or_default(),
            remaining_secs: 0,
            state: "pending".into(),
            outcome: "no decision recorded".into(),
            grant_id: None,
            granted_ttl_secs: None,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            approvals: Vec::new(),
            approvals_required: self.approvals_required(&segment),
            extends: num(asked, "extends"),
        };
        for r in records {
            let approval = |r: &Record| ApprovalView {
                by: who(r, "actor").unwrap_or_default(),
                uid: uid_of(r, "actor").unwrap_or(0),
                at: text(r, "ts").unwrap_or_default(),
                ttl_secs: num(r, "ttl_secs").unwrap_or(0),
            };
            match text(r, "event").as_deref() {
                Some("approval") => {
                    v.approvals.push(approval(r));
                    if let Some(n) = num(r, "required").and_then(|n| u32::try_from(n).ok()) {
                        v.approvals_required = n;
                    }
                }
                Some("approve") => {
                    v.approvals.push(approval(r));
                    v.state = "approved".into();
                    v.grant_id = num(r, "grant_id");
                    v.granted_ttl_secs = num(r, "ttl_secs");
                    v.decided_by = who(r, "actor");
                    v.decided_at = text(r, "ts");
                    v.outcome = format!(
                        "approved by {} as grant {}",
                        v.decided_by.clone().unwrap_or_default(),
                        v.grant_id.unwrap_or(0)
                    );
                }
                Some("deny") => {
                    v.state = "denied".into();
                    v.decided_by = who(r, "actor");
                    v.decided_at = text(r, "ts");
                    v.decision_reason = text(r, "reason");
                    v.outcome = format!("denied by {}", v.decided_by.clone().unwrap_or_default());
                }
                Some("request_expire") => {
                    v.state = "expired".into();
                    v.decided_at = text(r, "ts");
                    v.outcome = "expired without a decision".into();
                }
                Some("request_dropped") => {
                    v.state = "expired".into();
                    v.decided_at = text(r, "ts");
                    v.outcome = format!("dropped: {}", text(r, "why").unwrap_or_default());
                }
                _ => {}
            }
        }
        Some(v)
    }
}
