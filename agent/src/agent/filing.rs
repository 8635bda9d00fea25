//! Filing a request (journal, then audit), shared by `request` and by a
//! grantee's `extend`, which files a request naming the grant it extends.
use std::time::Duration;

use tracing::info;

use super::{errors::CoreError, jit::book_refusal, jit::rfc3339_ms, refuse, Agent};
use crate::{
    audit::AuditEvent,
    clock,
    control::{PeerCred, Refusal, RefusalCode, Reply},
    identity::Identity,
    journal::Op,
    requests::{Ask, Now},
    state::Actor,
};

impl Agent {
    /// Files a request of `cred` for `identity` on `segment` (already
    /// checked against the segment's rules); `extends` names the live grant
    /// it would extend. Journal, then audit, as for grants: a request the
    /// agent cannot remember or nobody can trace is not made; its id stays
    /// used.
    pub(super) fn file_request(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        identity: Identity,
        ttl: Duration,
        reason: Option<String>,
        extends: Option<u64>,
    ) -> Result<Reply, Refusal> {
        let id = self.next_id;
        let requester = Actor::from_uid(cred.uid, cred.pid);
        let now = Now::current();
        let ask = Ask {
            id,
            segment: segment.to_string(),
            identity: identity.clone(),
            requester: requester.clone(),
            ttl,
            reason: reason.clone(),
            pending_for: self.request_ttl,
            boot_id: self.boot_id.to_string(),
        };
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
        self.requests.open(ask, now).map_err(book_refusal)?;
        if let Some(grant) = extends {
            self.requests
                .mark_extends(id, grant)
                .map_err(book_refusal)?;
        }
        let request = self
            .requests
            .get(id)
            .cloned()
            .expect("the request just opened");
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
            segment: segment.to_string(),
            identity: identity.to_string(),
            ports: self.ports_of(segment),
            ttl_secs: ttl.as_secs(),
            reason,
            expires_at: rfc3339_ms(expires_unix_ms),
            actor: requester,
            extends,
        });
        if let Err(e) = audited {
            self.requests.forget(id);
            self.journal_request(id);
            return Err(CoreError::RequestNotAudited { why: e.to_string() }.into());
        }
        info!(request = id, %segment, %identity, ttl = %clock::human(ttl), extends, "access requested");
        Ok(Reply::Requested {
            request: Box::new(self.request_view(&request)),
        })
    }
}
