//! Issue 12, items 4 (transactions, transient policies), 7 (policy files
//! as trusted input) and 9 (no self-service for approvers), end to end:
//! the real agent on its own child cgroup, real servers on loopback,
//! strangers and approvers that are real unprivileged users.
//!
//! Each test names the way enforcement used to be lost that it pins down.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use portcullis_tests::{
    traffic::*,
    users::{TestGroup, TestUser},
    *,
};
use serde_json::Value;

/// Generous bound for anything the agent does in reaction to an event.
const WITHIN: Duration = Duration::from_secs(10);

/// One segment on `port` with a JIT table (`approvers`, no reason needed).
fn segment(name: &str, port: u16, allow: &[&str], approvers: &[&str]) -> String {
    let q = |xs: &[&str]| {
        xs.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[segment.{name}]\nports = [\"{port}/tcp\"]\nallow = [{}]\n\n[segment.{name}.jit]\nmax_ttl = \"1h\"\napprovers = [{}]\nrequire_reason = false\n\n",
        q(allow),
        q(approvers)
    )
}

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

fn status(agent: &Agent) -> Value {
    json(agent.ok(&["status", "--json"]).as_bytes())["ok"].clone()
}

fn list(agent: &Agent) -> Value {
    json(agent.ok(&["list", "--json"]).as_bytes())["ok"].clone()
}

fn reloads(agent: &Agent) -> Vec<Value> {
    agent
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "policy_reload")
        .collect()
}

fn sighup(agent: &Agent) {
    // SAFETY: kill(2) on the agent process this test started.
    let rc = unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0, "SIGHUP to the agent failed");
}

/// Waits for a policy_reload record after the first `before`; returns it.
#[track_caller]
fn next_reload(agent: &Agent, before: usize) -> Value {
    let mut all = Vec::new();
    assert!(
        eventually(WITHIN, || {
            all = reloads(agent);
            all.len() > before
        }),
        "no policy_reload record within {WITHIN:?}"
    );
    all.pop().unwrap()
}

/// Waits until status says the last reload succeeded.
#[track_caller]
fn wait_reload_ok(agent: &Agent) {
    assert!(
        eventually(WITHIN, || status(agent)["last_reload"]["ok"] == true),
        "no successful reload within {WITHIN:?}: {:#}",
        status(agent)
    );
}

/// Waits until status reports a failed reload whose errors mention every
/// needle; returns the errors.
#[track_caller]
fn wait_refused(agent: &Agent, needles: &[&str]) -> String {
    let mut errors = String::new();
    let ok = eventually(WITHIN, || {
        let s = status(agent);
        errors = s["last_reload"]["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e.as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        s["last_reload"]["ok"] == false && needles.iter().all(|n| errors.contains(n))
    });
    assert!(
        ok,
        "no refused reload mentioning {needles:?} within {WITHIN:?}; last errors: {errors}"
    );
    errors
}

// ---- 4. Policy changes are transactions --------------------------------

/// Issue 12: "a reload refused because the grant map is full writes its
/// first new allows into the kernel and returns without rolling back ...
/// yet the uid listed only in the refused policy connects."
#[test]
fn a_reload_refused_for_capacity_leaves_no_new_entry_in_the_kernel() {
    let cg = TestCgroup::new();
    let server = Sink::new();
    let port = server.addr.port();
    let old = segment("db", port, &["uid:40300"], &[]);
    // Room for 4 entries: the standing allow and two grants use 3.
    let agent = Agent::builder(&old, &cg.path)
        .arg("--max-grants")
        .arg("4")
        .start();
    agent.grant("db", "uid:40301", "30m");
    agent.grant("db", "uid:40302", "30m");
    let digest = status(&agent)["policy_digest"].clone();
    let before = reloads(&agent).len();

    // Two new standing allows: the first would fit, the second not.
    let refused = segment("db", port, &["uid:40300", "uid:40303", "uid:40304"], &[]);
    fs::write(agent.policies.join("test.toml"), &refused).unwrap();
    let record = next_reload(&agent, before);
    assert_eq!(record["ok"], false, "{record:#}");

    // Neither uid listed only in the refused policy gets through.
    for uid in [40303, 40304] {
        assert_eq!(
            connect_once(&As::user(&cg.path, uid, uid), server.addr),
            Outcome::eperm(),
            "uid {uid} is only in the refused policy"
        );
    }
    let s = status(&agent);
    assert_eq!(s["policy_digest"], digest, "the old policy stays in force");
    let errors = s["last_reload"]["errors"].to_string();
    assert!(
        errors.contains("PC_GRANTS") && errors.contains("nothing was changed"),
        "{errors}"
    );
    // What was allowed still is; the stranger still is not.
    for uid in [40300, 40301, 40302] {
        assert_eq!(
            connect_once(&As::user(&cg.path, uid, uid), server.addr),
            Outcome::Ok
        );
    }
    assert_eq!(
        connect_once(&As::user(&cg.path, 40309, 40309), server.addr),
        Outcome::eperm()
    );
    let l = list(&agent);
    assert_eq!(l["standing"].as_array().unwrap().len(), 1, "{l:#}");
    assert_eq!(s["grant_entries"], 3);
}

/// Starts a stranger's connect loop, runs `change`, stops the loop and
/// returns (successes, refusals).
fn stranger_during(cg: &TestCgroup, server: &Sink, change: impl FnOnce()) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let looping = probe_loop(
        As::user(&cg.path, 40319, 40319),
        server.addr,
        stop.clone(),
        10_000,
    );
    change();
    stop.store(true, Ordering::Relaxed);
    let (ok, eperm, other, errors) = looping.join().expect("probe loop");
    assert_eq!(other, 0, "unexpected errors: {errors:?}");
    (ok, eperm)
}

