//! A hostile client of the control socket and a hostile source of text:
//! an ordinary user flooding the socket with idle connections, requests
//! over the size cap, reasons with newlines, escape sequences and
//! direction overrides, cgroup names and old records carrying them; and
//! the packaged unit's hardening.
//!
//! Regression tests for issue 12 items 6, 8 and 10: root's `revoke` timed
//! out under 1,100 idle connections; reasons forged rows in `list
//! --pending` and set the terminal title; `audit --denies` printed cgroup
//! names raw.
use std::{
    fs,
    io::{Read, Write},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use portcullis_tests::{flood::*, *};

fn policy(port: u16) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\ndescription = \"test db\"\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n"
    )
}

/// Sends one raw line (as the test process, root) and returns the agent's
/// reply line, waiting at most `within`.
fn raw_call(socket: &std::path::Path, body: &[u8], within: Duration) -> String {
    let mut s = UnixStream::connect(socket).expect("connect to the control socket");
    s.set_read_timeout(Some(within)).unwrap();
    s.set_write_timeout(Some(within)).unwrap();
    // A refused over-long request makes the agent close while we write.
    let _ = s.write_all(body);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

/// Runs `portcullis ARGS` as root, failing the test if it takes more than
/// `deadline`; returns the output and how long it took.
fn cli_within(
    agent: &Agent,
    args: &[&str],
    deadline: Duration,
) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(portcullis_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portcullis");
    loop {
        if child.try_wait().unwrap().is_some() {
            let took = start.elapsed();
            return (child.wait_with_output().unwrap(), took);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`portcullis {args:?}` did not answer within {deadline:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_flood_of_idle_connections_from_a_user_does_not_keep_root_from_revoking() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    // systemd's default descriptor limit, and a socket everyone may use.
    let agent = Agent::builder(&policy(server.port()), &cg.path)
        .wrap(&["prlimit", "--nofile=1024:1024"])
        .arg("--socket-mode")
        .arg("666")
        .start();
    let first = agent.grant("db", "uid:40130", "30m");
    let second = agent.grant("db", "uid:40131", "30m");
    let log_before = agent.log.lock().unwrap().len();

    let attacker = 40129;
    let mut flood = start_flood(&agent.socket, attacker, 1200, 12);
    let (mut out, ready) = wait_ready(&mut flood);
    eprintln!("flooder: {}", ready.trim());
    let connected: usize = ready
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        connected > 1100,
        "the flood reached only {connected} connections"
    );

    // While the flood goes on, root is answered.
    let (revoked, took) = cli_within(
        &agent,
        &["revoke", &first.to_string()],
        Duration::from_secs(5),
    );
    assert!(
        revoked.status.success(),
        "revoke under the flood failed: {}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    eprintln!("MEASURED: revoke under a flood of {connected} connections answered in {took:?}");
    let (status, took) = cli_within(&agent, &["status"], Duration::from_secs(5));
    assert!(status.status.success());
    eprintln!("MEASURED: status under the flood answered in {took:?}");
    let (revoked, took) = cli_within(
        &agent,
        &["revoke", &second.to_string()],
        Duration::from_secs(5),
    );
    assert!(revoked.status.success());
    eprintln!("MEASURED: second revoke answered in {took:?}");
    let fds = open_fds(agent.pid());
    eprintln!("MEASURED: the agent holds {fds} descriptors during the flood");
    assert!(
        fds < 400,
        "the agent holds {fds} descriptors under the flood"
    );

    let done = {
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        flood.wait().unwrap();
        rest
    };
    eprintln!("flooder: {}", done.trim());
    assert!(
        done.contains(&format!("too many control connections from uid {attacker}")),
        "the flooder was not told why: {done}"
    );
    // No log storm: refusals are not logged one by one.
    let lines = agent.log.lock().unwrap().len() - log_before;
    eprintln!("MEASURED: {lines} agent log lines during the flood");
    assert!(
        lines < 100,
        "{lines} log lines during the flood:\n{}",
        agent.log.lock().unwrap()[log_before..].join("\n")
    );
    // And once it is over (the agent has seen the flooder's last
    // connections close), the user is served again.
    let served = || {
        let out = agent.cli_as(attacker, attacker, &["status"]);
        !String::from_utf8_lossy(&out.stderr).contains("too many control connections")
    };
    assert!(
        eventually(Duration::from_secs(10), served),
        "the user's places were never given back"
    );
}

#[test]
fn requests_over_the_cap_and_silent_clients_get_a_clear_refusal_not_a_hang() {
    let cg = TestCgroup::new();
    let agent = Agent::start(&policy(45991), &cg.path);
    // 100 KiB: far below the old 1 MiB cap, far above the new one.
    let reason = "x".repeat(100 * 1024);
    let body = format!(
        "{{\"op\":\"grant\",\"segment\":\"db\",\"identity\":\"uid:40140\",\"ttl\":\"5m\",\"reason\":\"{reason}\"}}\n"
    );
    let reply = raw_call(&agent.socket, body.as_bytes(), Duration::from_secs(10));
    assert!(
        reply.contains("\"bad_request\"")
            && reply.contains("request too long")
            && reply.contains("16384"),
        "{reply}"
    );
    // 2 MiB without a newline: answered, not read to the end.
    let huge = vec![b'{'; 2 << 20];
    let start = Instant::now();
    let reply = raw_call(&agent.socket, &huge, Duration::from_secs(10));
    assert!(reply.contains("request too long"), "{reply}");
    eprintln!("MEASURED: 2 MiB request refused in {:?}", start.elapsed());
    // A client that says nothing loses its place within seconds.
    let start = Instant::now();
    let reply = raw_call(&agent.socket, b"", Duration::from_secs(10));
    assert!(reply.contains("no complete request within"), "{reply}");
    eprintln!("MEASURED: silent client closed after {:?}", start.elapsed());
    // The CLI says so before sending.
    let out = agent.cli(&[
        "grant",
        "db",
        "uid:40140",
        "--ttl",
        "5m",
        "--reason",
        &reason,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the agent reads at most 16384"), "{err}");
    // Nothing was granted.
    let list = agent.ok(&["list", "--json"]);
    assert!(!list.contains("uid:40140"), "{list}");
}

/// Reasons that would forge rows, erase lines, set the title, reverse text.
const HOSTILE: [(&str, usize); 4] = [
    ("ok\nREQUEST 99  db  user:root", 3),
    ("hi\u{1b}[2K\u{1b}[1A", 3),
    ("\u{1b}]0;pwned\u{7}", 1),
    ("INC-1 \u{202e}gnp.exe", 7),
];

#[test]
fn control_characters_and_bidi_overrides_in_reasons_are_refused_at_the_agent() {
    let cg = TestCgroup::new();
    let agent = Agent::builder(&policy(45992), &cg.path)
        .arg("--socket-mode")
        .arg("666")
        .start();
    let user = 40150;
    for (reason, position) in HOSTILE {
        // On the wire, from root, with the CLI's checks out of the way.
        let body = serde_json::json!({"op": "grant", "segment": "db", "identity": "uid:40151",
            "ttl": "5m", "reason": reason})
        .to_string()
            + "\n";
        let reply = raw_call(&agent.socket, body.as_bytes(), Duration::from_secs(10));
        let v: serde_json::Value =
            serde_json::from_str(&reply).unwrap_or_else(|_| panic!("{reply}"));
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("not refused: {reply}"));
        assert_eq!(v["error"]["code"], "bad_request", "{reply}");
        assert!(
            msg.contains("reason: ") && msg.contains(&format!("at character {position}")),
            "{reason:?}: {msg}"
        );
        // A request from an ordinary user, through the CLI: exit 2.
        let out = agent.cli_as(user, user, &["request", "db", "--reason", reason]);
        assert_eq!(out.status.code(), Some(2), "{reason:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("reason: ") && err.contains(&format!("at character {position}")),
            "{err}"
        );
        assert!(
            !err.contains('\u{1b}') && !err.contains('\u{202e}'),
            "{err:?}"
        );
        // And a denial's reason.
        let body = serde_json::json!({"op": "deny", "id": 1, "reason": reason}).to_string() + "\n";
        let reply = raw_call(&agent.socket, body.as_bytes(), Duration::from_secs(10));
        assert!(
            reply.contains("reason: ") && reply.contains("bad_request"),
            "{reply}"
        );
    }
    let list = agent.ok(&["list", "--json"]);
    assert!(
        !list.contains("uid:40151"),
        "a hostile reason was granted: {list}"
    );
    let pending = agent.ok(&["list", "--pending", "--json"]);
    assert!(
        !pending.contains("INC-1"),
        "a hostile request was filed: {pending}"
    );
    // Nothing of it reached the audit log.
    let audit = fs::read_to_string(&agent.audit_log).unwrap();
    assert!(
        !audit.contains("pwned") && !audit.contains("gnp.exe"),
        "{audit}"
    );
}

/// A cgroup name with an escape sequence: mkdir allows any byte but `/`.
#[test]
fn a_cgroup_named_with_escape_sequences_is_shown_escaped_by_audit_denies() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port()), &cg.path);
    let evil = cg.child("evil\u{1b}[2K\u{1b}]0;pwned\u{7}\u{202e}x");
    let outcome = As::user(&evil, 40160, 40160).tcp(server.addr);
    assert_eq!(outcome, Outcome::eperm());
    // Until the first deny is written the deny log does not exist.
    let shown = || String::from_utf8_lossy(&agent.cli(&["audit", "--denies"]).stdout).to_string();
    assert!(
        eventually(Duration::from_secs(10), || shown().contains("pwned")),
        "no deny logged: {}",
        shown()
    );
    let text = shown();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202e}'),
        "raw control characters in `audit --denies`: {text:?}"
    );
    assert!(
        text.contains("evil\\u{1b}[2K\\u{1b}]0;pwned\\u{7}\\u{202e}x"),
        "{text}"
    );
    // --json stays exact.
    let json = agent.ok(&["audit", "--denies", "--json"]);
    let exact = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|r| {
            r["identity"]
                .as_str()
                .is_some_and(|i| i.ends_with("evil\u{1b}[2K\u{1b}]0;pwned\u{7}\u{202e}x"))
        });
    assert!(exact, "{json}");
}

