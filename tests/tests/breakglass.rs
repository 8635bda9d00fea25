//! Issue 18 items 3-5 end to end, with real users and the real agent:
//! break-glass opens a segment at once (a connect succeeds), capped at
//! `break_glass_max_ttl` in the kernel, refused without a reason, on a
//! segment without break-glass and for a locked user, audited as
//! `break_glass` and listed by `report break-glass` with how it ended;
//! `request show` tells a request's whole history (the request, two
//! approvals, the grant and the kernel's count of its use, its end), across
//! a restart, and only to those who may see it; a grantee's `extend` files
//! a request whose approval lengthens the kernel expiry of the live grant
//! with no refused connect in between, bounded by max_ttl.
use std::{fs, os::unix::fs::PermissionsExt, process::Stdio, time::Duration};

use portcullis_tests::{
    ran::Ran,
    session::Session,
    users::{TestGroup, TestUser},
    *,
};
use serde_json::Value;

/// Fields drop in declaration order: the agent first, then the servers,
/// the cgroup and the accounts.
struct World {
    agent: Agent,
    server: EchoServer,
    /// A segment without break-glass.
    plain: EchoServer,
    cg: TestCgroup,
    /// Asks for access.
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
        let plain = EchoServer::tcp("127.0.0.1:0");
        let (alice, bob, carol, dave) = (
            TestUser::new(),
            TestUser::new(),
            TestUser::new(),
            TestUser::new(),
        );
        let approvers = TestGroup::new();
        bob.join(&approvers);
        dave.join(&approvers);
        let policy = format!(
            "[segment.db]\nports = [\"{}/tcp\"]\n\n[segment.db.jit]\nmax_ttl = \"10m\"\n\
             approvers = [\"group:{g}\"]\nrequire_reason = true\napprovals_required = 2\n\
             break_glass = true\nbreak_glass_max_ttl = \"2m\"\n\n\
             [segment.plain]\nports = [\"{}/tcp\"]\n\n[segment.plain.jit]\nmax_ttl = \"10m\"\n\
             approvers = [\"group:{g}\"]\n",
            server.port(),
            plain.port(),
            g = approvers.name
        );
        let agent = Agent::builder(&policy, &cg.path)
            .arg("--socket-mode")
            .arg("666")
            .start();
        fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            agent,
            server,
            plain,
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

    fn root(&self, args: &[&str]) -> Ran {
        Ran::of(self.agent.cli(args))
    }

    fn connects(&self, u: &TestUser, server: &EchoServer) -> Outcome {
        As::user(&self.cg.path, u.uid, u.gid).tcp(server.addr)
    }

    /// The kernel's view: whether `u` may reach the db now, and for how long.
    fn explain(&self, u: &TestUser) -> Value {
        self.root(&[
            "explain",
            &u.identity(),
            &format!("{}/tcp", self.server.port()),
            "--json",
        ])
        .ok()
        .json()
    }

    fn break_glass_report(&self) -> Vec<Value> {
        let path = self.agent.dir.join("audit.jsonl");
        let v = self
            .root(&[
                "report",
                "break-glass",
                "--file",
                path.to_str().unwrap(),
                "--json",
            ])
            .ok()
            .json();
        v.as_array().expect("an array").clone()
    }
}

