//! Issue 13, kernel half: every path to a protected port is covered.
//!
//! - "This host" is the kernel's idea of it: UDP to a subnet broadcast
//!   address (and its v4-mapped form) and to an address inside a `local`
//!   route is refused for an uncovered caller, also when the address or the
//!   route appears after the agent started.
//! - Loopback belongs to the host's namespace only: a process in its own
//!   netns may use its own loopback, while the host's stays refused.
//! - Remote peers are covered on every interface without `--xdp-iface`
//!   (cgroup_skb ingress), granted by `peer:`, cut by revoke; replies to this
//!   host's own connections from a protected port number still pass.
//!   Traffic decapsulated on this host (VXLAN) is judged by its inner source.
//! - XDP fails closed on VLAN stacks it does not follow to the ports.
//! - Spoofed packets from the network never make the agent destroy a flow.
use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    time::Duration,
};

use portcullis_tests::{frames::*, netns::PeerHost, session::Session, *};

const DENIED_WAIT_MS: u64 = 700;

fn policy(ports: &[(u16, &str)]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|(p, proto)| format!("\"{p}/{proto}\""))
        .collect();
    format!(
        "[segment.db]\nports = [{}]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n",
        ports.join(", ")
    )
}

// ---- servers and clients inside the test cgroup ------------------------------

/// A TCP or UDP echo server (python3), printing its port once bound.
const ECHO_PY: &str = r#"
import socket, sys, threading
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
if kind == 'tcp':
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(64)
    print(s.getsockname()[1], flush=True)
    def serve(c):
        with c:
            while True:
                d = c.recv(4096)
                if not d: break
                c.sendall(d)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
else:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((host, port))
    print(s.getsockname()[1], flush=True)
    while True:
        d, a = s.recvfrom(4096)
        s.sendto(d, a)
"#;

/// An echo server process (killed on drop).
struct ProcServer {
    child: Child,
    port: u16,
}

