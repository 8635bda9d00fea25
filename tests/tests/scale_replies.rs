//! Replies of any size and the bounded cost of bad input (issue 14 items 5
//! and 6), end to end against the real agent:
//!
//! - `list` failed from ~12,000 standing allows or ~4,900 grants (a 1 MiB
//!   reply cap in the client); `revoke --segment` of 21,219 grants revoked
//!   them all and exited 3. Now both stream: 50,000 standing allows and
//!   3,000 grants list in full, `revoke --segment` exits 0 with every grant.
//!   (The bulk is standing allows from a generated policy: grants are made
//!   one by one over the socket, and each still rewrites the state file
//!   while the journal of issue 14 item 1 is not in.)
//! - An unprivileged client that asks for a huge list and stops reading
//!   holds no lock: root is answered meanwhile, and the agent drops the
//!   stalled stream after its deadline.
//! - A 10 MB hostile policy (a file past the 32 MiB cap; ten 1 MB files of duplicated
//!   ports and overlaps, 840,000 problems) is refused with a bounded audit
//!   record, a bounded `status`, and the old policy kept.
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    process::{Child, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use portcullis_tests::*;
use serde_json::Value;

/// Generous bound for anything the agent does in reaction to an event.
const WITHIN: Duration = Duration::from_secs(60);
const STANDING: u32 = 50_000;
const GRANTS: u32 = 3_000;

/// `bulk` on `bulk_port` with `standing` uid allows, and `tmp` on
/// `tmp_port` for grants.
fn big_policy(bulk_port: u16, tmp_port: u16, standing: u32) -> String {
    let allow: Vec<String> = (0..standing)
        .map(|i| format!("\"uid:{}\"", 100_000 + i))
        .collect();
    format!(
        "[segment.bulk]\nports = [\"{bulk_port}/tcp\"]\nallow = [{}]\n\n\
         [segment.tmp]\nports = [\"{tmp_port}/tcp\"]\n\n[segment.tmp.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n",
        allow.join(", ")
    )
}

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&out[..out.len().min(2000)])
        )
    })
}

