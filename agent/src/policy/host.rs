//! Host lookups for policy checks: does this user, group or unit exist here?
//!
//! Owns the `HostDirectory` seam (tests pass a fake), the real
//! implementation over NSS, systemd and the cgroup2 tree (through
//! `cgroupfs`), and `HostCheck`, which says how loudly a missing name is
//! reported. It answers yes/no only; resolving names to ids for the kernel
//! is `resolve`'s job.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use crate::cgroupfs;

/// Answers whether names in a policy exist on this host.
pub trait HostDirectory {
    fn user_exists(&self, name: &str) -> bool;
    fn group_exists(&self, name: &str) -> bool;
    fn unit_exists(&self, name: &str) -> bool;
}

/// How a `user:`/`group:` that does not exist here is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostCheck {
    /// As a warning (`portcullis check`, which may run on another host
    /// than the one enforcing).
    Warn,
    /// As an error (the agent): a name it cannot resolve to a uid or gid
    /// would be an allow that silently matches nothing.
    ///
    /// Missing `unit:`s stay warnings either way: a unit may start after
    /// the agent, which covers it when its cgroup appears.
    Error,
}

/// The real host: NSS for users and groups, systemd (or, without systemd,
/// the cgroup2 tree) for units.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl HostDirectory for SystemHost {
    // A lookup that fails (NSS down, LDAP unreachable) proves nothing; it
    // counts as "exists" so that the agent's own resolution, which reports
    // the real error, gets to run.
    fn user_exists(&self, name: &str) -> bool {
        nix::unistd::User::from_name(name).map_or(true, |user| user.is_some())
    }

    fn group_exists(&self, name: &str) -> bool {
        nix::unistd::Group::from_name(name).map_or(true, |group| group.is_some())
    }

    fn unit_exists(&self, name: &str) -> bool {
        // sd_booted(3): systemd is PID 1 iff this directory exists.
        if Path::new("/run/systemd/system").is_dir() {
            if let Some(loaded) = systemd_unit_loaded(name) {
                return loaded;
            }
        }
        // Otherwise, whether the unit has a cgroup: the same question the
        // agent asks to cover the unit.
        cgroupfs::unit_control_group(name).is_ok_and(|cg| cg.is_some())
    }
}

/// `Some(true)` if systemd can load the unit (it has a unit file or is
/// running), `None` if systemctl could not answer.
fn systemd_unit_loaded(name: &str) -> Option<bool> {
    // `--` because unit names may start with `-` (`-.mount`, `-.slice`).
    let output = Command::new("systemctl")
        .args(["show", "--property=LoadState", "--value", "--", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim() == "loaded")
}
