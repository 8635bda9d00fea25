//! Approvals people use (issue 18), end to end with real users and the real
//! agent: `approvals_required = 2` grants only after two distinct
//! approvers, never counts the requester, audits each approval, shows
//! "1 of 2" in `list --pending`, and keeps a partial approval across a
//! restart; `extend` lengthens a live grant in the kernel without a gap
//! (an open session and a connect loop see no refusal across the original
//! expiry) and is bounded by max_ttl from the grant's start.
use std::{fs, os::unix::fs::PermissionsExt, process::Stdio, time::Duration};

use portcullis_tests::{
    ran::Ran,
    session::Session,
    users::{TestGroup, TestUser},
    *,
};
use serde_json::Value;

/// Fields drop in declaration order: the agent first, then the server,
/// the cgroup and the accounts.
struct World {
    agent: Agent,
    server: EchoServer,
    cg: TestCgroup,
    /// Asks for access; an approver of the segment too (never of her own request).
    alice: TestUser,
    /// Approvers, through group `approvers`.
    bob: TestUser,
    dave: TestUser,
    /// Not an approver.
    carol: TestUser,
    _approvers: TestGroup,
}

impl World {
    fn new() -> Self {
        let cg = TestCgroup::new();
        let server = EchoServer::tcp("127.0.0.1:0");
        let (alice, bob, carol, dave) = (
            TestUser::new(),
            TestUser::new(),
            TestUser::new(),
            TestUser::new(),
        );
        let approvers = TestGroup::new();
        alice.join(&approvers);
        bob.join(&approvers);
        dave.join(&approvers);
        let policy = format!(
            "[segment.db]\nports = [\"{}/tcp\"]\n\n[segment.db.jit]\nmax_ttl = \"10m\"\n\
             approvers = [\"group:{}\"]\nrequire_reason = true\napprovals_required = 2\n",
            server.port(),
            approvers.name
        );
        let agent = Agent::builder(&policy, &cg.path)
            .arg("--socket-mode")
            .arg("666")
            .start();
        fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            agent,
            server,
            cg,
            alice,
            bob,
            dave,
            carol,
            _approvers: approvers,
        }
    }

    fn as_user(&self, u: &TestUser, args: &[&str]) -> Ran {
        Ran::of(self.agent.cli_as(u.uid, u.gid, args))
    }

    fn pending(&self) -> Vec<Value> {
        let v = Ran::of(self.agent.cli(&["list", "--pending", "--json"]))
            .ok()
            .json();
        v["ok"]["requests"].as_array().unwrap().clone()
    }

    fn alice_connects(&self) -> Outcome {
        As::user(&self.cg.path, self.alice.uid, self.alice.gid).tcp(self.server.addr)
    }

    fn records(&self, event: &str, id: u64) -> Vec<Value> {
        self.agent
            .audit_records()
            .into_iter()
            .filter(|r| r["event"] == event && r["request_id"] == id)
            .collect()
    }
}

#[test]
fn two_distinct_approvers_are_needed_and_the_requester_never_counts() {
    let mut w = World::new();
    let v = w
        .as_user(
            &w.alice,
            &[
                "request", "db", "--ttl", "5m", "--reason", "INC-9", "--json",
            ],
        )
        .ok()
        .json();
    let id = v["ok"]["request"]["id"].as_u64().unwrap();
    let ids = id.to_string();
    assert_eq!(v["ok"]["request"]["approvals_required"], 2, "{v}");

    // The requester is an approver of the segment, yet never counts.
    w.as_user(&w.alice, &["approve", &ids])
        .refused("nobody approves their own request");
    // Neither does a stranger.
    w.as_user(&w.carol, &["approve", &ids])
        .refused(&format!("may not approve request {id}"));

    // One approver: recorded, audited, still closed.
    let one = w.as_user(&w.bob, &["approve", &ids, "--json"]).ok().json();
    assert_eq!(one["ok"]["request"]["state"], "pending", "{one}");
    assert_eq!(
        one["ok"]["request"]["approvals"][0]["uid"], w.bob.uid,
        "{one}"
    );
    assert_eq!(
        w.alice_connects(),
        Outcome::eperm(),
        "open after one of two approvals"
    );
    let audited = w.records("approval", id);
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["approvals"], 1);
    assert_eq!(audited[0]["required"], 2);
    assert_eq!(audited[0]["actor"]["uid"], w.bob.uid);
    assert_eq!(audited[0]["requested_by"]["uid"], w.alice.uid);

    // `list --pending` says "1 of 2", in JSON and for people.
    let p = w.pending();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["approvals"].as_array().unwrap().len(), 1);
    let table = Ran::of(w.agent.cli(&["list", "--pending"])).ok().stdout;
    let row = table
        .lines()
        .find(|l| l.starts_with(&ids))
        .expect("the request's row");
    assert!(row.contains("1 of 2"), "{table}");

    // The same approver twice is one approval, across a restart too.
    w.as_user(&w.bob, &["approve", &ids])
        .refused("already approved");
    assert!(w.agent.stop().success());
    w.agent
        .spawn(&["--socket-mode".to_string(), "666".to_string()]);
    let p = w.pending();
    assert_eq!(
        p[0]["approvals"][0]["uid"], w.bob.uid,
        "kept across a restart: {p:?}"
    );
    w.as_user(&w.bob, &["approve", &ids])
        .refused("already approved");
    assert_eq!(w.alice_connects(), Outcome::eperm());

    // A second, distinct approver: granted, and the kernel lets alice in.
    let two = w.as_user(&w.dave, &["approve", &ids, "--json"]).ok().json();
    assert_eq!(two["ok"]["request"]["state"], "approved", "{two}");
    let who: Vec<u64> = two["ok"]["request"]["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(who, vec![u64::from(w.bob.uid), u64::from(w.dave.uid)]);
    assert_eq!(w.alice_connects(), Outcome::Ok);
    let approve = w.records("approve", id);
    assert_eq!(approve.len(), 1);
    assert_eq!(approve[0]["actor"]["uid"], w.dave.uid);
    assert_eq!(
        w.records("approval", id).len(),
        1,
        "the last approval is the approve"
    );
    assert!(w.pending().is_empty());
}

