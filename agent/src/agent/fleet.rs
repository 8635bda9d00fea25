//! Fleet grants in the core: one more source of allow entries, next to
//! policy files and local grants.
//!
//! A fleet grant that targets this host becomes a local grant whose
//! `fleet` field names its fleet id: it goes the one path every grant goes
//! (journal, audit with the fleet id, ledger, kernel), expires in the
//! kernel at its own absolute deadline, and survives restarts through the
//! journal like any other, so pinned enforcement continues while the agent
//! is down and the watch reconciles when it is back. The watch itself, the
//! store and the wire are `crate::fleet`'s; this module only applies and
//! ends, and says what is enforced.
use std::collections::BTreeMap;

use super::authz::{check_reason, check_ttl, jit_rules, requested_ttl, window_ttl};
use super::errors::CoreError;
use super::*;

/// A fleet grant as `crate::fleet` hands it over: checked, its absolute
/// deadline already turned into the time it still runs.
pub(crate) struct IncomingGrant<'a> {
    pub id: &'a str,
    pub segment: &'a str,
    pub identity: Identity,
    pub ttl: Duration,
    pub reason: Option<String>,
    pub actor_uid: u32,
    pub actor_user: Option<&'a str>,
    pub origin_host: &'a str,
    pub revision: i64,
    /// Works only while this host hears from the store.
    pub strict: bool,
}

/// A fleet lock as `crate::fleet` hands it over.
pub(crate) struct IncomingLock<'a> {
    pub id: &'a str,
    pub identity: Identity,
    pub reason: &'a str,
    pub include_standing: bool,
    pub created_unix_ms: u64,
    pub expires_unix_ms: Option<u64>,
    pub actor_uid: u32,
    pub actor_user: Option<&'a str>,
    pub origin_host: &'a str,
}

fn remote_actor(uid: u32, user: Option<&str>, host: &str) -> Actor {
    Actor {
        uid,
        user: Some(format!("{}@{host}", user.unwrap_or("?")).into()),
        pid: None,
    }
}

/// How much longer than the segment's `max_ttl` a fleet grant may run when
/// it reaches this host (clock skew between the granting host and this one).
const SKEW: Duration = Duration::from_secs(60);

impl Agent {
    /// Fleet grants enforced here: fleet id → (local id, deadline in Unix ms).
    pub(crate) fn fleet_enforced(&self) -> BTreeMap<String, (u64, u64)> {
        self.grants
            .values()
            .filter_map(|g| {
                g.fleet
                    .as_ref()
                    .map(|f| (f.id.clone(), (g.id, g.expires_unix_ms)))
            })
            .collect()
    }

