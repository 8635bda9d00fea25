//! Real users and groups for authorization tests, created with
//! useradd/groupadd under unique names and deleted on drop (also when the
//! test panics).
//!
//! The agent authorizes from SO_PEERCRED and resolves names through NSS, so
//! the tests need accounts that really exist: a made-up uid has no name, no
//! groups and cannot be an approver.
use std::{process::Command, thread, time::Duration};

use crate::unique;

/// Runs an account tool, retrying while another process holds the
/// passwd/group lock (tests run in parallel). Bounded: 50 tries.
fn run(args: &[&str]) {
    let mut last = String::new();
    for _ in 0..50 {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        thread::sleep(Duration::from_millis(100));
    }
    panic!("{args:?} kept failing: {last}");
}

fn id_of(flag: &str, name: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, name])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id {flag} {name}: {out:?}"))
}

/// A user with a group of its own name, no home and no shell.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    /// The user's own (primary) group.
    pub gid: u32,
}

impl TestUser {
    pub fn new() -> Self {
        // useradd wants [a-z_][a-z0-9_-]*, at most 32 characters.
        let name = unique("pcu");
        run(&[
            "useradd",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            &name,
        ]);
        let uid = id_of("-u", &name);
        let gid = id_of("-g", &name);
        Self { name, uid, gid }
    }

    /// `user:NAME`.
    pub fn identity(&self) -> String {
        format!("user:{}", self.name)
    }

    /// Makes the user a supplementary member of `group`.
    pub fn join(&self, group: &TestGroup) {
        run(&["usermod", "--append", "--groups", &group.name, &self.name]);
    }

    /// Removes the user from `group`'s members (`gpasswd -d`).
    pub fn leave(&self, group: &TestGroup) {
        run(&["gpasswd", "--delete", &self.name, &group.name]);
    }
}

impl Default for TestUser {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Also removes the user's own group.
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A group with no members until a user joins.
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

impl TestGroup {
    pub fn new() -> Self {
        let name = unique("pcg");
        run(&["groupadd", &name]);
        let out = Command::new("getent")
            .args(["group", &name])
            .output()
            .expect("run getent");
        let gid = String::from_utf8_lossy(&out.stdout)
            .split(':')
            .nth(2)
            .and_then(|g| g.trim().parse().ok())
            .unwrap_or_else(|| panic!("getent group {name}: {out:?}"));
        Self { name, gid }
    }
}

impl Default for TestGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}
