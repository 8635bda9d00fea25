//! The attacker's pass over issues 12 and 13: each test is one way through
//! (or around) what was built, reproduced end to end against the real agent.
//! See docs/security.md for what each one showed.
use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    time::Duration,
};

use portcullis_tests::{netns::PeerHost, session::Session, users, *};

fn policy(ports: &[String], allow: &[&str]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("\"{p}\"")).collect();
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[segment.db]\nports = [{}]\nallow = [{}]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n",
        ports.join(", "),
        allow.join(", ")
    )
}

fn hold(client: &As, kind: &str, addr: SocketAddr, every_ms: u32) -> Session {
    let mut cmd = client.command(probe_bin());
    cmd.args([kind, &addr.to_string(), &every_ms.to_string(), "600"]);
    Session::start(cmd)
}

/// A UDP echo server in the peer's namespace; killed on drop.
struct PeerUdpEcho(Child);

impl PeerUdpEcho {
    fn start(peer: &PeerHost, port: u16) -> Self {
        const SCRIPT: &str = "import socket,sys\n\
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
s.bind(('0.0.0.0',int(sys.argv[1])))\n\
print('ready',flush=True)\n\
while True:\n    d,a=s.recvfrom(2048)\n    s.sendto(d,a)\n";
        let mut child = peer
            .command("python3")
            .args(["-c", SCRIPT, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 udp echo in the peer namespace");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "peer echo server did not start");
        Self(child)
    }
}

impl Drop for PeerUdpEcho {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A local process's connected UDP socket to *another host's* port P is not
/// a local flow, even when something on this host is bound to UDP port P
/// (a protected service, or any user who binds the port first). Before the
/// fix, the sweep took every connected UDP socket whose remote port had a
/// local UDP socket bound to it for a local flow, judged its owner as a
/// local client and destroyed it: any unprivileged user could bind a free
/// protected UDP port on the wildcard address and have every outbound
/// connected UDP flow to that port (statsd, syslog, DNS clients) cut at the
/// next sweep.
#[test]
fn a_connected_udp_flow_to_another_host_survives_a_sweep_when_the_port_is_bound_here() {
    let cg = TestCgroup::new();
    let peer = PeerHost::new();
    // Something on this host bound to the protected port, wildcard address.
    let local = EchoServer::udp("0.0.0.0:0");
    let port = local.port();
    let _echo = PeerUdpEcho::start(&peer, port);
    let agent = Agent::start(&policy(&[format!("{port}/udp")], &[]), &cg.path);

    // An ordinary process sends to the *peer's* address: not this host, so
    // not judged, and connect lets it through.
    let remote = SocketAddr::new(peer.peer_v4.into(), port);
    let session = hold(&As::root_in(&cg.path), "udp-hold", remote, 50);
    session.wait_round_trips(3, Duration::from_secs(10));

    // Any sweep will do: a grant and its revoke each run one.
    let id = agent.grant("db", "uid:4242", "10m");
    agent.ok(&["revoke", &id.to_string()]);
    // SAFETY: kill(2) on the agent process this test started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    session.wait_round_trips(20, Duration::from_secs(10));

    // And the local protected port stays closed to that process.
    let me = SocketAddr::new(peer.host_v4.into(), port);
    assert_eq!(As::root_in(&cg.path).udp(me), Outcome::eperm());
}

/// Ways a local process might name a protected port or reach it that the
/// connect/sendmsg hooks must still see: TCP Fast Open (`sendto` with
/// MSG_FASTOPEN, which connects inside sendmsg), `sendmmsg`, an IPv6
/// link-local address with its scope id, and the IPv4-compatible
/// (`::a.b.c.d`) and NAT64 (`64:ff9b::/96`) spellings of this host's
/// addresses. Run by an ordinary user; none may reach the echo servers.
const PROBE: &str = r#"
import ctypes, errno, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def name(e):
    return errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
try:
    if kind == "tfo":
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.sendto(b"ping", socket.MSG_FASTOPEN, (host, port))
        s.settimeout(3)
        assert s.recv(16) == b"ping"
    elif kind == "sendmmsg":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        libc = ctypes.CDLL(None, use_errno=True)
        class iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]
        class sin(ctypes.Structure):
            _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_ushort), ("addr", ctypes.c_ubyte * 4), ("zero", ctypes.c_ubyte * 8)]
        class msghdr(ctypes.Structure):
            _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint), ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t), ("flags", ctypes.c_int)]
        class mmsghdr(ctypes.Structure):
            _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
        a = sin(socket.AF_INET, socket.htons(port), (ctypes.c_ubyte * 4)(*socket.inet_aton(host)))
        iov = iovec(b"ping", 4)
        msgs = (mmsghdr * 2)()
        for m in msgs:
            m.hdr = msghdr(ctypes.cast(ctypes.pointer(a), ctypes.c_void_p), ctypes.sizeof(a), ctypes.pointer(iov), 1, None, 0, 0)
        n = libc.sendmmsg(s.fileno(), msgs, 2, 0)
        if n < 0:
            raise OSError(ctypes.get_errno(), "sendmmsg")
        assert s.recv(16) == b"ping"
    elif kind == "tcp6":
        info = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM)[0]
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(info[4])
        s.send(b"ping")
        assert s.recv(16) == b"ping"
    print("ok")