/// Issue 12: "a config-management deploy that truncates a file and writes
/// it more than 200 ms later ... opened every port ... and dropped every
/// grant."
#[test]
fn truncating_the_policy_file_and_writing_it_back_opens_nothing_and_keeps_the_grant() {
    let cg = TestCgroup::new();
    let server = Sink::new();
    let text = segment("db", server.addr.port(), &[], &[]);
    let agent = Agent::start(&text, &cg.path);
    let grant = agent.grant("db", "uid:40310", "30m");
    let before = reloads(&agent).len();
    let file = agent.policies.join("test.toml");

    let (ok, eperm) = stranger_during(&cg, &server, || {
        fs::File::create(&file).expect("truncate");
        let refused = next_reload(&agent, before);
        assert_eq!(refused["ok"], false, "{refused:#}");
        thread::sleep(Duration::from_secs(1));
        fs::write(&file, &text).unwrap();
        wait_reload_ok(&agent);
    });
    eprintln!("stranger during truncate + rewrite: {ok} connected, {eperm} refused");
    assert_eq!(ok, 0, "a stranger connected while the file was empty");
    assert!(eperm > 0, "the stranger's loop never ran");
    let errors: String = reloads(&agent)
        .iter()
        .filter(|r| r["ok"] == false)
        .map(|r| r["errors"].to_string())
        .collect();
    assert!(errors.contains("allow_empty = true"), "{errors}");

    assert_eq!(
        connect_once(&As::user(&cg.path, 40310, 40310), server.addr),
        Outcome::Ok,
        "the granted client still connects"
    );
    let l = list(&agent);
    assert_eq!(l["grants"][0]["id"], grant, "{l:#}");
    assert!(l["grants"][0].get("suspended_until").is_none(), "{l:#}");
}