impl ProcServer {
    /// Starts ECHO_PY with `cmd` (a python3 command, e.g. inside a cgroup).
    fn start(mut cmd: Command, kind: &str, host: &str) -> Self {
        let mut child = cmd
            .args(["-c", ECHO_PY, kind, host, "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 echo server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .expect("read server port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("echo server said {line:?}"));
        Self { child, port }
    }

    /// A server inside `cg`, so the ingress check at the attach point sees it.
    fn in_cgroup(cg: &TestCgroup, kind: &str, host: &str) -> Self {
        Self::start(As::root_in(&cg.path).command("python3"), kind, host)
    }
}

impl Drop for ProcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a python3 snippet in `cmd` and returns its last stdout line.
fn python_line(mut cmd: Command, script: &str, args: &[&str]) -> String {
    let out = cmd
        .args(["-c", script])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("").trim().to_string();
    assert!(
        !line.is_empty(),
        "python3 printed nothing; stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    line
}

/// A UDP datagram with SO_BROADCAST set (what an attacker would do), then
/// the echo: prints `ok`, `err EPERM`, `err TIMEOUT` or `err errnoN`.
const BROADCAST_SEND_PY: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.settimeout(2)
try:
    s.sendto(b'ping', (sys.argv[1], int(sys.argv[2])))
    s.recvfrom(100)
    print('ok')
except PermissionError:
    print('err EPERM')
except socket.timeout:
    print('err TIMEOUT')
except OSError as e:
    print('err errno%d' % e.errno)
"#;

fn broadcast_send(cg: &TestCgroup, host: &str, port: u16) -> String {
    python_line(
        As::root_in(&cg.path).command("python3"),
        BROADCAST_SEND_PY,
        &[host, &port.to_string()],
    )
}

/// Removes a route on drop.
struct RouteGuard(Vec<String>);

impl RouteGuard {
    fn add(args: &[&str]) -> Self {
        let out = Command::new("ip")
            .args(args.iter().map(|a| a.replace("{op}", "add")))
            .output()
            .expect("ip route add");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(args.iter().map(|a| a.to_string()).collect())
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(self.0.iter().map(|a| a.replace("{op}", "del")))
            .output();
    }
}

// ---- 1. "this host" is the kernel's idea of it --------------------------------

#[test]
fn udp_to_a_subnet_broadcast_address_is_refused_also_when_it_appears_after_start() {
    let cg = TestCgroup::new();
    let server = EchoServer::udp("0.0.0.0:0");
    let agent = Agent::start(&policy(&[(server.port(), "udp")]), &cg.path);
    // The link (a /30 with its broadcast address) appears after the agent started.
    let peer = PeerHost::new();
    let bcast = Ipv4Addr::from(u32::from(peer.host_v4) | 3);
    let mapped = format!("::ffff:{bcast}");
    for host in [bcast.to_string(), mapped.clone()] {
        let mut last = String::new();
        let refused = eventually(Duration::from_secs(5), || {
            last = broadcast_send(&cg, &host, server.port());
            last == "err EPERM"
        });
        assert!(
            refused,
            "UDP to subnet broadcast {host} was not refused: {last}"
        );
    }
    // Granted, the same datagram goes through: the address really is delivered here.
    agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    assert_eq!(broadcast_send(&cg, &bcast.to_string(), server.port()), "ok");
}

#[test]
fn udp_to_an_address_in_a_local_route_is_refused() {
    let cg = TestCgroup::new();
    let server = EchoServer::udp("[::]:0");
    let agent = Agent::start(&policy(&[(server.port(), "udp")]), &cg.path);
    // TEST-NET-3, only ever on this host's loopback for the test's duration.
    let _route = RouteGuard::add(&["route", "{op}", "local", "203.0.113.0/24", "dev", "lo"]);
    let caller = As::root_in(&cg.path);
    for addr in ["203.0.113.77", "[::ffff:203.0.113.78]"] {
        let target: SocketAddr = format!("{addr}:{}", server.port()).parse().unwrap();
        let mut last = Outcome::Ok;
        let refused = eventually(Duration::from_secs(5), || {
            last = caller.udp(target);
            last == Outcome::eperm()
        });
        assert!(refused, "UDP to {target} (a local route) got {last:?}");
    }
    agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    let target: SocketAddr = format!("203.0.113.77:{}", server.port()).parse().unwrap();
    assert_eq!(
        caller.udp(target),
        Outcome::Ok,
        "the route is not local after all"
    );
}

// ---- 2. loopback belongs to the host's namespace ------------------------------

/// In a fresh netns: bring lo up, serve on 127.0.0.1 and ::1 at PORT,
/// connect to each; prints one word per family (`ok`, `EPERM`, `errnoN`).
const OWN_LOOPBACK_PY: &str = r#"
import socket, subprocess, sys, threading
subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)
port = int(sys.argv[1])
res = []
for host, fam in (('127.0.0.1', socket.AF_INET), ('::1', socket.AF_INET6)):
    l = socket.socket(fam, socket.SOCK_STREAM)
    l.bind((host, port)); l.listen(4)
    def acc(l=l):
        c, _ = l.accept(); c.sendall(c.recv(10)); c.close()
    threading.Thread(target=acc, daemon=True).start()
    c = socket.socket(fam, socket.SOCK_STREAM); c.settimeout(3)
    try:
        c.connect((host, port)); c.sendall(b'ping'); c.recv(10); res.append('ok')
    except PermissionError:
        res.append('EPERM')
    except OSError as e:
        res.append('errno%d' % e.errno)
print(' '.join(res))
"#;

#[test]
fn a_process_in_its_own_netns_may_use_its_own_loopback() {
    let cg = TestCgroup::new();
    let host_server = EchoServer::tcp("127.0.0.1:0");
    let port = host_server.port();
    let _agent = Agent::start(&policy(&[(port, "tcp")]), &cg.path);
    let mut cmd = As::root_in(&cg.path).command("unshare");
    cmd.args(["-n", "python3"]);
    assert_eq!(
        python_line(cmd, OWN_LOOPBACK_PY, &[&port.to_string()]),
        "ok ok",
        "a process in its own netns was refused on its own loopback"
    );
    // The host's loopback is still this host's.
    let host_target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(As::root_in(&cg.path).tcp(host_target), Outcome::eperm());
}

// ---- 3. remote peers on every interface, no XDP -------------------------------

fn remote_tcp_cycle(v6: bool) {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    let host = if v6 {
        peer.host_v6.to_string()
    } else {
        peer.host_v4.to_string()
    };
    let server = ProcServer::in_cgroup(&cg, "tcp", &host);
    let agent = Agent::start(&policy(&[(server.port, "tcp")]), &cg.path);
    let target = peer.host_addr(v6, server.port).to_string();
    assert_eq!(
        peer.probe(&["tcp", &target], DENIED_WAIT_MS),
        Outcome::Err("TIMEOUT".into()),
        "an ungranted peer reached a protected port without --xdp-iface"
    );
    let id = agent.grant("db", &peer.peer_cidr(v6), "10m");
    assert_eq!(peer.probe(&["tcp", &target], 3000), Outcome::Ok);

    let mut cmd = peer.command(probe_bin());
    cmd.args(["hold", &target, "100", "600"])
        .env("PC_PROBE_TIMEOUT_MS", "1000");
    let session = Session::start(cmd);
    session.wait_round_trips(3, Duration::from_secs(10));
    agent.ok(&["revoke", &id.to_string()]);
    let (err, trips, took) = session.wait_failure(Duration::from_secs(10));
    println!(
        "remote tcp (v6={v6}) without XDP cut {took:?} after revoke, {trips} in flight, {err}"
    );
    assert!(trips <= 1, "{trips} round trips after the revoke");
    assert_eq!(
        peer.probe(&["tcp", &target], DENIED_WAIT_MS),
        Outcome::Err("TIMEOUT".into())
    );
}

#[test]
fn a_netns_peer_is_refused_without_xdp_granted_and_cut_by_revoke_v4() {
    remote_tcp_cycle(false);
}

#[test]
fn a_netns_peer_is_refused_without_xdp_granted_and_cut_by_revoke_v6() {
    remote_tcp_cycle(true);
}

#[test]
fn a_netns_udp_peer_is_refused_without_xdp_granted_and_cut_by_revoke() {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    let server = ProcServer::in_cgroup(&cg, "udp", &peer.host_v4.to_string());
    let agent = Agent::start(&policy(&[(server.port, "udp")]), &cg.path);
    let target = peer.host_addr(false, server.port).to_string();
    assert_eq!(
        peer.probe(&["udp", &target], DENIED_WAIT_MS),
        Outcome::Err("TIMEOUT".into()),
        "an ungranted peer's datagram was answered"
    );
    let id = agent.grant("db", &peer.peer_cidr(false), "10m");
    assert_eq!(peer.probe(&["udp", &target], 3000), Outcome::Ok);
    let mut cmd = peer.command(probe_bin());
    cmd.args(["udp-hold", &target, "100", "600"])
        .env("PC_PROBE_TIMEOUT_MS", "1000");
    let session = Session::start(cmd);
    session.wait_round_trips(3, Duration::from_secs(10));
    agent.ok(&["revoke", &id.to_string()]);
    let (err, trips, _) = session.wait_failure(Duration::from_secs(10));
    assert!(trips <= 1, "{trips} round trips after the revoke");
    assert_eq!(err, "TIMEOUT");
}

fn ip_ok(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VXLAN tunnel over the peer's veth; the host end is deleted on drop
/// (the peer end goes with its namespace).
struct Vxlan {
    host_dev: String,
    host_inner: Ipv4Addr,
    peer_inner: Ipv4Addr,
}

impl Vxlan {
    fn new(peer: &PeerHost) -> Self {
        let pid = std::process::id();
        // Shared address space (RFC 6598), only ever inside this tunnel.
        let c = (pid & 0xff) as u8;
        let host_inner = Ipv4Addr::new(100, 64, c, 1);
        let peer_inner = Ipv4Addr::new(100, 64, c, 2);
        let vni = (4000 + pid % 10_000).to_string();
        let port = (40_000 + pid % 10_000).to_string();
        let host_dev = format!("pcvx{:x}", pid & 0xffff);
        let (hv4, pv4) = (peer.host_v4.to_string(), peer.peer_v4.to_string());
        ip_ok(&[
            "link",
            "add",
            &host_dev,
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            &port,
            "local",
            &hv4,
            "remote",
            &pv4,
            "dev",
            &peer.host_if,
        ]);
        let me = Self {
            host_dev,
            host_inner,
            peer_inner,
        };
        ip_ok(&[
            "addr",
            "add",
            &format!("{host_inner}/30"),
            "dev",
            &me.host_dev,
        ]);
        ip_ok(&["link", "set", &me.host_dev, "up"]);
        ip_ok(&[
            "-n",
            &peer.ns,
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            &port,
            "local",
            &pv4,
            "remote",
            &hv4,
            "dev",
            &peer.peer_if,
        ]);
        ip_ok(&[
            "-n",
            &peer.ns,
            "addr",
            "add",
            &format!("{peer_inner}/30"),
            "dev",
            "vx0",
        ]);
        ip_ok(&["-n", &peer.ns, "link", "set", "vx0", "up"]);
        me
    }
}

impl Drop for Vxlan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .output();
    }
}