    /// The checks of a fleet grant made through this agent: the same rules
    /// as a local grant on this host's policy (who may, for whom, how long,
    /// why), without making it here.
    pub(crate) fn fleet_authorize_grant(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        identity: &str,
        ttl: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<(Identity, Duration, Option<String>), Refusal> {
        let result = self
            .grant_authorized(cred, segment, identity, ttl, reason)
            .map(|(_, i, t, r)| (i, t, r));
        self.audited(cred, "fleet grant", segment, result)
    }

    /// The checks of a fleet request made through this agent, as for a
    /// local one: the segment takes requests, the TTL and reason fit, the
    /// caller is not locked. Returns the caller's identity, the TTL, the
    /// reason.
    pub(crate) fn fleet_check_request(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        ttl: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<(Identity, Duration, Option<String>), Refusal> {
        let result = self
            .request_rules(segment, ttl, reason)
            .map_err(Refusal::from);
        let (seg, ttl, reason) = self.audited(cred, "fleet request", segment, result)?;
        let identity = jit::own_identity(cred.uid);
        self.refuse_locked(cred, "request", &seg.name, &identity)?;
        Ok((identity, ttl, reason))
    }

    fn request_rules(
        &self,
        segment: &str,
        ttl: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<(Segment, Duration, Option<String>), CoreError> {
        let seg = self.segment(segment)?.clone();
        let jit = jit_rules(&seg)?;
        let ttl = requested_ttl(jit, ttl)?;
        check_ttl(&seg, jit, ttl)?;
        let reason = check_reason(&seg, jit, reason)?;
        window_ttl(&seg, jit, ttl)?;
        Ok((seg, ttl, reason))
    }

    /// The checks of a fleet approval made through this agent: the caller
    /// approves the segment here (root or its approvers), is not the
    /// requester (`me` and `requester` are `user@host`), and the identity is
    /// not locked here. Returns the TTL to grant: the asked one, or less.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fleet_check_approval(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        identity: &str,
        requester: &str,
        me: &str,
        asked: Duration,
        ttl: Option<Duration>,
    ) -> Result<Duration, Refusal> {
        let seg = self.segment(segment).map_err(Refusal::from)?.clone();
        if !self.may_administer(cred, &seg) {
            return Err(self.forbidden(
                cred,
                "approve",
                &seg.name,
                CoreError::NotApprover {
                    who: format!("uid {}", cred.uid),
                    action: "approve".into(),
                    segment: seg.name.clone(),
                },
            ));
        }
        if me == requester {
            return Err(refuse(
                RefusalCode::Forbidden,
                format!("{me} may not approve their own request"),
            ));
        }
        let identity: Identity = identity
            .parse()
            .map_err(|e| refuse(RefusalCode::Invalid, format!("identity {identity:?}: {e}")))?;
        self.refuse_locked(cred, "approve", &seg.name, &identity)?;
        let jit = jit_rules(&seg).map_err(Refusal::from)?;
        let ttl = ttl.map_or(asked, |t| t.min(asked));
        check_ttl(&seg, jit, ttl).map_err(Refusal::from)?;
        window_ttl(&seg, jit, ttl).map_err(Refusal::from)
    }

    /// Whether `cred` may revoke a fleet grant of `identity` on `segment`,
    /// by this host's policy (root; the segment's approvers; a person for
    /// their own `user:`/`uid:` grant).
    pub(crate) fn fleet_may_revoke(&self, cred: &PeerCred, segment: &str, identity: &str) -> bool {
        let own = identity.parse::<Identity>().is_ok_and(|i| {
            matches!(i, Identity::User(_) | Identity::Uid(_))
                && credential_matches(&i, cred, &self.resolver)
        });
        let admin = self
            .policy
            .segments
            .get(segment)
            .is_some_and(|s| self.may_administer(cred, s));
        cred.uid == 0 || own || admin
    }

    /// Enforces a fleet grant here, unless this host cannot: its segment
    /// is not in this host's policy, it runs longer than the segment allows,
    /// or the identity is locked here. Returns the local grant id.
    pub(crate) fn fleet_apply(&mut self, g: IncomingGrant<'_>) -> Result<u64, String> {
        let ttl = g.ttl;
        let Some(seg) = self.policy.segments.get(g.segment).cloned() else {
            return Err(format!(
                "segment {:?} is not in this host's policy",
                crate::termtext::escape(g.segment)
            ));
        };
        if let Some(jit) = &seg.jit {
            if ttl > jit.max_ttl + SKEW {
                return Err(format!(
                    "it runs {} more, longer than segment {}'s max_ttl {} here",
                    clock::human(ttl),
                    seg.name,
                    clock::human(jit.max_ttl)
                ));
            }
        }
        if let Some(lock) = self.lock_on(&g.identity) {
            return Err(format!(
                "{} is locked on this host ({})",
                g.identity,
                crate::termtext::escape(&lock.reason)
            ));
        }
        let origin = state::FleetOrigin {
            id: g.id.to_string(),
            revision: g.revision,
            origin_host: g.origin_host.to_string(),
            strict: g.strict,
        };
        let actor = remote_actor(g.actor_uid, g.actor_user, g.origin_host);
        let grant = self
            .open_grant_as(actor, &seg, g.identity, ttl, g.reason, None, Some(origin))
            .map_err(|r| r.message)?;
        Ok(grant.id)
    }

    /// Ends fleet grant `id` here (its key left the store at `revision`);
    /// `None` when this host does not enforce it.
    pub(crate) fn fleet_end(&mut self, id: &str, revision: i64) -> Option<Grant> {
        let gid = self
            .grants
            .values()
            .find(|g| g.fleet.as_ref().is_some_and(|f| f.id == id))?
            .id;
        let why = format!("fleet grant {id} revoked (store revision {revision})");
        match self.revoke_one(gid, &Actor::agent(), Some(why)) {
            Ok(g) => Some(g),
            Err(e) => {
                warn!(grant = gid, fleet = id, error = %e, "ending a fleet grant failed");
                None
            }
        }
    }

    /// Fleet locks in force here, by fleet id.
    pub(crate) fn fleet_locks(&self) -> std::collections::BTreeSet<String> {
        self.locks
            .values()
            .filter_map(|l| l.fleet.clone())
            .collect()
    }

    /// The checks of a fleet lock or unlock made through this agent: root
    /// or this host's `lock_admins`.
    pub(crate) fn fleet_may_lock(&self, cred: &PeerCred) -> bool {
        self.may_lock_now(cred)
    }

    /// Imposes fleet lock `id` here. An identity locked here already (by
    /// hand or by another fleet lock) stays under that lock.
    pub(crate) fn fleet_lock(
        &mut self,
        l: IncomingLock<'_>,
        now_unix_ms: u64,
    ) -> Result<Vec<Grant>, String> {
        if l.expires_unix_ms.is_some_and(|e| e <= now_unix_ms) {
            return Ok(Vec::new());
        }
        if let Some(held) = self.lock_on(&l.identity) {
            if held.identity == l.identity {
                return Err(format!("{} is locked here already", l.identity));
            }
        }
        let lock = state::Lock {
            identity: l.identity,
            reason: l.reason.to_string(),
            include_standing: l.include_standing,
            actor: remote_actor(l.actor_uid, l.actor_user, l.origin_host),
            created_unix_ms: l.created_unix_ms,
            expires_unix_ms: l.expires_unix_ms,
            fleet: Some(l.id.to_string()),
        };
        self.impose(lock).map_err(|r| r.message)
    }

    /// Lifts fleet lock `id` here (its key left the store); false when
    /// this host does not hold it.
    pub(crate) fn fleet_unlock(&mut self, id: &str, revision: i64) -> bool {
        let Some(lock) = self
            .locks
            .values()
            .find(|l| l.fleet.as_deref() == Some(id))
            .cloned()
        else {
            return false;
        };
        let why = format!("fleet lock {id} lifted (store revision {revision})");
        if let Err(r) = self.lift(&lock, Actor::agent(), Some(why)) {
            warn!(fleet = id, "lifting a fleet lock failed: {}", r.message);
        }
        true
    }

    /// This host's facts for its `agents/H` record: the policy digest, the
    /// audit chain's head and the boot id.
    pub(crate) fn fleet_facts(&self) -> (String, String, String) {
        (
            self.policy.digest.clone(),
            self.audit.last_hash().to_string(),
            self.boot_id.to_string(),
        )
    }
}
