//! Authorization: who may do what, and the segment's rules a request must
//! meet (TTL bounds, a reason where required).
//!
//! Owns the answers to "may this caller grant, approve, deny, revoke on
//! this segment" (root, or one of the segment's approvers; the grantee
//! may revoke their own grant) and the recording of refusals, so every
//! refusal is audited exactly once.
//!
//! No self-service for approvers: a non-root approver may not open a
//! segment to an identity that covers themselves, nor to a catch-all.
//!
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
//! - `gid:G` when G is U's primary group (passwd), the gid of the
//!   connection, or a supplementary group of U (`getgrouplist`): a member
//!   can make any of their groups primary with `sg`/`newgrp`;
//! - `group:NAME` when U is a member (the same expansion the kernel keys
//!   come from, `resolve::members`), or its gid is U's primary or the
//!   connection's;
//! - `cgroup:`/`unit:` whose cgroup is, or is an ancestor of, the cgroup of
//!   any process whose real or effective uid is U (from /proc);
//! - catch-alls: `cgroup:/`, and `peer:` networks wider than /8 (IPv4) or
//!   /32 (IPv6).
use std::{collections::BTreeSet, fs, net::IpAddr};

use agent_common::kind;

use super::errors::CoreError;
use super::*;
use crate::{cgroupfs::cgroup_of_pid, ledger::EntryKey};

/// The widest `peer:` networks a non-root approver may open.
pub(super) const MIN_PEER_PREFIX_V4: u8 = 8;
pub(super) const MIN_PEER_PREFIX_V6: u8 = 32;