#[test]
fn traffic_decapsulated_on_this_host_is_judged_by_its_inner_source() {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    let tunnel = Vxlan::new(&peer);
    let server = ProcServer::in_cgroup(&cg, "tcp", &tunnel.host_inner.to_string());
    let agent = Agent::start(&policy(&[(server.port, "tcp")]), &cg.path);
    let target = SocketAddr::new(IpAddr::V4(tunnel.host_inner), server.port).to_string();
    // The outer source (the veth peer) is granted, the inner one is not.
    agent.grant("db", &peer.peer_cidr(false), "10m");
    assert_eq!(
        peer.probe(&["tcp", &target], DENIED_WAIT_MS),
        Outcome::Err("TIMEOUT".into()),
        "an ungranted inner source got through a VXLAN tunnel"
    );
    agent.grant("db", &format!("peer:{}/32", tunnel.peer_inner), "10m");
    assert_eq!(
        peer.probe(&["tcp", &target], 3000),
        Outcome::Ok,
        "the granted inner source was refused (is the tunnel up?)"
    );
}

/// Binds a client socket (`tcp` or `udp`, argv[1]) to a local port,
/// connects out, sends and reads an echo three times.
const BOUND_CLIENT_PY: &str = r#"
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == 'tcp' else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[3])))
s.settimeout(3)
try:
    s.connect((sys.argv[4], int(sys.argv[5])))
    for _ in range(3):
        s.send(b'ping')
        if s.recv(10) != b'ping':
            raise OSError(0, 'short echo')
    print('ok')