#[test]
fn old_records_and_saved_reasons_with_control_characters_are_shown_escaped() {
    let cg = TestCgroup::new();
    let mut agent = Agent::start(&policy(45993), &cg.path);
    // A grant saved by an older agent, whose reason was never checked:
    // put it in the state file as such an agent would have.
    agent.ok(&[
        "grant",
        "db",
        "uid:40170",
        "--ttl",
        "30m",
        "--reason",
        "PLACEHOLDER",
    ]);
    agent.stop();
    // Root rewrites the journal (with valid checksums) to forge a reason.
    let (_, log) = read_journal(&agent.state_dir);
    let saved = serde_json::Value::Array(log).to_string();
    assert!(saved.contains("PLACEHOLDER"), "{saved}");
    let forged: serde_json::Value = serde_json::from_str(&saved.replace(
        "PLACEHOLDER",
        "ok\\nID  db  uid:0  1h  root  forged\\u001b[2K\\u202e",
    ))
    .unwrap();
    write_journal_log(&agent.state_dir, forged.as_array().unwrap());
    agent.spawn(&[]);
    let list = agent.ok(&["list"]);
    assert_eq!(
        list.lines().filter(|l| l.contains("forged")).count(),
        1,
        "a forged row: {list}"
    );
    assert!(
        !list.contains('\u{1b}') && !list.contains('\u{202e}'),
        "{list:?}"
    );
    assert!(
        list.contains("ok\\nID  db  uid:0  1h  root  forged\\u{1b}[2K\\u{202e}"),
        "{list}"
    );
    let json = agent.ok(&["list", "--json"]);
    assert!(
        json.contains("forged\\u001b[2K\u{202e}"),
        "--json is exact: {json}"
    );

    // An audit log written before reasons were checked.
    let old = agent.dir.join("old-audit.jsonl");
    let rec = serde_json::json!({"ts": "2026-01-01T00:00:00Z", "event": "grant",
        "identity": "uid:40170", "segment": "db", "actor": {"uid": 0, "user": "root\u{1b}]0;t\u{7}"},
        "reason": "x\n2026-01-01T00:00:01Z  revoke  forged\u{1b}[2K\u{202e}", "prev": "", "hash": ""});
    fs::write(&old, format!("{rec}\nnot json \u{1b}[2K\n")).unwrap();
    let shown = agent.ok(&["audit", "--file", old.to_str().unwrap()]);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}') && !shown.contains('\u{202e}'),
        "{shown:?}"
    );
    assert_eq!(shown.lines().count(), 2, "one line per record: {shown}");
    assert!(shown.contains("root\\u{1b}]0;t\\u{7}"), "{shown}");
    assert!(
        shown.contains("(unreadable line) not json \\u{1b}[2K"),
        "{shown}"
    );
    let json = agent.ok(&["audit", "--file", old.to_str().unwrap(), "--json"]);
    assert!(json.contains(&rec.to_string()), "--json is exact: {json}");
}

