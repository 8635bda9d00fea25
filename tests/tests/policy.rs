//! Policy files as operators meet them: `portcullis check` on files with
//! mistakes, the agent's rule for names it cannot resolve, hot reload (by
//! SIGHUP and by file change) applied as a diff, failed reloads that keep
//! the previous policy, cgroups that come and go, and the agent's
//! configuration file. Each test runs the real agent attached to its own
//! child cgroup, real servers on loopback and real clients in that cgroup.
use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use portcullis_tests::{traffic::*, units::kernel_grant_keys, *};

/// Generous bound for anything the agent does in reaction to an event.
const WITHIN: Duration = Duration::from_secs(10);
/// Bound for the cgroup watch: well below the 30 s safety-net rescan, so
/// passing proves the watch, not the timer.
const CGROUP_WITHIN: Duration = Duration::from_secs(5);

/// One segment's TOML; `jit` adds a JIT table without reason requirement.
fn segment(name: &str, ports: &[String], allow: &[&str], jit: bool) -> String {
    let q = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    let mut s = format!(
        "[segment.{name}]\nports = [{}]\nallow = [{}]\n",
        q(ports),
        q(&allow)
    );
    if jit {
        s.push_str(&format!(
            "\n[segment.{name}.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"10m\"\nrequire_reason = false\n"
        ));
    }
    s.push('\n');
    s
}

fn tcp(port: u16) -> Vec<String> {
    vec![format!("{port}/tcp")]
}

/// Replaces the agent's policy file the way deploy tools and editors do:
/// write a temporary file beside it, then rename it over the original.
fn write_policy(agent: &Agent, text: &str) {
    let tmp = agent.policies.join(".test.toml.tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, agent.policies.join("test.toml")).unwrap();
}

fn sighup(agent: &Agent) {
    // SAFETY: kill(2) on the agent process this test started.
    let rc = unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0, "SIGHUP to the agent failed");
}

fn status(agent: &Agent) -> serde_json::Value {
    let out = agent.ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json");
    v["ok"].clone()
}

fn digest(agent: &Agent) -> String {
    status(agent)["policy_digest"]
        .as_str()
        .expect("policy_digest")
        .to_string()
}

/// Waits until the agent enforces a policy other than `before`.
#[track_caller]
fn wait_applied(agent: &Agent, before: &str) -> String {
    let mut now = String::new();
    assert!(
        eventually(WITHIN, || {
            now = digest(agent);
            now != before
        }),
        "the agent did not apply the new policy within {WITHIN:?}"
    );
    now
}

