//! Locks: "this identity stops, everywhere on this host, now" — the switch
//! for an employee who left or a credential that leaked.
//!
//! Owns `lock`/`unlock`, what a lock covers, and its end at its TTL. A lock
//! revokes every grant that covers the identity (`revoke` records with a
//! `why`), refuses new grants, requests and approvals for it, and with
//! `include_standing` suspends its standing allows. A locked `user:`/`uid:`
//! is also left out of every `group:` grant's kernel keys (and, with
//! `include_standing`, of every `group:` standing allow's). Order: journal
//! (a lock the agent would forget is not made), audit, then the kernel.
//! Only root, or an identity in `lock_admins`, may lock or unlock.
use std::collections::BTreeSet;

use super::*;
use crate::control::LockView;
use crate::state::Lock;

/// At most this many identities are locked at once.
pub(crate) const MAX_LOCKS: usize = 4096;

/// The uid a `user:`/`uid:` identity stands for on this host.
fn uid_of(identity: &Identity) -> Option<u32> {
    match identity {
        Identity::Uid(u) => Some(*u),
        Identity::User(name) => nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw()),
        _ => None,
    }
}

/// Whether a lock on `locked` covers `other`: the same identity, or the
/// same uid written as `user:` or `uid:`.
fn covers(locked: &Identity, other: &Identity) -> bool {
    locked == other || uid_of(locked).is_some_and(|u| uid_of(other) == Some(u))
}

impl Agent {
    /// Who may lock and unlock besides root (`lock_admins` in agent.toml).
    pub(crate) fn set_lock_admins(&mut self, admins: Vec<Identity>) {
        self.lock_admins = admins;
    }

    /// The lock covering `identity`, if any.
    pub(super) fn lock_on(&self, identity: &Identity) -> Option<&Lock> {
        self.locks.values().find(|l| covers(&l.identity, identity))
    }

    /// The locked uids, for `group:` expansions: those of every lock on a
    /// `user:`/`uid:` (`standing`: only the locks that include standing allows).
    pub(super) fn locked_uids(&self, standing: bool) -> BTreeSet<u32> {
        self.locks
            .values()
            .filter(|l| !standing || l.include_standing)
            .filter_map(|l| uid_of(&l.identity))
            .collect()
    }

    /// Whether a standing allow of `identity` is suspended by a lock.
    pub(super) fn standing_locked(&self, identity: &Identity) -> Option<&Lock> {
        self.lock_on(identity).filter(|l| l.include_standing)
    }

    /// A refusal for an operation on a locked identity, audited.
    pub(super) fn refuse_locked(
        &mut self,
        cred: &PeerCred,
        op: &str,
        segment: &str,
        identity: &Identity,
    ) -> Result<(), Refusal> {
        let Some(lock) = self.lock_on(identity) else {
            return Ok(());
        };
        let why = format!(
            "{identity} is locked ({}) by {} since {}{}; `portcullis unlock {}` lifts it",
            lock.reason,
            lock.actor,
            rfc3339_ms(lock.created_unix_ms),
            lock.expires_unix_ms
                .map(|e| format!(" until {}", rfc3339_ms(e)))
                .unwrap_or_default(),
            lock.identity,
        );
        Err(self.refused(cred, op, segment, why))
    }

    fn may_lock(&self, cred: &PeerCred) -> bool {
        cred.uid == 0
            || self
                .lock_admins
                .iter()
                .any(|a| credential_matches(a, cred, &self.resolver))
    }

    pub(crate) fn lock_view(&self, l: &Lock) -> LockView {
        LockView {
            identity: l.identity.to_string(),
            reason: l.reason.clone(),
            include_standing: l.include_standing,
            actor: l.actor.to_string(),
            created_at: rfc3339_ms(l.created_unix_ms),
            expires_at: l.expires_unix_ms.map(rfc3339_ms),
        }
    }

    pub(crate) fn lock_views(&self) -> Vec<LockView> {
        self.locks.values().map(|l| self.lock_view(l)).collect()
    }

    /// `portcullis lock IDENTITY --reason TEXT [--ttl D] [--include-standing]`.
    /// Returns the reply and the grants revoked (their flows are swept).
    pub(crate) fn lock(
        &mut self,
        cred: &PeerCred,
        identity: &str,
        reason: &str,
        ttl: Option<Duration>,
        include_standing: bool,
    ) -> Result<(Reply, Vec<Grant>), Refusal> {
        let result = self.lock_checked(cred, identity, reason, ttl, include_standing);
        self.audited(cred, "lock", "", result)
    }