#[test]
fn state_audit_and_deny_logs_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port()), &cg.path);
    agent.grant("db", "uid:40180", "5m");
    assert_eq!(
        As::user(&cg.path, 40181, 40181).tcp(server.addr),
        Outcome::eperm()
    );
    let deny_log = agent.audit_log.with_file_name("denies.jsonl");
    assert!(
        eventually(Duration::from_secs(10), || deny_log.exists()),
        "no deny log"
    );
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = agent.state_dir.join("journal.log");
    assert_eq!(mode(&state), 0o600, "{}", state.display());
    assert_eq!(
        mode(&agent.state_dir),
        0o700,
        "{}",
        agent.state_dir.display()
    );
    assert_eq!(
        mode(&agent.audit_log),
        0o640,
        "{}",
        agent.audit_log.display()
    );
    assert_eq!(mode(&deny_log), 0o640, "{}", deny_log.display());
}

fn unit_file() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    fs::read_to_string(root.join("packaging/portcullis.service")).unwrap()
}

#[test]
fn the_unit_scores_at_most_2_5_in_systemd_analyze_security() {
    let dir = std::env::temp_dir().join(unique("pc-unit-sec"));
    fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("portcullis.service");
    fs::write(&unit, unit_file()).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let _ = fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for portcullis.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("MEASURED: systemd-analyze security exposure {score}");
    assert!(score <= 2.5, "exposure {score} > 2.5:\n{text}");
    let unit = unit_file();
    assert!(
        unit.contains("\nLimitNOFILE="),
        "the unit sets no LimitNOFILE"
    );
    assert!(unit.contains("\nUMask=0077"), "the unit sets no UMask");
}

