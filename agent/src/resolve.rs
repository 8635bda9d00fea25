//! From an identity to the kernel map keys that stand for it on this host:
//! `user:` → uid, `group:` → the uid of every member (primary and
//! supplementary, through NSS: [`members`]), `gid:` → gid, `unit:` → the id of the cgroup systemd
//! created for the unit, `cgroup:` → that cgroup's id, `peer:` → a prefix.
//! A `unit:` or `cgroup:` identity never resolves to a cgroup an
//! unprivileged user could have created (not root's, or below a delegated
//! cgroup): see [`Hierarchy::trusted_id`].
//!
//! Owns host lookups (passwd, group, systemd, cgroupfs). Results are valid for now
//! only: a unit's cgroup gets a new id when it restarts, so callers
//! re-resolve when the hierarchy changes.
use std::{net::IpAddr, sync::Arc};

use agent_common::{kind, v4_mapped, GrantKey};
use nix::unistd::User;

pub(crate) mod members;
pub(crate) use members::{Directory, Members};

use crate::{
    cgroupfs::{self, CgroupError, Hierarchy},
    identity::Identity,
    ledger::EntryKey,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("no user named {0:?} on this host")]
    NoSuchUser(String),
    #[error("no group named {0:?} on this host")]
    NoSuchGroup(String),
    #[error("unit {0} has no cgroup on this host (is it running? `systemctl status {0}`)")]
    UnitNotRunning(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("looking up {what} failed")]
    Lookup {
        what: String,
        #[source]
        source: nix::Error,
    },
}

pub(crate) struct Resolver {
    pub hierarchy: Hierarchy,
    /// The cgroup path systemd last gave for each unit, kept while the unit
    /// is stopped so that its restart's new cgroup is covered
    /// (`crate::cover`).
    unit_paths: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Where group memberships come from (NSS on a host).
    directory: Arc<dyn Directory>,
}

impl Resolver {
    pub(crate) fn new(hierarchy: Hierarchy) -> Self {
        Self::with_directory(hierarchy, Arc::new(members::Nss))
    }

    pub(crate) fn with_directory(hierarchy: Hierarchy, directory: Arc<dyn Directory>) -> Self {
        Self {
            hierarchy,
            directory,
            unit_paths: Default::default(),
        }
    }

    /// The cgroup path `unit` last resolved to, if it ever did.
    pub(crate) fn unit_path(&self, unit: &str) -> Option<String> {
        let paths = self.unit_paths.lock().unwrap_or_else(|e| e.into_inner());
        paths.get(unit).cloned()
    }

    /// The group named `name` and its members, primary and supplementary.
    pub(crate) fn members(&self, name: &str) -> Result<Members, ResolveError> {
        self.directory
            .members(name)?
            .ok_or_else(|| ResolveError::NoSuchGroup(name.to_string()))
    }

    /// Whether `uid` is a member of the group `name` (false when it does
    /// not resolve: no answer is no membership).
    pub(crate) fn is_member(&self, name: &str, uid: u32) -> bool {
        self.members(name).is_ok_and(|m| m.uids.contains(&uid))
    }

    /// The id of the cgroup systemd created for `unit`: systemd says
    /// which one it is (never a same-named directory elsewhere), and it
    /// must be one no unprivileged user could have made
    /// ([`Hierarchy::trusted_id`]). One unit is one map entry, whatever
    /// directories users create.
    pub(crate) fn unit_cgroup_id(&self, unit: &str) -> Result<u64, ResolveError> {
        match cgroupfs::unit_control_group(unit)? {
            Some(path) => match self.hierarchy.trusted_id(&path) {
                Ok(id) => {
                    let mut paths = self.unit_paths.lock().unwrap_or_else(|e| e.into_inner());
                    paths.insert(unit.to_string(), path);
                    Ok(id)
                }
                Err(CgroupError::Missing { .. }) => {
                    Err(ResolveError::UnitNotRunning(unit.to_string()))
                }
                other => Ok(other?),
            },
            None => Err(ResolveError::UnitNotRunning(unit.to_string())),
        }
    }

