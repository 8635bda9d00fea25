//! Rolling out default-deny (issue 16, items 1-3): a segment in audit mode
//! lets refused clients through and logs them as `would_deny`; switching
//! it to enforce is a reload that refuses them and cuts their open flows;
//! `discover` shows listeners and the clients the kernel saw; `suggest`
//! writes a policy that `check` accepts and that, applied, allows exactly
//! the observed clients.
use std::{fs, net::SocketAddr, thread, time::Duration};

use portcullis_tests::{session::Session, users::TestUser, *};
use serde_json::Value;

fn policy(port: u16, mode: &str, allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nmode = \"{mode}\"\nallow = [{}]\n",
        allow.join(", ")
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Replaces the agent's policy file atomically and asks it to reload.
fn reload_with(agent: &Agent, text: &str) {
    let tmp = agent.policies.join(".test.toml.tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, agent.policies.join("test.toml")).unwrap();
    // SAFETY: kill(2) on the agent process this test started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
}

fn deny_lines(agent: &Agent) -> Vec<Value> {
    let path = agent.audit_log.with_file_name("denies.jsonl");
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn hold(client: &As, addr: SocketAddr) -> Session {
    let mut cmd = client.command(probe_bin());
    cmd.args(["hold", &addr.to_string(), "100", "600"]);
    Session::start(cmd)
}

fn segment_status(agent: &Agent) -> Value {
    let s = json(&agent.ok(&["status", "--json"]));
    s["ok"]["segments"][0].clone()
}

#[test]
fn audit_mode_lets_a_stranger_in_and_logs_would_deny_then_enforce_refuses_and_cuts() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let stranger = TestUser::new();
    let agent = Agent::start(&policy(server.port(), "audit", &[]), &cg.path);
    let client = As::user(&cg.path, stranger.uid, stranger.gid);

    // Audit mode: the refusal is decided, logged, and not enforced.
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    let session = hold(&client, server.addr);
    session.wait_round_trips(3, Duration::from_secs(10));
    let mut line = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            line = deny_lines(&agent)
                .into_iter()
                .find(|l| l["event"] == "would_deny")
                .unwrap_or(Value::Null);
            !line.is_null()
        }),
        "no would_deny line in the deny log: {:?}",
        deny_lines(&agent)
    );
    assert_eq!(line["uid"], stranger.uid, "{line}");
    assert_eq!(line["user"], stranger.name.as_str(), "{line}");
    assert_eq!(line["gid"], stranger.gid, "{line}");
    assert_eq!(line["cgroup"], cg.rel.as_str(), "{line}");
    assert_eq!(line["segment"], "db", "{line}");
    assert!(
        deny_lines(&agent).iter().all(|l| l["event"] != "deny"),
        "audit mode wrote a real deny"
    );
    let seg = segment_status(&agent);
    assert_eq!(seg["mode"], "audit", "{seg}");
    assert!(seg["would_deny"].as_u64().unwrap() >= 2, "{seg}");
    assert_eq!(seg["denied"], 0, "{seg}");
    // The open flow survives audit mode's sweeps (a reload sweeps).
    reload_with(&agent, &policy(server.port(), "audit", &["user:root"]));
    thread::sleep(Duration::from_millis(500));
    session.wait_round_trips(3, Duration::from_secs(5));
    let list = agent.ok(&["list"]);
    assert!(list.contains("audit"), "{list}");
    let explain = agent.ok(&["explain", &stranger.identity(), &format!("{}/tcp", server.port())]);
    assert!(explain.contains("WOULD DENY"), "{explain}");

    // Enforce: an ordinary reload; the open flow is cut, new ones refused.
    reload_with(&agent, &policy(server.port(), "enforce", &["user:root"]));
    let (err, _, took) = session.wait_failure(Duration::from_secs(10));
    println!("audit -> enforce cut the stranger's flow {took:?} after the reload: {err}");
    assert_eq!(err, "ECONNABORTED");
    assert_eq!(client.tcp(server.addr), Outcome::eperm());
    assert!(
        eventually(Duration::from_secs(10), || deny_lines(&agent)
            .iter()
            .any(|l| l["event"] == "deny" && l["uid"] == stranger.uid)),
        "no deny line after the switch"
    );
    assert_eq!(segment_status(&agent)["mode"], "enforce");
}

#[test]
fn the_agent_wide_mode_flag_puts_every_segment_in_audit() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::builder(&policy(server.port(), "enforce", &[]), &cg.path)
        .arg("--mode")
        .arg("audit")
        .start();
    let client = As::root_in(&cg.path);
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    assert_eq!(segment_status(&agent)["mode"], "audit");
}
