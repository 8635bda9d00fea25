//! Just-in-time access end to end, with real users created by the test:
//! who may grant, request, approve, deny and revoke (decided by the agent
//! from the control socket's peer credentials), what the kernel then lets
//! through and for how long, what the audit log says, and `explain`
//! agreeing with real connections. Also the control socket's permissions.
use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use portcullis_tests::{
    ran::Ran,
    users::{TestGroup, TestUser},
    *,
};
use serde_json::Value;

/// One segment on `port`; `jit` is (max_ttl, approvers, require_reason).
fn segment(name: &str, port: u16, allow: &[&str], jit: Option<(&str, &[&str], bool)>) -> String {
    let q = |xs: &[&str]| {
        xs.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "[segment.{name}]\nports = [\"{port}/tcp\"]\nallow = [{}]\n",
        q(allow)
    );
    if let Some((max, approvers, reason)) = jit {
        s.push_str(&format!(
            "\n[segment.{name}.jit]\nmax_ttl = \"{max}\"\ndefault_ttl = \"{max}\"\napprovers = [{}]\nrequire_reason = {reason}\n",
            q(approvers)
        ));
    }
    s.push('\n');
    s
}

/// An agent whose socket every local user may reach, so that authorization
/// is the agent's decision and not the file mode's.
fn open_agent(policy: &str, cg: &TestCgroup, extra: &[&str]) -> Agent {
    let mut b = Agent::builder(policy, &cg.path)
        .arg("--socket-mode")
        .arg("666");
    for a in extra {
        b = b.arg(a);
    }
    let agent = b.start();
    // The socket lives in the agent's private directory: let others traverse it.
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
    agent
}

fn as_user(agent: &Agent, u: &TestUser, args: &[&str]) -> Ran {
    Ran::of(agent.cli_as(u.uid, u.gid, args))
}

fn as_root(agent: &Agent, args: &[&str]) -> Ran {
    Ran::of(agent.cli(args))
}

/// Files a request as `u` and returns its id.
fn request(agent: &Agent, u: &TestUser, segment: &str, ttl: &str) -> u64 {
    let r = as_user(
        agent,
        u,
        &[
            "request", segment, "--ttl", ttl, "--reason", "INC-7", "--json",
        ],
    )
    .ok();
    let v = r.json();
    assert_eq!(v["ok"]["request"]["state"], "pending", "{v}");
    assert_eq!(v["ok"]["request"]["identity"], u.identity(), "{v}");
    v["ok"]["request"]["id"].as_u64().expect("request id")
}

fn pending_ids(agent: &Agent) -> Vec<u64> {
    let v = as_root(agent, &["list", "--pending", "--json"]).ok().json();
    v["ok"]["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

fn refused_record(agent: &Agent, op: &str, uid: u32) -> Option<Value> {
    agent
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "refused" && r["op"] == op && r["actor"]["uid"] == uid)
}

fn record(agent: &Agent, event: &str, key: &str, id: u64) -> Option<Value> {
    agent
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == event && r[key] == id)
}

/// Starts `portcullis request ... --wait` as `u` in the background.
fn request_waiting(agent: &Agent, u: &TestUser, segment: &str) -> Child {
    Command::new(portcullis_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args([
            "request", segment, "--ttl", "5m", "--reason", "deploy", "--wait",
        ])
        .uid(u.uid)
        .gid(u.gid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn request --wait")
}

/// Waits (bounded) for a background CLI to finish.
fn finish(mut child: Child, within: Duration) -> Ran {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`request --wait` still running after {within:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ran::of(child.wait_with_output().unwrap())
}

/// The id of the one pending request, once it is there.
fn wait_pending(agent: &Agent) -> u64 {
    let mut ids = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            ids = pending_ids(agent);
            ids.len() == 1
        }),
        "no pending request appeared: {ids:?}"
    );
    ids[0]
}

/// Fields drop in declaration order: the agent (and its programs) goes
/// first, then the server, the cgroup and the accounts.
struct World {
    agent: Agent,
    server: EchoServer,
    cg: TestCgroup,
    /// Asks for access.
    alice: TestUser,
    /// An approver of segment `db` (through group `approvers`).
    bob: TestUser,
    /// Neither approver nor requester.
    carol: TestUser,
    _approvers: TestGroup,
}

