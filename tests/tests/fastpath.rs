//! The kernel's fast path (issue 15): flows allowed by a standing uid or
//! cgroup entry are not marked, so a policy reload that removes the allow
//! must still cut them (the agent's sweep); marked flows pass on one epoch
//! compare, so a revoke's epoch bump must stop every packet sent after the
//! revoke returned; and the ancestor walk looks only at the cgroup levels
//! that hold entries, so an entry deep in the tree must still be found.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, UdpSocket},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{channel, Receiver},
        Arc,
    },
    thread,
    time::Duration,
};

use portcullis_tests::{session::Session, *};

fn policy(port: u16, proto: &str, allow: &[String]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[segment.db]\nports = [\"{port}/{proto}\"]\nallow = [{}]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n",
        allow.join(", ")
    )
}

fn hold(client: &As, kind: &str, addr: SocketAddr) -> Session {
    let mut cmd = client.command(probe_bin());
    cmd.args([kind, &addr.to_string(), "50", "1200"]);
    Session::start(cmd)
}

/// Replaces the agent's policy and asks it to reload.
fn reload(agent: &Agent, text: &str) {
    let tmp = agent.policies.join(".test.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, agent.policies.join("test.toml")).unwrap();
    // SAFETY: kill(2) on the agent process this test started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
}

#[test]
fn a_reload_removing_a_standing_cgroup_allow_cuts_an_open_tcp_flow() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let allow = vec![format!("cgroup:{}", cg.rel)];
    let agent = Agent::start(&policy(server.port(), "tcp", &allow), &cg.path);
    let session = hold(&As::root_in(&cg.path), "hold", server.addr);
    session.wait_round_trips(3, Duration::from_secs(10));

    reload(&agent, &policy(server.port(), "tcp", &[]));
    let (err, trips, took) = session.wait_failure(Duration::from_secs(10));
    println!("unmarked tcp flow cut {took:?} after the reload was asked for ({trips} more): {err}");
    assert_eq!(err, "ECONNABORTED");
}

#[test]
fn a_reload_removing_a_standing_uid_allow_cuts_an_open_connected_udp_flow() {
    let cg = TestCgroup::new();
    let server = EchoServer::udp("127.0.0.1:0");
    let (uid, gid) = (41_577, 41_577);
    let allow = vec![format!("uid:{uid}")];
    let agent = Agent::start(&policy(server.port(), "udp", &allow), &cg.path);
    let session = hold(&As::user(&cg.path, uid, gid), "udp-hold", server.addr);
    session.wait_round_trips(3, Duration::from_secs(10));

    reload(&agent, &policy(server.port(), "udp", &[]));
    let (err, trips, took) = session.wait_failure(Duration::from_secs(10));
    println!("unmarked udp flow cut {took:?} after the reload was asked for ({trips} more): {err}");
    assert_ne!(err, "", "the flow was not cut");
}

/// A UDP server that remembers the highest sequence number received.
struct SeqServer {
    addr: SocketAddr,
    max: Arc<AtomicU64>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl SeqServer {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let max = Arc::new(AtomicU64::new(0));
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, c, s) = (max.clone(), count.clone(), stop.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if n >= 8 {
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                        m.fetch_max(seq, Ordering::Relaxed);
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Self {
            addr,
            max,
            count,
            stop,
        }
    }
}

impl Drop for SeqServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The burst client's output lines, as they come.
fn lines(child: &mut Child) -> Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_with(rx: &Receiver<String>, prefix: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the burst client never printed {prefix:?}"));
        if line.starts_with(prefix) {
            return line;
        }
    }
}

#[test]
fn no_datagram_sent_after_a_revoke_returns_gets_through() {
    let cg = TestCgroup::new();
    let server = SeqServer::start();
    let agent = Agent::start(&policy(server.addr.port(), "udp", &[]), &cg.path);
    // A JIT grant: finite expiry, so the flow is marked and its packets
    // pass on the epoch compare.
    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    let mut cmd = As::root_in(&cg.path).command(probe_bin());
    cmd.args(["burst-udp", &server.addr.to_string(), "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut client = cmd.spawn().expect("burst client starts");
    let rx = lines(&mut client);
    next_with(&rx, "started");
    assert!(
        eventually(Duration::from_secs(10), || server
            .count
            .load(Ordering::Relaxed)
            > 1000),
        "the burst did not get through before the revoke"
    );

    agent.ok(&["revoke", &id.to_string()]);
    // Causally after the reply: the client reads this line, then sends
    // datagrams numbered from `mark` on.
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"now\n").unwrap();
    stdin.flush().unwrap();
    let mark: u64 = next_with(&rx, "mark ")[5..].trim().parse().unwrap();
    let end = next_with(&rx, "end ");
    println!("revoked during the burst: mark {mark}, {end}");
    assert!(
        !end.contains(" errors 0 "),
        "the burst was never cut: {end}"
    );
    // Let the server drain what is in flight (a wait for quiet, bounded).
    let mut last = server.count.load(Ordering::Relaxed);
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(100));
        let now = server.count.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let max = server.max.load(Ordering::Relaxed);
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        max < mark,
        "datagram {max} got through, sent after the revoke returned (first such: {mark})"
    );
}

