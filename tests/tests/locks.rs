//! Locks (issue 17, part 2): `portcullis lock IDENTITY` stops an identity
//! on this host until `unlock`: its grants' open flows are cut, requests
//! and approvals for it are refused, and the lock survives a restart.
use std::{net::SocketAddr, process::Output, time::Duration};

use portcullis_tests::{session::Session, users::TestUser, *};

fn policy(port: u16, approver: &str) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nallow = []\n\n[segment.db.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"30m\"\napprovers = [\"{approver}\"]\nrequire_reason = false\n"
    )
}

fn hold(client: &As, addr: SocketAddr) -> Session {
    let mut cmd = client.command(probe_bin());
    cmd.args(["hold", &addr.to_string(), "100", "600"]);
    Session::start(cmd)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `--json` output's `ok` value.
fn json_ok(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["ok"].clone()
}

#[test]
fn a_lock_cuts_refuses_survives_a_restart_and_unlock_restores() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let alice = TestUser::new();
    let approver = TestUser::new();
    let mut agent = Agent::builder(&policy(server.port(), &approver.identity()), &cg.path)
        .arg("--socket-mode")
        .arg("666")
        .start();
    let as_alice = As::user(&cg.path, alice.uid, alice.gid);

    // A request of hers waits for an approver; a grant lets her in.
    let request = json_ok(&agent.cli_as(alice.uid, alice.gid, &["request", "db", "--json"]));
    let request_id = request["request"]["id"]
        .as_u64()
        .expect("request id")
        .to_string();
    agent.grant("db", &alice.identity(), "30m");
    let session = hold(&as_alice, server.addr);
    session.wait_round_trips(2, Duration::from_secs(10));

    // A non-root, non-admin cannot lock.
    let out = agent.cli_as(
        approver.uid,
        approver.gid,
        &["lock", &alice.identity(), "--reason", "x"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("may not lock"), "{}", text(&out));

    let out = agent.ok(&["lock", &alice.identity(), "--reason", "credentials leaked"]);
    assert!(out.contains("revoked"), "{out}");
    let (err, trips, took) = session.wait_failure(Duration::from_secs(10));
    println!("open flow cut {took:?} after lock ({trips} more round trips): {err}");
    assert_eq!(err, "ECONNABORTED");
    assert_eq!(as_alice.tcp(server.addr), Outcome::eperm());

    let refused = |agent: &Agent| {
        let out = agent.cli_as(alice.uid, alice.gid, &["request", "db"]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("locked"), "{}", text(&out));
        let out = agent.cli_as(approver.uid, approver.gid, &["approve", &request_id]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("locked"), "{}", text(&out));
        let out = agent.cli(&["grant", "db", &alice.identity(), "--ttl", "5m"]);
        assert!(!out.status.success(), "{}", text(&out));
    };
    refused(&agent);

    // The lock survives a restart, and is shown by list and status.
    assert!(agent.stop().success());
    agent.spawn(&["--socket-mode".into(), "666".into()]);
    refused(&agent);
    assert!(agent.ok(&["list"]).contains("credentials leaked"));
    let status = json_ok(&agent.cli(&["status", "--json"]));
    assert_eq!(status["locks"][0]["identity"], alice.identity(), "{status}");
    assert_eq!(as_alice.tcp(server.addr), Outcome::eperm());

    agent.ok(&["unlock", &alice.identity()]);
    json_ok(&agent.cli_as(
        approver.uid,
        approver.gid,
        &["approve", &request_id, "--json"],
    ));
    assert_eq!(
        as_alice.tcp(server.addr),
        Outcome::Ok,
        "unlock restores access"
    );
    let kinds: Vec<String> = agent
        .audit_records()
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(kinds.contains(&"lock".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"unlock".to_string()), "{kinds:?}");
    assert!(agent.audit_records().iter().any(|r| r["event"] == "revoke"
        && r["why"]
            .as_str()
            .is_some_and(|w| w.contains("credentials leaked"))));
}