/// Waits until status reports a failed reload; returns its errors.
#[track_caller]
fn wait_failed_reload(agent: &Agent, reloads_before: usize) -> Vec<String> {
    assert!(
        eventually(WITHIN, || reload_records(agent).len() > reloads_before),
        "no policy_reload record within {WITHIN:?}"
    );
    let s = status(agent);
    let r = &s["last_reload"];
    assert_eq!(r["ok"], false, "{s:#}");
    r["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

fn reload_records(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "policy_reload")
        .collect()
}

/// 1-based line and column of the first `needle` in `text`; of its
/// opening quote if it is written as a TOML string (where diagnostics point).
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(&format!("\"{needle}\""))
        .or_else(|| text.find(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"));
    let before = &text[..offset];
    (
        before.matches('\n').count() + 1,
        before.rsplit('\n').next().unwrap_or("").chars().count() + 1,
    )
}

/// A directory readable by everyone, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let p = std::env::temp_dir().join(unique("pc-policy"));
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(p)
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `portcullis check ARGS` as `nobody`: checking needs no root and no agent.
fn check_as_nobody(args: &[&Path]) -> Output {
    Command::new(portcullis_bin())
        .arg("check")
        .args(args)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis check")
}

// ---- portcullis check -----------------------------------------------------

#[test]
fn check_reports_every_mistake_with_file_line_column_and_exits_2() {
    let dir = Scratch::new();
    let a_text = r#"[segment.db]
ports = ["5432/tcp", "0/tcp", "70000/tcp", "53/icmp"]
allow = ["badkind:x", "peer:10.0.0.0/33", "peer:10.1.2.0/16"]
colour = "red"

[segment.db.jit]
max_ttl = "30m"
default_ttl = "1h"

[segment.web]
ports = ["8000-8099/tcp", "8050-8060/tcp"]

[segment.empty]
ports = []
"#;
    let b_text =
        "[segment.db]\nports = [\"6432/tcp\"]\n\n[segment.cache]\nports = [\"5432/tcp\"]\n";
    let a = dir.file("a.toml", a_text);
    let b = dir.file("b.toml", b_text);
    let out = check_as_nobody(&[&dir.0]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty(), "nothing is summarised on failure");
    // (file, text, where, what)
    let expected: &[(&Path, &str, &str, &str)] = &[
        (&a, a_text, "0/tcp", "port 0 in `0/tcp` is not a port"),
        (
            &a,
            a_text,
            "70000/tcp",
            "port 70000 in `70000/tcp` is out of range",
        ),
        (&a, a_text, "53/icmp", "unknown protocol `icmp`"),
        (&a, a_text, "badkind:x", "unknown identity kind `badkind`"),
        (&a, a_text, "peer:10.0.0.0/33", "is not a network"),
        (&a, a_text, "peer:10.1.2.0/16", "has host bits set"),
        (&a, a_text, "colour", "unknown key `colour`"),
        (
            &a,
            a_text,
            "\"1h\"",
            "default_ttl 1h is longer than max_ttl 30m",
        ),
        (&a, a_text, "8050-8060/tcp", "overlaps `8000-8099/tcp`"),
        (&a, a_text, "[]", "segment `empty` has an empty ports list"),
        (&b, b_text, "db]", "segment `db` is defined again"),
        (
            &b,
            b_text,
            "5432/tcp",
            "is in segment `cache` and also in segment `db`",
        ),
    ];
    for (file, text, needle, what) in expected {
        let (line, col) = position(text, needle);
        let place = format!("error: {}:{line}:{col}: ", file.display());
        assert!(
            err.lines()
                .any(|l| l.starts_with(&place) && l.contains(what)),
            "expected `{place}... {what}` in:\n{err}"
        );
    }
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        expected.len(),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("  help: ")).count(),
        expected.len(),
        "every error says how to fix it:\n{err}"
    );
    assert!(err.contains("12 error(s): the policy is invalid; an agent would refuse it and keep its current policy"), "{err}");
}

#[test]
fn check_summarises_each_segment_and_only_warns_about_names_this_host_lacks() {
    let dir = Scratch::new();
    let text = format!(
        "{}{}",
        segment(
            "db",
            &["5432/tcp".into(), "6432/tcp".into()],
            &["user:no-such-user-pc4", "unit:no-such-unit-pc4.service"],
            true
        ),
        segment("metrics", &["8125/udp".into()], &["uid:0"], false)
    );
    let file = dir.file("db.toml", &text);
    let out = check_as_nobody(&[&file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{err}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("db: 5432/tcp, 6432/tcp; 2 standing allows; jit max 1h"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("metrics: 8125/udp; 1 standing allow; no jit"),
        "{stdout}"
    );
    assert_eq!(lines[2], "ok: 2 segment(s) in 1 file(s), 2 warning(s)");
    for (needle, what) in [
        (
            "user:no-such-user-pc4",
            "user `no-such-user-pc4` does not exist",
        ),
        (
            "unit:no-such-unit-pc4.service",
            "unit `no-such-unit-pc4.service` is not found",
        ),
    ] {
        let (line, col) = position(&text, needle);
        let place = format!("warning: {}:{line}:{col}: ", file.display());
        assert!(
            err.lines()
                .any(|l| l.starts_with(&place) && l.contains(what)),
            "expected `{place}... {what}` in:\n{err}"
        );
    }
}

// ---- the agent's host check ---------------------------------------------

#[test]
fn the_agent_refuses_to_start_on_a_user_or_group_this_host_lacks() {
    let cg = TestCgroup::new();
    for (identity, what) in [
        (
            "user:no-such-user-pc4",
            "user `no-such-user-pc4` does not exist",
        ),
        (
            "group:no-such-group-pc4",
            "group `no-such-group-pc4` does not exist",
        ),
    ] {
        let text = segment("db", &tcp(15432), &[identity], false);
        let out = Agent::builder(&text, &cg.path).start_expecting_failure();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        let (line, col) = position(&text, identity);
        assert!(
            err.contains(&format!("test.toml:{line}:{col}: {what}")),
            "{identity}: {err}"
        );
    }
}

#[test]
fn a_reload_naming_a_missing_user_is_refused_and_the_old_policy_stays() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(
        &segment("db", &tcp(server.port()), &["uid:40201"], false),
        &cg.path,
    );
    let allowed = As::user(&cg.path, 40201, 40201);
    assert_eq!(allowed.tcp(server.addr), Outcome::Ok);
    let before = digest(&agent);
    let reloads = reload_records(&agent).len();

    let bad = segment("db", &tcp(server.port()), &["user:no-such-user-pc4"], false);
    write_policy(&agent, &bad);
    sighup(&agent);
    let errors = wait_failed_reload(&agent, reloads);
    let (line, col) = position(&bad, "user:no-such-user-pc4");
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&format!("test.toml:{line}:{col}:"))
                && e.contains("user `no-such-user-pc4` does not exist")),
        "{errors:#?}"
    );
    assert_eq!(digest(&agent), before, "the old policy stays in force");
    assert_eq!(allowed.tcp(server.addr), Outcome::Ok);
}

