//! Fleet mode (issue 19): a real etcd on loopback and three agents, each
//! attached to its own child cgroup with its own pins, state and socket,
//! all in fleet mode on that etcd: h1 and h2 in group `db`, h3 in `web`.
//! What a user sees on each "host" is what its own cgroup's clients get.
use std::{net::SocketAddr, path::PathBuf, process::Output, time::Duration};

use portcullis_tests::{etcd::Etcd, session::Session, users::TestUser, *};

const PREFIX: &str = "/portcullis/v1";

fn policy(port: u16) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nallow = []\n\n[segment.db.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"30m\"\nrequire_reason = false\n"
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_ok(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["ok"].clone()
}

/// One "host": its cgroup, its agent in fleet mode.
struct Host {
    name: String,
    cg: TestCgroup,
    agent: Agent,
    config: PathBuf,
}

impl Host {
    fn start(name: &str, groups: &[&str], etcd: &Etcd, port: u16) -> Host {
        let cg = TestCgroup::new();
        let dir = std::env::temp_dir().join(unique("fleet-conf"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("agent.toml");
        let groups: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "[fleet]\nendpoints = [\"{}\"]\nhost = \"{name}\"\ngroups = [{}]\nack_timeout = \"3s\"\nlease_ttl = \"3s\"\ncall_timeout = \"1s\"\n",
                etcd.endpoint(),
                groups.join(", ")
            ),
        )
        .unwrap();
        let agent = Agent::builder(&policy(port), &cg.path)
            .arg("--config")
            .arg(config.to_str().unwrap())
            .arg("--socket-mode")
            .arg("666")
            .start();
        let h = Host {
            name: name.to_string(),
            cg,
            agent,
            config,
        };
        h.wait_connected();
        h
    }

    fn restart(&mut self) {
        let config = self.config.to_str().unwrap().to_string();
        self.agent.spawn(&[
            "--config".into(),
            config,
            "--socket-mode".into(),
            "666".into(),
        ]);
        self.wait_connected();
    }

    fn status(&self) -> serde_json::Value {
        json_ok(&self.agent.cli(&["status", "--fleet", "--json"]))
    }

    fn wait_connected(&self) {
        assert!(
            eventually(Duration::from_secs(20), || self.status()["connected"]
                == true),
            "{} did not connect to etcd: {}",
            self.name,
            self.status()
        );
    }

    fn as_user(&self, u: &TestUser) -> As {
        As::user(&self.cg.path, u.uid, u.gid)
    }
}

fn fleet_grant(h: &Host, hosts: &str, identity: &str, ttl: &str) -> String {
    let v = json_ok(&h.agent.cli(&[
        "grant", "--fleet", "--hosts", hosts, "db", identity, "--ttl", ttl, "--json",
    ]));
    v["grant"]["id"]
        .as_str()
        .expect("fleet grant id")
        .to_string()
}

fn opens(h: &Host, u: &TestUser, addr: SocketAddr) -> bool {
    eventually(Duration::from_secs(10), || {
        h.as_user(u).tcp(addr) == Outcome::Ok
    })
}

fn hold(h: &Host, u: &TestUser, addr: SocketAddr) -> Session {
    let mut cmd = h.as_user(u).command(probe_bin());
    cmd.args(["hold", &addr.to_string(), "100", "600"]);
    let s = Session::start(cmd);
    s.wait_round_trips(2, Duration::from_secs(10));
    s
}

#[test]
fn a_group_grant_opens_exactly_its_hosts_and_a_revoke_cuts_each_and_is_acknowledged() {
    let etcd = Etcd::start();
    let server = EchoServer::tcp("127.0.0.1:0");
    let h1 = Host::start("h1", &["db"], &etcd, server.port());
    let h2 = Host::start("h2", &["db"], &etcd, server.port());
    let h3 = Host::start("h3", &["web"], &etcd, server.port());
    let alice = TestUser::new();
    for h in [&h1, &h2, &h3] {
        assert_eq!(h.as_user(&alice).tcp(server.addr), Outcome::eperm());
    }

    // Made on h3 (not in the group), enforced on h1 and h2 only.
    let id = fleet_grant(&h3, "group:db", &alice.identity(), "10m");
    assert!(opens(&h1, &alice, server.addr), "h1 did not open");
    assert!(opens(&h2, &alice, server.addr), "h2 did not open");
    assert_eq!(h3.as_user(&alice).tcp(server.addr), Outcome::eperm());
    let listed = h2.agent.ok(&["list", "--fleet"]);
    assert!(
        listed.contains(&id) && listed.contains("group:db"),
        "{listed}"
    );
    // The host's own audit log names the fleet grant it enforces.
    assert!(
        h1.agent
            .audit_records()
            .iter()
            .any(|r| r["event"] == "grant" && r["fleet"] == id.as_str()),
        "no grant record with fleet id {id} on h1"
    );

    // Open flows on both, then the revoke from h1: both cut, both acknowledged.
    let s1 = hold(&h1, &alice, server.addr);
    let s2 = hold(&h2, &alice, server.addr);
    let out = h1.agent.cli(&["revoke", "--fleet", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("enforced on 2 of 2 hosts"),
        "{}",
        text(&out)
    );
    for (s, h) in [(&s1, &h1), (&s2, &h2)] {
        let (err, _, took) = s.wait_failure(Duration::from_secs(10));
        println!(
            "{}: open flow cut {took:?} after the fleet revoke: {err}",
            h.name
        );
        assert_eq!(err, "ECONNABORTED");
        assert_eq!(h.as_user(&alice).tcp(server.addr), Outcome::eperm());
    }
    assert!(h2
        .agent
        .audit_records()
        .iter()
        .any(|r| r["event"] == "revoke" && r["why"].as_str().is_some_and(|w| w.contains(&id))));

    // status --fleet: three live hosts, each at or past the revoke's revision.
    let st = h1.status();
    let hosts = st["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{st}");
    assert!(hosts.iter().all(|h| h["live"] == true), "{st}");
    let human = h1.agent.ok(&["status", "--fleet"]);
    assert!(human.contains("h3") && human.contains("APPLIED"), "{human}");

    // Authorization as locally: a person who is not an approver cannot.
    let out = h1.agent.cli_as(
        alice.uid,
        alice.gid,
        &[
            "grant", "--fleet", "--hosts", "all", "db", "uid:1", "--ttl", "5m",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn store_down_keeps_enforcing_and_expiring_refuses_new_grants_and_agents_reconcile() {
    let mut etcd = Etcd::start();
    let server = EchoServer::tcp("127.0.0.1:0");
    let h1 = Host::start("h1", &["db"], &etcd, server.port());
    let mut h2 = Host::start("h2", &["db"], &etcd, server.port());
    let (long, short, late) = (TestUser::new(), TestUser::new(), TestUser::new());
    let long_id = fleet_grant(&h1, "group:db", &long.identity(), "10m");
    fleet_grant(&h1, "all", &short.identity(), "4s");
    for h in [&h1, &h2] {
        assert!(opens(h, &long, server.addr));
    }

    // The store goes away: what is enforced stays, the kernel's expiry fires,
    // and a new fleet grant is refused with the reason.
    etcd.stop();
    assert!(eventually(Duration::from_secs(20), || h1.status()
        ["connected"]
        == false));
    assert_eq!(h1.as_user(&long).tcp(server.addr), Outcome::Ok);
    assert!(
        eventually(Duration::from_secs(15), || h2
            .as_user(&short)
            .tcp(server.addr)
            == Outcome::eperm()),
        "the 4s fleet grant did not expire while the store was down"
    );
    let out = h1.agent.cli(&[
        "grant",
        "--fleet",
        "--hosts",
        "all",
        "db",
        &late.identity(),
        "--ttl",
        "5m",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("fleet store is unreachable"),
        "{}",
        text(&out)
    );

    // Back: h1 reconnects and sees new grants again.
    etcd.resume();
    h1.wait_connected();
    h2.wait_connected();

    // h2's agent dies: its pinned enforcement continues.
    h2.agent.kill();
    assert_eq!(h2.as_user(&long).tcp(server.addr), Outcome::Ok);
    // Revoked meanwhile: h1 acknowledges, h2 does not (it is down).
    let out = h1.agent.cli(&["revoke", "--fleet", &long_id]);
    assert!(
        !out.status.success(),
        "a revoke h2 never applied is not all acknowledged"
    );
    let said = text(&out);
    assert!(
        said.contains("enforced on 1 of 2 hosts") && said.contains("h2"),
        "{said}"
    );
    assert!(eventually(Duration::from_secs(10), || h1
        .as_user(&long)
        .tcp(server.addr)
        == Outcome::eperm()));
    let late_id = fleet_grant(&h1, "group:db", &late.identity(), "10m");
    // The history h2 missed is compacted away, and etcd restarts once more.
    etcd.compact();
    etcd.stop();
    etcd.resume();

    // h2 comes back: it reconciles with the store (the revoke it missed,
    // the grant made meanwhile) from a fresh listing.
    h2.restart();
    assert!(
        eventually(Duration::from_secs(15), || h2
            .as_user(&long)
            .tcp(server.addr)
            == Outcome::eperm()),
        "h2 still lets in a grant revoked while it was down"
    );
    assert!(
        opens(&h2, &late, server.addr),
        "h2 did not pick up {late_id}"
    );
    assert!(opens(&h1, &late, server.addr));
}

#[test]
fn hostile_values_in_the_store_are_refused_and_named_escaped() {
    let etcd = Etcd::start();
    let server = EchoServer::tcp("127.0.0.1:0");
    let h1 = Host::start("h1", &["db"], &etcd, server.port());
    let u = TestUser::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let value = |segment: &str, reason: &str, deadline: u64| {
        serde_json::json!({
            "format": 1, "segment": segment, "identity": u.identity(),
            "created_unix_ms": now_ms, "deadline_unix_ms": deadline,
            "actor_uid": 0, "origin_host": "evil", "reason": reason, "strict": false
        })
        .to_string()
    };
    let hour = 3_600_000;
    let key = |id: &str| format!("{PREFIX}/grants/fleet/{id}");
    etcd.put(
        &key("ctl"),
        value("db", "x\u{1b}[2Jy", now_ms + hour).as_bytes(),
    );
    etcd.put(
        &key("noseg"),
        value("payments", "r", now_ms + hour).as_bytes(),
    );
    etcd.put(&key("past"), value("db", "r", now_ms - hour).as_bytes());
    etcd.put(
        &key("far"),
        value("db", "r", now_ms + 400 * 24 * hour).as_bytes(),
    );
    etcd.put(&key("long"), value("db", "r", now_ms + 5 * hour).as_bytes());
    etcd.put(&key("huge"), &vec![b'{'; 100_000]);
    let refused = || {
        h1.status()["refused"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r[0].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(10), || refused().len() == 5),
        "{:?}",
        refused()
    );
    let mut r = refused();
    r.sort();
    assert_eq!(r, ["ctl", "far", "huge", "long", "noseg"]);
    assert_eq!(h1.as_user(&u).tcp(server.addr), Outcome::eperm());
    let human = h1.agent.ok(&["status", "--fleet"]);
    assert!(!human.contains('\u{1b}'), "raw escape printed: {human}");
    assert!(
        human.contains("payments") && human.contains("not in this host's policy"),
        "{human}"
    );
    assert!(human.contains("max_ttl"), "{human}");
}

#[test]
fn a_fleet_lock_propagates_to_its_hosts_and_unlock_restores() {
    let etcd = Etcd::start();
    let server = EchoServer::tcp("127.0.0.1:0");
    let h1 = Host::start("h1", &["db"], &etcd, server.port());
    let h2 = Host::start("h2", &["db"], &etcd, server.port());
    let h3 = Host::start("h3", &["web"], &etcd, server.port());
    let alice = TestUser::new();
    fleet_grant(&h1, "all", &alice.identity(), "10m");
    for h in [&h1, &h2, &h3] {
        assert!(opens(h, &alice, server.addr), "{} did not open", h.name);
    }
    let s2 = hold(&h2, &alice, server.addr);

    let out = h3.agent.cli(&[
        "lock",
        "--fleet",
        "--hosts",
        "group:db",
        &alice.identity(),
        "--reason",
        "laptop stolen",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("enforced on 2 of 2 hosts"),
        "{}",
        text(&out)
    );
    let (err, _, _) = s2.wait_failure(Duration::from_secs(10));
    assert_eq!(err, "ECONNABORTED");
    for h in [&h1, &h2] {
        assert_eq!(
            h.as_user(&alice).tcp(server.addr),
            Outcome::eperm(),
            "{}",
            h.name
        );
        assert!(
            h.agent.ok(&["list"]).contains("laptop stolen"),
            "{}",
            h.name
        );
    }
    assert_eq!(
        h3.as_user(&alice).tcp(server.addr),
        Outcome::Ok,
        "h3 is not in the group"
    );
    // A grant made meanwhile does not get past the lock on h1 and h2.
    fleet_grant(&h3, "all", &alice.identity(), "20m");
    assert!(eventually(Duration::from_secs(10), || h1.status()
        ["refused"]
        .as_array()
        .is_some_and(|r| r.iter().any(|x| x[1]
            .as_str()
            .is_some_and(|w| w.contains("locked"))))));
    assert_eq!(h1.as_user(&alice).tcp(server.addr), Outcome::eperm());
    assert!(h3.agent.ok(&["list", "--fleet"]).contains("laptop stolen"));

    let out = h3.agent.cli(&["unlock", "--fleet", &alice.identity()]);
    assert!(out.status.success(), "{}", text(&out));
    for h in [&h1, &h2] {
        assert!(
            opens(h, &alice, server.addr),
            "{} did not open after the unlock",
            h.name
        );
    }
}

#[test]
fn two_approvers_approving_a_fleet_request_at_once_make_one_grant() {
    let etcd = Etcd::start();
    let server = EchoServer::tcp("127.0.0.1:0");
    let h1 = Host::start("h1", &["db"], &etcd, server.port());
    let h2 = Host::start("h2", &["db"], &etcd, server.port());
    let alice = TestUser::new();
    let v = json_ok(&h1.agent.cli_as(
        alice.uid,
        alice.gid,
        &[
            "request", "--fleet", "--hosts", "group:db", "db", "--ttl", "10m", "--json",
        ],
    ));
    let id = v["id"].as_str().expect("fleet request id").to_string();
    assert_eq!(v["state"], "pending", "{v}");
    // She may not approve her own request.
    let out = h2
        .agent
        .cli_as(alice.uid, alice.gid, &["approve", "--fleet", &id]);
    assert!(!out.status.success(), "{}", text(&out));

    // Two approvers (root on h1 and on h2) at the same moment.
    let run = |h: &Host| {
        let mut c = std::process::Command::new(portcullis_bin());
        c.arg("--socket")
            .arg(&h.agent.socket)
            .args(["approve", "--fleet", &id]);
        c
    };
    let outs = std::thread::scope(|s| {
        let x = s.spawn(|| run(&h1).output().unwrap());
        let y = s.spawn(|| run(&h2).output().unwrap());
        [x.join().unwrap(), y.join().unwrap()]
    });
    let won: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one approval wins: {:?}",
        outs.iter().map(text).collect::<Vec<_>>()
    );
    let lost = outs.iter().find(|o| !o.status.success()).unwrap();
    assert!(text(lost).contains("decided already"), "{}", text(lost));
    let grants: Vec<_> = etcd
        .list(&format!("{PREFIX}/grants/"))
        .into_iter()
        .filter(|(_, v)| String::from_utf8_lossy(v).contains(&alice.identity()))
        .collect();
    assert_eq!(grants.len(), 1, "{grants:?}");
    for h in [&h1, &h2] {
        assert!(opens(h, &alice, server.addr), "{} did not open", h.name);
    }
}
