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
    let explain = agent.ok(&[
        "explain",
        &stranger.identity(),
        &format!("{}/tcp", server.port()),
    ]);
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

/// A TCP echo server run by `socat` as `who` (its own process, cgroup and
/// uid, as a real service would be); killed on drop.
struct Listener {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Listener {
    fn start(who: &As) -> Self {
        // A free port: bound, released, then taken by socat (bounded retries
        // below cover the rare race with another process).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = who
            .command("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg("EXEC:cat")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("run socat");
        assert!(
            eventually(Duration::from_secs(10), || connect_outside(addr)),
            "socat did not listen on {addr}"
        );
        Self { child, addr }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn discover_shows_listener_and_clients_and_suggest_allows_exactly_them() {
    let cg = TestCgroup::new();
    let alice = TestUser::new();
    let bob = TestUser::new();
    let owner = TestUser::new();
    let server_cg = cg.child("server");
    let server = Listener::start(&As::user(&server_cg, owner.uid, owner.gid));
    let port = server.addr.port();
    let agent = Agent::start(&policy(port, "audit", &[]), &cg.path);
    let as_alice = As::user(&cg.path, alice.uid, alice.gid);
    let as_bob = As::user(&cg.path, bob.uid, bob.gid);
    for _ in 0..3 {
        assert_eq!(as_alice.tcp(server.addr), Outcome::Ok);
    }

    // discover: the listener with its cgroup and uid, alice with her count.
    let view = json(&agent.ok(&["discover", "--json"]))["ok"].clone();
    let entry = view["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port && p["proto"] == "tcp")
        .unwrap_or_else(|| panic!("port {port} not discovered: {view}"))
        .clone();
    assert_eq!(entry["segment"], "db", "{entry}");
    assert_eq!(entry["mode"], "audit", "{entry}");
    let listener = &entry["listeners"][0];
    assert_eq!(listener["uid"], owner.uid, "{entry}");
    assert_eq!(listener["user"], owner.name.as_str(), "{entry}");
    assert_eq!(
        listener["cgroup"],
        format!("{}/server", cg.rel).as_str(),
        "{entry}"
    );
    assert_eq!(listener["process"], "socat", "{entry}");
    let clients = entry["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "only alice reached the port: {entry}");
    assert_eq!(clients[0]["uid"], alice.uid, "{entry}");
    assert_eq!(clients[0]["gid"], alice.gid, "{entry}");
    assert_eq!(clients[0]["cgroup"], cg.rel.as_str(), "{entry}");
    assert_eq!(clients[0]["count"], 3, "{entry}");
    // The table names them too.
    let table = agent.ok(&["discover"]);
    assert!(
        table.contains(&alice.name) && table.contains("socat"),
        "{table}"
    );

    // suggest: a policy `check` accepts, allowing alice only.
    let text = agent.ok(&["suggest", "--segment", "db"]);
    println!("{text}");
    assert!(text.contains(&alice.identity()), "{text}");
    assert!(text.contains("3 connection(s)"), "{text}");
    let file = agent.dir.join("suggested.toml");
    fs::write(&file, &text).unwrap();
    agent.ok(&["check", file.to_str().unwrap()]);
    // The port-scoped form says the same.
    let by_port = agent.ok(&["suggest", "--port", &format!("{port}/tcp")]);
    assert!(by_port.contains(&alice.identity()), "{by_port}");

    // Applied (it enforces): exactly the observed clients get in.
    reload_with(&agent, &text);
    assert!(
        eventually(Duration::from_secs(10), || segment_status(&agent)["mode"]
            == "enforce"),
        "the suggested policy was not applied"
    );
    assert_eq!(as_alice.tcp(server.addr), Outcome::Ok);
    assert_eq!(as_bob.tcp(server.addr), Outcome::eperm());
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());
}

#[test]
fn discover_is_for_root_only() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::builder(&policy(server.port(), "audit", &[]), &cg.path)
        .arg("--socket-mode")
        .arg("0666")
        .start();
    let user = TestUser::new();
    let out = agent.cli_as(user.uid, user.gid, &["discover"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root only"), "{err}");
}
