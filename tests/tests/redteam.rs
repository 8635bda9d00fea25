//! The attacker's pass over issues 12 and 13: each test is one way through
//! (or around) what was built, reproduced end to end against the real agent.
//! See docs/security.md for what each one showed.
use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    time::Duration,
};

use portcullis_tests::{netns::PeerHost, session::Session, *};

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