#[test]
fn a_unit_that_is_not_running_is_accepted_warned_and_covered_when_its_cgroup_appears() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let unit = format!("{}.service", unique("pc-late"));
    // systemd says which cgroup is the unit's (a stand-in here).
    let systemd = units::FakeSystemd::new();
    let agent = systemd
        .agent(
            &segment("db", &tcp(server.port()), &[&format!("unit:{unit}")], false),
            &cg.path,
        )
        .start();
    assert!(
        agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("WARN") && l.contains(&unit)),
        "no start-up warning naming {unit}"
    );
    let list: serde_json::Value = serde_json::from_str(&agent.ok(&["list", "--json"])).unwrap();
    let unresolved = list["ok"]["standing"][0]["unresolved"]
        .as_str()
        .unwrap_or("");
    assert!(unresolved.contains("has no cgroup"), "{list:#}");

    // The unit starts: systemd knows its cgroup, the cgroup appears, then
    // a process runs in it.
    systemd.start_unit(&unit, &format!("{}/system.slice/{unit}", cg.rel));
    let svc = cg.child(&format!("system.slice/{unit}"));
    let client = As::root_in(&svc);
    assert!(
        eventually(CGROUP_WITHIN, || client.tcp(server.addr) == Outcome::Ok),
        "a unit that started after the agent was not covered within {CGROUP_WITHIN:?}"
    );
    // Its siblings are not.
    let other = cg.child("system.slice/other.service");
    assert_eq!(As::root_in(&other).tcp(server.addr), Outcome::eperm());
}

// ---- cgroups that come and go ---------------------------------------------

fn cgroup_id(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).expect("cgroup exists").ino()
}

#[test]
fn a_cgroup_recreated_at_the_same_path_is_covered_and_its_old_id_forgotten() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&segment("db", &tcp(server.port()), &[], true), &cg.path);
    let svc = cg.child("svc");
    let old_id = cgroup_id(&svc);
    agent.grant("db", &format!("cgroup:{}/svc", cg.rel), "10m");
    assert_eq!(As::root_in(&svc).tcp(server.addr), Outcome::Ok);
    let ids = |a: &Agent| -> Vec<u64> { kernel_grant_keys(a).iter().map(|k| k.2).collect() };
    assert_eq!(ids(&agent), vec![old_id]);

    // The unit stops: its cgroup goes. Its entry goes with it.
    fs::remove_dir(&svc).expect("rmdir the (empty) cgroup");
    assert!(
        eventually(CGROUP_WITHIN, || ids(&agent).is_empty()),
        "the removed cgroup's entry is still in the kernel map: {:?}",
        kernel_grant_keys(&agent)
    );
    assert_eq!(status(&agent)["grant_entries"], 0);

    // It starts again: same path, new id, covered by the same live grant.
    let svc = cg.child("svc");
    let new_id = cgroup_id(&svc);
    assert_ne!(new_id, old_id, "a recreated cgroup has a new id");
    let client = As::root_in(&svc);
    assert!(
        eventually(CGROUP_WITHIN, || client.tcp(server.addr) == Outcome::Ok),
        "the recreated cgroup was not covered within {CGROUP_WITHIN:?}"
    );
    // The kernel's cgroup_mkdir hook may cover it before the agent has
    // re-resolved it: wait for the agent's own view.
    assert!(
        eventually(CGROUP_WITHIN, || status(&agent)["grant_entries"] == 1),
        "the agent never re-resolved the recreated cgroup"
    );
    assert_eq!(ids(&agent), vec![new_id], "only the new id is in the map");
    // A standing allow on a path follows the same rule: checked via list.
    let list: serde_json::Value = serde_json::from_str(&agent.ok(&["list", "--json"])).unwrap();
    assert_eq!(
        list["ok"]["grants"].as_array().unwrap().len(),
        1,
        "{list:#}"
    );
}

