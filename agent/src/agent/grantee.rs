//! A grantee extending their own grant: `portcullis extend ID --ttl D
//! --reason R` run by the grant's own person (a `user:`/`uid:` grant of the
//! caller's uid) files a request naming the grant (`extends`), decided like
//! any other request: the segment's approvers, `approvals_required` of
//! them, never the requester, inside the access windows. Its approval
//! extends the live grant in place (`extend.rs::apply_extension`: the
//! same keys updated, no gap) instead of opening a new one.
//!
//! The bound: an approved extension request is a re-approval, so it may
//! give what a new request could: at most `max_ttl` from the instant it is
//! approved (and the approvers may shorten it, never lengthen it). Without
//! a request, `extend` by root or an approver stays bounded by `max_ttl`
//! from the grant's original start. A grant that ended before approval is
//! not reopened: the approval is refused and the request stays to be denied
//! or to lapse.
use std::time::{Duration, SystemTime};

use super::{
    authz::{check_reason, check_ttl, jit_rules, window_ttl},
    jit::book_refusal,
    refuse, Agent,
};
use crate::{
    clock,
    control::{PeerCred, Refusal, RefusalCode, Reply},
    identity::Identity,
    policy::Segment,
    requests::AccessRequest,
    state::{self, Actor, Grant},
};

impl Agent {
    /// The grantee's `extend`: checks it as a request and files it.
    pub(super) fn extension_request(
        &mut self,
        cred: &PeerCred,
        grant: &Grant,
        seg: &Segment,
        ttl: Duration,
        reason: Option<&str>,
    ) -> Result<Reply, Refusal> {
        self.expire_requests();
        let jit = jit_rules(seg)?;
        check_ttl(seg, jit, ttl)?;
        let reason = check_reason(seg, jit, reason)?;
        window_ttl(seg, jit, ttl)?;
        self.refuse_locked(cred, "extend", &seg.name, &grant.identity)?;
        self.refuse_locked(cred, "extend", &seg.name, &Identity::Uid(cred.uid))?;
        refuse_no_later(grant, ttl)?;
        self.requests
            .admissible(&grant.identity, &seg.name)
            .map_err(book_refusal)?;
        self.file_request(
            cred,
            &seg.name,
            grant.identity.clone(),
            ttl,
            reason,
            Some(grant.id),
        )
    }

    /// The approval that decides extension request `req`: the live grant
    /// `grant_id` lasts `ttl` from now (already checked against `max_ttl`,
    /// the windows and what the request asked).
    pub(super) fn extend_for_request(
        &mut self,
        req: &AccessRequest,
        grant_id: u64,
        ttl: Duration,
        by: &Actor,
    ) -> Result<Grant, Refusal> {
        let Some(old) = self.grants.get(&grant_id).cloned() else {
            return Err(refuse(
                RefusalCode::Invalid,
                format!(
                    "request {} asks to extend grant {grant_id}, which has ended; extending reopens nothing: deny it (`portcullis deny {} --reason TEXT`) and ask for a new request",
                    req.id, req.id
                ),
            ));
        };
        refuse_no_later(&old, ttl)?;
        self.apply_extension(&old, ttl, req.reason.clone(), by, Some(req.id))
    }
}

/// Refuses an extension that would not end later than the grant does now.
fn refuse_no_later(g: &Grant, ttl: Duration) -> Result<(), Refusal> {
    if state::unix_ms(SystemTime::now() + ttl) <= g.expires_unix_ms {
        return Err(refuse(
            RefusalCode::Invalid,
            format!(
                "grant {} already lasts {} more; an extension of {} would not end later",
                g.id,
                clock::human(clock::remaining(g.expires_boot_ns)),
                clock::human(ttl)
            ),
        ));
    }
    Ok(())
}
