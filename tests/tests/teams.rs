//! Teams (issue 17, part 1): `group:NAME` means every member of the group,
//! primary and supplementary, through NSS, kept current without a reload;
//! `gid:N` keeps its kernel meaning, a process's current primary gid.
//! Users and groups are created with useradd/groupadd and removed on drop.
use std::{net::SocketAddr, process::Stdio, time::Duration};

use portcullis_tests::{
    session::Session,
    users::{TestGroup, TestUser},
    *,
};

fn policy(port: u16, allow: &str) -> String {
    format!("[segment.db]\nports = [\"{port}/tcp\"]\nallow = [\"{allow}\"]\n")
}

fn hold(client: &As, addr: SocketAddr) -> Session {
    let mut cmd = client.command(probe_bin());
    cmd.args(["hold", &addr.to_string(), "100", "600"]);
    Session::start(cmd)
}

/// `pc-probe tcp ADDR` run through `sg GROUP -c`, as `who`: the probe's
/// primary gid is then the group's (sg checks membership itself).
fn through_sg(who: &As, group: &str, addr: SocketAddr) -> std::process::Output {
    let cmd = format!("{} tcp {addr}", probe_bin().display());
    who.command("sg")
        .args([group, "-c", &cmd])
        .stdin(Stdio::null())
        .output()
        .expect("run sg")
}

fn membership_revokes(agent: &Agent, uid: u32) -> Vec<serde_json::Value> {
    agent
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "membership_revoke" && r["uid"] == uid)
        .collect()
}

#[test]
fn a_supplementary_member_connects_and_removal_cuts_the_open_flow_at_once() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let team = TestGroup::new();
    let alice = TestUser::new();
    let bob = TestUser::new();
    alice.join(&team);
    let agent = Agent::start(
        &policy(server.port(), &format!("group:{}", team.name)),
        &cg.path,
    );
    // Her processes run with her own primary gid and no supplementary
    // groups at all: membership is the directory's, not the process's.
    let as_alice = As::user(&cg.path, alice.uid, alice.gid);
    let as_bob = As::user(&cg.path, bob.uid, bob.gid);
    assert_eq!(as_alice.tcp(server.addr), Outcome::Ok, "a member gets in");
    assert_eq!(
        as_bob.tcp(server.addr),
        Outcome::eperm(),
        "a non-member does not"
    );

    let session = hold(&as_alice, server.addr);
    session.wait_round_trips(2, Duration::from_secs(10));
    alice.leave(&team);
    let (err, trips, took) = session.wait_failure(Duration::from_secs(10));
    println!("open flow cut {took:?} after gpasswd -d ({trips} more round trips): {err}");
    assert_eq!(err, "ECONNABORTED", "the socket was destroyed");
    assert!(
        eventually(Duration::from_secs(10), || as_alice.tcp(server.addr)
            == Outcome::eperm()),
        "the next connection is refused"
    );
    let revokes = membership_revokes(&agent, alice.uid);
    assert_eq!(revokes.len(), 1, "{revokes:?}");
    assert_eq!(revokes[0]["reason"], "membership");
    assert_eq!(revokes[0]["identity"], format!("group:{}", team.name));
    assert_eq!(revokes[0]["segment"], "db");

    // A user added to the group gets in without a reload.
    bob.join(&team);
    assert!(
        eventually(Duration::from_secs(10), || as_bob.tcp(server.addr)
            == Outcome::Ok),
        "a new member is let in"
    );
    assert!(agent
        .audit_records()
        .iter()
        .any(|r| r["event"] == "membership_add" && r["uid"] == bob.uid));
    assert!(
        !agent
            .audit_records()
            .iter()
            .any(|r| r["event"] == "policy_reload"),
        "no reload was needed"
    );
}

#[test]
fn a_primary_member_is_a_member_and_taking_the_gid_is_not_membership() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    // carol's own group (useradd --user-group) is her primary group.
    let carol = TestUser::new();
    let outsider = TestUser::new();
    let primary_group = std::process::Command::new("id")
        .args(["-gn", &carol.name])
        .output()
        .unwrap();
    let primary_group = String::from_utf8_lossy(&primary_group.stdout)
        .trim()
        .to_string();
    let _agent = Agent::start(
        &policy(server.port(), &format!("group:{primary_group}")),
        &cg.path,
    );
    assert_eq!(
        As::user(&cg.path, carol.uid, carol.gid).tcp(server.addr),
        Outcome::Ok,
        "a primary member (passwd) is a member"
    );
    // A process that holds the group's gid without being a member (a
    // set-gid program, a group password) is not let in by `group:`.
    assert_eq!(
        As::user(&cg.path, outsider.uid, carol.gid).tcp(server.addr),
        Outcome::eperm()
    );
}

#[test]
fn gid_keeps_its_kernel_meaning_through_sg() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let team = TestGroup::new();
    let dave = TestUser::new();
    dave.join(&team);
    let _agent = Agent::start(
        &policy(server.port(), &format!("gid:{}", team.gid)),
        &cg.path,
    );
    let as_dave = As::user(&cg.path, dave.uid, dave.gid);
    // As documented: `gid:` is the process's current primary gid. A member
    // whose processes run with their own group is not matched ...
    assert_eq!(as_dave.tcp(server.addr), Outcome::eperm());
    // ... and is once `sg` makes the group primary.
    let out = through_sg(&as_dave, &team.name, server.addr);
    assert_eq!(outcome_of(&out, &["sg", "tcp"]), Outcome::Ok);
    // Removed from the group, sg refuses them (it asks for the group's
    // password, which has none), so the gid is out of their reach.
    dave.leave(&team);
    let out = through_sg(&as_dave, &team.name, server.addr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{out:?}"
    );
}
