//! `unit:` and `cgroup:` identities cannot be squatted (issue 13, part 1):
//! a user who owns a cgroup subtree (systemd delegates `user@UID.service`
//! to its user) and creates a directory named like an allowed unit gets
//! nothing, adds nothing to the grant map, and cannot fill it; the unit's
//! real cgroup, the one systemd names, still works.
//!
//! systemd is not PID 1 on the test machines, so `units::FakeSystemd`
//! stands in for its answer to "which cgroup is this unit's?".
use std::{os::unix::process::CommandExt, path::Path, process::Command, time::Duration};

use portcullis_tests::{
    units::{kernel_grant_keys, mark_delegated, FakeSystemd},
    users::TestUser,
    *,
};

fn policy(port: u16, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nallow = [{}]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n",
        allow.join(", ")
    )
}

/// `mkdir -p` as `user`, as the user's own session manager would.
fn mkdir_as(user: &TestUser, dir: &Path) {
    let out = Command::new("mkdir")
        .arg("-p")
        .arg(dir)
        .uid(user.uid)
        .gid(user.gid)
        .output()
        .expect("run mkdir");
    assert!(
        out.status.success(),
        "mkdir {} as {}: {}",
        dir.display(),
        user.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A user's delegated subtree, as systemd makes it: `user@UID.service`
/// owned by the user and marked `trusted.delegate`.
fn delegated_subtree(cg: &TestCgroup, user: &TestUser) -> std::path::PathBuf {
    let dir = cg.child(&format!(
        "user.slice/user-{0}.slice/user@{0}.service",
        user.uid
    ));
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
    mark_delegated(&dir);
    dir
}

#[test]
fn a_users_cgroup_named_like_an_allowed_unit_gets_eperm_and_no_map_entry() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let user = TestUser::new();
    let unit = format!("{}.service", unique("pay-api"));
    let real = cg.child(&format!("system.slice/{unit}"));
    let systemd = FakeSystemd::new();
    systemd.start_unit(&unit, &format!("{}/system.slice/{unit}", cg.rel));
    let home = delegated_subtree(&cg, &user);
    let squat = home.join("app.slice").join(&unit);
    mkdir_as(&user, &squat);

    let agent = systemd
        .agent(&policy(server.port(), &[&format!("unit:{unit}")]), &cg.path)
        .start();
    assert_eq!(
        As::user(&squat, user.uid, user.gid).tcp(server.addr),
        Outcome::eperm(),
        "a directory named like the unit in the user's own subtree got the unit's access"
    );
    assert_eq!(As::root_in(&real).tcp(server.addr), Outcome::Ok);
    assert_eq!(
        kernel_grant_keys(&agent).len(),
        1,
        "exactly one entry: the unit's own cgroup"
    );
}

#[test]
fn many_squatting_directories_do_not_fill_the_grant_map() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let user = TestUser::new();
    let unit = format!("{}.service", unique("pay-api"));
    let real = cg.child(&format!("system.slice/{unit}"));
    let systemd = FakeSystemd::new();
    systemd.start_unit(&unit, &format!("{}/system.slice/{unit}", cg.rel));
    let home = delegated_subtree(&cg, &user);
    // A small grant map, so that filling it would take few directories.
    let agent = systemd
        .agent(&policy(server.port(), &[&format!("unit:{unit}")]), &cg.path)
        .arg("--max-grants")
        .arg("16")
        .start();
    for i in 0..64 {
        mkdir_as(&user, &home.join(format!("s{i}")).join(&unit));
    }
    // Give the cgroup watch and a refresh time to run (a wait, not a threshold).
    std::thread::sleep(Duration::from_millis(500));
    agent.ok(&["status"]);
    assert_eq!(kernel_grant_keys(&agent).len(), 1);
    // Root's next grant still fits.
    agent.grant("db", "uid:40077", "10m");
    assert_eq!(kernel_grant_keys(&agent).len(), 2);
    assert_eq!(As::root_in(&real).tcp(server.addr), Outcome::Ok);
    assert_eq!(
        As::user(&home.join("s3").join(&unit), user.uid, user.gid).tcp(server.addr),
        Outcome::eperm()
    );
}

#[test]
fn a_same_named_directory_is_not_the_unit_when_systemd_says_it_is_not_running() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let unit = format!("{}.service", unique("pay-api"));
    // Root-owned, not delegated, and named exactly like the unit, but
    // systemd does not know it as the unit's cgroup.
    let lookalike = cg.child(&format!("other.slice/{unit}"));
    let systemd = FakeSystemd::new();
    let agent = systemd
        .agent(&policy(server.port(), &[&format!("unit:{unit}")]), &cg.path)
        .start();
    assert_eq!(As::root_in(&lookalike).tcp(server.addr), Outcome::eperm());
    assert_eq!(kernel_grant_keys(&agent).len(), 0);
    let list = agent.ok(&["list"]);
    assert!(list.contains("has no cgroup"), "{list}");
}

#[test]
fn cgroup_identities_under_a_delegated_or_user_owned_cgroup_are_refused_with_a_reason() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let user = TestUser::new();
    let home = delegated_subtree(&cg, &user);
    let below = home.join("app.slice");
    mkdir_as(&user, &below);
    let owned = cg.child("owned.slice");
    std::os::unix::fs::chown(&owned, Some(user.uid), Some(user.gid)).unwrap();
    let agent = Agent::start(&policy(server.port(), &[]), &cg.path);
    let rel = |p: &Path| format!("/{}", p.strip_prefix(cgroup2_mount()).unwrap().display());
    for (dir, why) in [(&below, "delegated"), (&owned, "not root")] {
        let out = agent.cli(&[
            "grant",
            "db",
            &format!("cgroup:{}", rel(dir)),
            "--ttl",
            "10m",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "grant to {} succeeded",
            dir.display()
        );
        assert!(err.contains(why), "{err}");
        assert_eq!(
            As::user(dir, user.uid, user.gid).tcp(server.addr),
            Outcome::eperm()
        );
    }
    assert_eq!(kernel_grant_keys(&agent).len(), 0);
}
