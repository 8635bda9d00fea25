//! Running as a service that never fails open: enforcement outlives the
//! agent (SIGKILL, restart, upgrade across map layouts), state survives and
//! is recovered from the kernel when the state file is lost, systemd gets
//! the notifications it expects, and start-up failures are clear and safe.
use std::{
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use portcullis_tests::*;

fn policy(port: u16, extra: &str) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n{extra}"
    )
}

/// A connect loop in `cg` for `secs` seconds, started in the background.
fn connect_loop(
    cg: &std::path::Path,
    addr: std::net::SocketAddr,
    secs: f64,
) -> std::process::Child {
    As::root_in(cg)
        .command(probe_bin())
        .args([
            "loop-until",
            &addr.to_string(),
            &secs.to_string(),
            "2000000",
        ])
        .env("PC_PROBE_TIMEOUT_MS", "2000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start connect loop")
}

/// (ok, eperm, other) reported by a finished connect loop.
fn loop_counts(child: std::process::Child) -> (u64, u64, u64, String) {
    let out = child.wait_with_output().expect("connect loop");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert!(
        f.len() >= 7 && f[0] == "loop",
        "unexpected loop output {text:?}"
    );
    (
        f[2].parse().unwrap(),
        f[4].parse().unwrap(),
        f[6].parse().unwrap(),
        text,
    )
}

fn live_grant_ids(agent: &Agent) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(&agent.ok(&["list", "--json"])).unwrap();
    let mut ids: Vec<u64> = v["ok"]["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

#[test]
fn sigkill_under_load_never_opens_or_closes_anything() {
    let cg = TestCgroup::new();
    let granted = cg.child("granted");
    let ungranted = cg.child("ungranted");
    let short = cg.child("short");
    let server = EchoServer::tcp("127.0.0.1:0");
    let mut agent = Agent::start(&policy(server.port(), ""), &cg.path);
    agent.grant("db", &format!("cgroup:{}/granted", cg.rel), "30m");
    agent.grant("db", "uid:40100", "30m");
    agent.grant("db", &format!("cgroup:{}/short", cg.rel), "2s");
    let before = live_grant_ids(&agent);

    let good = connect_loop(&granted, server.addr, 4.0);
    let bad = connect_loop(&ungranted, server.addr, 4.0);
    thread::sleep(Duration::from_millis(500));
    agent.kill();
    // While the agent is dead the short grant expires, in the kernel.
    thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        As::root_in(&short).tcp(server.addr),
        Outcome::eperm(),
        "expired grant honoured while the agent was down"
    );
    agent.spawn(&[]);
    let (ok, eperm, other, text) = loop_counts(good);
    println!("granted client across SIGKILL + restart: {text}");
    assert!(
        ok > 0 && eperm == 0 && other == 0,
        "granted client was refused: {text}"
    );
    let (ok, eperm, _, text) = loop_counts(bad);
    println!("ungranted client across SIGKILL + restart: {text}");
    assert!(ok == 0 && eperm > 0, "ungranted client got through: {text}");

    // The same live grants, minus the one that expired.
    let after = live_grant_ids(&agent);
    assert_eq!(
        after,
        before[..2].to_vec(),
        "grants before {before:?}, after restart {after:?}"
    );
    assert_eq!(As::root_in(&granted).tcp(server.addr), Outcome::Ok);
}

#[test]
fn restart_with_a_policy_change_and_a_layout_upgrade_has_no_gap() {
    let cg = TestCgroup::new();
    let granted = cg.child("granted");
    let ungranted = cg.child("ungranted");
    let server = EchoServer::tcp("127.0.0.1:0");
    let other = EchoServer::tcp("127.0.0.1:0");
    // The "old version" pins its maps under layout v0.
    let mut agent = Agent::builder(&policy(server.port(), ""), &cg.path)
        .env("PORTCULLIS_TEST_LAYOUT_VERSION", "0")
        .start();
    agent.grant("db", &format!("cgroup:{}/granted", cg.rel), "30m");
    assert!(agent.bpffs.join("v0").exists());

    let good = connect_loop(&granted, server.addr, 5.0);
    let bad = connect_loop(&ungranted, server.addr, 5.0);
    thread::sleep(Duration::from_millis(500));
    agent.stop();
    // A policy change while it is down: a new segment on another port.
    let extra = format!("\n[segment.web]\nports = [\"{}/tcp\"]\n", other.port());
    std::fs::write(
        agent.policies.join("test.toml"),
        policy(server.port(), &extra),
    )
    .unwrap();
    // The "new version" uses the current layout and must take over.
    agent.env.clear();
    agent.spawn(&[]);
    let (ok, eperm, oth, text) = loop_counts(good);
    println!("granted client across upgrade restart: {text}");
    assert!(
        ok > 0 && eperm == 0 && oth == 0,
        "granted client was refused during the upgrade: {text}"
    );
    let (ok, eperm, _, text) = loop_counts(bad);
    println!("ungranted client across upgrade restart: {text}");
    assert!(
        ok == 0 && eperm > 0,
        "ungranted client got through during the upgrade: {text}"
    );

    assert!(
        !agent.bpffs.join("v0").exists(),
        "old layout pins were not retired"
    );
    assert!(agent
        .bpffs
        .join(format!("v{}", agent_common::LAYOUT_VERSION))
        .exists());
    assert_eq!(
        As::root_in(&granted).tcp(other.addr),
        Outcome::eperm(),
        "new segment not enforced"
    );
    assert_eq!(As::root_in(&granted).tcp(server.addr), Outcome::Ok);
}

