//! The audit trail and observability, end to end: every event kind lands in
//! the hash-chained audit log with its fields after the real action;
//! `portcullis audit verify` finds a changed byte, a deleted line and two
//! swapped lines at the right record, across rotated files too; a full disk
//! blocks grants but never revocations; a flood of kernel denies yields a
//! bounded deny log plus a suppressed count; the metrics endpoint serves
//! Prometheus text whose counters move with real traffic.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::channel,
    thread,
    time::{Duration, Instant},
};

use std::os::unix::fs::PermissionsExt;

use portcullis_tests::*;
use serde_json::Value;

fn policy(segment: &str, ports: &[String]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "[segment.{segment}]\nports = [{}]\n\n[segment.{segment}.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"10m\"\nrequire_reason = false\n",
        ports.join(", ")
    )
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn status(agent: &Agent) -> Value {
    json(&agent.ok(&["status", "--json"]))["ok"].clone()
}

fn events<'a>(recs: &'a [Value], event: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["event"] == event).collect()
}

fn one<'a>(recs: &'a [Value], event: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = events(recs, event)
        .into_iter()
        .filter(|r| pred(r))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {event} record, found {found:#?} in {recs:#?}"
    );
    found[0]
}

/// `2026-05-09T10:00:00.123Z` or `2026-05-09T10:00:00Z`: RFC 3339, UTC.
fn assert_rfc3339_utc(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    let b = s.as_bytes();
    let ok = s.ends_with('Z')
        && b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s[..4].parse::<u32>().is_ok();
    assert!(ok, "{what} {s:?} is not RFC 3339 UTC");
}

fn assert_chained(r: &Value) {
    assert_rfc3339_utc(&r["ts"], "ts");
    for k in ["prev", "hash"] {
        let h = r[k].as_str().unwrap_or("");
        assert!(
            h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()),
            "{k} of {r}"
        );
    }
}

fn assert_actor(r: &Value, uid: u32, user: &str) {
    let a = &r["actor"];
    assert_eq!(a["uid"], uid, "actor of {r}");
    assert_eq!(a["user"], user, "actor of {r}");
    assert!(a["pid"].as_u64().is_some_and(|p| p > 0), "actor pid of {r}");
}