#[test]
fn extend_lengthens_a_live_grant_without_a_gap_and_is_bounded() {
    let w = World::new();
    let alice = As::user(&w.cg.path, w.alice.uid, w.alice.gid);
    let root = |args: &[&str]| Ran::of(w.agent.cli(args));
    let v = root(&[
        "grant",
        "db",
        &w.alice.identity(),
        "--ttl",
        "4s",
        "--reason",
        "INC-9",
        "--json",
    ])
    .ok()
    .json();
    let gid = v["ok"]["grant"]["id"].as_u64().unwrap();
    let id = gid.to_string();

    // An open session (a round trip every 100 ms) and a connect loop, both
    // running across the grant's original expiry.
    let mut cmd = alice.command(probe_bin());
    cmd.args(["hold", &w.server.addr.to_string(), "100", "600"]);
    let session = Session::start(cmd);
    session.wait_round_trips(2, Duration::from_secs(10));
    let looping = alice
        .command(probe_bin())
        .args(["loop-until", &w.server.addr.to_string(), "8", "200000"])
        .env("PC_PROBE_TIMEOUT_MS", "2000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start connect loop");

    // Alice, the grantee, only asks (a request the approvers decide:
    // tests/breakglass.rs); an approver extends it directly.
    let asked = w
        .as_user(
            &w.alice,
            &[
                "extend",
                &id,
                "--ttl",
                "2m",
                "--reason",
                "INC-9 still open",
                "--json",
            ],
        )
        .ok()
        .json();
    assert!(asked["ok"]["request"]["id"].is_u64(), "{asked}");
    let e = w
        .as_user(
            &w.bob,
            &[
                "extend",
                &id,
                "--ttl",
                "2m",
                "--reason",
                "INC-9 still open",
                "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(e["ok"]["grant"]["id"], gid, "{e}");
    assert!(
        e["ok"]["grant"]["remaining_secs"].as_u64().unwrap() > 60,
        "{e}"
    );

    // 80 more round trips (8 s) outlive the original 4 s: none refused.
    session.wait_round_trips(80, Duration::from_secs(60));
    let out = looping.wait_with_output().expect("connect loop");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert!(f.len() >= 7 && f[0] == "loop", "{text:?}");
    assert_eq!(
        f[4], "0",
        "a connect was refused across the extension: {text}"
    );
    assert_ne!(f[2], "0", "{text}");
    // The kernel holds the new expiry.
    let x = root(&[
        "explain",
        &w.alice.identity(),
        &format!("{}/tcp", w.server.port()),
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(x["ok"]["allowed"], true, "{x}");
    assert!(x["ok"]["remaining_secs"].as_u64().unwrap() > 60, "{x}");

    // Bounded by max_ttl (10m) from the grant's start, for root too.
    root(&["extend", &id, "--ttl", "10m", "--reason", "more"])
        .refused("at most 10m from the grant's start");
    let rec = w
        .agent
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "extend" && r["grant_id"] == gid)
        .expect("extend audited");
    assert_eq!(rec["actor"]["uid"], w.bob.uid);
    assert_eq!(rec["ttl_secs"], 120);
    assert_eq!(rec["reason"], "INC-9 still open");
}
