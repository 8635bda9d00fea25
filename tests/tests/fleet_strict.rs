//! Strict fleet grants end to end (issue 19): a real etcd on loopback and
//! one agent in fleet mode with `strict_after = "3s"`. A strict grant
//! stops working once the host has not heard from the store for that
//! long — the store stopped (cut off), or the agent itself stopped
//! (hung) — while a plain fleet grant beside it keeps working; when the
//! store is back, the strict grant works again. The kernel does the
//! cutting (`PC_FRESH`; see tests/strict.rs for the kernel alone).
use std::{path::PathBuf, process::Output, time::Duration};

use portcullis_tests::{etcd::Etcd, session::Session, users::TestUser, *};

fn policy(port: u16) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nallow = []\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n"
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn start(etcd: &Etcd, cg: &TestCgroup, port: u16) -> (Agent, PathBuf) {
    let dir = std::env::temp_dir().join(unique("strict-conf"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[fleet]\nendpoints = [\"{}\"]\nhost = \"strict-h1\"\ngroups = [\"db\"]\nlease_ttl = \"2s\"\ncall_timeout = \"1s\"\nack_timeout = \"3s\"\nstrict_after = \"3s\"\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let agent = Agent::builder(&policy(port), &cg.path)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    (agent, dir)
}

fn fleet_grant(agent: &Agent, identity: &str, strict: bool) {
    let mut args = vec!["grant", "--fleet", "--hosts", "all"];
    if strict {
        args.push("--strict");
    }
    args.extend(["db", identity, "--ttl", "30m"]);
    let out = agent.cli(&args);
    assert!(out.status.success(), "{}", text(&out));
}

fn signal(agent: &Agent, sig: i32) {
    // SAFETY: kill(2) on the agent process this test started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, sig) }, 0);
}

#[test]
fn a_strict_fleet_grant_stops_on_a_host_cut_off_or_hung_and_a_plain_one_keeps_working() {
    let mut etcd = Etcd::start();
    let server = EchoServer::tcp("127.0.0.1:0");
    let cg = TestCgroup::new();
    let (agent, dir) = start(&etcd, &cg, server.port());
    let (alice, bob) = (TestUser::new(), TestUser::new());
    let strict = As::user(&cg.path, alice.uid, alice.gid);
    let plain = As::user(&cg.path, bob.uid, bob.gid);
    assert!(
        eventually(Duration::from_secs(20), || {
            let out = agent.cli(&["status", "--fleet", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["ok"]["connected"] == true)
        }),
        "the agent did not connect to etcd"
    );
    fleet_grant(&agent, &alice.identity(), true);
    fleet_grant(&agent, &bob.identity(), false);
    let opens = |who: &As| eventually(Duration::from_secs(20), || who.tcp(server.addr).is_ok());
    assert!(opens(&strict), "the strict grant did not open");
    assert!(opens(&plain), "the plain grant did not open");

    // Cut off: the store stops. A flow the strict grant admitted and new
    // connects stop after strict_after; the plain grant goes on.
    let mut cmd = strict.command(probe_bin());
    cmd.args(["hold", &server.addr.to_string(), "100", "600"])
        .env("PC_PROBE_TIMEOUT_MS", "1000");
    let session = Session::start(cmd);
    session.wait_round_trips(2, Duration::from_secs(10));
    etcd.stop();
    let (err, trips, took) = session.wait_failure(Duration::from_secs(40));
    println!("strict flow cut {took:?} after the store stopped ({trips} round trips): {err}");
    assert_eq!(strict.tcp(server.addr), Outcome::eperm(), "stale: refused");
    assert!(
        plain.tcp(server.addr).is_ok(),
        "the plain grant keeps working"
    );

    // The store is back: the agent re-lists, and the strict grant works.
    etcd.resume();
    assert!(
        opens(&strict),
        "the strict grant did not come back with the store"
    );

    // Hung: the store is up, the agent stopped. Nothing moves "fresh
    // until", so the kernel ends the strict grant by itself.
    signal(&agent, libc::SIGSTOP);
    let refused = eventually(Duration::from_secs(40), || {
        strict.tcp(server.addr) == Outcome::eperm()
    });
    let plain_ok = plain.tcp(server.addr).is_ok();
    signal(&agent, libc::SIGCONT);
    assert!(refused, "a hung agent kept the strict grant alive");
    assert!(
        plain_ok,
        "the plain grant keeps working while the agent is hung"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}