/// The syscall groups the unit allows, expanded by systemd-analyze.
fn expand_syscalls(group: &str, out: &mut std::collections::BTreeSet<String>) {
    let listed = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .expect("run systemd-analyze syscall-filter");
    for line in String::from_utf8_lossy(&listed.stdout).lines().skip(1) {
        let word = line.trim();
        if word.is_empty() || word.starts_with('#') {
            continue;
        }
        if word.starts_with('@') {
            expand_syscalls(word, out);
        } else {
            out.insert(word.to_string());
        }
    }
}

/// The unit's SystemCallFilter= lines, applied in order as systemd does
/// (the first is an allow list; `~` lines remove, later lines add back).
fn allowed_syscalls() -> std::collections::BTreeSet<String> {
    let mut allowed = std::collections::BTreeSet::new();
    let lines: Vec<String> = unit_file()
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter=").map(str::to_string))
        .collect();
    assert!(!lines.is_empty(), "the unit has no SystemCallFilter=");
    assert!(
        !lines[0].starts_with('~'),
        "the first SystemCallFilter= must be an allow list"
    );
    for line in lines {
        let (remove, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest.to_string()),
            None => (false, line),
        };
        for item in items.split_whitespace() {
            let mut set = std::collections::BTreeSet::new();
            if item.starts_with('@') {
                expand_syscalls(item, &mut set);
            } else {
                set.insert(item.to_string());
            }
            for s in set {
                if remove {
                    allowed.remove(&s);
                } else {
                    allowed.insert(s);
                }
            }
        }
    }
    allowed
}