impl World {
    fn new(extra: &[&str]) -> Self {
        let cg = TestCgroup::new();
        let server = EchoServer::tcp("127.0.0.1:0");
        let (alice, bob, carol) = (TestUser::new(), TestUser::new(), TestUser::new());
        let approvers = TestGroup::new();
        // Membership through /etc/group, not the primary gid.
        bob.join(&approvers);
        let group = format!("group:{}", approvers.name);
        let policy = segment("db", server.port(), &[], Some(("10m", &[&group], true)));
        let agent = open_agent(&policy, &cg, extra);
        Self {
            agent,
            server,
            cg,
            alice,
            bob,
            carol,
            _approvers: approvers,
        }
    }

    fn client(&self, u: &TestUser) -> As {
        As::user(&self.cg.path, u.uid, u.gid)
    }
}

#[test]
fn a_non_approver_can_neither_grant_nor_approve_and_both_are_audited() {
    let w = World::new(&[]);
    let carol = &w.carol;
    as_user(
        &w.agent,
        carol,
        &["grant", "db", &carol.identity(), "--reason", "x"],
    )
    .refused_one_line("may not grant on segment db");
    let r = refused_record(&w.agent, "grant", carol.uid).expect("refused grant audited");
    assert_eq!(r["segment"], "db");

    let id = request(&w.agent, &w.alice, "db", "5m");
    as_user(&w.agent, carol, &["approve", &id.to_string()])
        .refused_one_line(&format!("may not approve request {id} on segment db"));
    as_user(
        &w.agent,
        carol,
        &["deny", &id.to_string(), "--reason", "no"],
    )
    .refused_one_line(&format!("may not deny request {id}"));
    assert!(refused_record(&w.agent, "approve", carol.uid).is_some());
    assert!(refused_record(&w.agent, "deny", carol.uid).is_some());
    // Nothing changed: still pending, still closed.
    assert_eq!(pending_ids(&w.agent), vec![id]);
    assert_eq!(w.client(&w.alice).tcp(w.server.addr), Outcome::eperm());
    assert_eq!(w.client(carol).tcp(w.server.addr), Outcome::eperm());
}

#[test]
fn nobody_approves_their_own_request_not_even_root() {
    let w = World::new(&[]);
    // An approver asking for himself.
    let id = request(&w.agent, &w.bob, "db", "5m");
    as_user(&w.agent, &w.bob, &["approve", &id.to_string()])
        .refused_one_line("nobody approves their own request");
    assert!(refused_record(&w.agent, "approve", w.bob.uid).is_some());

    // Root too: its request is for user:root, and another approver decides.
    let v = as_root(
        &w.agent,
        &["request", "db", "--reason", "maintenance", "--json"],
    )
    .ok()
    .json();
    assert_eq!(v["ok"]["request"]["identity"], "user:root");
    let root_req = v["ok"]["request"]["id"].as_u64().unwrap();
    as_root(&w.agent, &["approve", &root_req.to_string()])
        .refused_one_line("nobody approves their own request, root included");
    assert!(refused_record(&w.agent, "approve", 0).is_some());
    // Root may approve bob's, and bob may approve root's.
    as_root(&w.agent, &["approve", &id.to_string()]).ok();
    as_user(&w.agent, &w.bob, &["approve", &root_req.to_string()]).ok();
    assert!(pending_ids(&w.agent).is_empty());
}

