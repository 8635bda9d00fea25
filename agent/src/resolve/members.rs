//! Who is in a group: its members through NSS (`/etc/group`, SSSD, LDAP,
//! whatever `nsswitch.conf` names), primary and supplementary alike.
//!
//! Owns the one answer `group:NAME` stands for everywhere in the agent:
//! the kernel keys (`resolve`), the approver and self-service checks
//! (`agent/authz.rs`) and `explain`. The answer is for now only: the
//! agent asks again when `/etc/group` or `/etc/passwd` change and on a
//! periodic re-read for directory-backed groups (`agent/groups.rs`).
//!
//! Supplementary members are the group entry's member list; primary
//! members are the passwd entries whose group is this one, found by
//! enumerating passwd. A directory that does not enumerate (SSSD's
//! default `enumerate = false`) yields its users' primary memberships
//! only when they are also listed as members (docs/policy.md says so).
use std::{collections::BTreeSet, sync::Mutex};

use nix::unistd::{Group, User};

use super::ResolveError;

/// Upper bound on passwd entries read in one enumeration (a directory
/// that never ends its list cannot hold the agent).
const MAX_PASSWD_ENTRIES: usize = 1_000_000;

/// A group's id and the uids of its members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Members {
    pub gid: u32,
    pub uids: BTreeSet<u32>,
}

/// Where group memberships come from: NSS on a host, a table in tests.
pub(crate) trait Directory: Send + Sync {
    /// The group named `name` and its members; `None` if there is none.
    fn members(&self, name: &str) -> Result<Option<Members>, ResolveError>;
}

/// The host's name service.
pub(crate) struct Nss;

impl Directory for Nss {
    fn members(&self, name: &str) -> Result<Option<Members>, ResolveError> {
        let Some(group) = Group::from_name(name).map_err(|source| ResolveError::Lookup {
            what: format!("group {name}"),
            source,
        })?
        else {
            return Ok(None);
        };
        let gid = group.gid.as_raw();
        let mut uids: BTreeSet<u32> = group
            .mem
            .iter()
            // A listed member without a passwd entry has no uid: nobody.
            .filter_map(|m| User::from_name(m).ok().flatten())
            .map(|u| u.uid.as_raw())
            .collect();
        uids.extend(primary_members(gid));
        Ok(Some(Members { gid, uids }))
    }
}

/// The uids whose passwd entry names `gid` as their group.
fn primary_members(gid: u32) -> Vec<u32> {
    // getpwent's cursor is process-wide: one enumeration at a time.
    static CURSOR: Mutex<()> = Mutex::new(());
    let _one = CURSOR.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    // SAFETY: setpwent/getpwent/endpwent are only called here, under
    // CURSOR; each entry is read before the next call invalidates it.
    unsafe {
        libc::setpwent();
        for _ in 0..MAX_PASSWD_ENTRIES {
            let entry = libc::getpwent();
            if entry.is_null() {
                break;
            }
            if (*entry).pw_gid == gid {
                out.push((*entry).pw_uid);
            }
        }
        libc::endpwent();
    }
    out
}

/// A directory the fast tests edit: group name → members.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct TableDirectory(
    pub std::sync::Arc<Mutex<std::collections::BTreeMap<String, Members>>>,
);

#[cfg(test)]
impl TableDirectory {
    pub(crate) fn set(&self, name: &str, gid: u32, uids: &[u32]) {
        self.0.lock().unwrap().insert(
            name.to_string(),
            Members {
                gid,
                uids: uids.iter().copied().collect(),
            },
        );
    }

    pub(crate) fn remove(&self, name: &str) {
        self.0.lock().unwrap().remove(name);
    }
}

#[cfg(test)]
impl Directory for TableDirectory {
    fn members(&self, name: &str) -> Result<Option<Members>, ResolveError> {
        Ok(self.0.lock().unwrap().get(name).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_group_holds_root_as_a_primary_member() {
        let root = Nss.members("root").unwrap().expect("a root group");
        assert_eq!(root.gid, 0);
        assert!(root.uids.contains(&0), "{root:?}");
    }

    #[test]
    fn a_missing_group_is_none() {
        assert_eq!(Nss.members("no-such-group-xyz-17").unwrap(), None);
    }
}