/// Issue 12: "... or does `rm -rf dir; mkdir dir; cp`, opened every port."
#[test]
fn replacing_the_policy_directory_opens_nothing_and_keeps_the_grant() {
    let cg = TestCgroup::new();
    let server = Sink::new();
    let text = segment("db", server.addr.port(), &[], &[]);
    let agent = Agent::start(&text, &cg.path);
    let grant = agent.grant("db", "uid:40311", "30m");
    let staged = agent.dir.join("staged.toml");
    fs::write(&staged, &text).unwrap();
    let before = reloads(&agent).len();

    let (ok, eperm) = stranger_during(&cg, &server, || {
        fs::remove_dir_all(&agent.policies).unwrap();
        fs::create_dir(&agent.policies).unwrap();
        // The agent looks at the empty directory and refuses it.
        let _ = wait_refused(&agent, &["protects nothing"]);
        assert!(reloads(&agent).len() > before);
        thread::sleep(Duration::from_secs(1));
        fs::copy(&staged, agent.policies.join("test.toml")).unwrap();
        wait_reload_ok(&agent);
    });
    eprintln!("stranger during rm -rf + mkdir + cp: {ok} connected, {eperm} refused");
    assert_eq!(ok, 0, "a stranger connected while the directory was empty");
    assert!(eperm > 0, "the stranger's loop never ran");
    assert_eq!(
        connect_once(&As::user(&cg.path, 40311, 40311), server.addr),
        Outcome::Ok
    );
    let l = list(&agent);
    assert_eq!(l["grants"][0]["id"], grant, "{l:#}");
}

/// Issue 12: "grants on the segments that vanished are revoked for good".
/// A file removed (on purpose, so its segment goes and its port opens) and
/// put back within the grace: the grant is live again, same expiry.
#[test]
fn a_grant_outlives_its_segment_leaving_and_coming_back_within_the_grace() {
    let cg = TestCgroup::new();
    let one = Sink::new();
    let two = Sink::new();
    let agent = Agent::start(&segment("one", one.addr.port(), &[], &[]), &cg.path);
    let b = agent.policies.join("b.toml");
    fs::write(&b, segment("two", two.addr.port(), &[], &[])).unwrap();
    wait_reload_ok(&agent);
    let grant = agent.grant("two", "uid:40312", "30m");
    let expires = list(&agent)["grants"][0]["expires_at"].clone();
    let holder = As::user(&cg.path, 40312, 40312);
    let stranger = As::user(&cg.path, 40313, 40313);
    assert_eq!(connect_once(&holder, two.addr), Outcome::Ok);

    let before = reloads(&agent).len();
    fs::remove_file(&b).unwrap();
    assert_eq!(next_reload(&agent, before)["ok"], true);
    // `two` is gone: its port is open to all, the grant opens nothing more.
    assert_eq!(connect_once(&stranger, two.addr), Outcome::Ok);
    let l = list(&agent);
    assert!(l["grants"][0]["suspended_until"].is_string(), "{l:#}");
    let suspended = agent
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "grant_suspended" && r["grant_id"] == grant)
        .expect("grant_suspended audited");
    assert_eq!(suspended["grace_secs"], 600, "{suspended:#}");
    assert_eq!(status(&agent)["grant_entries"], 0);

    let before = reloads(&agent).len();
    fs::write(&b, segment("two", two.addr.port(), &[], &[])).unwrap();
    assert_eq!(next_reload(&agent, before)["ok"], true);
    assert_eq!(connect_once(&holder, two.addr), Outcome::Ok);
    assert_eq!(connect_once(&stranger, two.addr), Outcome::eperm());
    let l = list(&agent);
    assert_eq!(l["grants"][0]["id"], grant, "{l:#}");
    assert_eq!(l["grants"][0]["expires_at"], expires, "original expiry");
    assert!(l["grants"][0].get("suspended_until").is_none(), "{l:#}");
    assert!(agent
        .audit_records()
        .iter()
        .any(|r| r["event"] == "grant_resumed" && r["grant_id"] == grant));
}

/// The explicit way to protect nothing: `allow_empty = true`.
#[test]
fn an_empty_policy_declared_on_purpose_is_applied() {
    let cg = TestCgroup::new();
    let server = Sink::new();
    let agent = Agent::start(&segment("db", server.addr.port(), &[], &[]), &cg.path);
    let stranger = As::user(&cg.path, 40314, 40314);
    assert_eq!(connect_once(&stranger, server.addr), Outcome::eperm());
    let before = reloads(&agent).len();
    fs::write(
        agent.policies.join("test.toml"),
        "# protect nothing, on purpose\nallow_empty = true\n",
    )
    .unwrap();
    assert_eq!(next_reload(&agent, before)["ok"], true);
    assert_eq!(connect_once(&stranger, server.addr), Outcome::Ok);
    assert_eq!(status(&agent)["segments"].as_array().unwrap().len(), 0);
}

