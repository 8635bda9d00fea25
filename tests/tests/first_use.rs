//! What a new user trips over (issue 20), against the real binary: exact
//! errors for wrong inputs and wrong set-ups, exit codes scripts rely on,
//! and output that reads right where it goes.
use std::{
    fs,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Output, Stdio},
};

use portcullis_tests::*;

fn policy(port: u16) -> String {
    format!(
        "[segment.payments-db]\nports = [\"{port}/tcp\"]\nallow = [\"uid:40100\"]\n\n\
         [segment.payments-db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n"
    )
}

const VALID: &str = "[segment.a]\nports = [\"5/tcp\"]\n";

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim_end().to_string()
}

/// `portcullis ARGS` with no agent behind `--socket`.
fn cli_alone(args: &[&str]) -> Output {
    Command::new(portcullis_bin())
        .arg("--socket")
        .arg("/nonexistent/portcullis-first-use.sock")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis")
}

#[test]
fn explain_exits_one_on_deny_and_names_what_is_wrong_with_a_port() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let port = server.port();
    let agent = Agent::start(&policy(port), &cg.path);
    let tcp = format!("{port}/tcp");
    let deny = agent.cli(&["explain", "uid:40200", &tcp]);
    assert_eq!(deny.status.code(), Some(1), "{}", text(&deny));
    assert!(String::from_utf8_lossy(&deny.stdout).contains("DENY"));
    let allow = agent.cli(&["explain", "uid:40100", &tcp]);
    assert_eq!(allow.status.code(), Some(0), "{}", text(&allow));
    let json = agent.cli(&["explain", "uid:40200", &tcp, "--json"]);
    assert_eq!(json.status.code(), Some(1), "{}", text(&json));

    let sctp = agent.cli(&["explain", "uid:40100", "5432/sctp"]);
    assert_eq!(sctp.status.code(), Some(2));
    assert_eq!(
        stderr(&sctp),
        "portcullis: unknown protocol `sctp` in `5432/sctp`: protocols are tcp and udp \
         (write PORT/tcp or PORT/udp, e.g. `5432/tcp`)"
    );
    let upper = agent.cli(&["explain", "uid:40100", &format!("{port}/TCP")]);
    assert_eq!(upper.status.code(), Some(2));
    assert_eq!(
        stderr(&upper),
        format!(
            "portcullis: protocol `TCP` in `{port}/TCP` is written in lower case (write `{port}/tcp`)"
        )
    );
    let zero = agent.cli(&["explain", "uid:40100", &format!("0{port}/tcp")]);
    assert_eq!(
        stderr(&zero),
        format!(
            "portcullis: port `0{port}` in `0{port}/tcp` has a leading zero (write `{port}/tcp`)"
        )
    );

    // A typo'd segment: did you mean.
    let typo = agent.cli(&["grant", "payments-bd", "uid:40200", "--ttl", "5m"]);
    assert_eq!(typo.status.code(), Some(1));
    assert_eq!(
        stderr(&typo),
        "portcullis: unknown segment \"payments-bd\"; did you mean \"payments-db\"?; \
         segments in force: payments-db"
    );
    // Durations: one grammar, a hint in every refusal.
    for (ttl, why) in [
        (
            "10M",
            "`M` is not a unit (months? minutes are `10m`, days `d`)",
        ),
        ("1h1h", "`h` is given twice (write each unit once)"),
        (
            "10 minutes",
            "`minutes` is a word; units are single letters (`10m`)",
        ),
        (
            "1ns",
            "`ns` is shorter than a second; the smallest unit is `s`",
        ),
    ] {
        let out = agent.cli(&["grant", "payments-db", "uid:40200", "--ttl", ttl]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            stderr(&out).contains(&format!(
                "`{ttl}` is not a duration: {why}; write whole numbers with a unit s, m, h or d, \
                 largest first: `90s`, `15m`, `1h30m`, `2d`"
            )),
            "{}",
            text(&out)
        );
    }

    // The agent's log is plain text when it is not a terminal.
    let log = agent.log.lock().unwrap().join("\n");
    assert!(log.contains("enforcing"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log:\n{log:?}"
    );
}