// ---- hot reload -----------------------------------------------------------

#[test]
fn a_hundred_reloads_that_keep_an_allow_never_refuse_it() {
    let cg = TestCgroup::new();
    let server = Sink::new();
    let unrelated = EchoServer::tcp("127.0.0.1:0");
    let client_cg = cg.child("client");
    let by_uid = "uid:40210".to_string();
    let by_cgroup = format!("cgroup:{}/client", cg.rel);
    // Two policies that both allow the client, through different map keys
    // (its uid / its cgroup), one with an unrelated segment and one
    // without: every swap adds and removes keys, ports and a segment id.
    let policy_a = |i: usize| {
        format!(
            "# reload {i}\n{}{}",
            segment("db", &tcp(server.addr.port()), &[&by_uid], true),
            segment("unrelated", &tcp(unrelated.port()), &[], false)
        )
    };
    let policy_b = |i: usize| {
        format!(
            "# reload {i}\n{}",
            segment("db", &tcp(server.addr.port()), &[&by_cgroup], true)
        )
    };
    let agent = Agent::start(&policy_a(0), &cg.path);
    let client = As::user(&client_cg, 40210, 40210);
    assert_eq!(connect_once(&client, server.addr), Outcome::Ok);
    // A JIT grant on a segment that stays survives every reload.
    let grant = agent.grant("db", "uid:40211", "30m");

    let stop = Arc::new(AtomicBool::new(false));
    let looping = probe_loop(client.clone(), server.addr, stop.clone(), 100_000);
    let mut current = digest(&agent);
    let mut by_signal = 0;
    for i in 1..=100 {
        let text = if i % 2 == 1 { policy_b(i) } else { policy_a(i) };
        write_policy(&agent, &text);
        // Half of the reloads by SIGHUP, half by the file watch alone.
        if (i / 2) % 2 == 1 {
            sighup(&agent);
            by_signal += 1;
        }
        current = wait_applied(&agent, &current);
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, eperm, other, errors) = looping.join().expect("probe loop");
    eprintln!(
        "100 reloads ({by_signal} by SIGHUP): {ok} connections allowed, {eperm} refused, {other} other errors {errors:?}"
    );
    assert_eq!(
        eperm, 0,
        "a connection allowed before and after a reload was refused"
    );
    assert_eq!(other, 0, "unexpected errors: {errors:?}");
    assert!(ok > 0, "the client loop never ran");

    // The last policy (A) is in force, and nothing else: the unrelated
    // segment is protected, the grant is still there.
    let reloads = reload_records(&agent);
    assert!(reloads.len() >= 100, "{} reload records", reloads.len());
    assert!(reloads.iter().all(|r| r["ok"] == true));
    assert_eq!(As::root_in(&cg.path).tcp(unrelated.addr), Outcome::eperm());
    assert_eq!(
        connect_once(&As::user(&cg.path, 40211, 40211), server.addr),
        Outcome::Ok
    );
    let list: serde_json::Value = serde_json::from_str(&agent.ok(&["list", "--json"])).unwrap();
    assert_eq!(list["ok"]["grants"][0]["id"], grant, "{list:#}");
    // uid:40210 (standing) and uid:40211 (grant); no leftover cgroup key.
    assert_eq!(status(&agent)["grant_entries"], 2);
}