#[test]
fn break_glass_opens_at_once_is_capped_refused_without_its_conditions_and_reviewed() {
    let w = World::new();
    assert_eq!(w.connects(&w.carol, &w.server), Outcome::eperm());

    // Refused: no reason (the CLI requires one; a blank one the agent refuses).
    let r = w.as_user(&w.carol, &["request", "db", "--break-glass"]);
    assert_eq!(r.code, Some(2), "{}{}", r.stdout, r.stderr);
    w.as_user(
        &w.carol,
        &["request", "db", "--break-glass", "--reason", "  "],
    )
    .refused("break-glass needs a reason");
    // Refused: longer than break_glass_max_ttl.
    w.as_user(
        &w.carol,
        &[
            "request",
            "db",
            "--break-glass",
            "--reason",
            "INC-1",
            "--ttl",
            "5m",
        ],
    )
    .refused("opens at most 2m");
    // Refused: a segment without break-glass.
    w.as_user(
        &w.carol,
        &["request", "plain", "--break-glass", "--reason", "INC-1"],
    )
    .refused("does not allow break-glass");
    assert_eq!(w.connects(&w.carol, &w.plain), Outcome::eperm());
    // Refused: a locked user.
    w.root(&["lock", &w.dave.identity(), "--reason", "offboarding"])
        .ok();
    w.as_user(
        &w.dave,
        &["request", "db", "--break-glass", "--reason", "INC-1"],
    )
    .refused("is locked");
    assert_eq!(w.connects(&w.dave, &w.server), Outcome::eperm());

    // Opens at once: no approver, the connect succeeds.
    let v = w
        .as_user(
            &w.carol,
            &[
                "request",
                "db",
                "--break-glass",
                "--reason",
                "INC-1: primary down",
                "--json",
            ],
        )
        .ok()
        .json();
    let gid = v["ok"]["grant"]["id"].as_u64().expect("a grant id");
    assert_eq!(w.connects(&w.carol, &w.server), Outcome::Ok);
    // Capped in the kernel: at most 2m left.
    let x = w.explain(&w.carol);
    assert_eq!(x["ok"]["allowed"], true, "{x}");
    let left = x["ok"]["remaining_secs"].as_u64().unwrap();
    assert!(left <= 120 && left > 0, "{x}");

    // Audited as break_glass, before its grant record.
    let records = w.agent.audit_records();
    let at = records
        .iter()
        .position(|r| r["event"] == "break_glass" && r["grant_id"] == gid)
        .expect("a break_glass record");
    let bg = &records[at];
    assert_eq!(bg["actor"]["uid"], w.carol.uid);
    assert_eq!(bg["reason"], "INC-1: primary down");
    assert_eq!(bg["ttl_secs"], 120);
    assert_eq!(records[at + 1]["event"], "grant", "{:?}", &records[at..]);
    let refused = records
        .iter()
        .filter(|r| r["event"] == "refused" && r["op"] == "break_glass")
        .count();
    assert_eq!(refused, 4, "each refusal audited once");

    // Reviewed afterwards: listed live, then with its end and use.
    let rows = w.break_glass_report();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["grant_id"], gid);
    assert_eq!(rows[0]["reason"], "INC-1: primary down");
    assert_eq!(rows[0]["ended"], "live", "{rows:?}");
    w.root(&["revoke", &gid.to_string()]).ok();
    assert_eq!(w.connects(&w.carol, &w.server), Outcome::eperm());
    let rows = w.break_glass_report();
    assert_eq!(rows[0]["ended"], "revoked", "{rows:?}");
    assert!(rows[0]["connections"].as_u64().unwrap() >= 1, "{rows:?}");
    let text = w
        .root(&[
            "report",
            "break-glass",
            "--file",
            w.agent.dir.join("audit.jsonl").to_str().unwrap(),
        ])
        .ok()
        .stdout;
    assert!(
        text.contains("INC-1: primary down") && text.contains("revoked"),
        "{text}"
    );
}

