//! Kernel debug lines (`portcullis debug on|off`): off by default; when on,
//! the programs say in the agent's log which rule let a connection through
//! and why one was refused (target `portcullis::kernel`); only root may
//! switch them. Each test runs the real agent on its own child cgroup.
//!
//! "No line while off" is checked without any wait-and-see: the ring is
//! read in order, so once a line written *after* the off-period shows up,
//! any line written during it would already be there.
use std::{fs, os::unix::fs::PermissionsExt, time::Duration};

use std::net::{IpAddr, SocketAddr};

use portcullis_tests::users::TestUser;
use portcullis_tests::{frames::*, netns::PeerHost, *};

const TARGET: &str = "portcullis::kernel";

/// Two segments, one port each, TCP.
fn policy(a: u16, b: u16) -> String {
    format!(
        "[segment.alpha]\nports = [\"{a}/tcp\"]\nallow = []\n\n[segment.alpha.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"10m\"\nrequire_reason = false\n\n\
         [segment.beta]\nports = [\"{b}/tcp\"]\nallow = []\n\n[segment.beta.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"10m\"\nrequire_reason = false\n"
    )
}

/// Kernel debug lines in the agent's log so far.
fn kernel_lines(agent: &Agent) -> Vec<String> {
    agent
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(TARGET))
        .cloned()
        .collect()
}

/// Waits (bounded) for a kernel line containing every one of `parts`.
fn wait_line(agent: &Agent, parts: &[&str]) -> String {
    let mut found = None;
    eventually(Duration::from_secs(10), || {
        found = kernel_lines(agent)
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)));
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no kernel debug line with {parts:?} within 10 s; kernel lines: {:#?}",
            kernel_lines(agent)
        )
    })
}

#[test]
fn refusals_are_explained_in_the_log_only_while_debug_is_on() {
    let cg = TestCgroup::new();
    let a = EchoServer::tcp("127.0.0.1:0");
    let b = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(a.port(), b.port()), &cg.path);
    let client = As::root_in(&cg.path);
    let port_a = format!("port={}", a.port());
    let port_b = format!("port={}", b.port());

    // Off by default: a refusal on port A leaves no kernel line.
    assert!(agent.ok(&["debug"]).contains("are off"));
    assert_eq!(client.tcp(a.addr), Outcome::eperm());

    // On: a refusal on port B is explained, with its reason.
    assert!(agent.ok(&["debug", "on"]).contains("are on"));
    assert_eq!(client.tcp(b.addr), Outcome::eperm());
    let line = wait_line(&agent, &["connect4: deny no-grant", &port_b]);
    assert!(line.contains("id=0"), "the refused uid (root): {line}");
    // ...and the earlier refusal, from while it was off, is not there.
    let early: Vec<String> = kernel_lines(&agent)
        .into_iter()
        .filter(|l| l.contains(&port_a))
        .collect();
    assert!(
        early.is_empty(),
        "lines from while debug was off: {early:?}"
    );

    // The rule that let a connection through is named too.
    agent.grant("beta", &format!("cgroup:{}", cg.rel), "10m");
    assert_eq!(client.tcp(b.addr), Outcome::Ok);
    let line = wait_line(&agent, &["connect4: allow cgroup-grant", &port_b]);
    assert!(line.contains("level="), "the cgroup level: {line}");
    // A uid grant is tried first and named as such.
    agent.grant("alpha", "uid:0", "10m");
    assert_eq!(client.tcp(a.addr), Outcome::Ok);
    wait_line(&agent, &["connect4: allow uid-grant", &port_a]);

    // Off again: nothing more, checked with one last line from after it.
    agent.ok(&["revoke", "--segment", "alpha"]);
    assert!(agent.ok(&["debug", "off"]).contains("are off"));
    assert_eq!(client.tcp(a.addr), Outcome::eperm());
    agent.ok(&["debug", "on"]);
    agent.ok(&["revoke", "--segment", "beta"]);
    assert_eq!(client.tcp(b.addr), Outcome::eperm());
    wait_line(&agent, &["connect4: deny no-grant", &port_b]);
    let after_off: Vec<String> = kernel_lines(&agent)
        .into_iter()
        .filter(|l| l.contains("deny") && l.contains(&port_a))
        .collect();
    assert!(
        after_off.is_empty(),
        "a refusal while debug was off was logged: {after_off:?}"
    );
}

#[test]
fn only_root_may_switch_kernel_debug() {
    let cg = TestCgroup::new();
    let a = EchoServer::tcp("127.0.0.1:0");
    let b = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::builder(&policy(a.port(), b.port()), &cg.path)
        .arg("--socket-mode")
        .arg("666")
        .start();
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let mallory = TestUser::new();
    for args in [&["debug", "on"][..], &["debug"][..]] {
        let out = agent.cli_as(mallory.uid, mallory.gid, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} succeeded for uid {}",
            mallory.uid
        );
        assert!(stderr.contains("only root"), "{args:?}: {stderr}");
    }
    assert!(agent.ok(&["debug"]).contains("are off"));
}

#[test]
fn the_peer_filter_names_why_it_dropped_a_frame() {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    // Outside the cgroup: only the peer filter judges the peer's datagrams
    // to it (at tcx ingress: the interface is a veth).
    let server = EchoServer::udp(&format!("{}:0", peer.host_v4));
    let policy = format!(
        "[segment.db]\nports = [\"{}/udp\"]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n",
        server.port()
    );
    let agent = Agent::builder(&policy, &cg.path)
        .arg("--xdp-iface")
        .arg(&peer.host_if)
        .start();
    agent.ok(&["debug", "on"]);
    let (p, h) = (peer.peer_v4, peer.host_v4);
    let frame = |tags: &[u16], sport: u16| {
        let dgram = udp(p.into(), h.into(), sport, server.port(), b"ping");
        eth_tagged(&peer, tags, 0x0800, &ipv4(p, h, 17, sport, 0, &dgram))
    };
    // An ungranted peer: no entry covers its source.
    let src = SocketAddr::new(IpAddr::V4(p), 42300);
    assert!(!send_frames(&peer, src, &[frame(&[], 42300)], 700));
    wait_line(
        &agent,
        &["tc: deny no-peer-entry", &format!("port={}", server.port())],
    );
    // More VLAN tags than the filter walks: dropped before any port is read.
    let src = SocketAddr::new(IpAddr::V4(p), 42301);
    assert!(!send_frames(&peer, src, &[frame(&[0x8100; 9], 42301)], 700));
    wait_line(&agent, &["tc: deny vlan-stack-too-deep"]);
}
