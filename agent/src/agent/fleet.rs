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

use super::*;
use crate::fleet::value::{remaining, GrantValue, LockValue};

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

    /// Enforces fleet grant `id` here, unless this host cannot: its segment
    /// is not in this host's policy, its deadline passed or is further than
    /// the segment allows, or the identity is locked here. Returns the local
    /// grant id.
    pub(crate) fn fleet_apply(
        &mut self,
        id: &str,
        v: &GrantValue,
        identity: Identity,
        revision: i64,
        now_unix_ms: u64,
    ) -> Result<u64, String> {
        let ttl = remaining(v.deadline_unix_ms, now_unix_ms).map_err(|e| e.to_string())?;
        let Some(seg) = self.policy.segments.get(&v.segment).cloned() else {
            return Err(format!(
                "segment {:?} is not in this host's policy",
                crate::termtext::escape(&v.segment)
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
        if let Some(lock) = self.lock_on(&identity) {
            return Err(format!(
                "{identity} is locked on this host ({})",
                crate::termtext::escape(&lock.reason)
            ));
        }
        let actor = Actor {
            uid: v.actor_uid,
            user: Some(format!(
                "{}@{}",
                v.actor_user.as_deref().unwrap_or("?"),
                v.origin_host
            )),
            pid: None,
        };
        let origin = state::FleetOrigin {
            id: id.to_string(),
            revision,
            origin_host: v.origin_host.clone(),
        };
        let grant = self
            .open_grant_as(
                actor,
                &seg,
                identity,
                ttl,
                v.reason.clone(),
                None,
                Some(origin),
            )
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
        self.locks.values().filter_map(|l| l.fleet.clone()).collect()
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
        id: &str,
        v: &LockValue,
        identity: Identity,
        now_unix_ms: u64,
    ) -> Result<Vec<Grant>, String> {
        if v.expires_unix_ms.is_some_and(|e| e <= now_unix_ms) {
            return Ok(Vec::new());
        }
        if let Some(l) = self.lock_on(&identity) {
            if l.identity == identity {
                return Err(format!("{identity} is locked here already"));
            }
        }
        let lock = state::Lock {
            identity,
            reason: v.reason.clone(),
            include_standing: v.include_standing,
            actor: Actor {
                uid: v.actor_uid,
                user: Some(format!(
                    "{}@{}",
                    v.actor_user.as_deref().unwrap_or("?"),
                    v.origin_host
                )),
                pid: None,
            },
            created_unix_ms: v.created_unix_ms,
            expires_unix_ms: v.expires_unix_ms,
            fleet: Some(id.to_string()),
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
            self.boot_id.clone(),
        )
    }
}