// ---- 7. Policy files as trusted input ----------------------------------

/// `portcullis check DIR` as nobody: its stderr and exit code.
fn check_as_nobody(dir: &std::path::Path) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new(portcullis_bin())
        .arg("check")
        .arg(dir)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 12: "A FIFO named `*.toml` in the policy directory hung the
/// agent's main loop ... Policy files owned by an ordinary user or writable
/// by everyone are accepted." Each hostile file is refused with a message
/// naming it and the fix, the agent keeps answering, and the previous
/// policy stays in force; `portcullis check` says the same.
#[test]
fn hostile_policy_files_are_refused_without_blocking_and_the_old_policy_stays() {
    let cg = TestCgroup::new();
    let server = Sink::new();
    let other = Sink::new();
    let agent = Agent::start(&segment("db", server.addr.port(), &[], &[]), &cg.path);
    // Let `nobody` run `check` on the directory.
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let digest = status(&agent)["policy_digest"].clone();
    let stranger = As::user(&cg.path, 40315, 40315);
    let owner = TestUser::new();
    // What each hostile file would do if read: open `db` to the stranger.
    let evil = segment("evil", other.addr.port(), &[], &[]);
    let outside = agent.dir.join("outside.toml");
    fs::write(&outside, &evil).unwrap();

    type Make<'a> = Box<dyn Fn(&std::path::Path) + 'a>;
    let cases: Vec<(&str, Make, Vec<&str>)> = vec![
        (
            "fifo",
            Box::new(|p| {
                let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
                // SAFETY: mkfifo(3) on a path this test owns.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            }),
            vec!["is a FIFO", "only regular files"],
        ),
        (
            "world-writable",
            Box::new(|p| {
                fs::write(p, segment("evil", 1, &[], &[])).unwrap();
                fs::set_permissions(p, fs::Permissions::from_mode(0o666)).unwrap();
            }),
            vec!["writable by", "chmod go-w"],
        ),
        (
            "user-owned",
            Box::new(|p| {
                fs::write(p, segment("evil", 1, &[], &[])).unwrap();
                std::os::unix::fs::chown(p, Some(owner.uid), Some(owner.gid)).unwrap();
            }),
            vec!["is owned by", owner.name.as_str(), "chown root"],
        ),
        (
            "symlink-out",
            Box::new(|p| std::os::unix::fs::symlink(&outside, p).unwrap()),
            vec![
                "symbolic link out of the policy directory",
                "policy_symlinks_outside",
            ],
        ),
    ];
    for (name, make, needles) in cases {
        let path = agent.policies.join(format!("x-{name}.toml"));
        let file_name = path.display().to_string();
        make(&path);
        sighup(&agent);
        // The agent answers at once, whatever the file is.
        let started = Instant::now();
        let mut want = needles.clone();
        want.push(&file_name);
        let errors = wait_refused(&agent, &want);
        eprintln!("{name}: refused after {:?}: {errors}", started.elapsed());
        assert_eq!(status(&agent)["policy_digest"], digest, "{name}");
        assert_eq!(connect_once(&stranger, server.addr), Outcome::eperm());
        assert_eq!(status(&agent)["segments"].as_array().unwrap().len(), 1);
        // `portcullis check` refuses the same file, for the same reason.
        let (code, err) = check_as_nobody(&agent.policies);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(
            err.lines().any(|l| l.starts_with("error: ")
                && l.contains(&file_name)
                && l.contains(needles[0])),
            "{name}: {err}"
        );
        fs::remove_file(&path).unwrap();
        sighup(&agent);
        wait_reload_ok(&agent);
    }
    assert_eq!(
        connect_once(&stranger, other.addr),
        Outcome::Ok,
        "evil never applied"
    );
}

/// A symlink out of the directory is read when the configuration says so.
#[test]
fn a_symlink_out_of_the_directory_is_read_when_the_config_allows_it() {
    let cg = TestCgroup::new();
    let server = Sink::new();
    let other = Sink::new();
    let agent = Agent::builder(&segment("db", server.addr.port(), &[], &[]), &cg.path)
        .arg("--policy-symlinks-outside")
        .start();
    let outside = agent.dir.join("outside.toml");
    fs::write(&outside, segment("two", other.addr.port(), &[], &[])).unwrap();
    std::os::unix::fs::symlink(&outside, agent.policies.join("two.toml")).unwrap();
    sighup(&agent);
    assert!(eventually(WITHIN, || status(&agent)["segments"]
        .as_array()
        .unwrap()
        .len()
        == 2));
    let stranger = As::user(&cg.path, 40316, 40316);
    assert_eq!(connect_once(&stranger, other.addr), Outcome::eperm());
}

// ---- 9. No self-service for approvers ----------------------------------

fn open_agent(policy: &str, cg: &TestCgroup) -> Agent {
    let agent = Agent::builder(policy, &cg.path)
        .arg("--socket-mode")
        .arg("666")
        .start();
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
    agent
}

/// Issue 12: "An approver may grant to himself (and to `cgroup:/` or
/// `peer:0.0.0.0/0`), which makes 'nobody approves their own request'
/// moot."
#[test]
fn an_approver_may_not_grant_to_themselves_nor_to_everyone() {
    let cg = TestCgroup::new();
    let server = Sink::new();
    let approvers = TestGroup::new();
    let team = TestGroup::new();
    let bob = TestUser::new();
    let alice = TestUser::new();
    bob.join(&approvers);
    bob.join(&team);
    let group = format!("group:{}", approvers.name);
    let agent = open_agent(&segment("db", server.addr.port(), &[], &[&group]), &cg);
    // One of bob's processes runs in a cgroup below the test's.
    let bobs_cg = cg.child("bob");
    let mut sleeper = As::user(&bobs_cg, bob.uid, bob.gid)
        .command("sleep")
        .arg("60")
        .spawn()
        .expect("spawn bob's sleep");

    let grant_as = |who: &TestUser, identity: &str| {
        agent.cli_as(who.uid, who.gid, &["grant", "db", identity, "--ttl", "10m"])
    };
    let refusals: Vec<(String, &str)> = vec![
        (format!("uid:{}", bob.uid), "is you"),
        (bob.identity(), "is you"),
        (format!("gid:{}", bob.gid), "a group you"),
        (format!("group:{}", bob.name), "a group you"),
        (format!("group:{}", team.name), "a group you"),
        (group.clone(), "a group you"),
        ("cgroup:/".into(), "every process"),
        (format!("cgroup:{}", cg.rel), "holds your own processes"),
        (format!("cgroup:{}/bob", cg.rel), "holds your own processes"),
        ("peer:0.0.0.0/0".into(), "wider than /8"),
        ("peer:10.0.0.0/7".into(), "wider than /8"),
        ("peer:::/0".into(), "wider than /32"),
        ("peer:2001:db8::/31".into(), "wider than /32"),
    ];
    for (identity, why) in &refusals {
        let out = grant_as(&bob, identity);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{identity}: {err}");
        assert!(err.contains(why), "{identity}: {err}");
    }
    let refused: Vec<Value> = agent
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "refused" && r["op"] == "grant" && r["actor"]["uid"] == bob.uid)
        .collect();
    assert_eq!(refused.len(), refusals.len(), "{refused:#?}");
    assert!(status(&agent)["grant_entries"] == 0, "nothing was opened");
    // bob's own connections stay refused.
    assert_eq!(
        connect_once(&As::user(&cg.path, bob.uid, bob.gid), server.addr),
        Outcome::eperm()
    );

    // What an approver is for still works: someone else, a narrow network.
    for identity in [
        alice.identity(),
        "peer:10.0.0.0/8".into(),
        "peer:2001:db8::/32".into(),
    ] {
        let out = grant_as(&bob, &identity);
        assert!(
            out.status.success(),
            "{identity}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Root may grant anything, bob included.
    agent.grant("db", &format!("uid:{}", bob.uid), "10m");
    agent.grant("db", "cgroup:/", "10m");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}