#[test]
fn an_entry_five_levels_down_is_found_and_one_on_another_level_is_not_confused_with_it() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    // The test cgroup, then four more levels: the client is >= 5 deep.
    let deep = cg.child("a/b/c/d");
    let mid = cg.path.join("a/b");
    let mid_rel = format!("{}/a/b", cg.rel);
    let agent = Agent::start(&policy(server.port(), "tcp", &[]), &cg.path);
    let client = As::root_in(&deep);
    assert_eq!(client.tcp(server.addr), Outcome::eperm());
    // An entry for an ancestor two levels up: found through its level bit,
    // the only one set.
    let id = agent.grant("db", &format!("cgroup:{mid_rel}"), "10m");
    let level = mid_rel.matches('/').count() as u32 + cgroup2_mount_depth_below_root();
    assert_eq!(level_masks(&agent), vec![1u32 << level]);
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    // A sibling at the same level as the client's parent is not an ancestor.
    let sibling = cg.child("a/b/x");
    let other = agent.grant("db", &format!("cgroup:{}/a/b/x", cg.rel), "10m");
    agent.ok(&["revoke", &id.to_string()]);
    assert_eq!(client.tcp(server.addr), Outcome::eperm());
    assert_eq!(As::root_in(&sibling).tcp(server.addr), Outcome::Ok);
    agent.ok(&["revoke", &other.to_string()]);
    // The deepest level itself.
    let rel = format!("{}/a/b/c/d", cg.rel);
    agent.grant("db", &format!("cgroup:{rel}"), "10m");
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    assert!(mid.exists());
}

#[test]
fn a_restart_clears_a_level_mask_that_no_entry_backs() {
    // The agent reads the masks the kernel holds at start (one batch read)
    // and rewrites those its entries do not back: a mask left set by a
    // run killed between two writes only costs walks, but it must not
    // outlive the next start.
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let mut agent = Agent::start(&policy(server.port(), "tcp", &[]), &cg.path);
    assert_eq!(level_masks(&agent), Vec::<u32>::new());
    agent.stop();
    // Segment 4000 (no policy has that many segments): levels 2 and 5.
    let path = agent.bpffs.join(format!(
        "v{}/maps/PC_CGROUP_LEVELS",
        agent_common::LAYOUT_VERSION
    ));
    let status = std::process::Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&path)
        .args([
            "key", "0xa0", "0x0f", "0", "0", "value", "0x24", "0", "0", "0",
        ])
        .status()
        .expect("bpftool runs");
    assert!(status.success(), "bpftool map update {}", path.display());
    assert_eq!(level_masks(&agent), vec![0x24]);
    agent.spawn(&[]);
    assert_eq!(level_masks(&agent), Vec::<u32>::new());
}

/// The cgroup2 mount is the hierarchy's root here (the tests run in the
/// initial cgroup namespace): levels count from it.
fn cgroup2_mount_depth_below_root() -> u32 {
    0
}

/// The non-zero cgroup-level masks the agent wrote (`PC_CGROUP_LEVELS`).
fn level_masks(agent: &Agent) -> Vec<u32> {
    let path = agent.bpffs.join(format!(
        "v{}/maps/PC_CGROUP_LEVELS",
        agent_common::LAYOUT_VERSION
    ));
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&path)
        .arg("-j")
        .output()
        .expect("bpftool runs");
    assert!(out.status.success(), "bpftool map dump {}", path.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .expect("an array of entries")
        .iter()
        .filter_map(|e| {
            let bytes: Vec<u8> = e["value"]
                .as_array()?
                .iter()
                .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
                .collect();
            let mask = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
            (mask != 0).then_some(mask)
        })
        .collect()
}