#[test]
fn without_an_agent_json_is_still_json_and_errors_say_what_to_do() {
    let out = cli_alone(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["error"]["code"], "unreachable", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with(
            "the agent's socket /nonexistent/portcullis-first-use.sock does not exist"
        ),
        "{v}"
    );
    let out = cli_alone(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok());

    let dir = std::env::temp_dir().join(unique("details-first-use"));
    fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("audit.jsonl");
    fs::write(&empty, "").unwrap();
    let out = cli_alone(&[
        "audit",
        "--event",
        "grnt",
        "--file",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stderr(&out).starts_with(
            "portcullis: --event \"grnt\" is not a kind of the audit log; did you mean \"grant\"?; \
             kinds: agent_start, agent_stop, grant, "
        ),
        "{}",
        text(&out)
    );

    // `audit verify` names the line of a byte that is not UTF-8.
    let bad = dir.join("bad.jsonl");
    fs::write(&bad, b"\n\n{\"event\":\"gr\xffnt\"}\n").unwrap();
    let out = cli_alone(&["audit", "verify", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "BROKEN at {}:3: byte 13 of the line is not UTF-8 (the record was altered or damaged)",
            bad.display()
        )
    );

    // `check` refuses what the agent refuses: more than 4,095 segments.
    let many = dir.join("many");
    fs::create_dir_all(&many).unwrap();
    let text_of = (1..=4096)
        .map(|i| format!("[segment.s{i}]\nports = [\"{i}/tcp\"]\n"))
        .collect::<String>();
    fs::write(many.join("many.toml"), text_of).unwrap();
    let out = cli_alone(&["check", many.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("many.toml:8191:10: 4096 segments; at most 4095 fit the kernel's port map, and this is number 4096"),
        "{err}"
    );
    assert!(
        err.ends_with(
            "portcullis: 1 error(s): the policy is invalid; an agent would refuse it and keep its current policy"
        ),
        "{err}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn as_non_root_one_clear_message() {
    require_root();
    let out = Command::new(portcullis_bin())
        .args([
            "uninstall",
            "--yes",
            "--bpffs",
            "/sys/fs/bpf/details-nothing",
        ])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        stderr(&out),
        "portcullis: uninstall needs root: it detaches the agent's programs, removes its pinned \
         maps and records that in the audit log (run it as root, e.g. with sudo)"
    );

    // The agent: the privilege error once, and before any policy warning
    // (this policy names a unit that does not exist: a warning).
    let cg = TestCgroup::new();
    let out = Agent::builder(
        "[segment.a]\nports = [\"5/tcp\"]\nallow = [\"unit:details-nonexistent.service\"]\n",
        &cg.path,
    )
    .wrap(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ])
    .start_expecting_failure();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.matches("needs root").count(), 1, "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(
        err.contains(
            "portcullis agent needs root, or the capabilities CAP_BPF, CAP_PERFMON and \
             CAP_NET_ADMIN; this process (uid 65534) lacks CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"
        ),
        "{err}"
    );
}

/// `--cgroup` and `--bpffs` set-ups that are wrong are named for what they
/// are, not as a kernel refusal to attach ("needs kernel ≥ 5.7").
#[test]
fn a_wrong_cgroup_or_bpffs_is_named_for_what_it_is() {
    let cg = TestCgroup::new();
    let mount = cgroup2_mount();
    let tail = format!(
        "; give a directory of the cgroup2 tree under {m} (--cgroup or `cgroup` in the \
         configuration; unset, the agent covers the whole host from {m})",
        m = mount.display()
    );
    let file = cg.path.join("cgroup.procs");
    let plain = std::env::temp_dir().join(unique("details-notcg"));
    fs::create_dir_all(&plain).unwrap();
    for (path, why) in [
        (file.as_path(), "is a file, not a cgroup directory"),
        (plain.as_path(), "is not on a cgroup filesystem"),
        (
            Path::new("/sys/fs/cgroup/details-missing"),
            "does not exist",
        ),
    ] {
        let out = Agent::builder(VALID, path).start_expecting_failure();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "the cgroup to attach to, {}, {why}{tail}",
                path.display()
            )),
            "{err}"
        );
        // Not the old misleading "needs kernel ≥ 5.7" (matched as words: the
        // log line's timestamp, e.g. "…:25.702…", may hold "5.7").
        assert!(!err.contains("kernel ≥ 5.7"), "{err}");
    }
    let _ = fs::remove_dir_all(&plain);

    let parent = Path::new("/sys/fs/bpf").join(unique("details-noparent"));
    let out = Agent::builder(VALID, &cg.path)
        .bpffs(&parent.join("agent"))
        .start_expecting_failure();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the bpffs directory's parent {p} does not exist; the agent creates only its own \
             directory: create the parent (`mkdir -m 0700 {p}`)",
            p = parent.display()
        )),
        "{err}"
    );
    assert!(!parent.exists(), "nothing was created");
}