/// Why `cred` (not root) may not open anything to `identity`, if so.
pub(super) fn refusal(identity: &Identity, cred: &PeerCred, resolver: &Resolver) -> Option<String> {
    if cred.uid == 0 {
        return None;
    }
    let me = format!("uid {}", cred.uid);
    match identity {
        Identity::Uid(_) | Identity::User(_) if credential_matches(identity, cred, resolver) => {
            Some(format!("{identity} is you ({me})"))
        }
        Identity::Gid(_) | Identity::Group(_) if covers_group(identity, cred, resolver) => {
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
fn covers_group(identity: &Identity, cred: &PeerCred, resolver: &Resolver) -> bool {
    if credential_matches(identity, cred, resolver) {
        return true;
    }
    // The group's gid as the caller's own: the connection's, or passwd's.
    let gid = match identity {
        Identity::Gid(g) => Some(*g),
        Identity::Group(name) => resolver.members(name).ok().map(|m| m.gid),
        _ => None,
    };
    let Some(gid) = gid else { return false };
    if cred.gid == gid {
        return true;
    }
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid)) else {
        return false;
    };
    let primary = PeerCred {
        gid: user.gid.as_raw(),
        ..*cred
    };
    credential_matches(&Identity::Gid(gid), &primary, resolver)
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

impl Agent {
    pub(super) fn segment(&self, name: &str) -> Result<&Segment, CoreError> {
        self.policy
            .segments
            .get(name)
            .ok_or_else(|| CoreError::UnknownSegment {
                name: name.to_string(),
                known: self.policy.segments.keys().cloned().collect(),
            })
    }

    /// Whether `cred` may grant and revoke on `segment`: root, or an approver.
    pub(super) fn may_administer(&self, cred: &PeerCred, segment: &Segment) -> bool {
        cred.uid == 0
            || segment.jit.as_ref().is_some_and(|j| {
                j.approvers
                    .iter()
                    .any(|a| credential_matches(a, cred, &self.resolver))
            })
    }

    /// Records a command refused for who asked, and builds its refusal.
    pub(super) fn forbidden(
        &mut self,
        cred: &PeerCred,
        op: &str,
        segment: &str,
        why: CoreError,
    ) -> Refusal {
        let refusal = Refusal::from(why);
        self.note_refusal(cred, op, segment, &refusal);
        refusal
    }

    /// Records a refused command and builds its refusal.
    pub(crate) fn refused(
        &mut self,
        cred: &PeerCred,
        op: &str,
        segment: &str,
        why: String,
    ) -> Refusal {
        let refusal = refuse(RefusalCode::Forbidden, why);
        self.note_refusal(cred, op, segment, &refusal);
        refusal
    }

    pub(super) fn note_refusal(
        &mut self,
        cred: &PeerCred,
        op: &str,
        segment: &str,
        refusal: &Refusal,
    ) {
        let actor = Actor::from_uid(cred.uid, cred.pid);
        let _ = self.audit.record(AuditEvent::Refused {
            op: op.to_string(),
            segment: segment.to_string(),
            actor,
            why: refusal.message.clone(),
            code: refusal.code,
        });
    }

    /// Audits the refusals of an operation that `refused` has not already
    /// recorded (it records the `Forbidden` ones where authorization fails),
    /// so that every refusal is audited exactly once.
    pub(super) fn audited<T>(
        &mut self,
        cred: &PeerCred,
        op: &str,
        segment: &str,
        result: Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        if let Err(refusal) = &result {
            if refusal.code != RefusalCode::Forbidden {
                self.note_refusal(cred, op, segment, refusal);
            }
        }
        result
    }
}

/// The segment's JIT rules; a segment without them takes no grants or requests.
pub(super) fn jit_rules(seg: &Segment) -> Result<&crate::policy::Jit, CoreError> {
    seg.jit.as_ref().ok_or_else(|| CoreError::NoJit {
        segment: seg.name.clone(),
    })
}

/// The TTL asked for (in bounds since the request was decoded), or the
/// segment's default when none was given.
pub(super) fn requested_ttl(
    jit: &crate::policy::Jit,
    ttl: Option<Duration>,
) -> Result<Duration, CoreError> {
    Ok(ttl.unwrap_or(jit.default_ttl))
}

pub(super) fn check_ttl(
    seg: &Segment,
    jit: &crate::policy::Jit,
    ttl: Duration,
) -> Result<(), CoreError> {
    if ttl > jit.max_ttl {
        return Err(CoreError::TtlTooLong {
            segment: seg.name.clone(),
            asked: ttl,
            max: jit.max_ttl,
        });
    }
    Ok(())
}

/// `ttl` inside the segment's windows: refused outside every window (the
/// refusal names the next opening), cut to the end of the window it is in.
pub(super) fn window_ttl(
    seg: &Segment,
    jit: &crate::policy::Jit,
    ttl: Duration,
) -> Result<Duration, CoreError> {
    use crate::policy::windows::Standing;
    let Some(w) = &jit.windows else {
        return Ok(ttl);
    };
    let now = jiff::Timestamp::now();
    let zone_name = w
        .timezone
        .clone()
        .unwrap_or_else(|| "the host's time zone".into());
    let refuse = |next: String| CoreError::OutsideWindows {
        segment: seg.name.clone(),
        windows: format!(
            "{}, {zone_name}",
            w.windows
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        next,
    };
    let zone = w
        .zone()
        .map_err(|e| refuse(format!("its time zone cannot be read now ({e})")))?;
    match w.at(now) {
        Ok(Standing::OpenUntil(end)) => {
            let left = end
                .as_millisecond()
                .saturating_sub(now.as_millisecond())
                .max(0) as u64;
            Ok(ttl.min(Duration::from_millis(left)))
        }
        Ok(Standing::ClosedUntil(Some(next))) => Err(refuse(format!(
            "the next opens at {} ({})",
            next.to_zoned(zone).strftime("%Y-%m-%d %H:%M %Z"),
            clock::rfc3339(
                std::time::UNIX_EPOCH + Duration::from_millis(next.as_millisecond().max(0) as u64)
            )
        ))),
        Ok(Standing::ClosedUntil(None)) => Err(refuse("none opens in the coming week".into())),
        Err(e) => Err(refuse(format!("its windows cannot be evaluated now ({e})"))),
    }
}

/// The trimmed reason, required where the segment says so.
pub(super) fn check_reason(
    seg: &Segment,
    jit: &crate::policy::Jit,
    reason: Option<&str>,
) -> Result<Option<String>, CoreError> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if jit.require_reason && reason.is_none() {
        return Err(CoreError::ReasonRequired {
            segment: seg.name.clone(),
        });
    }
    Ok(reason.map(str::to_string))
}

/// Whether the process behind `cred` is `identity` (for user/uid/group/gid
/// identities). `group:NAME` means its members ([`Resolver::members`]:
/// the same expansion the kernel keys come from); `gid:N` the connection's
/// gid or one of the caller's groups by `getgrouplist`.
pub(crate) fn credential_matches(
    identity: &Identity,
    cred: &PeerCred,
    resolver: &Resolver,
) -> bool {
    use nix::unistd::{Gid, Uid, User};
    match identity {
        Identity::Uid(u) => *u == cred.uid,
        Identity::User(name) => User::from_name(name)
            .ok()
            .flatten()
            .is_some_and(|u| u.uid.as_raw() == cred.uid),
        Identity::Group(name) => resolver.is_member(name, cred.uid),
        Identity::Gid(gid) => {
            if cred.gid == *gid {
                return true;
            }
            let Some(user) = User::from_uid(Uid::from_raw(cred.uid)).ok().flatten() else {
                return false;
            };
            let Ok(name) = std::ffi::CString::new(user.name) else {
                return false;
            };
            nix::unistd::getgrouplist(&name, user.gid)
                .map(|gs| gs.contains(&Gid::from_raw(*gid)))
                .unwrap_or(false)
        }
        _ => false,
    }
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