#[test]
fn request_show_tells_the_whole_history_to_those_who_may_see_it() {
    let mut w = World::new();
    let v = w
        .as_user(
            &w.alice,
            &[
                "request", "db", "--ttl", "5m", "--reason", "INC-2", "--json",
            ],
        )
        .ok()
        .json();
    let id = v["ok"]["request"]["id"].as_u64().unwrap();
    let ids = id.to_string();
    w.as_user(&w.bob, &["approve", &ids]).ok();

    // Live: pending, one approval so far.
    let show = |w: &World, u: &TestUser| w.as_user(u, &["request", "show", &ids, "--json"]);
    let v = show(&w, &w.alice).ok().json();
    let h = &v["ok"];
    assert_eq!(h["request"]["state"], "pending", "{v}");
    assert_eq!(h["request"]["approvals"][0]["uid"], w.bob.uid);
    // Not carol's to see (nor a stranger's reason to read).
    w.as_user(&w.carol, &["request", "show", &ids])
        .refused(&format!("may not see request {id}"));

    w.as_user(&w.dave, &["approve", &ids]).ok();
    assert_eq!(w.connects(&w.alice, &w.server), Outcome::Ok);
    // Decided, across a restart: the whole history and the grant's use.
    assert!(w.agent.stop().success());
    w.agent
        .spawn(&["--socket-mode".to_string(), "666".to_string()]);
    let v = show(&w, &w.bob).ok().json();
    let h = &v["ok"];
    assert_eq!(h["request"]["state"], "approved", "{v}");
    let uids: Vec<u64> = h["request"]["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(uids, vec![u64::from(w.bob.uid), u64::from(w.dave.uid)]);
    let events: Vec<&str> = h["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["request", "approval", "grant", "approve"], "{v}");
    let gid = h["request"]["grant_id"].as_u64().unwrap();
    assert_eq!(h["grant"]["id"], gid);
    assert!(
        h["grant"]["usage"]["connections"].as_u64().unwrap() >= 1,
        "the kernel counted alice's connect: {v}"
    );
    // Ended: the end record and its use.
    w.root(&["revoke", &gid.to_string()]).ok();
    let v = show(&w, &w.alice).ok().json();
    let end = &v["ok"]["grant_end"];
    assert_eq!(end["event"], "revoke", "{v}");
    assert!(end["usage"]["connections"].as_u64().unwrap() >= 1, "{v}");
    let human = w.as_user(&w.alice, &["request", "show", &ids]).ok().stdout;
    assert!(
        human.contains("approvals: 2 of 2") && human.contains("ended (revoke)"),
        "{human}"
    );
}

#[test]
fn a_grantees_extend_is_approved_and_lengthens_the_grant_without_a_gap() {
    let w = World::new();
    let alice = As::user(&w.cg.path, w.alice.uid, w.alice.gid);
    let v = w
        .root(&[
            "grant",
            "db",
            &w.alice.identity(),
            "--ttl",
            "15s",
            "--reason",
            "INC-3",
            "--json",
        ])
        .ok()
        .json();
    let gid = v["ok"]["grant"]["id"].as_u64().unwrap();
    let id = gid.to_string();

    // An open session and a connect loop across the original expiry.
    let mut cmd = alice.command(probe_bin());
    cmd.args(["hold", &w.server.addr.to_string(), "100", "600"]);
    let session = Session::start(cmd);
    session.wait_round_trips(2, Duration::from_secs(10));
    let looping = alice
        .command(probe_bin())
        .args(["loop-until", &w.server.addr.to_string(), "20", "200000"])
        .env("PC_PROBE_TIMEOUT_MS", "2000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start connect loop");

    // Past max_ttl: refused as a request would be.
    w.as_user(
        &w.alice,
        &["extend", &id, "--ttl", "11m", "--reason", "more"],
    )
    .refused("max_ttl");
    // The grantee asks; two approvers decide; she cannot approve it herself.
    let r = w
        .as_user(
            &w.alice,
            &[
                "extend",
                &id,
                "--ttl",
                "5m",
                "--reason",
                "INC-3 still open",
                "--json",
            ],
        )
        .ok()
        .json();
    let rid = r["ok"]["request"]["id"].as_u64().expect("a request");
    let rids = rid.to_string();
    w.as_user(&w.alice, &["approve", &rids])
        .refused(&format!("may not approve request {rid}"));
    w.as_user(&w.bob, &["approve", &rids]).ok();
    let a = w
        .as_user(&w.dave, &["approve", &rids, "--json"])
        .ok()
        .json();
    assert_eq!(a["ok"]["grant"]["id"], gid, "the same grant: {a}");

    // The kernel holds the later expiry.
    let x = w.explain(&w.alice);
    assert_eq!(x["ok"]["allowed"], true, "{x}");
    assert!(x["ok"]["remaining_secs"].as_u64().unwrap() > 60, "{x}");
    // 200 round trips (20 s) outlive the original 15 s: none refused.
    session.wait_round_trips(200, Duration::from_secs(90));
    let out = looping.wait_with_output().expect("connect loop");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert!(f.len() >= 7 && f[0] == "loop", "{text:?}");
    assert_eq!(
        f[4], "0",
        "a connect was refused across the extension: {text}"
    );
    assert_ne!(f[2], "0", "{text}");

    let rec = w
        .agent
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "extend" && r["grant_id"] == gid)
        .expect("extend audited");
    assert_eq!(rec["request_id"], rid);
    assert_eq!(rec["actor"]["uid"], w.dave.uid);
    assert_eq!(rec["ttl_secs"], 300);
    // Still one grant: nothing new was opened.
    let l = w.root(&["list", "--json"]).ok().json();
    let grants = l["ok"]["grants"].as_array().cloned().unwrap_or_default();
    assert_eq!(grants.len(), 1, "{l}");
}