#[test]
fn every_event_kind_is_recorded_with_its_fields() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let port = format!("{}/tcp", server.port());
    // Two map entries: the third grant finds the map full.
    let good_policy = policy("db", std::slice::from_ref(&port));
    let mut agent = Agent::builder(&good_policy, &cg.path)
        .arg("--max-grants")
        .arg("2")
        // Other users reach the socket: refusals are the agent's decision.
        .arg("--socket-mode")
        .arg("666")
        .start();
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();

    let g1 = agent.grant("db", "uid:40001", "10m");
    let refused = agent.cli_as(40002, 40002, &["grant", "db", "uid:40002", "--ttl", "5m"]);
    assert_eq!(refused.status.code(), Some(1));

    // A request by `nobody`, approved by root; then revoked.
    let out = agent.cli_as(
        65534,
        65534,
        &[
            "request",
            "db",
            "--ttl",
            "5m",
            "--reason",
            "need the db",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = json(&String::from_utf8_lossy(&out.stdout))["ok"]["request"]["id"]
        .as_u64()
        .expect("request id");
    let approved = json(&agent.ok(&["approve", &req.to_string(), "--json"]));
    let g2 = approved["ok"]["grant"]["id"].as_u64().expect("grant id");

    // The map holds two entries: a third grant fails in the kernel.
    let full = agent.cli(&["grant", "db", "uid:40003", "--ttl", "5m"]);
    assert_eq!(full.status.code(), Some(1));

    agent.ok(&["revoke", &g2.to_string()]);
    let out = agent.cli_as(
        65534,
        65534,
        &["request", "db", "--reason", "again", "--json"],
    );
    let req2 = json(&String::from_utf8_lossy(&out.stdout))["ok"]["request"]["id"]
        .as_u64()
        .expect("second request id");
    agent.ok(&["deny", &req2.to_string(), "--reason", "not now"]);

    let g3 = agent.grant("db", "uid:40004", "2s");

    // A good reload, then a bad one.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(10), || events(
        &agent.audit_records(),
        "policy_reload"
    )
    .iter()
    .any(|r| r["ok"] == true)));
    fs::write(
        agent.policies.join("test.toml"),
        "[segment.db]\nports = [\"nope\"]\n",
    )
    .unwrap();
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(10), || events(
        &agent.audit_records(),
        "policy_reload"
    )
    .iter()
    .any(|r| r["ok"] == false)));
    assert!(
        eventually(Duration::from_secs(10), || agent
            .audit_records()
            .iter()
            .any(|r| r["event"] == "expire" && r["grant_id"] == g3)),
        "no expire record for grant {g3}"
    );
    assert!(agent.stop().success());

    // A journal that cannot be read is set aside, and says so.
    fs::write(agent.policies.join("test.toml"), &good_policy).unwrap();
    fs::write(agent.state_dir.join("journal.snap"), "{ not json").unwrap();
    agent.spawn(&[
        "--max-grants".into(),
        "2".into(),
        "--socket-mode".into(),
        "666".into(),
    ]);
    agent.stop();

    let recs = agent.audit_records();
    for r in &recs {
        assert_chained(r);
    }
    let root = "root";
    let start = &events(&recs, "agent_start")[0];
    assert!(start["version"].is_string() && start["pid"].as_u64().is_some());
    assert_eq!(start["cgroup"], cg.path.display().to_string());
    assert_eq!(start["policy_digest"].as_str().map(str::len), Some(64));
    assert_eq!(events(&recs, "agent_start").len(), 2);
    assert_eq!(events(&recs, "agent_stop").len(), 2);
    assert!(events(&recs, "agent_stop")[0]["pid"].as_u64().is_some());

    let grant = one(&recs, "grant", |r| r["grant_id"] == g1);
    assert_eq!(grant["segment"], "db");
    assert_eq!(grant["identity"], "uid:40001");
    assert_eq!(grant["ports"], serde_json::json!([port]));
    assert_eq!(grant["ttl_secs"], 600);
    assert_eq!(grant["reason"], "e2e test");
    assert_rfc3339_utc(&grant["expires_at"], "expires_at");
    assert_actor(grant, 0, root);

    let r = one(&recs, "refused", |r| r["actor"]["uid"] == 40002);
    assert_eq!(r["op"], "grant");
    assert_eq!(r["segment"], "db");
    assert_eq!(r["code"], "forbidden");
    assert!(r["why"].as_str().unwrap().contains("may not grant"), "{r}");

    let request = one(&recs, "request", |r| r["request_id"] == req);
    assert_eq!(request["identity"], "user:nobody");
    assert_eq!(request["segment"], "db");
    assert_eq!(request["ttl_secs"], 300);
    assert_eq!(request["reason"], "need the db");
    assert_eq!(request["ports"], serde_json::json!([port]));
    assert_rfc3339_utc(&request["expires_at"], "request expires_at");
    assert_actor(request, 65534, "nobody");

    let approve = one(&recs, "approve", |r| r["request_id"] == req);
    assert_eq!(approve["grant_id"], g2);
    assert_actor(approve, 0, root);
    let approved_grant = one(&recs, "grant", |r| r["grant_id"] == g2);
    assert_eq!(
        approved_grant["request_id"], req,
        "the grant names its request"
    );
    assert_eq!(approved_grant["identity"], "user:nobody");

    let failed = one(&recs, "grant_failed", |_| true);
    assert_eq!(failed["identity"], "uid:40003");
    assert_eq!(failed["segment"], "db");
    assert!(
        failed["error"].as_str().unwrap().contains("full"),
        "{failed}"
    );
    assert_actor(failed, 0, root);

    let revoke = one(&recs, "revoke", |r| r["grant_id"] == g2);
    assert_eq!(revoke["request_id"], req, "request → grant → revocation");
    assert_eq!(revoke["identity"], "user:nobody");
    assert_eq!(revoke["ports"], serde_json::json!([port]));
    assert_actor(revoke, 0, root);

    let deny = one(&recs, "deny", |r| r["request_id"] == req2);
    assert_eq!(deny["reason"], "not now");
    assert_eq!(deny["segment"], "db");
    assert_actor(deny, 0, root);

    let expire = one(&recs, "expire", |r| r["grant_id"] == g3);
    assert_eq!(expire["identity"], "uid:40004");
    assert_rfc3339_utc(&expire["expired_at"], "expired_at");
    assert_rfc3339_utc(&expire["cleaned_at"], "cleaned_at");
    assert_eq!(expire["actor"]["user"], "portcullis-agent");

    let reloads = events(&recs, "policy_reload");
    let good = reloads.iter().find(|r| r["ok"] == true).unwrap();
    assert_eq!(good["digest"].as_str().map(str::len), Some(64), "{good}");
    let bad = reloads.iter().find(|r| r["ok"] == false).unwrap();
    eprintln!("SAMPLE {bad}");
    let errors = bad["errors"].to_string();
    assert!(
        errors.contains("test.toml:2"),
        "errors name file:line: {errors}"
    );

    let corrupt = one(&recs, "state_corrupt", |_| true);
    assert!(
        corrupt["why"].is_string() && corrupt["moved_to"].is_string(),
        "{corrupt}"
    );

    // The whole trail verifies.
    let out = agent.cli(&["audit", "verify", agent.audit_log.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Print one record of each kind (docs/audit.md quotes them).
    let mut seen = std::collections::BTreeSet::new();
    for r in &recs {
        if seen.insert(r["event"].as_str().unwrap().to_string()) {
            eprintln!("SAMPLE {r}");
        }
    }
}

/// Runs `portcullis audit verify FILE`: (exit code, stdout + stderr).
fn verify(agent: &Agent, file: &Path) -> (i32, String) {
    let out = agent.cli(&["audit", "verify", file.to_str().unwrap()]);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn verify_passes_on_a_real_log_and_names_the_first_broken_record() {
    let cg = TestCgroup::new();
    let agent = Agent::start(&policy("db", &["5999/tcp".into()]), &cg.path);
    for i in 0..3 {
        let id = agent.grant("db", &format!("uid:{}", 40010 + i), "10m");
        agent.ok(&["revoke", &id.to_string()]);
    }
    // The default: the agent's own log, found through its socket.
    let out = agent.cli(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("7 record(s)") && text.contains("chain intact"),
        "{text}"
    );

    let original = fs::read_to_string(&agent.audit_log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 7, "agent_start + 3 × (grant, revoke)");
    let copy = agent.dir.join("copy.jsonl");
    let check = |text: String, line: usize, why: &str| {
        fs::write(&copy, text).unwrap();
        let (code, out) = verify(&agent, &copy);
        assert_eq!(code, 1, "{out}");
        let at = format!("BROKEN at {}:{line}: ", copy.display());
        assert!(out.contains(&at), "expected {at:?} in {out}");
        assert!(out.contains(why), "expected {why:?} in {out}");
    };

    // One byte of record 3 (the first revocation's identity) changed.
    let mut bytes = lines.iter().map(|l| format!("{l}\n")).collect::<Vec<_>>();
    bytes[2] = bytes[2].replacen("uid:40010", "uid:40019", 1);
    assert_ne!(
        bytes[2],
        format!("{}\n", lines[2]),
        "line 3 is the first revocation"
    );
    check(bytes.concat(), 3, "modified");
    // Record 3 deleted.
    let mut deleted: Vec<&str> = lines.clone();
    deleted.remove(2);
    check(deleted.join("\n") + "\n", 3, "does not follow");
    // Records 2 and 3 swapped.
    let mut swapped: Vec<&str> = lines.clone();
    swapped.swap(1, 2);
    check(swapped.join("\n") + "\n", 2, "does not follow");
    // Untouched, it passes.
    fs::write(&copy, &original).unwrap();
    assert_eq!(verify(&agent, &copy).0, 0);
}

#[test]
fn rotation_keeps_one_chain_across_files() {
    let cg = TestCgroup::new();
    let agent = Agent::builder(&policy("db", &["5998/tcp".into()]), &cg.path)
        .arg("--audit-max-bytes")
        .arg("4K")
        .arg("--audit-keep")
        .arg("50")
        .start();
    let grants = 20;
    for i in 0..grants {
        let id = agent.grant("db", &format!("uid:{}", 40100 + i), "10m");
        agent.ok(&["revoke", &id.to_string()]);
    }
    let rotated = |n: usize| PathBuf::from(format!("{}.{n}", agent.audit_log.display()));
    let mut files = vec![agent.audit_log.clone()];
    let mut n = 1;
    while rotated(n).exists() {
        files.push(rotated(n));
        n += 1;
    }
    assert!(files.len() >= 3, "expected rotations, found {files:?}");
    for f in &files {
        let len = fs::metadata(f).unwrap().len();
        assert!(len <= 4096, "{} is {len} bytes", f.display());
    }
    // The new file opens with a rotate record chained to the old file's end.
    let first = json(
        fs::read_to_string(&agent.audit_log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    );
    let older = fs::read_to_string(rotated(1)).unwrap();
    let older_last = json(older.lines().last().unwrap());
    assert_eq!(first["event"], "rotate");
    assert_eq!(first["prev"], older_last["hash"]);

    let out = agent.cli(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("in {} file(s) chain intact", files.len())),
        "{text}"
    );

    // A time window reads the rotated files too.
    let out = agent.ok(&["audit", "--since", "1h", "--event", "grant", "--json"]);
    assert_eq!(out.lines().count(), grants, "{out}");

    // A record deleted from a rotated file is found there.
    let victim = rotated(2);
    let text = fs::read_to_string(&victim).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    fs::write(&victim, lines.join("\n") + "\n").unwrap();
    let out = agent.cli(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{}:2: ", victim.display())),
        "{text}"
    );
}

/// The deny log's records, parsed.
fn deny_records(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(json)
        .collect()
}

/// Reads `status` until the deny log's counts stop moving (two reads
/// 300 ms apart agree), bounded.
fn settled_deny_log(agent: &Agent) -> Value {
    let mut last = Value::Null;
    let settled = eventually(Duration::from_secs(30), || {
        thread::sleep(Duration::from_millis(300));
        let now = status(agent)["deny_log"].clone();
        let same = now["received"].as_u64().is_some_and(|n| n > 0) && now == last;
        last = now;
        same
    });
    assert!(settled, "the deny log did not settle: {last}");
    last
}

#[test]
fn a_flood_of_a_million_denies_yields_bounded_lines_and_a_suppressed_count() {
    let cg = TestCgroup::new();
    let server = EchoServer::udp("127.0.0.1:0");
    let agent = Agent::builder(
        &policy("dns", &[format!("{}/udp", server.port())]),
        &cg.path,
    )
    .arg("--deny-burst")
    .arg("5")
    // Longer than the test: no window closes before the agent stops.
    .arg("--deny-window")
    .arg("1h")
    .start();
    let deny_log = agent.audit_log.with_file_name("denies.jsonl");
    let client = As::root_in(&cg.path);
    const FLOOD: u64 = 1_000_000;

    let started = Instant::now();
    let mut cmd = client.command(probe_bin());
    cmd.args([
        "flood-udp",
        &server.addr.to_string(),
        &FLOOD.to_string(),
        "120",
    ]);
    let flood = thread::spawn(move || cmd.output().expect("run pc-probe flood-udp"));
    // The agent keeps answering while the kernel refuses the flood.
    let mut answered = 0;
    while !flood.is_finished() && answered < 20 {
        agent.ok(&["status"]);
        answered += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let out = flood.join().unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        text.trim(),
        format!("flood sent 0 eperm {FLOOD} other 0"),
        "every datagram refused with EPERM (stderr {})",
        String::from_utf8_lossy(&out.stderr)
    );

    let view = settled_deny_log(&agent);
    let (received, logged, suppressed) = (
        view["received"].as_u64().unwrap(),
        view["logged"].as_u64().unwrap(),
        view["suppressed"].as_u64().unwrap(),
    );
    let st = status(&agent);
    let kernel_denied = st["segments"][0]["denied"].as_u64().unwrap();
    eprintln!(
        "flood of {FLOOD} sendto in {took:?}: kernel counted {kernel_denied} denied, agent read {received} events, logged {logged}, suppressed {suppressed} (answered status {answered} times meanwhile)"
    );
    assert!(kernel_denied >= FLOOD, "kernel counter {kernel_denied}");
    assert_eq!(logged, 5, "{view}");
    assert_eq!(suppressed, received - 5, "{view}");
    assert!(received > 5, "{view}");
    assert_eq!(view["path"], deny_log.display().to_string());

    let recs = deny_records(&deny_log);
    assert_eq!(recs.len(), 5, "{recs:#?}");
    for r in &recs {
        assert_eq!(r["event"], "deny");
        assert_eq!(r["hook"], "sendmsg4");
        assert_eq!(r["proto"], "udp");
        assert_eq!(r["port"], server.port());
        assert_eq!(r["addr"], "127.0.0.1");
        assert_eq!(r["segment"], "dns");
        assert_eq!(r["cgroup"], cg.rel);
        assert_eq!(r["identity"], format!("cgroup:{}", cg.rel));
        assert_eq!(
            (r["uid"].clone(), r["user"].clone()),
            (0.into(), "root".into())
        );
        assert_rfc3339_utc(&r["ts"], "deny ts");
    }
    // `audit --denies` finds the deny log through the agent.
    let shown = agent.ok(&["audit", "--denies"]);
    assert_eq!(shown.lines().count(), 5, "{shown}");
    assert!(
        shown.contains("deny") && shown.contains("sendmsg4"),
        "{shown}"
    );

    // Stopping closes the window: one line sums up the rest.
    let mut agent = agent;
    agent.stop();
    let recs = deny_records(&deny_log);
    assert_eq!(recs.len(), 6, "{recs:#?}");
    let summary = &recs[5];
    assert_eq!(summary["event"], "suppressed");
    // Events still in the ring when `status` was read are counted by the
    // time the agent stops; none is counted twice.
    let summed = summary["suppressed"].as_u64().unwrap();
    assert!(
        summed >= suppressed && summed + logged <= kernel_denied,
        "suppressed {summed}: at least {suppressed} counted before, at most {kernel_denied} - {logged} denied"
    );
    assert_eq!(summary["identity"], format!("cgroup:{}", cg.rel));
    assert_eq!(summary["segment"], "dns");
    let bytes = fs::metadata(&deny_log).unwrap().len();
    eprintln!(
        "deny log after the flood: {} lines, {bytes} bytes",
        recs.len()
    );
}

#[test]
fn a_closed_window_writes_a_summary_and_queries_find_it() {
    let cg = TestCgroup::new();
    let server = EchoServer::udp("127.0.0.1:0");
    let agent = Agent::builder(
        &policy("dns", &[format!("{}/udp", server.port())]),
        &cg.path,
    )
    .arg("--deny-burst")
    .arg("2")
    .arg("--deny-window")
    .arg("1s")
    .start();
    let deny_log = agent.audit_log.with_file_name("denies.jsonl");
    let client = As::user(&cg.path, 40200, 40200);
    let out = client
        .command(probe_bin())
        .args(["flood-udp", &server.addr.to_string(), "200", "60"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "flood sent 0 eperm 200 other 0"
    );
    // However the 200 fall into windows, each is either written or summed up.
    let accounted = || {
        let recs = deny_records(&deny_log);
        let lines = events(&recs, "deny").len() as u64;
        let summed: u64 = events(&recs, "suppressed")
            .iter()
            .map(|r| r["suppressed"].as_u64().unwrap())
            .sum();
        (lines, summed)
    };
    assert!(
        eventually(Duration::from_secs(15), || {
            let (lines, summed) = accounted();
            lines + summed == 200 && summed > 0
        }),
        "deny lines + suppressed counts never reached 200: {:?}",
        accounted()
    );
    let (lines, _) = accounted();
    assert!(lines >= 2, "each window writes its burst first");
    let shown = agent.ok(&[
        "audit",
        "--denies",
        "--identity",
        "uid:40200",
        "--event",
        "suppressed",
    ]);
    assert!(shown.lines().count() >= 1, "{shown}");
    assert!(
        shown.contains(&format!("cgroup:{} → dns", cg.rel)),
        "{shown}"
    );
    let none = agent.ok(&["audit", "--denies", "--identity", "uid:40201"]);
    assert_eq!(none, "", "another uid");
}

/// A tmpfs of 64 KiB, unmounted on drop.
struct TinyFs {
    dir: PathBuf,
}

impl TinyFs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("pc-tinyfs"));
        fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// Writes a filler file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let filler = self.dir.join("filler");
        let mut f = fs::File::create(&filler).unwrap();
        let chunk = [0u8; 1024];
        for _ in 0..1024 {
            if f.write_all(&chunk).and_then(|()| f.sync_all()).is_err() {
                return filler;
            }
        }
        panic!("a 64 KiB tmpfs took 1 MiB");
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_full_disk_blocks_grants_but_not_revocations() {
    let tiny = TinyFs::new();
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::builder(&policy("db", &[format!("{}/tcp", server.port())]), &cg.path)
        .audit_log(&tiny.dir.join("audit.jsonl"))
        .arg("--socket-mode")
        .arg("666")
        .start();
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let client = As::root_in(&cg.path);
    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    // A request to approve once the disk is full.
    let out = agent.cli_as(65534, 65534, &["request", "db", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let req = json(&String::from_utf8_lossy(&out.stdout))["ok"]["request"]["id"]
        .as_u64()
        .unwrap();

    let filler = tiny.fill();
    // The log's last page may still have room for a record or two; grants
    // go through until it has not.
    let mut refused = None;
    for i in 0..64 {
        let out = agent.cli(&["grant", "db", &format!("uid:{}", 41000 + i), "--ttl", "10m"]);
        if !out.status.success() {
            refused = Some((i, out));
            break;
        }
    }
    let (i, out) = refused.expect("a grant refused on a full disk");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("audit log cannot be written"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let list = json(&agent.ok(&["list", "--json"]));
    assert!(
        !list["ok"]["grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["identity"] == format!("uid:{}", 41000 + i)),
        "the refused grant is not in force: {list}"
    );
    // So are approvals: they grant through the same path.
    let out = agent.cli(&["approve", &req.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("audit log cannot be written"), "{err}");
    let st = status(&agent);
    assert!(
        st["audit_failing"]
            .as_str()
            .is_some_and(|w| w.contains("No space left")),
        "{st}"
    );
    let human = agent.ok(&["status"]);
    assert!(human.contains("CANNOT BE WRITTEN"), "{human}");
    assert!(
        agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("cannot write the audit record")),
        "an error in the agent's log"
    );

    // Revocation still happens, and is enforced.
    agent.ok(&["revoke", &id.to_string()]);
    assert_eq!(client.tcp(server.addr), Outcome::eperm());

    // Room again: grants work, and the revocation's record is written late.
    fs::remove_file(filler).unwrap();
    let again = agent.grant("db", "uid:41999", "10m");
    let st = status(&agent);
    assert!(st["audit_failing"].is_null(), "{st}");
    agent.ok(&["approve", &req.to_string()]);
    let recs = agent.audit_records();
    // Nothing claims the refused grant happened; everything else is there.
    assert!(
        !recs
            .iter()
            .any(|r| r["event"] == "grant" && r["identity"] == format!("uid:{}", 41000 + i)),
        "a record of the refused grant: {recs:#?}"
    );
    assert_eq!(events(&recs, "approve").len(), 1);
    let revoke = one(&recs, "revoke", |r| r["grant_id"] == id);
    assert_eq!(revoke["recorded_late"], true, "{revoke}");
    eprintln!("written late: {revoke}");
    assert_rfc3339_utc(&revoke["happened_at"], "happened_at");
    assert!(recs
        .iter()
        .any(|r| r["event"] == "grant" && r["grant_id"] == again));
    let (code, out) = verify(&agent, &agent.audit_log);
    assert_eq!(code, 0, "no torn record: {out}");
}

/// `GET path` (or another method) → (status code, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// Parses Prometheus text exposition strictly enough to catch format
/// mistakes: HELP/TYPE before a family's samples, valid names, escaped
/// labels, numeric values, cumulative histogram buckets ending in +Inf.
/// Returns `name{label="v",...}` (labels sorted) → value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    fn valid_name(n: &str) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name) && helps.insert(name.to_string()), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helps.contains(name), "HELP before TYPE: {line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        let (name, mut labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                let mut labels = Vec::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(valid_name(&key), "label name in {line}");
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut v = String::new();
                    loop {
                        match chars
                            .next()
                            .unwrap_or_else(|| panic!("unterminated {line}"))
                        {
                            '\\' => match chars.next() {
                                Some('\\') => v.push('\\'),
                                Some('"') => v.push('"'),
                                Some('n') => v.push('\n'),
                                other => panic!("bad escape {other:?} in {line}"),
                            },
                            '"' => break,
                            c => v.push(c),
                        }
                    }
                    labels.push((key, v));
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        labels.sort();
        let key = format!(
            "{name}{{{}}}",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(
            samples.insert(key, value).is_none(),
            "duplicate series {line}"
        );
    }
    // Histograms: cumulative buckets, +Inf equals _count.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let prefix = format!("{family}_bucket{{");
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| {
                let le = k.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                (
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    },
                    *v,
                )
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family} buckets not cumulative"
        );
        let inf = buckets.last().expect("buckets");
        assert!(inf.0.is_infinite());
        assert_eq!(
            inf.1,
            samples[&format!("{family}_count{{}}")],
            "{family} +Inf != count"
        );
    }
    samples
}

fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (code, body) = http(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{body}");
    parse_prometheus(&body)
}

#[test]
fn metrics_are_prometheus_text_and_move_with_real_traffic() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::builder(&policy("db", &[format!("{}/tcp", server.port())]), &cg.path)
        .arg("--metrics-addr")
        .arg("127.0.0.1:0")
        .start();
    let mut addr = None;
    assert!(eventually(Duration::from_secs(10), || {
        addr = agent.log.lock().unwrap().iter().find_map(|l| {
            let url = l.split("http://").nth(1)?;
            url.split("/metrics").next()?.parse::<SocketAddr>().ok()
        });
        addr.is_some()
    }));
    let addr = addr.unwrap();
    assert!(addr.ip().is_loopback());

    let client = As::root_in(&cg.path);
    let denied = "portcullis_segment_denied_total{segment=\"db\"}";
    let allowed = "portcullis_segment_allowed_total{segment=\"db\"}";
    let live = "portcullis_grants_live{}";
    let revocations = "portcullis_revocation_enforcement_seconds_count{}";
    let reload_ok = "portcullis_policy_reloads_total{result=\"success\"}";
    let reload_failed = "portcullis_policy_reloads_total{result=\"failure\"}";
    let before = scrape(addr);
    for key in [
        "portcullis_requests_pending{}",
        "portcullis_map_entries{map=\"grants\"}",
        "portcullis_map_entries{map=\"peers\"}",
        "portcullis_audit_write_failures_total{}",
        "portcullis_audit_log_writable{}",
        "portcullis_deny_events_total{outcome=\"suppressed\"}",
    ] {
        assert!(before.contains_key(key), "{key} missing from {before:#?}");
    }
    assert_eq!(
        before["portcullis_map_capacity{map=\"grants\"}"],
        agent_common_default_max_grants()
    );
    assert_eq!(before[live], 0.0);
    assert_eq!(before["portcullis_audit_log_writable{}"], 1.0);

    assert_eq!(client.tcp(server.addr), Outcome::eperm());
    let after_deny = scrape(addr);
    assert!(after_deny[denied] > before[denied], "denied did not move");
    assert!(
        eventually(Duration::from_secs(10), || scrape(addr)
            ["portcullis_deny_events_total{outcome=\"logged\"}"]
            >= 1.0),
        "the deny event reached the deny log"
    );

    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    let granted = scrape(addr);
    assert!(
        granted[allowed] > after_deny[allowed],
        "allowed did not move"
    );
    assert_eq!(granted[live], 1.0);
    assert!(granted["portcullis_map_entries{map=\"grants\"}"] >= 1.0);

    agent.ok(&["revoke", &id.to_string()]);
    let revoked = scrape(addr);
    assert_eq!(revoked[live], 0.0);
    assert_eq!(revoked[revocations], granted[revocations] + 1.0);
    assert!(revoked["portcullis_revocation_enforcement_seconds_sum{}"] > 0.0);

    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(10), || scrape(addr)
        [reload_ok]
        > revoked[reload_ok]));
    fs::write(
        agent.policies.join("test.toml"),
        "[segment.db]\nports = [\"nope\"]\n",
    )
    .unwrap();
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(10), || scrape(addr)
        [reload_failed]
        > revoked[reload_failed]));

    assert_eq!(http(addr, "GET", "/").0, 404);
    assert_eq!(http(addr, "POST", "/metrics").0, 405);
}