except OSError as e:
    print("err", name(e))
except Exception as e:
    print("err", type(e).__name__)
"#;

fn python_probe(who: &As, kind: &str, host: &str, port: u16) -> String {
    let out = who
        .command("python3")
        .args(["-c", PROBE, kind, host, &port.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run python3 probe");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// This host's first IPv6 link-local address with its interface, if any.
fn link_local() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-6", "-o", "addr", "show", "scope", "link"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().next()?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let addr = f.get(3)?.split('/').next()?;
    Some(format!("{addr}%{}", f.get(1)?))
}

#[test]
fn other_spellings_and_other_send_calls_do_not_reach_a_protected_port() {
    let cg = TestCgroup::new();
    let user = users::TestUser::new();
    let tcp = EchoServer::tcp("[::]:0");
    let udp = EchoServer::udp("0.0.0.0:0");
    let who = As::user(&cg.path, user.uid, user.gid);
    // Before enforcement every probe that can get through does.
    assert_eq!(python_probe(&who, "tfo", "127.0.0.1", tcp.port()), "ok");
    assert_eq!(
        python_probe(&who, "sendmmsg", "127.0.0.1", udp.port()),
        "ok"
    );
    let _agent = Agent::start(
        &policy(
            &[format!("{}/tcp", tcp.port()), format!("{}/udp", udp.port())],
            &[],
        ),
        &cg.path,
    );
    let mut tried = vec![
        ("tfo", "127.0.0.1".to_string()),
        ("tfo", "::1".to_string()),
        ("tfo", "::ffff:127.0.0.1".to_string()),
        ("tcp6", "::127.0.0.1".to_string()),
        ("tcp6", "64:ff9b::127.0.0.1".to_string()),
        ("tcp6", "::ffff:0.0.0.0".to_string()),
    ];
    if let Some(ll) = link_local() {
        tried.push(("tcp6", ll.clone()));
        tried.push(("tfo", ll));
    }
    for (kind, host) in &tried {
        let got = python_probe(&who, kind, host, tcp.port());
        println!("{kind} [{host}]:{} -> {got}", tcp.port());
        assert_ne!(got, "ok", "{kind} to [{host}] reached the protected port");
    }
    let got = python_probe(&who, "sendmmsg", "127.0.0.1", udp.port());
    println!("sendmmsg 127.0.0.1:{} -> {got}", udp.port());
    assert_eq!(got, "err EPERM");
}

fn rewrite_policy(agent: &Agent, text: &str) {
    let tmp = agent.policies.join(".test.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, agent.policies.join("test.toml")).unwrap();
    // SAFETY: kill(2) on the agent process this test started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
}

fn two_segments(db_port: Option<u16>, keep_port: u16) -> String {
    let mut text = format!("[segment.keep]\nports = [\"{keep_port}/tcp\"]\nallow = []\n\n");
    if let Some(p) = db_port {
        text.push_str(&format!(
            "[segment.db]\nports = [\"{p}/tcp\"]\nallow = []\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n"
        ));
    }
    text
}

/// Finding (fixed: a suspended grant keeps its segment's ports and resumes
/// only onto the same ones): a grant suspended because its segment left
/// the policy used to resume when *any* segment of that name came back,
/// whatever its ports. An approver who granted `db` (one port) has, after a
/// deploy that briefly drops `db` and brings back a `db` naming other
/// ports, granted those ports instead. (Editing a live segment's ports
/// moves its grants the same way; suspension makes it silent.)
#[test]
fn a_suspended_grant_does_not_resume_on_a_same_named_segment_with_other_ports() {
    let cg = TestCgroup::new();
    let user = users::TestUser::new();
    let old = EchoServer::tcp("127.0.0.1:0");
    let new = EchoServer::tcp("127.0.0.1:0");
    let keep = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&two_segments(Some(old.port()), keep.port()), &cg.path);
    let who = As::user(&cg.path, user.uid, user.gid);
    agent.grant("db", &user.identity(), "30m");
    assert!(who.tcp(old.addr).is_ok());

    rewrite_policy(&agent, &two_segments(None, keep.port()));
    assert!(eventually(Duration::from_secs(5), || agent
        .ok(&["list"])
        .contains("suspended")));
    rewrite_policy(&agent, &two_segments(Some(new.port()), keep.port()));
    // The new `db` is in force once its port is closed to a stranger.
    let stranger = As::user(&cg.path, 4243, 4243);
    assert!(eventually(Duration::from_secs(5), || stranger
        .tcp(new.addr)
        == Outcome::eperm()));
    let got = who.tcp(new.addr);
    println!(
        "grant for db on {} after db came back on {}: {got:?}",
        old.port(),
        new.port()
    );
    assert_eq!(
        got,
        Outcome::eperm(),
        "the suspended grant resumed on other ports"
    );
}

/// Measurement, not a pass/fail check: what many cgroups below the attach
/// point (a user's delegated subtree can hold any number) cost each sweep.
/// Run with `--ignored --nocapture` and PC_REDTEAM_CGROUPS=N; read the
/// agent's debug lines (`revoked` → `swept open flows`) for the figure.
#[test]
#[ignore = "measurement"]
fn sweep_cost_with_many_cgroups() {
    let n: usize = std::env::var("PC_REDTEAM_CGROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let made = std::time::Instant::now();
    let base = cg.child("flood");
    for i in 0..n {
        std::fs::create_dir(base.join(format!("c{i}"))).unwrap();
    }
    println!("made {n} cgroups in {:?}", made.elapsed());
    let agent = Agent::start(&policy(&[format!("{}/tcp", server.port())], &[]), &cg.path);
    for _ in 0..3 {
        let id = agent.grant("db", "uid:0", "10m");
        // Idle between round trips, so the cut comes from the sweep.
        let session = hold(&As::root_in(&cg.path), "hold", server.addr, 5000);
        session.wait_round_trips(1, Duration::from_secs(10));
        let asked = std::time::Instant::now();
        agent.ok(&["revoke", &id.to_string()]);
        let (err, _, _) = session.wait_failure(Duration::from_secs(60));
        println!(
            "{n} cgroups: revoke to idle flow cut {:?} ({err})",
            asked.elapsed()
        );
    }
}

/// Finding (fixed): the sweep walked at most 200,000 cgroups below the
/// attach point per sweep; a flow whose socket's cgroup was past that was
/// not judged. Anyone with a delegated subtree (every systemd user
/// session) can create that many cgroups and keep, in a cgroup past the
/// limit, a flow opened before its port was protected. The sweep now
/// places each judged socket's cgroup from its holder instead of walking.
/// Slow (creates 200,100 cgroups): run with `--ignored`.
#[test]
#[ignore = "slow: creates 200,100 cgroups"]
fn a_flow_in_a_cgroup_past_the_sweeps_walk_limit_is_still_cut() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let other = EchoServer::tcp("127.0.0.1:0");
    let flood = cg.child("flood");
    for i in 0..200_100 {
        std::fs::create_dir(flood.join(format!("c{i}"))).unwrap();
    }
    let hidden = cg.child("flood/c199999/deep");
    let agent = Agent::start(&policy(&[format!("{}/tcp", other.port())], &[]), &cg.path);
    let session = hold(&As::root_in(&hidden), "hold", server.addr, 100);
    session.wait_round_trips(3, Duration::from_secs(10));
    rewrite_policy(&agent, &policy(&[format!("{}/tcp", server.port())], &[]));
    let (err, trips, took) = session.wait_failure(Duration::from_secs(20));
    println!("flow past the walk limit cut {took:?} after the reload ({trips} more): {err}");
}

/// A policy directory whose parent an ordinary user owns can be swapped by
/// that user for any other root-owned directory (`mv policies x; ln -s
/// /elsewhere policies`); before the fix the agent and `portcullis check`
/// checked only the directory itself and accepted both the original and
/// the swapped-in one.
#[test]
fn a_policy_directory_below_a_users_directory_is_refused() {
    let user = users::TestUser::new();
    let top = std::env::temp_dir().join(unique("pc-redteam-parent"));
    std::fs::create_dir(&top).unwrap();
    let cleanup = scopeguard(&top);
    let parent = top.join("owned");
    std::fs::create_dir(&parent).unwrap();
    std::os::unix::fs::chown(&parent, Some(user.uid), Some(user.gid)).unwrap();
    let dir = parent.join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.toml"), policy(&["5432/tcp".into()], &[])).unwrap();
    let out = std::process::Command::new(portcullis_bin())
        .arg("check")
        .arg(&dir)
        .output()
        .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    println!("{err}");
    assert!(
        !out.status.success(),
        "accepted a directory a user can swap"
    );
    assert!(err.contains(&parent.display().to_string()), "{err}");
    assert!(err.contains("not root"), "{err}");

    // The swap itself: a link the user made, to a root-owned directory.
    let other = top.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(
        other.join("x.toml"),
        policy(&["5432/tcp".into()], &["uid:65534"]),
    )
    .unwrap();
    let root_parent = top.join("rootparent");
    std::fs::create_dir(&root_parent).unwrap();
    let link = root_parent.join("policies");
    std::os::unix::fs::symlink(&other, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(user.uid), Some(user.gid)).unwrap();
    let out = std::process::Command::new(portcullis_bin())
        .arg("check")
        .arg(&link)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    println!("{err}");
    assert!(
        !out.status.success(),
        "accepted a user's link to another directory"
    );
    assert!(err.contains("symbolic link"), "{err}");
    drop(cleanup);
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn scopeguard(p: &std::path::Path) -> RemoveOnDrop {
    RemoveOnDrop(p.to_path_buf())
}

/// Finding (fixed): a UDP server on a protected port that connects its
/// one socket to the peer it heard from (a common shape for a
/// single-client UDP service) kept talking to that peer after the peer's
/// grant was revoked: the ingress check passed every connected UDP socket.
/// Now only a connected socket that spoke first (a client) is exempt; one
/// that heard from the network while unconnected is checked like a
/// listener.
#[test]
fn a_revoked_peer_loses_a_connected_udp_server_socket() {
    let cg = TestCgroup::new();
    let peer = PeerHost::new();
    let port = EchoServer::udp("0.0.0.0:0").port(); // a free port number
    std::thread::sleep(Duration::from_millis(100));
    const SERVER: &str = "import socket,sys\n\
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
s.bind(('0.0.0.0',int(sys.argv[1])))\n\
print('ready',flush=True)\n\
d,a=s.recvfrom(2048)\n\
s.connect(a)\n\
s.send(d)\n\
while True:\n    s.send(s.recv(2048))\n";
    let agent = Agent::start(&policy(&[format!("{port}/udp")], &[]), &cg.path);
    let id = agent.grant("db", &peer.peer_cidr(false), "10m");
    let mut server = As::root_in(&cg.path)
        .command("python3")
        .args(["-c", SERVER, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let mut cmd = peer.command(probe_bin());
    cmd.args([
        "udp-hold",
        &peer.host_addr(false, port).to_string(),
        "100",
        "600",
    ]);
    let session = Session::start(cmd);
    session.wait_round_trips(3, Duration::from_secs(10));
    agent.ok(&["revoke", &id.to_string()]);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        session.wait_failure(Duration::from_secs(5))
    }));
    let _ = server.kill();
    let _ = server.wait();
    let (err, trips, took) = outcome.expect("the revoked peer still talks to the server");
    println!("revoked peer cut after {took:?} ({trips} more): {err}");
}