/// One request over the control socket (as root, the test process);
/// returns every line of the answer.
fn raw(socket: &std::path::Path, request: &str) -> Vec<String> {
    let mut s = UnixStream::connect(socket).expect("connect to the control socket");
    s.set_read_timeout(Some(WITHIN)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    BufReader::new(s).lines().map_while(Result::ok).collect()
}

/// Makes `n` grants on `tmp` over the socket, four connections at a time.
fn grant_many(socket: &std::path::Path, n: u32) {
    let per = n.div_ceil(4);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let socket = socket.to_path_buf();
            thread::spawn(move || {
                for i in (t * per)..((t + 1) * per).min(n) {
                    let reply = raw(
                        &socket,
                        &format!(
                            r#"{{"op":"grant","segment":"tmp","identity":"uid:{}","ttl":"1h"}}"#,
                            200_000 + i
                        ),
                    );
                    assert!(
                        reply.len() == 1 && reply[0].contains(r#""kind":"granted""#),
                        "grant {i}: {reply:?}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Runs the CLI with stdout to a file and returns (exit code, stdout,
/// stderr, wall time, the CLI's peak RSS in KiB). The CLI runs under
/// /usr/bin/time, which reports the peak of its own child: a child of the
/// test process would report the test's memory too (ru_maxrss takes the
/// parent's peak when the child execs).
fn cli_measured(agent: &Agent, args: &[&str]) -> (i32, Vec<u8>, String, Duration, Option<u64>) {
    let out_path = agent.dir.join(format!("out-{}", unique("cli")));
    let err_path = agent.dir.join(format!("err-{}", unique("cli")));
    let rss_path = agent.dir.join(format!("rss-{}", unique("cli")));
    let timer = std::path::Path::new("/usr/bin/time");
    let mut cmd = if timer.exists() {
        let mut c = Command::new(timer);
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&rss_path)
            .arg(portcullis_bin());
        c
    } else {
        Command::new(portcullis_bin())
    };
    let started = Instant::now();
    let status = cmd
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .status()
        .expect("run portcullis");
    let took = started.elapsed();
    let out = fs::read(&out_path).unwrap();
    let err = fs::read_to_string(&err_path).unwrap();
    let rss = fs::read_to_string(&rss_path)
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()));
    for p in [out_path, err_path, rss_path] {
        let _ = fs::remove_file(p);
    }
    (status.code().unwrap_or(-1), out, err, took, rss)
}

#[test]
fn list_and_list_json_of_50000_allows_and_3000_grants_work_and_revoke_segment_exits_0_with_the_count(
) {
    let cg = TestCgroup::new();
    let agent = Agent::start(&big_policy(47101, 47102, STANDING), &cg.path);
    let started = Instant::now();
    grant_many(&agent.socket, GRANTS);
    eprintln!(
        "MEASURED: {GRANTS} grants over the socket in {:?}",
        started.elapsed()
    );

    let (code, out, err, took, rss) = cli_measured(&agent, &["list", "--json"]);
    assert_eq!(code, 0, "list --json failed: {err}");
    eprintln!(
        "MEASURED: list --json of {STANDING} standing allows and {GRANTS} grants: {took:?}, {} bytes, CLI peak RSS {rss:?} KiB",
        out.len()
    );
    let v = json(&out);
    let standing = v["ok"]["standing"].as_array().unwrap();
    let grants = v["ok"]["grants"].as_array().unwrap();
    assert_eq!(v["ok"]["kind"], "list");
    assert_eq!(standing.len(), STANDING as usize);
    assert_eq!(grants.len(), GRANTS as usize);
    assert_eq!(v["ok"]["pending"].as_array().unwrap().len(), 0);
    assert_eq!(
        standing[STANDING as usize - 1]["identity"],
        format!("uid:{}", 100_000 + STANDING - 1)
    );
    // Every grant once, in id order.
    let ids: Vec<u64> = grants.iter().map(|g| g["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "grants not in id order"
    );

    let (code, out, err, took, rss) = cli_measured(&agent, &["list"]);
    assert_eq!(code, 0, "list failed: {err}");
    eprintln!("MEASURED: list (table) of the same: {took:?}, CLI peak RSS {rss:?} KiB");
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines().count() > (STANDING + GRANTS) as usize,
        "{} lines",
        text.lines().count()
    );

    // Raw on the wire: a header, one line per record, an end that counts them.
    let lines = raw(&agent.socket, r#"{"op":"list"}"#);
    assert_eq!(lines[0], r#"{"ok":{"kind":"stream","of":"list"}}"#);
    assert_eq!(
        lines.last().unwrap(),
        &format!(r#"{{"end":{{"records":{}}}}}"#, STANDING + GRANTS)
    );
    assert_eq!(lines.len(), (STANDING + GRANTS) as usize + 2);

    let (code, out, err, took, _) = cli_measured(&agent, &["revoke", "--segment", "tmp", "--json"]);
    assert_eq!(code, 0, "revoke --segment failed: {err}");
    eprintln!("MEASURED: revoke --segment of {GRANTS} grants: {took:?}");
    let v = json(&out);
    assert_eq!(v["ok"]["kind"], "revoked");
    assert_eq!(v["ok"]["grants"].as_array().unwrap().len(), GRANTS as usize);
    let after = json(agent.ok(&["list", "--json"]).as_bytes());
    assert_eq!(after["ok"]["grants"].as_array().unwrap().len(), 0);
    assert_eq!(
        after["ok"]["standing"].as_array().unwrap().len(),
        STANDING as usize
    );

    // The human revoke prints one line per grant and exits 0.
    grant_many(&agent.socket, 200);
    let (code, out, err, _, _) = cli_measured(&agent, &["revoke", "--segment", "tmp"]);
    assert_eq!(code, 0, "revoke --segment failed: {err}");
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("revoked ")).count(),
        200,
        "{text}"
    );
    let (code, out, _, _, _) = cli_measured(&agent, &["revoke", "--segment", "tmp"]);
    assert_eq!(code, 0);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "no matching grants; nothing revoked\n"
    );
}

/// Bytes waiting in a pipe (FIONREAD).
fn pending_bytes(out: &ChildStdout) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int for a pipe descriptor we own.
    let rc = unsafe { libc::ioctl(out.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD");
    n as usize
}

fn stopped_lines(agent: &Agent) -> usize {
    agent
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("stopped a `list` reply"))
        .count()
}

#[test]
fn a_client_that_stops_reading_a_huge_list_holds_no_lock_and_is_dropped() {
    let cg = TestCgroup::new();
    let agent = Agent::builder(&big_policy(47111, 47112, STANDING), &cg.path)
        .arg("--socket-mode")
        .arg("666")
        .start();
    // An unprivileged user asks for the whole list as JSON and never reads
    // its own stdout: the CLI blocks on the full pipe, stops reading the
    // socket, and the agent's next page cannot be written.
    let mut stalled: Child = As::user(&cg.path, 40501, 40501)
        .command(portcullis_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["list", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run portcullis as a user");
    let mut out = stalled.stdout.take().unwrap();
    // The pipe holds 64 KiB; the CLI writes 8 KiB at a time.
    assert!(
        eventually(WITHIN, || pending_bytes(&out) >= 56 * 1024),
        "the stalled client never filled its pipe ({} bytes)",
        pending_bytes(&out)
    );
    // Time for the agent to fill the socket's buffers and block on the next
    // page (not a bound on anything: the test holds either way).
    thread::sleep(Duration::from_millis(500));
    // Meanwhile root is answered at once: the stalled stream holds no lock.
    let status = raw(&agent.socket, r#"{"op":"status"}"#);
    assert!(
        status[0].starts_with(r#"{"ok":{"kind":"status""#),
        "{status:?}"
    );
    let granted = raw(
        &agent.socket,
        r#"{"op":"grant","segment":"tmp","identity":"uid:300001","ttl":"1h"}"#,
    );
    assert!(granted[0].contains(r#""kind":"granted""#), "{granted:?}");
    // ... while the agent still holds the stalled stream open (had the
    // lock been held while writing, root would have waited until the
    // agent gave up on the stalled client).
    assert_eq!(
        stopped_lines(&agent),
        0,
        "the stalled stream was dropped before root was answered"
    );
    // Once read, the stalled client gets the whole list.
    let mut all = Vec::new();
    out.read_to_end(&mut all).unwrap();
    let code = stalled.wait().unwrap();
    let mut err = String::new();
    stalled
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(code.success(), "the slow client failed: {err}");
    let v = json(&all);
    assert_eq!(
        v["ok"]["standing"].as_array().unwrap().len(),
        STANDING as usize
    );

    // A client that never reads at all is dropped after the deadline, and
    // what it then reads is cut short: no end line.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.write_all(b"{\"op\":\"list\"}\n").unwrap();
    assert!(
        eventually(WITHIN, || stopped_lines(&agent) >= 1),
        "the agent never dropped a client that does not read"
    );
    s.set_read_timeout(Some(WITHIN)).unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(got.starts_with(r#"{"ok":{"kind":"stream","of":"list"}}"#));
    assert!(
        !got.contains(r#"{"end":"#),
        "a dropped stream ended properly"
    );
    assert!(
        got.lines().count() < STANDING as usize,
        "{} lines",
        got.lines().count()
    );
    // And the agent goes on.
    let v = json(agent.ok(&["list", "--json"]).as_bytes());
    assert_eq!(v["ok"]["grants"].as_array().unwrap().len(), 1);
}

/// Ten files of about 1 MB (10 MB in all): file k protects ports
/// 6000k+1..6000k+6000, each listed 14 times (78,000 duplicates per file),
/// and a first file claims every port (so each of those 6,000 ports also
/// overlaps it: 84,000 problems per file).
fn hostile_dir(dir: &std::path::Path) -> usize {
    let mut total = 0;
    for k in 0..10u32 {
        let mut ports = Vec::new();
        for _ in 0..14 {
            for p in (6000 * k + 1)..=(6000 * k + 6000) {
                ports.push(format!("\"{p}/tcp\""));
            }
        }
        let text = format!("[segment.h{k}]\nports = [{}]\n", ports.join(","));
        total += text.len();
        fs::write(dir.join(format!("h{k}.toml")), text).unwrap();
    }
    fs::write(
        dir.join("a.toml"),
        "[segment.all]\nports = [\"1-65535/tcp\"]\n",
    )
    .unwrap();
    total
}

fn reloads(agent: &Agent) -> Vec<Value> {
    agent
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "policy_reload")
        .collect()
}

fn vm_hwm_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// SIGHUP, then the next policy_reload record (bounded wait); returns it
/// and the time it took.
fn reload_and_wait(agent: &Agent) -> (Value, Duration) {
    let before = reloads(agent).len();
    let started = Instant::now();
    // SAFETY: kill(2) on the agent process this test started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    let mut all = Vec::new();
    assert!(
        eventually(WITHIN, || {
            all = reloads(agent);
            all.len() > before
        }),
        "no policy_reload record within {WITHIN:?}"
    );
    (all.pop().unwrap(), started.elapsed())
}

#[test]
fn a_10_mb_hostile_policy_is_refused_with_bounded_records_and_status() {
    let cg = TestCgroup::new();
    let agent = Agent::start(
        "[segment.db]\nports = [\"47121/tcp\"]\nallow = [\"uid:1\"]\n",
        &cg.path,
    );
    let status = |agent: &Agent| json(agent.ok(&["status", "--json"]).as_bytes())["ok"].clone();
    let digest = status(&agent)["policy_digest"].clone();
    let hwm_before = vm_hwm_kib(agent.pid());

    // One file past the cap (sparse: refused by its size before a byte is
    // read), naming the file and the cap.
    let big = agent.policies.join("big.toml");
    fs::write(&big, "[segment.big]\nports = [\"1/tcp\"]\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(portcullis_cap() + 1)
        .unwrap();
    let (record, took) = reload_and_wait(&agent);
    assert_eq!(record["ok"], false);
    let errors = record["errors"].to_string();
    assert!(
        errors.contains(&big.display().to_string())
            && errors.contains(&portcullis_cap().to_string()),
        "{errors}"
    );
    eprintln!("MEASURED: a policy file past the cap refused in {took:?}");
    fs::remove_file(&big).unwrap();

    // Ten 1 MB files: 840,000 duplicated and overlapping ports.
    let bytes = hostile_dir(&agent.policies);
    let (record, took) = reload_and_wait(&agent);
    let hwm = vm_hwm_kib(agent.pid());
    eprintln!(
        "MEASURED: {bytes} bytes of hostile policy refused in {took:?}; agent VmHWM {hwm_before} KiB before, {hwm} KiB after"
    );
    assert_eq!(record["ok"], false);
    let record_len = record.to_string().len();
    let errors: Vec<&str> = record["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    eprintln!(
        "MEASURED: the policy_reload record is {record_len} bytes, {} lines of errors",
        errors.len()
    );
    // At most 100 problems per file, each with its help line, and a count of the rest.
    let shown = errors.iter().filter(|e| e.starts_with("error: ")).count();
    assert!(shown <= 11 * 101 + 1, "{shown} errors in the record");
    let h0 = agent.policies.join("h0.toml").display().to_string();
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&format!("83900 more error(s) in {h0} not shown"))),
        "no count of the rest for h0: {:?}",
        &errors[..errors.len().min(20)]
    );
    assert!(errors
        .iter()
        .any(|e| e.contains("is listed twice in segment `h0`")));
    assert!(errors
        .iter()
        .any(|e| e.contains("more error(s) not shown (at most 1000 are reported in all)")));
    // `status` works and shows the same bounded errors; the old policy stays.
    let s = status(&agent);
    assert_eq!(s["policy_digest"], digest);
    assert_eq!(s["last_reload"]["ok"], false);
    assert_eq!(
        s["last_reload"]["errors"].as_array().unwrap().len(),
        errors.len()
    );
    // `check` says the same, bounded.
    let out = Command::new(portcullis_bin())
        .arg("check")
        .arg(&agent.policies)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().count() < 2 * (11 * 101 + 2),
        "{} lines",
        err.lines().count()
    );
    assert!(err.contains("more error(s) in"), "{err}");
}

/// The agent's cap on one policy file (`MAX_POLICY_BYTES`, 32 MiB).
fn portcullis_cap() -> u64 {
    32 * 1024 * 1024
}
