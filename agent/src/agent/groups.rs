//! `group:NAME` kept current: the members a group stood for when its
//! keys were written, and what changed since.
//!
//! Owns the re-expansion of every group a standing allow or a live grant
//! names (`Agent::refresh_groups`, called when `/etc/group` or
//! `/etc/passwd` change and every `group_refresh`): a uid that left the
//! group loses its kernel entry at once (the caller sweeps its open flows)
//! and gets a `membership_revoke` record; a uid that joined is let in and
//! gets a `membership_add`. Who is a member is `resolve::members`'.
//!
//! Membership is not journaled: it is the directory's, read again at
//! every start. A lookup that fails (the directory unreachable) keeps the
//! last expansion: an outage of LDAP is not everyone leaving every group;
//! a group that no longer exists opens nothing.
use std::collections::BTreeSet;

use agent_common::{kind, GrantKey};

use super::*;
use crate::{ledger::EntryKey, resolve::ResolveError};

/// One source that names a group.
struct Named {
    source: Source,
    segment: String,
    group: String,
    identity: String,
    expiry: u64,
    grant_id: Option<u64>,
}

/// The uids behind `keys` (a group's keys are uid keys).
pub(super) fn uids_of(keys: &[EntryKey]) -> BTreeSet<u32> {
    keys.iter()
        .filter_map(|k| match k {
            EntryKey::Local(g) if g.kind == kind::UID => Some(g.id as u32),
            _ => None,
        })
        .collect()
}

impl Agent {
    /// Remembers what a group stood for when `source`'s keys were written
    /// (a new grant), so that the next refresh reports the difference.
    pub(super) fn note_members(&mut self, source: Source, identity: &Identity, keys: &[EntryKey]) {
        if let Identity::Group(name) = identity {
            self.group_members
                .insert(source, (name.clone(), uids_of(keys)));
        }
    }

    /// Expands every group named by a standing allow or a live grant again
    /// and writes the difference to the kernel. Returns whether a uid lost
    /// access (its open flows are then to be swept).
    pub(crate) fn refresh_groups(&mut self) -> Result<bool, crate::dataplane::DataplaneError> {
        let mut named = Vec::new();
        for seg in self.policy.segments.values() {
            for identity in &seg.allow {
                if let Identity::Group(group) = identity {
                    named.push(Named {
                        source: Source::Standing {
                            segment: seg.name.clone(),
                            identity: identity.to_string(),
                        },
                        segment: seg.name.clone(),
                        group: group.clone(),
                        identity: identity.to_string(),
                        expiry: NEVER,
                        grant_id: None,
                    });
                }
            }
            // Windowed allows while open, with their window's end.
            for w in &seg.windowed {
                let text = w.identity.to_string();
                if let (Identity::Group(group), Some(expiry)) =
                    (&w.identity, self.window_expiry(&seg.name, &text))
                {
                    named.push(Named {
                        source: Source::Standing {
                            segment: seg.name.clone(),
                            identity: text.clone(),
                        },
                        segment: seg.name.clone(),
                        group: group.clone(),
                        identity: text,
                        expiry,
                        grant_id: None,
                    });
                }
            }
        }
        for g in self.grants.values() {
            if let Identity::Group(group) = &g.identity {
                named.push(Named {
                    source: Source::Grant(g.id),
                    segment: g.segment.to_string(),
                    group: group.clone(),
                    identity: g.identity.to_string(),
                    expiry: g.kernel_value(g.expires_boot_ns),
                    grant_id: Some(g.id),
                });
            }
        }
        // One lookup per group, however many sources name it.
        let mut looked: BTreeMap<String, Result<BTreeSet<u32>, ResolveError>> = BTreeMap::new();
        let mut known = BTreeMap::new();
        let mut revoked = false;
        for n in named {
            let Some(&seg_id) = self.segment_ids.get(&n.segment) else {
                continue;
            };
            // A standing allow a lock suspends opens nothing (apply_policy).
            let standing = n.grant_id.is_none();
            if standing
                && self
                    .standing_locked(&Identity::Group(n.group.clone()))
                    .is_some()
            {
                continue;
            }
            let now = looked
                .entry(n.group.clone())
                .or_insert_with(|| self.resolver.members(&n.group).map(|m| m.uids));
            let before = self.group_members.get(&n.source).map(|(_, u)| u.clone());
            let uids = match now {
                Ok(uids) => uids.clone(),
                Err(ResolveError::NoSuchGroup(_)) => BTreeSet::new(),
                Err(e) => {
                    warn!(group = %n.group, error = %e, "group lookup failed; keeping its last known members");
                    if let Some(before) = before {
                        known.insert(n.source, (n.group, before));
                    }
                    continue;
                }
            };
            let slot = (n.segment.clone(), n.identity.clone());
            if standing {
                match now {
                    Ok(_) => self.unresolved.remove(&slot),
                    Err(e) => self.unresolved.insert(slot, e.to_string()),
                };
            }
            // Locked users are left out of every group's keys (of standing
            // allows only for locks that include them).
            let locked = self.locked_uids(standing);
            let keys: Vec<EntryKey> = uids
                .iter()
                .filter(|uid| !locked.contains(uid))
                .map(|&uid| {
                    EntryKey::Local(GrantKey {
                        kind: kind::UID,
                        segment: seg_id,
                        id: uid as u64,
                    })
                })
                .collect();
            let changes = self.ledger.set(n.source.clone(), &keys, n.expiry);
            self.apply_changes(&changes)?;
            if let Some(before) = before {
                for &uid in before.difference(&uids) {
                    revoked = true;
                    info!(group = %n.group, uid, segment = %n.segment, grant = ?n.grant_id, "left the group: access revoked");
                    let _ = self.audit.record(AuditEvent::MembershipRevoke {
                        segment: n.segment.clone(),
                        identity: n.identity.clone(),
                        uid,
                        user: user_name(uid),
                        grant_id: n.grant_id,
                        reason: "membership".into(),
                        actor: Actor::agent(),
                    });
                }
                for &uid in uids.difference(&before) {
                    info!(group = %n.group, uid, segment = %n.segment, grant = ?n.grant_id, "joined the group: access opened");
                    let _ = self.audit.record(AuditEvent::MembershipAdd {
                        segment: n.segment.clone(),
                        identity: n.identity.clone(),
                        uid,
                        user: user_name(uid),
                        grant_id: n.grant_id,
                        actor: Actor::agent(),
                    });
                }
            }
            known.insert(n.source, (n.group, uids));
        }
        self.group_members = known;
        Ok(revoked)
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}