except socket.timeout:
    print('err TIMEOUT')
except OSError as e:
    print('err errno%d' % e.errno)
"#;

/// What this host's own `kind` client, bound to a protected port number
/// and talking to an echo server on a peer with no grant, reports.
fn own_client_on_a_protected_port_number(kind: &str) -> String {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    // A protected port number this host's client will use as its own port.
    let reserved = if kind == "tcp" {
        EchoServer::tcp("127.0.0.1:0")
    } else {
        EchoServer::udp("127.0.0.1:0")
    };
    let port = reserved.port();
    drop(reserved);
    let _agent = Agent::start(&policy(&[(port, kind)]), &cg.path);
    let remote = ProcServer::start(peer.command("python3"), kind, &peer.peer_v4.to_string());
    python_line(
        As::root_in(&cg.path).command("python3"),
        BOUND_CLIENT_PY,
        &[
            kind,
            &peer.host_v4.to_string(),
            &port.to_string(),
            &peer.peer_v4.to_string(),
            &remote.port.to_string(),
        ],
    )
}

#[test]
fn replies_to_this_hosts_own_connection_from_a_protected_port_number_pass() {
    assert_eq!(
        own_client_on_a_protected_port_number("tcp"),
        "ok",
        "replies to this host's own connection were dropped"
    );
}

/// A connected UDP socket that speaks first is this host's client: its
/// replies pass, although its port number is protected and the peer has no
/// grant (a socket that heard first is a server's and is checked; see
/// redteam.rs).
#[test]
fn replies_to_this_hosts_own_udp_client_on_a_protected_port_number_pass() {
    assert_eq!(
        own_client_on_a_protected_port_number("udp"),
        "ok",
        "replies to this host's own UDP client were dropped"
    );
}

// ---- 4. XDP fails closed on VLAN stacks ---------------------------------------