/// No systemd runs on the test machine, so the filter cannot be applied
/// for real: the agent runs under strace through start-up, every control
/// operation, a reload, denies and a stop, and each system call it makes
/// must be one the unit's filter allows.
#[test]
fn every_system_call_the_agent_makes_is_allowed_by_the_units_filter() {
    let allowed = allowed_syscalls();
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let trace = std::env::temp_dir().join(unique("pc-strace"));
    let trace_arg = trace.to_str().unwrap().to_string();
    let mut agent = Agent::builder(&policy(server.port()), &cg.path)
        .wrap(&["strace", "-f", "-qq", "-o", &trace_arg])
        .start();
    let id = agent.grant("db", "uid:40190", "5m");
    agent.ok(&["list"]);
    agent.ok(&["explain", "uid:40190", &format!("{}/tcp", server.port())]);
    // This process (root, in no allowed cgroup) is refused: `explain`
    // says DENY and exits 1.
    let denied = agent.cli(&[
        "explain",
        "--pid",
        &std::process::id().to_string(),
        &format!("{}/tcp", server.port()),
    ]);
    assert_eq!(denied.status.code(), Some(1), "{denied:?}");
    let _ = As::user(&cg.path, 40191, 40191).tcp(server.addr);
    agent.ok(&["revoke", &id.to_string()]);
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    thread::sleep(Duration::from_secs(3));
    // The agent is strace's child: stop it, not strace (which would
    // detach and leave it running).
    let tracer = agent.pid();
    let children = fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children")).unwrap();
    let traced: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    unsafe { libc::kill(traced, libc::SIGTERM) };
    assert!(
        eventually(Duration::from_secs(10), || !std::path::Path::new(&format!(
            "/proc/{traced}"
        ))
        .exists()
            || fs::read_to_string(format!("/proc/{traced}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "the traced agent did not stop"
    );
    agent.stop();
    let text = fs::read_to_string(&trace).unwrap();
    let _ = fs::remove_file(&trace);
    let mut used = std::collections::BTreeSet::new();
    for line in text.lines() {
        let call = line
            .split_once(' ')
            .map(|(_, rest)| rest.trim_start())
            .unwrap_or("");
        if let Some(name) = call.split('(').next() {
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                used.insert(name.to_string());
            }
        }
    }
    // execve of the agent itself happens before the filter applies.
    used.remove("execve");
    assert!(used.contains("bpf"), "the trace saw no bpf(2): {used:?}");
    let refused: Vec<&String> = used.iter().filter(|c| !allowed.contains(*c)).collect();
    eprintln!(
        "MEASURED: the agent made {} distinct system calls",
        used.len()
    );
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter would refuse {refused:?}"
    );
}

/// EMFILE: the agent is left only a few spare descriptors (its limit
/// lowered while it runs) and two users flood it. Accepting fails; the
/// agent backs off and says so once, not once per failure.
#[test]
fn running_out_of_descriptors_backs_off_with_one_warning() {
    let cg = TestCgroup::new();
    let agent = Agent::builder(&policy(45994), &cg.path)
        .arg("--socket-mode")
        .arg("666")
        .start();
    let pid = agent.pid();
    let limit = open_fds(pid) + 6;
    let set_limit = |n: usize| {
        let out = Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={n}:"))
            .output()
            .expect("run prlimit");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    set_limit(limit);
    let log_before = agent.log.lock().unwrap().len();
    let mut floods: Vec<Child> = [40201, 40202]
        .into_iter()
        .map(|uid| start_flood(&agent.socket, uid, 60, 6))
        .collect();
    let mut outs: Vec<_> = floods.iter_mut().map(|f| wait_ready(f).0).collect();
    for (flood, out) in floods.iter_mut().zip(outs.iter_mut()) {
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        flood.wait().unwrap();
        eprintln!("flooder: {}", rest.trim());
    }
    let log: Vec<String> = agent.log.lock().unwrap()[log_before..].to_vec();
    let warnings = log
        .iter()
        .filter(|l| l.contains("accepting a control connection failed"))
        .count();
    eprintln!(
        "MEASURED: {warnings} accept warnings, {} log lines in all, during a 6 s EMFILE flood",
        log.len()
    );
    assert!(
        warnings >= 1,
        "the agent never ran out of descriptors (limit {limit}); the test proves nothing:\n{}",
        log.join("\n")
    );
    // (Other parts of the agent short of descriptors may log too, e.g. an
    // address scan when another test adds an interface: not counted here.)
    assert!(warnings <= 2, "{warnings} accept warnings: a log storm");
    // With descriptors back (the soft limit raised again), root is served.
    set_limit(1024);
    let (status, took) = cli_within(&agent, &["status"], Duration::from_secs(5));
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    eprintln!("MEASURED: status after the EMFILE flood answered in {took:?}");
}