#[test]
fn request_then_approve_opens_exactly_that_for_exactly_the_approved_ttl() {
    let w = World::new(&[]);
    let other = EchoServer::tcp("127.0.0.1:0");
    let alice = w.client(&w.alice);
    let id = request(&w.agent, &w.alice, "db", "5m");
    assert_eq!(
        alice.tcp(w.server.addr),
        Outcome::eperm(),
        "open before approval"
    );

    // Approved for less than asked.
    let v = as_user(
        &w.agent,
        &w.bob,
        &["approve", &id.to_string(), "--ttl", "3s", "--json"],
    )
    .ok()
    .json();
    let grant = &v["ok"]["grant"];
    let gid = grant["id"].as_u64().unwrap();
    assert_ne!(
        gid, id,
        "grant and request ids share a counter and never collide"
    );
    assert_eq!(grant["request_id"], id);
    assert_eq!(grant["identity"], w.alice.identity());
    assert_eq!(v["ok"]["request"]["state"], "approved");
    assert_eq!(v["ok"]["request"]["granted_ttl_secs"], 3);
    assert!(grant["remaining_secs"].as_u64().unwrap() <= 3);

    assert_eq!(alice.tcp(w.server.addr), Outcome::Ok);
    // Exactly that: nobody else, and no other port.
    assert_eq!(w.client(&w.carol).tcp(w.server.addr), Outcome::eperm());
    assert_eq!(alice.tcp(other.addr), Outcome::Ok, "unprotected port");
    // The kernel holds the approved TTL, not the requested one.
    let e = as_root(
        &w.agent,
        &[
            "explain",
            &w.alice.identity(),
            &format!("{}/tcp", w.server.port()),
            "--json",
        ],
    )
    .ok()
    .json();
    assert_eq!(e["ok"]["allowed"], true, "{e}");
    assert!(e["ok"]["remaining_secs"].as_u64().unwrap() <= 3, "{e}");

    // Closes at its expiry, by itself.
    assert!(eventually(Duration::from_secs(10), || alice
        .tcp(w.server.addr)
        == Outcome::eperm()));

    let g = record(&w.agent, "grant", "grant_id", gid).expect("grant audited");
    assert_eq!(g["request_id"], id);
    assert_eq!(g["ttl_secs"], 3);
    assert_eq!(g["actor"]["uid"], w.bob.uid);
    let a = record(&w.agent, "approve", "request_id", id).expect("approve audited");
    assert_eq!(a["grant_id"], gid);
    assert_eq!(a["requested_by"]["uid"], w.alice.uid);
    assert!(record(&w.agent, "request", "request_id", id).is_some());
    assert!(eventually(Duration::from_secs(5), || record(
        &w.agent, "expire", "grant_id", gid
    )
    .is_some()));
    // Decided once: approving again is refused.
    as_user(&w.agent, &w.bob, &["approve", &id.to_string()]).refused_one_line("no longer pending");
}

#[test]
fn request_wait_exits_zero_when_approved() {
    let w = World::new(&[]);
    let waiting = request_waiting(&w.agent, &w.alice, "db");
    let id = wait_pending(&w.agent);
    as_user(&w.agent, &w.bob, &["approve", &id.to_string()]).ok();
    let r = finish(waiting, Duration::from_secs(20));
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains(&format!("request {id} approved by {}", w.bob.name)),
        "{}",
        r.stdout
    );
    assert_eq!(w.client(&w.alice).tcp(w.server.addr), Outcome::Ok);
}

#[test]
fn a_denied_request_stays_closed_and_the_requester_is_told_why() {
    let w = World::new(&[]);
    let waiting = request_waiting(&w.agent, &w.alice, "db");
    let id = wait_pending(&w.agent);
    // --reason is required by the CLI (exit 2), and blank is refused by the agent.
    assert_eq!(
        as_user(&w.agent, &w.bob, &["deny", &id.to_string()]).code,
        Some(2)
    );
    as_user(
        &w.agent,
        &w.bob,
        &["deny", &id.to_string(), "--reason", "  "],
    )
    .refused_one_line("needs a reason");
    let v = as_user(
        &w.agent,
        &w.bob,
        &[
            "deny",
            &id.to_string(),
            "--reason",
            "not during the freeze",
            "--json",
        ],
    )
    .ok()
    .json();
    assert_eq!(v["ok"]["request"]["state"], "denied");
    let r = finish(waiting, Duration::from_secs(20));
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("denied by") && r.stdout.contains("not during the freeze"),
        "{}",
        r.stdout
    );
    assert_eq!(w.client(&w.alice).tcp(w.server.addr), Outcome::eperm());
    let d = record(&w.agent, "deny", "request_id", id).expect("deny audited");
    assert_eq!(d["actor"]["uid"], w.bob.uid);
    assert_eq!(d["reason"], "not during the freeze");
    as_user(&w.agent, &w.bob, &["approve", &id.to_string()]).refused_one_line("was denied by");
}