#[test]
fn a_client_whose_allow_is_removed_is_refused_from_the_next_connection_on() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(
        &segment(
            "db",
            &tcp(server.port()),
            &["uid:40220", "uid:40221"],
            false,
        ),
        &cg.path,
    );
    let kept = As::user(&cg.path, 40220, 40220);
    let dropped = As::user(&cg.path, 40221, 40221);
    assert_eq!(kept.tcp(server.addr), Outcome::Ok);
    assert_eq!(dropped.tcp(server.addr), Outcome::Ok);
    let before = digest(&agent);
    write_policy(
        &agent,
        &segment("db", &tcp(server.port()), &["uid:40220"], false),
    );
    sighup(&agent);
    wait_applied(&agent, &before);
    // The very next connection, and every one after it.
    assert_eq!(dropped.tcp(server.addr), Outcome::eperm());
    let out = dropped
        .command(probe_bin())
        .args(["loop", &server.addr.to_string(), "200"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "loop ok 0 eperm 200 other 0"
    );
    assert_eq!(kept.tcp(server.addr), Outcome::Ok);
}

#[test]
fn a_bad_reload_keeps_the_old_policy_and_status_shows_where() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let good = segment("db", &tcp(server.port()), &["uid:40230"], false);
    let agent = Agent::start(&good, &cg.path);
    let allowed = As::user(&cg.path, 40230, 40230);
    let denied = As::user(&cg.path, 40231, 40231);
    let good_digest = digest(&agent);

    let syntax = format!("{good}\n[segment.cache\nports = [\"6379/tcp\"]\n");
    let port_twice = format!(
        "{good}{}",
        segment("again", &tcp(server.port()), &["uid:40231"], false)
    );
    // (bad text, the line the error is on, what it says)
    let line_of = |text: &str, offset: usize| text[..offset].matches('\n').count() + 1;
    for (bad, line, what) in [
        (
            &syntax,
            line_of(&syntax, syntax.find("[segment.cache").unwrap()),
            "TOML syntax error",
        ),
        (
            // The second segment's `ports`, where the clash is found.
            &port_twice,
            line_of(&port_twice, port_twice.rfind("ports = [").unwrap()),
            "is in segment `again` and also in segment `db`",
        ),
    ] {
        let reloads = reload_records(&agent).len();
        // By file change alone: no SIGHUP.
        write_policy(&agent, bad);
        let errors = wait_failed_reload(&agent, reloads);
        let place = format!("test.toml:{line}:");
        assert!(
            errors
                .iter()
                .any(|e| e.contains(&place) && e.contains(what)),
            "status lacks `{place}... {what}`: {errors:#?}"
        );
        // The human status says so too.
        let human = agent.ok(&["status"]);
        assert!(
            human.contains("FAILED") && human.contains(&place),
            "{human}"
        );
        // Nothing changed in the kernel.
        assert_eq!(digest(&agent), good_digest);
        assert_eq!(allowed.tcp(server.addr), Outcome::Ok);
        assert_eq!(denied.tcp(server.addr), Outcome::eperm());
        let last = reload_records(&agent).pop().unwrap();
        assert_eq!(last["ok"], false, "{last}");
    }

    // Fixing the file clears the failure.
    write_policy(&agent, &format!("# fixed\n{good}"));
    wait_applied(&agent, &good_digest);
    assert_eq!(status(&agent)["last_reload"]["ok"], true);
    assert_eq!(allowed.tcp(server.addr), Outcome::Ok);
}