#[test]
fn a_damaged_journal_is_recovered_from_the_kernel_maps() {
    let cg = TestCgroup::new();
    let svc = cg.child("svc");
    let server = EchoServer::tcp("127.0.0.1:0");
    let mut agent = Agent::start(&policy(server.port(), ""), &cg.path);
    agent.grant("db", &format!("cgroup:{}/svc", cg.rel), "30m");
    agent.grant("db", "uid:40200", "20m");
    agent.kill();
    // A flipped bit in the journal's first record: damage, not a torn write.
    let state = agent.state_dir.join("journal.log");
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[12] ^= 0x20;
    std::fs::write(&state, &bytes).unwrap();
    agent.spawn(&[]);

    // Nothing live was lost: both grants are back, with their time left.
    let v: serde_json::Value = serde_json::from_str(&agent.ok(&["list", "--json"])).unwrap();
    let grants = v["ok"]["grants"].as_array().unwrap();
    let mut identities: Vec<&str> = grants
        .iter()
        .map(|g| g["identity"].as_str().unwrap())
        .collect();
    identities.sort();
    assert_eq!(
        identities,
        vec![format!("cgroup:{}/svc", cg.rel).as_str(), "uid:40200"]
    );
    for g in grants {
        let left = g["remaining_secs"].as_u64().unwrap();
        assert!(left > 60 * 15 && left <= 60 * 30, "{g}");
    }
    assert_eq!(As::root_in(&svc).tcp(server.addr), Outcome::Ok);
    assert_eq!(
        As::user(&cg.path, 40200, 40200).tcp(server.addr),
        Outcome::Ok
    );
    let recs = agent.audit_records();
    assert!(
        recs.iter().any(|r| r["event"] == "state_corrupt"),
        "no state_corrupt record"
    );
    assert_eq!(
        recs.iter()
            .filter(|r| r["event"] == "grant_recovered")
            .count(),
        2
    );
    // Renumbered above every id the audit trail used: no id twice.
    for r in recs.iter().filter(|r| r["event"] == "grant_recovered") {
        assert!(
            !recs
                .iter()
                .any(|g| g["event"] == "grant" && g["grant_id"] == r["grant_id"]),
            "recovered grant reuses an id: {r}"
        );
    }
    let set_aside = std::fs::read_dir(&agent.state_dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert!(set_aside, "the corrupt file was not kept aside");
    // Recovered grants are ordinary grants: revoke works.
    agent.ok(&["revoke", "--identity", "uid:40200"]);
    assert_eq!(
        As::user(&cg.path, 40200, 40200).tcp(server.addr),
        Outcome::eperm()
    );
}

#[test]
fn a_full_grant_map_refuses_cleanly_and_is_audited() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::builder(&policy(server.port(), ""), &cg.path)
        .arg("--max-grants")
        .arg("3")
        .start();
    for uid in 40300..40303 {
        agent.grant("db", &format!("uid:{uid}"), "10m");
    }
    let out = agent.cli(&["grant", "db", "uid:40303", "--ttl", "10m"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("PC_GRANTS is full (3 entries)"), "{err}");
    assert_eq!(live_grant_ids(&agent).len(), 3);
    assert_eq!(
        As::user(&cg.path, 40303, 40303).tcp(server.addr),
        Outcome::eperm()
    );
    assert!(agent
        .audit_records()
        .iter()
        .any(|r| r["event"] == "grant_failed"));
    // Making room makes it work again.
    let first = live_grant_ids(&agent)[0];
    agent.ok(&["revoke", &first.to_string()]);
    agent.grant("db", "uid:40303", "10m");
    assert_eq!(
        As::user(&cg.path, 40303, 40303).tcp(server.addr),
        Outcome::Ok
    );
}

#[test]
fn sd_notify_ready_watchdog_reload_and_stop() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let dir = std::env::temp_dir().join(unique("pc-notify"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut agent = Agent::builder(&policy(server.port(), ""), &cg.path)
        .env("NOTIFY_SOCKET", sock_path.to_str().unwrap())
        .env("WATCHDOG_USEC", "400000")
        .start();
    let recv = || {
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let first = recv();
    assert!(first.contains("READY=1"), "{first}");
    // READY means enforcing: the port is closed by then.
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pings < 3 && Instant::now() < deadline {
        if recv().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert_eq!(pings, 3, "watchdog not pinged");
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        let m = recv();
        if !m.contains("WATCHDOG=1") {
            seen.push(m);
        }
    }
    assert!(
        seen[0].contains("RELOADING=1") && seen[0].contains("MONOTONIC_USEC="),
        "{seen:?}"
    );
    agent.stop();
    let mut last = String::new();
    for _ in 0..20 {
        last = recv();
        if !last.contains("WATCHDOG=1") {
            break;
        }
    }
    assert!(last.contains("STOPPING=1"), "{last}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn unit_file() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::read_to_string(root.join("packaging/portcullis.service"))
        .expect("packaging/portcullis.service")
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let dir = std::env::temp_dir().join(unique("pc-unit"));
    std::fs::create_dir_all(&dir).unwrap();
    // Point ExecStart at the binary under test (verify checks it exists).
    let unit = unit_file().replace("/usr/bin/portcullis", portcullis_bin().to_str().unwrap());
    std::fs::write(dir.join("portcullis.service"), unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("portcullis.service"))
        .output()
        .expect("systemd-analyze (installed by `cargo xtask setup`)");
    let err = String::from_utf8_lossy(&out.stderr);
    let own: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("portcullis.service"))
        .collect();
    assert!(
        out.status.success() && own.is_empty(),
        "systemd-analyze verify: {err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_agent_enforces_with_only_the_units_capabilities() {
    let unit = unit_file();
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    let set: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("--bounding-set=-all,{}", set.join(","));
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::builder(&policy(server.port(), ""), &cg.path)
        .wrap(&["setpriv", &bounding, "--inh-caps=-all", "--"])
        .start();
    let client = As::root_in(&cg.path);
    assert_eq!(client.tcp(server.addr), Outcome::eperm());
    agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
}

#[test]
fn without_the_capabilities_the_agent_says_so_and_attaches_nothing() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let out = Agent::builder(&policy(server.port(), ""), &cg.path)
        .wrap(&[
            "setpriv",
            "--bounding-set=-all,+chown",
            "--inh-caps=-all",
            "--",
        ])
        .start_expecting_failure();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(
        err.contains("lacks CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"),
        "{err}"
    );
    // Nothing was attached: the port is as open as before.
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::Ok);
}

#[test]
fn a_bpffs_path_that_is_not_bpffs_is_refused_clearly() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let not_bpffs = std::env::temp_dir().join(unique("pc-not-bpffs"));
    std::fs::create_dir_all(&not_bpffs).unwrap();
    let out = Agent::builder(&policy(server.port(), ""), &cg.path)
        .bpffs(&not_bpffs.join("pins"))
        .start_expecting_failure();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is not a bpf filesystem") && err.contains("mount -t bpf"),
        "{err}"
    );
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::Ok);
    let _ = std::fs::remove_dir_all(&not_bpffs);
}

#[test]
fn uninstall_is_the_only_way_to_stop_enforcing_and_is_audited() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let mut agent = Agent::start(&policy(server.port(), ""), &cg.path);
    agent.stop();
    // A stopped agent still enforces.
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());
    let out = Command::new(portcullis_bin())
        .args([
            "uninstall",
            "--yes",
            "--bpffs",
            agent.bpffs.to_str().unwrap(),
            "--audit-log",
            agent.audit_log.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no longer protected"));
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::Ok);
    let rec = agent
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "uninstall")
        .expect("uninstall audited");
    assert_eq!(rec["actor"]["uid"], 0);
}