#[test]
fn undecided_requests_expire_and_the_expiry_is_audited() {
    let w = World::new(&["--request-expiry", "2s"]);
    let waiting = request_waiting(&w.agent, &w.alice, "db");
    let id = wait_pending(&w.agent);
    assert!(
        eventually(Duration::from_secs(10), || pending_ids(&w.agent).is_empty()),
        "request {id} never expired"
    );
    let r = finish(waiting, Duration::from_secs(20));
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("expired"), "{}", r.stdout);
    let e = record(&w.agent, "request_expire", "request_id", id).expect("expiry audited");
    assert_eq!(e["requested_by"]["uid"], w.alice.uid);
    as_user(&w.agent, &w.bob, &["approve", &id.to_string()]).refused_one_line("expired");
    assert!(refused_record(&w.agent, "approve", w.bob.uid).is_some());
    assert_eq!(w.client(&w.alice).tcp(w.server.addr), Outcome::eperm());
}

#[test]
fn ttls_above_max_ttl_are_refused_for_requests_and_approvals() {
    let w = World::new(&[]);
    as_user(
        &w.agent,
        &w.alice,
        &["request", "db", "--ttl", "1h", "--reason", "x"],
    )
    .refused_one_line("longer than segment db's max_ttl of 10m");
    assert!(refused_record(&w.agent, "request", w.alice.uid).is_some());
    as_user(&w.agent, &w.alice, &["request", "db"]).refused_one_line("requires a reason");
    assert!(pending_ids(&w.agent).is_empty());

    let id = request(&w.agent, &w.alice, "db", "5m");
    // Never longer than asked...
    as_user(
        &w.agent,
        &w.bob,
        &["approve", &id.to_string(), "--ttl", "8m"],
    )
    .refused_one_line("never lengthen");
    // ...nor than the policy in force when approving: shrink max_ttl to 1m.
    let digest =
        |a: &Agent| as_root(a, &["status", "--json"]).ok().json()["ok"]["policy_digest"].clone();
    let before = digest(&w.agent);
    let file = w.agent.policies.join("test.toml");
    let text = fs::read_to_string(&file)
        .unwrap()
        .replace("\"10m\"", "\"1m\"");
    fs::write(&file, text).unwrap();
    unsafe { libc::kill(w.agent.pid() as i32, libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(10), || digest(&w.agent) != before));
    as_user(&w.agent, &w.bob, &["approve", &id.to_string()])
        .refused_one_line("longer than segment db's max_ttl of 1m");
    as_user(
        &w.agent,
        &w.bob,
        &["approve", &id.to_string(), "--ttl", "30s"],
    )
    .ok();
    assert!(refused_record(&w.agent, "approve", w.bob.uid).is_some());
}

#[test]
fn segments_without_jit_take_no_requests_or_grants() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let alice = TestUser::new();
    let agent = open_agent(&segment("vault", server.port(), &[], None), &cg, &[]);
    as_user(&agent, &alice, &["request", "vault", "--reason", "x"])
        .refused_one_line("has no [segment.vault.jit] table");
    as_root(
        &agent,
        &["grant", "vault", &alice.identity(), "--ttl", "1m"],
    )
    .refused_one_line("has no [segment.vault.jit] table");
    assert!(refused_record(&agent, "request", alice.uid).is_some());
    assert!(refused_record(&agent, "grant", 0).is_some());
}

#[test]
fn revoke_by_identity_across_segments_and_by_segment() {
    let cg = TestCgroup::new();
    let one = EchoServer::tcp("127.0.0.1:0");
    let two = EchoServer::tcp("127.0.0.1:0");
    let (alice, bob, carol, dave) = (
        TestUser::new(),
        TestUser::new(),
        TestUser::new(),
        TestUser::new(),
    );
    let approver = bob.identity();
    let policy = format!(
        "{}{}",
        segment("one", one.port(), &[], Some(("1h", &[&approver], false))),
        segment("two", two.port(), &[], Some(("1h", &[&approver], false)))
    );
    let agent = open_agent(&policy, &cg, &[]);
    let client = |u: &TestUser| As::user(&cg.path, u.uid, u.gid);
    let grant = |seg: &str, u: &TestUser| {
        let v = as_user(
            &agent,
            &bob,
            &["grant", seg, &u.identity(), "--ttl", "10m", "--json"],
        )
        .ok()
        .json();
        v["ok"]["grant"]["id"].as_u64().unwrap()
    };
    grant("one", &alice);
    let alice_two = grant("two", &alice);
    grant("two", &dave);
    let carol_one = grant("one", &carol);
    assert_eq!(client(&alice).tcp(one.addr), Outcome::Ok);
    assert_eq!(client(&alice).tcp(two.addr), Outcome::Ok);

    // Others may not revoke alice's grant; she may revoke her own.
    as_user(&agent, &carol, &["revoke", &alice_two.to_string()])
        .refused_one_line("may not revoke grant");
    assert!(refused_record(&agent, "revoke", carol.uid).is_some());
    as_user(&agent, &carol, &["revoke", &carol_one.to_string()]).ok();
    assert_eq!(client(&carol).tcp(one.addr), Outcome::eperm());

    // "Alice left": every grant of hers, on every segment, in one command.
    let out = as_user(&agent, &bob, &["revoke", "--identity", &alice.identity()]).ok();
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert_eq!(client(&alice).tcp(one.addr), Outcome::eperm());
    assert_eq!(client(&alice).tcp(two.addr), Outcome::eperm());
    assert_eq!(
        client(&dave).tcp(two.addr),
        Outcome::Ok,
        "dave's grant untouched"
    );

    // Close a segment to every grant at once.
    grant("one", &dave);
    as_user(&agent, &bob, &["revoke", "--segment", "two"]).ok();
    assert_eq!(client(&dave).tcp(two.addr), Outcome::eperm());
    assert_eq!(
        client(&dave).tcp(one.addr),
        Outcome::Ok,
        "other segment untouched"
    );
    let revokes = agent
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "revoke")
        .count();
    assert_eq!(revokes, 4);
}

