//! No self-service for approvers: a non-root approver may not open a
//! segment to an identity that covers themselves, nor to a catch-all.
//!
//! "Nobody approves their own request" means little if an approver can
//! `grant` to their own uid, to a group they belong to, or to a cgroup
//! where their own processes run. This module decides, from the peer
//! credentials of the control connection and the live system (NSS for
//! groups, /proc for where the approver's processes run), whether an
//! identity covers the caller; root is exempt, as for every other rule of
//! the JIT workflow. The refusal itself is audited by the caller.
//!
//! Covered, for a caller with uid U:
//! - `uid:U`, `user:` naming U;
//! - `gid:G`/`group:` when G is U's primary group (passwd), the gid of the
//!   connection, or a supplementary group of U (`getgrouplist`): a member
//!   can make any of their groups primary with `sg`/`newgrp`;
//! - `cgroup:`/`unit:` whose cgroup is, or is an ancestor of, the cgroup of
//!   any process whose real or effective uid is U (from /proc);
//! - catch-alls: `cgroup:/`, and `peer:` networks wider than /8 (IPv4) or
//!   /32 (IPv6).
use std::{collections::BTreeSet, fs, net::IpAddr};

use agent_common::kind;

use super::credential_matches;
use crate::{
    cgroupfs::cgroup_of_pid, control::PeerCred, identity::Identity, ledger::EntryKey,
    resolve::Resolver,
};

/// The widest `peer:` networks a non-root approver may open.
pub const MIN_PEER_PREFIX_V4: u8 = 8;
pub const MIN_PEER_PREFIX_V6: u8 = 32;

/// Why `cred` (not root) may not open anything to `identity`, if so.
pub(super) fn refusal(identity: &Identity, cred: &PeerCred, resolver: &Resolver) -> Option<String> {
    if cred.uid == 0 {
        return None;
    }
    let me = format!("uid {}", cred.uid);
    match identity {
        Identity::Uid(_) | Identity::User(_) if credential_matches(identity, cred) => {
            Some(format!("{identity} is you ({me})"))
        }
        Identity::Gid(_) | Identity::Group(_) if covers_group(identity, cred) => {
            Some(format!("{identity} is a group you ({me}) belong to"))
        }
        Identity::Cgroup(path) if path == "/" => {
            Some("cgroup:/ is every process on the host".to_string())
        }
        Identity::Cgroup(_) | Identity::Unit(_) => {
            let Ok(keys) = resolver.keys(identity, 0) else {
                return None;
            };
            let ids: BTreeSet<u64> = keys
                .iter()
                .filter_map(|k| match k {
                    EntryKey::Local(g) if g.kind == kind::CGROUP => Some(g.id),
                    _ => None,
                })
                .collect();
            let hit = process_cgroups(cred.uid).into_iter().find(|path| {
                ancestors(path).iter().any(|a| {
                    resolver
                        .hierarchy
                        .id_of(a)
                        .is_ok_and(|id| ids.contains(&id))
                })
            })?;
            Some(format!(
                "{identity} holds your own processes ({me}, in cgroup {hit})"
            ))
        }
        Identity::Peer(net) => {
            let (min, family) = match net.addr {
                IpAddr::V4(_) => (MIN_PEER_PREFIX_V4, "IPv4"),
                IpAddr::V6(_) => (MIN_PEER_PREFIX_V6, "IPv6"),
            };
            (net.prefix < min).then(|| {
                format!("{identity} is wider than /{min}, the widest {family} network an approver may open")
            })
        }
        _ => None,
    }
}

/// Whether a `gid:`/`group:` identity is one of the caller's groups:
/// the connection's gid, the passwd primary group, or a supplementary one.
fn covers_group(identity: &Identity, cred: &PeerCred) -> bool {
    if credential_matches(identity, cred) {
        return true;
    }
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid)) else {
        return false;
    };
    let primary = PeerCred {
        gid: user.gid.as_raw(),
        ..*cred
    };
    credential_matches(identity, &primary)
}

/// The cgroup (v2 path) of every process whose real or effective uid is `uid`.
fn process_cgroups(uid: u32) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let owned = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| {
                ids.split_whitespace()
                    .take(2)
                    .any(|u| u.parse::<u32>() == Ok(uid))
            });
        if owned {
            if let Ok(path) = cgroup_of_pid(pid) {
                out.insert(path);
            }
        }
    }
    out
}

/// `/a/b` → `["/", "/a", "/a/b"]`.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        cur.push('/');
        cur.push_str(part);
        out.push(cur.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_run_from_the_root() {
        assert_eq!(ancestors("/"), vec!["/"]);
        assert_eq!(ancestors("/a/b"), vec!["/", "/a", "/a/b"]);
    }
}