#[test]
fn removing_a_segment_unprotects_its_ports_and_removes_its_grants_only() {
    let cg = TestCgroup::new();
    let one = EchoServer::tcp("127.0.0.1:0");
    let two = EchoServer::tcp("127.0.0.1:0");
    let both = |desc: &str| {
        format!(
            "{}{}",
            segment("one", &tcp(one.port()), &[], true),
            segment("two", &tcp(two.port()), &[], true).replace(
                "[segment.two]\n",
                &format!("[segment.two]\ndescription = {desc:?}\n")
            )
        )
    };
    let agent = Agent::start(&both("before"), &cg.path);
    let holder = As::user(&cg.path, 40240, 40240);
    let stranger = As::user(&cg.path, 40241, 40241);
    let on_one = agent.grant("one", "uid:40240", "30m");
    let on_two = agent.grant("two", "uid:40240", "30m");
    assert_eq!(holder.tcp(one.addr), Outcome::Ok);
    assert_eq!(stranger.tcp(one.addr), Outcome::eperm());

    let before = digest(&agent);
    // Segment `one` goes; `two` changes its description only.
    let only_two = both("after");
    let only_two = &only_two[only_two.find("[segment.two]").unwrap()..];
    write_policy(&agent, only_two);
    wait_applied(&agent, &before);

    // `one`'s port is no longer protected: anyone connects.
    assert_eq!(stranger.tcp(one.addr), Outcome::Ok);
    // Its grant opens nothing any more: it is suspended (issue 12: kept for
    // the grace period in case the segment comes back), audited; `two`'s
    // grant is untouched.
    let list: serde_json::Value = serde_json::from_str(&agent.ok(&["list", "--json"])).unwrap();
    let grants = list["ok"]["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 2, "{list:#}");
    let live: Vec<_> = grants
        .iter()
        .filter(|g| g.get("suspended_until").is_none())
        .collect();
    assert_eq!(live.len(), 1, "{list:#}");
    assert_eq!(live[0]["id"], on_two);
    assert!(agent
        .audit_records()
        .iter()
        .any(|r| r["event"] == "grant_suspended"
            && r["grant_id"] == on_one
            && r["why"] == "segment removed from policy"));
    assert_eq!(holder.tcp(two.addr), Outcome::Ok);
    assert_eq!(stranger.tcp(two.addr), Outcome::eperm());
    assert_eq!(status(&agent)["grant_entries"], 1);
}

#[test]
fn a_changed_file_reloads_without_sighup_once_per_save() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&segment("db", &tcp(server.port()), &[], false), &cg.path);
    let client = As::user(&cg.path, 40250, 40250);
    assert_eq!(client.tcp(server.addr), Outcome::eperm());
    let reloads = reload_records(&agent).len();
    let before = digest(&agent);

    // An editor's save: write a temporary file, rename it into place.
    write_policy(
        &agent,
        &segment("db", &tcp(server.port()), &["uid:40250"], false),
    );
    wait_applied(&agent, &before);
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    // One save, one reload: the write and the rename were debounced.
    thread::sleep(Duration::from_millis(1000));
    let after = reload_records(&agent);
    assert_eq!(after.len(), reloads + 1, "{after:#?}");
    assert_eq!(after.last().unwrap()["ok"], true);
    // Touching a file without changing it, or an editor's swap file,
    // reloads nothing.
    fs::write(agent.policies.join(".test.toml.swp"), "junk").unwrap();
    let f = fs::File::options()
        .append(true)
        .open(agent.policies.join("test.toml"))
        .unwrap();
    drop(f);
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(reload_records(&agent).len(), reloads + 1);
}

// ---- the agent's configuration file ---------------------------------------

#[test]
fn the_agent_reads_its_config_file_and_flags_win_over_it() {
    let cg = TestCgroup::new();
    let dir = Scratch::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let file_audit = dir.0.join("from-file.jsonl");
    let config = dir.file(
        "agent.toml",
        &format!(
            "socket_mode = \"0600\"\naudit_log = {:?}\nidentity_rescan = \"1m\"\n",
            file_audit.display().to_string()
        ),
    );
    // The harness passes --audit-log: the flag wins over the file.
    let agent = Agent::builder(&segment("db", &tcp(server.port()), &[], false), &cg.path)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    let mode = fs::metadata(&agent.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket_mode from the file");
    assert!(!file_audit.exists(), "--audit-log must win over the file");
    assert!(agent.audit_log.exists());
}

#[test]
fn a_bad_config_file_stops_the_agent_with_file_line_column() {
    let cg = TestCgroup::new();
    let dir = Scratch::new();
    let config = dir.file(
        "agent.toml",
        "socket_mode = \"0660\"\npolicies_dir = \"/x\"\n",
    );
    let out = Agent::builder("", &cg.path)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start_expecting_failure();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}:2:1: unknown field `policies_dir`",
            config.display()
        )),
        "{err}"
    );
    assert!(err.contains("did you mean `policy_dir`?"), "{err}");

    // A named file that does not exist is an error too (a missing default
    // file is not: every other test runs without one).
    let missing = dir.0.join("missing.toml");
    let out = Agent::builder("", &cg.path)
        .arg("--config")
        .arg(missing.to_str().unwrap())
        .start_expecting_failure();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}