/// A process that stays put in `cgroup` as `u` until dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start(who: &As) -> Self {
        Self(
            who.command("sleep")
                .arg("120")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn explain(agent: &Agent, args: &[&str]) -> Value {
    let mut a = vec!["explain"];
    a.extend_from_slice(args);
    a.push("--json");
    let ran = as_root(agent, &a);
    let v = ran.json()["ok"].clone();
    // `explain` exits 1 on DENY (as `kubectl auth can-i`), 0 otherwise.
    let no = v["allowed"] == false && v["mode"] != "audit";
    assert_eq!(ran.code, Some(if no { 1 } else { 0 }), "{v}");
    v
}

#[test]
fn explain_agrees_with_real_connections() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let open_port = EchoServer::tcp("127.0.0.1:0");
    let alice = TestUser::new();
    let allowed_cg = cg.child("allowed.service");
    let other_cg = cg.child("other.service");
    let standing = format!("cgroup:{}/allowed.service", cg.rel);
    let agent = open_agent(
        &segment("db", server.port(), &[&standing], Some(("1h", &[], false))),
        &cg,
        &[],
    );
    let port = format!("{}/tcp", server.port());
    let in_allowed = As::user(&allowed_cg, alice.uid, alice.gid);
    let in_other = As::user(&other_cg, alice.uid, alice.gid);
    let p_allowed = Sleeper::start(&in_allowed);
    let p_other = Sleeper::start(&in_other);
    // Each explanation is checked against a real connect from the same
    // cgroup and credentials.
    let agrees = |who: &As, pid: &Sleeper, addr: std::net::SocketAddr| {
        let e = explain(
            &agent,
            &["--pid", &pid.pid(), &format!("{}/tcp", addr.port())],
        );
        let real = who.tcp(addr);
        assert_eq!(
            e["allowed"].as_bool().unwrap(),
            real == Outcome::Ok,
            "explain says {e}, connect says {real:?}"
        );
        e
    };

    // Allowed by the standing allow, traced to the policy file.
    let e = agrees(&in_allowed, &p_allowed, server.addr);
    assert_eq!(e["allowed"], true);
    assert_eq!(e["segment"], "db");
    assert!(
        e["decided_by"]
            .as_str()
            .unwrap()
            .contains(&format!("standing allow {standing}")),
        "{e}"
    );
    assert!(
        e["decided_by"].as_str().unwrap().contains("test.toml"),
        "{e}"
    );
    assert_eq!(e["remaining_secs"], Value::Null);
    let e = explain(&agent, &[&standing, &port]);
    assert_eq!(e["allowed"], true, "{e}");

    // Denied: same user, another cgroup.
    let e = agrees(&in_other, &p_other, server.addr);
    assert_eq!(e["allowed"], false);
    assert!(e["checks"].as_array().unwrap().iter().any(|c| c["key"]
        .as_str()
        .unwrap()
        .starts_with(&format!("uid {} ({})", alice.uid, alice.name))));
    assert_eq!(
        explain(&agent, &[&alice.identity(), &port])["allowed"],
        false
    );

    // Allowed by a grant, with who granted it and the time left.
    let id = agent.grant("db", &alice.identity(), "10m");
    let e = agrees(&in_other, &p_other, server.addr);
    assert_eq!(e["allowed"], true);
    let why = e["decided_by"].as_str().unwrap();
    assert!(
        why.contains(&format!("grant {id} of {} by root", alice.identity())),
        "{why}"
    );
    assert!(e["remaining_secs"].as_u64().unwrap() <= 600);
    let e = explain(&agent, &[&alice.identity(), &port]);
    assert_eq!(e["allowed"], true);
    assert!(e["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("primary gid")));

    // Revoked: denied again, in both.
    agent.ok(&["revoke", &id.to_string()]);
    let e = agrees(&in_other, &p_other, server.addr);
    assert_eq!(e["allowed"], false);

    // An unprotected port.
    let e = agrees(&in_other, &p_other, open_port.addr);
    assert_eq!(e["allowed"], true);
    assert_eq!(e["segment"], Value::Null);

    // Human output names the segment, the key and the verdict.
    let human = as_root(&agent, &["explain", "--pid", &p_allowed.pid(), &port])
        .ok()
        .stdout;
    assert!(human.contains("segment db"), "{human}");
    assert!(human.contains("ALLOW"), "{human}");
    assert!(human.contains("never expires"), "{human}");
    // Bad arguments are refused before reaching the agent, or by it, with a reason.
    as_root(&agent, &["explain", "--pid", "999999999", &port])
        .refused_one_line("cannot read process 999999999");
    let r = as_root(&agent, &["explain", "user:root", "5432"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}

#[test]
fn the_socket_refuses_users_outside_its_mode_and_says_so() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let carol = TestUser::new();
    // Default: 0660 root:root.
    let agent = Agent::start(&segment("db", server.port(), &[], None), &cg.path);
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let mode = fs::metadata(&agent.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let r = as_user(&agent, &carol, &["list"]);
    assert_eq!(r.code, Some(3), "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("permission denied on"), "{}", r.stderr);
    assert!(
        r.stderr.contains("member of the socket's group"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_socket_group_lets_its_members_in_and_nobody_else() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let (dave, carol) = (TestUser::new(), TestUser::new());
    let ops = TestGroup::new();
    dave.join(&ops);
    let agent = Agent::builder(&segment("db", server.port(), &[], None), &cg.path)
        .arg("--socket-group")
        .arg(&ops.name)
        .start();
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
    // With the supplementary groups of a login, as a real member would have.
    let as_member = |u: &TestUser| {
        Ran::of(
            Command::new("setpriv")
                .args([
                    "--reuid",
                    &u.name,
                    "--regid",
                    &u.name,
                    "--init-groups",
                    "--",
                ])
                .arg(portcullis_bin())
                .arg("--socket")
                .arg(&agent.socket)
                .args(["list", "--json"])
                .stdin(Stdio::null())
                .output()
                .expect("run setpriv"),
        )
    };
    let v = as_member(&dave).ok().json();
    assert!(v["ok"]["standing"].is_array(), "{v}");
    let r = as_member(&carol);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
}

#[test]
fn pending_requests_survive_an_agent_restart() {
    let mut w = World::new(&[]);
    let id = request(&w.agent, &w.alice, "db", "5m");
    let before = as_root(&w.agent, &["list", "--pending", "--json"])
        .ok()
        .json();
    assert!(w.agent.stop().success());
    w.agent
        .spawn(&["--socket-mode".to_string(), "666".to_string()]);
    let after = as_root(&w.agent, &["list", "--pending", "--json"])
        .ok()
        .json();
    assert_eq!(after["ok"]["requests"][0]["id"], id);
    assert_eq!(
        after["ok"]["requests"][0]["expires_at"], before["ok"]["requests"][0]["expires_at"],
        "the deadline is kept, not restarted"
    );
    let v = as_user(&w.agent, &w.bob, &["approve", &id.to_string(), "--json"])
        .ok()
        .json();
    // The id counter was saved with the request: the new grant's id is fresh.
    assert!(v["ok"]["grant"]["id"].as_u64().unwrap() > id);
    assert_eq!(w.client(&w.alice).tcp(w.server.addr), Outcome::Ok);
}