    /// The map keys that stand for `identity` on `segment`.
    pub(crate) fn keys(
        &self,
        identity: &Identity,
        segment: u32,
    ) -> Result<Vec<EntryKey>, ResolveError> {
        let local = |kind, id| EntryKey::Local(GrantKey { kind, segment, id });
        Ok(match identity {
            Identity::Uid(uid) => vec![local(kind::UID, *uid as u64)],
            Identity::Gid(gid) => vec![local(kind::GID, *gid as u64)],
            Identity::User(name) => {
                let user = User::from_name(name)
                    .map_err(|source| ResolveError::Lookup {
                        what: format!("user {name}"),
                        source,
                    })?
                    .ok_or_else(|| ResolveError::NoSuchUser(name.clone()))?;
                vec![local(kind::UID, user.uid.as_raw() as u64)]
            }
            // Every member by uid, never the gid: a process that took the
            // group's gid with `sg`/`newgrp` (or a set-gid program) is not a
            // member by that, and a member removed from the group loses the
            // access at once, whatever gid its processes still run with.
            Identity::Group(name) => self
                .members(name)?
                .uids
                .into_iter()
                .map(|uid| local(kind::UID, uid as u64))
                .collect(),
            Identity::Cgroup(path) => vec![local(kind::CGROUP, self.hierarchy.trusted_id(path)?)],
            Identity::Unit(name) => vec![local(kind::CGROUP, self.unit_cgroup_id(name)?)],
            Identity::Peer(cidr) => vec![peer_key(segment, cidr.addr, cidr.prefix)],
        })
    }
}

/// The trie key of a peer prefix: IPv4 as v4-mapped IPv6 with the prefix moved by 96.
pub(crate) fn peer_key(segment: u32, addr: IpAddr, prefix: u8) -> EntryKey {
    match addr {
        IpAddr::V4(v4) => EntryKey::Peer {
            segment,
            addr: v4_mapped(v4.octets()),
            prefix: 96 + prefix,
        },
        IpAddr::V6(v6) => EntryKey::Peer {
            segment,
            addr: v6.octets(),
            prefix,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> Resolver {
        Resolver::new(Hierarchy {
            mount: "/nonexistent-cgroupfs".into(),
        })
    }

    #[test]
    fn numeric_identities_need_no_lookup() {
        let keys = resolver().keys(&"uid:1234".parse().unwrap(), 3).unwrap();
        assert_eq!(
            keys,
            vec![EntryKey::Local(GrantKey {
                kind: kind::UID,
                segment: 3,
                id: 1234
            })]
        );
        let keys = resolver().keys(&"gid:50".parse().unwrap(), 3).unwrap();
        assert_eq!(
            keys,
            vec![EntryKey::Local(GrantKey {
                kind: kind::GID,
                segment: 3,
                id: 50
            })]
        );
    }

    #[test]
    fn root_user_resolves_to_uid_zero() {
        let keys = resolver().keys(&"user:root".parse().unwrap(), 1).unwrap();
        assert_eq!(
            keys,
            vec![EntryKey::Local(GrantKey {
                kind: kind::UID,
                segment: 1,
                id: 0
            })]
        );
    }

    #[test]
    fn missing_names_are_named_in_the_error() {
        let err = resolver()
            .keys(&"user:no-such-user-xyz".parse().unwrap(), 1)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no user named \"no-such-user-xyz\" on this host"
        );
        let err = resolver()
            .keys(&"unit:nope-xyz.service".parse().unwrap(), 1)
            .unwrap_err();
        assert!(
            // "has no cgroup" with systemd, "asking systemd ... failed" without.
            err.to_string().contains("unit nope-xyz.service"),
            "{err}"
        );
    }

    #[test]
    fn a_group_is_its_members_by_uid() {
        let table = members::TableDirectory::default();
        table.set("oncall", 700, &[1001, 1002]);
        let r = Resolver::with_directory(
            Hierarchy {
                mount: "/nonexistent-cgroupfs".into(),
            },
            Arc::new(table.clone()),
        );
        let keys = r.keys(&"group:oncall".parse().unwrap(), 4).unwrap();
        let uid = |id| {
            EntryKey::Local(GrantKey {
                kind: kind::UID,
                segment: 4,
                id,
            })
        };
        assert_eq!(keys, vec![uid(1001), uid(1002)]);
        table.set("oncall", 700, &[]);
        assert!(r
            .keys(&"group:oncall".parse().unwrap(), 4)
            .unwrap()
            .is_empty());
        table.remove("oncall");
        assert!(matches!(
            r.keys(&"group:oncall".parse().unwrap(), 4),
            Err(ResolveError::NoSuchGroup(_))
        ));
    }

    #[test]
    fn peers_become_v4_mapped_prefixes() {
        let keys = resolver()
            .keys(&"peer:10.1.0.0/16".parse().unwrap(), 2)
            .unwrap();
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = 10;
        addr[13] = 1;
        assert_eq!(
            keys,
            vec![EntryKey::Peer {
                segment: 2,
                addr,
                prefix: 112
            }]
        );
    }
}