fn agent_common_default_max_grants() -> f64 {
    // agent_common::DEFAULT_MAX_GRANTS; the tests crate does not link it.
    262_144.0
}

#[test]
fn queries_filter_by_segment_identity_time_and_follow_new_records() {
    let cg = TestCgroup::new();
    let text = format!(
        "{}\n{}",
        policy("a", &["5990/tcp".into()]),
        policy("b", &["5991/tcp".into()])
    );
    let agent = Agent::start(&text, &cg.path);
    let g1 = agent.grant("a", "uid:40301", "10m");
    let g2 = agent.grant("b", "uid:40302", "10m");
    agent.ok(&["revoke", &g1.to_string()]);

    let on_a = agent.ok(&["audit", "--segment", "a", "--json"]);
    let recs: Vec<Value> = on_a.lines().map(json).collect();
    assert_eq!(recs.len(), 2, "{on_a}");
    assert!(recs.iter().all(|r| r["segment"] == "a"));

    let human = agent.ok(&["audit", "--identity", "uid:40302"]);
    assert_eq!(human.lines().count(), 1, "{human}");
    assert!(
        human.contains("grant") && human.contains("uid:40302 → b"),
        "{human}"
    );
    assert!(human.contains("by root(0)/pid "), "{human}");
    assert!(human.contains(&format!("grant_id={g2}")), "{human}");

    assert_eq!(
        agent
            .ok(&["audit", "--since", "1h", "--event", "grant", "--json"])
            .lines()
            .count(),
        2
    );
    assert_eq!(agent.ok(&["audit", "--since", "2999-01-01T00:00:00Z"]), "");
    let bad = agent.cli(&["audit", "--since", "a while"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
    let file = agent.audit_log.to_str().unwrap().to_string();
    assert_eq!(
        agent
            .ok(&["audit", "--file", &file, "--event", "revoke", "--json"])
            .lines()
            .count(),
        1
    );

    // --follow prints what is written after it started.
    let mut child = Command::new(portcullis_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["audit", "--follow", "--json", "--event", "revoke"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the existing revoke");
    assert_eq!(json(&first)["grant_id"], g1);
    agent.ok(&["revoke", &g2.to_string()]);
    let next = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        json(&next.expect("the new revoke, followed"))["grant_id"],
        g2
    );
}