#[test]
fn vlan_stacks_xdp_cannot_follow_are_dropped() {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    // Outside the cgroup: only XDP stands between the peer and this server.
    let server = EchoServer::udp(&format!("{}:0", peer.host_v4));
    let agent = Agent::builder(&policy(&[(server.port(), "udp")]), &cg.path)
        .arg("--xdp-iface")
        .arg(&peer.host_if)
        .start();
    let stacks: [(&str, &[u16]); 3] = [
        ("3 VID-0 tags", &[0x8100, 0x8100, 0x8100]),
        ("4 VID-0 tags", &[0x8100, 0x8100, 0x8100, 0x8100]),
        ("QinQ 88a8+8100+8100", &[0x88a8, 0x8100, 0x8100]),
    ];
    let (p, h) = (peer.peer_v4, peer.host_v4);
    let build = |tags: &[u16], sport: u16| {
        let dgram = udp(p.into(), h.into(), sport, server.port(), b"ping");
        eth_tagged(&peer, tags, 0x0800, &ipv4(p, h, 17, sport, 0, &dgram))
    };
    for (i, (name, tags)) in stacks.iter().enumerate() {
        let sport = 42000 + i as u16;
        let src = SocketAddr::new(IpAddr::V4(p), sport);
        assert!(
            !send_frames(&peer, src, &[build(tags, sport)], DENIED_WAIT_MS),
            "{name}: an ungranted peer's datagram got past XDP"
        );
    }
    agent.grant("db", &peer.peer_cidr(false), "10m");
    // Controls: the same stacks from a granted peer are delivered and
    // answered, so the frames were valid and the kernel does take them.
    for (i, (name, tags)) in stacks.iter().enumerate() {
        let sport = 42100 + i as u16;
        let src = SocketAddr::new(IpAddr::V4(p), sport);
        assert!(
            send_frames(&peer, src, &[build(tags, sport)], 3000),
            "{name}: a granted peer's frame was not answered (crafting is wrong)"
        );
    }
    // Deeper than XDP follows: dropped even for a granted peer.
    let deep = [0x8100u16; 9];
    let src = SocketAddr::new(IpAddr::V4(p), 42200);
    assert!(
        !send_frames(&peer, src, &[build(&deep, 42200)], DENIED_WAIT_MS),
        "9 VLAN tags (more than XDP walks) got through"
    );
}

// ---- 5. nothing from the network destroys a socket ----------------------------

/// The client port of the established connection to `server` (found with ss).
fn client_port(server: SocketAddr) -> u16 {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let server_s = server.to_string();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Recv-Q Send-Q Local Peer
        if cols.len() >= 4 && cols[3] == server_s {
            if let Some(p) = cols[2].rsplit(':').next().and_then(|p| p.parse().ok()) {
                return p;
            }
        }
    }
    panic!("no established connection to {server} in:\n{text}");
}

#[test]
fn spoofed_acks_from_loopback_or_this_hosts_address_do_not_destroy_an_allowed_flow() {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("0.0.0.0:0");
    let port = server.port();
    let agent = Agent::builder(&policy(&[(port, "tcp")]), &cg.path)
        .arg("--xdp-iface")
        .arg(&peer.host_if)
        .start();
    agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    let mut sessions = Vec::new();
    for host in [Ipv4Addr::LOCALHOST, peer.host_v4] {
        let target = SocketAddr::new(IpAddr::V4(host), port);
        let mut cmd = As::root_in(&cg.path).command(probe_bin());
        cmd.args(["hold", &target.to_string(), "100", "600"]);
        let session = Session::start(cmd);
        session.wait_round_trips(2, Duration::from_secs(10));
        let cport = client_port(target);
        // ACKs "from" the client's own address and port, to the server's
        // port, arriving from the network on the XDP interface.
        let frames: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                let seg = tcp_ack(host, host, cport, port, i * 1000);
                eth(&peer, 0x0800, &ipv4(host, host, 6, i as u16, 0, &seg))
            })
            .collect();
        let listen = SocketAddr::new(IpAddr::V4(peer.peer_v4), 42300);
        send_frames(&peer, listen, &frames, 200);
        sessions.push((host, session));
    }
    // Both flows keep working well after the spoofed packets arrived.
    for (host, session) in &sessions {
        session.wait_round_trips(10, Duration::from_secs(10));
        println!("flow to {host}:{port} survived the spoofed ACKs");
    }
}