    fn lock_checked(
        &mut self,
        cred: &PeerCred,
        identity: &str,
        reason: &str,
        ttl: Option<Duration>,
        include_standing: bool,
    ) -> Result<(Reply, Vec<Grant>), Refusal> {
        if !self.may_lock(cred) {
            return Err(self.refused(cred, "lock", "", format!("uid {} may not lock identities: only root and the lock_admins of agent.toml may", cred.uid)));
        }
        let identity: Identity = identity
            .parse()
            .map_err(|e| refuse(RefusalCode::Invalid, format!("identity {identity:?}: {e}")))?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(refuse(
                RefusalCode::Invalid,
                "a lock needs a reason (--reason TEXT): it is shown to everyone it refuses",
            ));
        }
        if self.locks.len() >= MAX_LOCKS && !self.locks.contains_key(&identity.to_string()) {
            return Err(refuse(
                RefusalCode::Unavailable,
                format!("{MAX_LOCKS} identities are locked already; unlock some first"),
            ));
        }
        let now = SystemTime::now();
        let lock = Lock {
            identity: identity.clone(),
            reason: reason.to_string(),
            include_standing,
            actor: Actor::from_uid(cred.uid, cred.pid),
            created_unix_ms: state::unix_ms(now),
            expires_unix_ms: ttl.map(|t| state::unix_ms(now + t)),
            fleet: None,
        };
        let revoked = self.impose(lock.clone())?;
        let views = revoked.iter().map(|g| self.view(g)).collect();
        Ok((
            Reply::Locked {
                lock: self.lock_view(&lock),
                revoked: views,
            },
            revoked,
        ))
    }

    /// Whether `cred` may lock and unlock (root and `lock_admins`).
    pub(super) fn may_lock_now(&self, cred: &PeerCred) -> bool {
        self.may_lock(cred)
    }

    /// Puts `lock` in force: journal, audit, then grants, groups and
    /// standing allows. Returns the grants it revoked.
    pub(super) fn impose(&mut self, lock: Lock) -> Result<Vec<Grant>, Refusal> {
        let identity = lock.identity.clone();
        let include_standing = lock.include_standing;
        self.journal
            .append(&Op::Lock { lock: lock.clone() })
            .map_err(|e| refuse(RefusalCode::Unavailable, format!("lock refused: the agent cannot write its journal, so it could not remember this lock ({e})")))?;
        if let Err(e) = self.audit.record(AuditEvent::Lock {
            identity: identity.to_string(),
            reason: lock.reason.clone(),
            include_standing,
            expires_at: lock.expires_unix_ms.map(rfc3339_ms),
            actor: lock.actor.clone(),
        }) {
            // Journaled: the lock holds; its record is queued and retried.
            warn!(error = %e, "locked, but the audit record could not be written yet");
        }
        self.locks.insert(identity.to_string(), lock.clone());
        info!(%identity, reason = %lock.reason, include_standing, "locked");
        self.enforce_locks(&lock.actor, Some(&lock))
    }

    /// Makes the kernel hold what the locks allow: covered grants revoked
    /// (`lock`: the one just made, named in their records), group keys
    /// without locked uids, standing allows suspended or restored.
    fn enforce_locks(&mut self, actor: &Actor, lock: Option<&Lock>) -> Result<Vec<Grant>, Refusal> {
        let mut revoked = Vec::new();
        if let Some(lock) = lock {
            let covered: Vec<u64> = self
                .grants
                .values()
                .filter(|g| covers(&lock.identity, &g.identity))
                .map(|g| g.id)
                .collect();
            for gid in covered {
                let why = format!("locked: {}", lock.reason);
                revoked.push(self.revoke_one(gid, actor, Some(why))?);
            }
        }
        if let Err(e) = self.refresh_groups() {
            warn!(error = %e, "writing group keys without the locked uids failed");
        }
        // Standing allows: the policy applied again, locks honoured.
        if let Err(e) = self.apply_policy(self.policy.clone()) {
            warn!(error = %format!("{e:#}"), "applying the standing allows under the locks failed");
            return Err(refuse(
                RefusalCode::Internal,
                format!(
                    "the lock is recorded, but applying it to the standing allows failed: {e:#}"
                ),
            ));
        }
        Ok(revoked)
    }

    /// `portcullis unlock IDENTITY`.
    pub(crate) fn unlock(&mut self, cred: &PeerCred, identity: &str) -> Result<Reply, Refusal> {
        let result = self.unlock_checked(cred, identity);
        self.audited(cred, "unlock", "", result)
    }

    fn unlock_checked(&mut self, cred: &PeerCred, identity: &str) -> Result<Reply, Refusal> {
        if !self.may_lock(cred) {
            return Err(self.refused(cred, "unlock", "", format!("uid {} may not unlock identities: only root and the lock_admins of agent.toml may", cred.uid)));
        }
        let identity: Identity = identity
            .parse()
            .map_err(|e| refuse(RefusalCode::Invalid, format!("identity {identity:?}: {e}")))?;
        let Some(lock) = self.locks.get(&identity.to_string()).cloned() else {
            return Err(refuse(
                RefusalCode::NotFound,
                format!("{identity} is not locked"),
            ));
        };
        self.lift(&lock, Actor::from_uid(cred.uid, cred.pid), None)?;
        Ok(Reply::Unlocked {
            lock: self.lock_view(&lock),
        })
    }

    /// Lifts `lock`: journal, audit, then the kernel.
    pub(super) fn lift(
        &mut self,
        lock: &Lock,
        actor: Actor,
        why: Option<String>,
    ) -> Result<(), Refusal> {
        let key = lock.identity.to_string();
        self.journal
            .append(&Op::Unlock {
                identity: key.clone(),
            })
            .map_err(|e| {
                refuse(
                    RefusalCode::Unavailable,
                    format!("unlock refused: the agent cannot write its journal ({e})"),
                )
            })?;
        let _ = self.audit.record(AuditEvent::Unlock {
            identity: key.clone(),
            actor: actor.clone(),
            why,
        });
        self.locks.remove(&key);
        info!(identity = %key, "unlocked");
        self.enforce_locks(&actor, None)?;
        Ok(())
    }

    /// Lifts the locks whose TTL has passed (checked on the heartbeat).
    pub(crate) fn expire_locks(&mut self) {
        let now = state::unix_ms(SystemTime::now());
        let due: Vec<Lock> = self
            .locks
            .values()
            .filter(|l| l.expires_unix_ms.is_some_and(|e| e <= now))
            .cloned()
            .collect();
        for lock in due {
            if let Err(r) = self.lift(&lock, Actor::agent(), Some("ttl".into())) {
                warn!(identity = %lock.identity, "lifting an expired lock failed: {}", r.message);
            }
        }
    }
}

fn rfc3339_ms(unix_ms: u64) -> String {
    clock::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms))
}
