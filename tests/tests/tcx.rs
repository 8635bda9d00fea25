//! Issue 15 item 4: the peer filter on a virtual device is attached at tcx
//! ingress, not XDP (native XDP on a veth costs about a microsecond per
//! connection even empty), and it judges crafted frames from a peer
//! namespace exactly as XDP does: ungranted peers and VLAN stacks deeper
//! than it walks (counting the tag the kernel took off before tc) are
//! dropped, a granted peer's frames pass.
use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
};

use portcullis_tests::{frames::*, netns::PeerHost, *};

const DENIED_WAIT_MS: u64 = 700;

fn policy(port: u16, proto: &str) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/{proto}\"]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n"
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `bpftool -j ARGS`' output.
fn bpftool(args: &[&str]) -> String {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_veth_gets_the_peer_filter_at_tcx_ingress_not_xdp() {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    // Outside the cgroup: only the peer filter stands between the peer and
    // this server.
    let server = EchoServer::tcp(&peer.host_addr(false, 0).to_string());
    let agent = Agent::builder(&policy(server.port(), "tcp"), &cg.path)
        .arg("--xdp-iface")
        .arg(&peer.host_if)
        .start();

    let status = json(&agent.ok(&["status", "--json"]));
    let filters = &status["ok"]["peer_filters"];
    assert_eq!(
        filters,
        &serde_json::json!([{ "iface": peer.host_if, "mode": "tcx" }]),
        "{status}"
    );
    let human = agent.ok(&["status"]);
    assert!(
        human.contains(&format!("peer filter on {}: tcx", peer.host_if)),
        "{human}"
    );
    // The kernel agrees: the pinned link is a tcx link (BPF_LINK_TYPE_TCX,
    // 11) of pc_tc_peer, and no XDP program sits on the veth.
    let links = agent
        .bpffs
        .join(format!("v{}/links", agent_common::LAYOUT_VERSION));
    assert!(!links.join(format!("xdp_{}", peer.host_if)).exists());
    let link = json(&bpftool(&[
        "link",
        "show",
        "pinned",
        links
            .join(format!("tcx_{}", peer.host_if))
            .to_str()
            .unwrap(),
    ]));
    assert!(
        link["type"] == "tcx" || link["type"] == 11,
        "not a tcx link: {link}"
    );
    let prog = json(&bpftool(&[
        "prog",
        "show",
        "id",
        &link["prog_id"].to_string(),
    ]));
    assert_eq!(prog["name"], "pc_tc_peer", "{prog}");
    let dev = Command::new("ip")
        .args(["-d", "link", "show", "dev", &peer.host_if])
        .output()
        .expect("run ip");
    let dev = String::from_utf8_lossy(&dev.stdout);
    assert!(!dev.contains("xdp"), "XDP attached to a veth: {dev}");

    // And it enforces: an ungranted peer's connect times out (its SYN is
    // shot), a granted one gets through.
    let target = server.addr.to_string();
    assert_eq!(
        peer.probe(&["tcp", &target], DENIED_WAIT_MS),
        Outcome::Err("TIMEOUT".into()),
        "an ungranted peer got through tcx"
    );
    agent.grant("db", &peer.peer_cidr(false), "10m");
    assert_eq!(peer.probe(&["tcp", &target], 3000), Outcome::Ok);
}

#[test]
fn crafted_frames_from_a_peer_netns_are_judged_at_tcx_as_at_xdp() {
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    let server = EchoServer::udp(&format!("{}:0", peer.host_v4));
    let agent = Agent::builder(&policy(server.port(), "udp"), &cg.path)
        .arg("--xdp-iface")
        .arg(&peer.host_if)
        .start();
    let status = json(&agent.ok(&["status", "--json"]));
    assert_eq!(status["ok"]["peer_filters"][0]["mode"], "tcx", "{status}");
    let (p, h) = (peer.peer_v4, peer.host_v4);
    let build = |tags: &[u16], sport: u16| {
        let dgram = udp(p.into(), h.into(), sport, server.port(), b"ping");
        eth_tagged(&peer, tags, 0x0800, &ipv4(p, h, 17, sport, 0, &dgram))
    };
    let send = |tags: &[u16], sport: u16, wait| {
        let src = SocketAddr::new(IpAddr::V4(p), sport);
        send_frames(&peer, src, &[build(tags, sport)], wait)
    };
    // Ungranted: plain and tagged frames are shot.
    assert!(
        !send(&[], 43000, DENIED_WAIT_MS),
        "an ungranted peer's datagram got past tcx"
    );
    assert!(
        !send(&[0x8100, 0x8100], 43001, DENIED_WAIT_MS),
        "an ungranted peer's tagged datagram got past tcx"
    );
    let id = agent.grant("db", &peer.peer_cidr(false), "10m");
    // Controls: the granted peer's frames are answered, so they were valid.
    assert!(send(&[], 43100, 3000), "a granted peer was not answered");
    assert!(
        send(&[0x8100, 0x8100, 0x8100, 0x8100], 43101, 3000),
        "a granted peer's 4-tag frame was not answered (crafting is wrong)"
    );
    // 9 tags: the kernel takes one off before tc, 8 are left; XDP would
    // have walked 8 and found a ninth it cannot follow. tc must count the
    // one taken off, or it would judge the frame and let it through.
    assert!(
        !send(&[0x8100; 9], 43102, DENIED_WAIT_MS),
        "9 VLAN tags (more than the filter walks) got through tcx"
    );
    // Revoked: shot again.
    agent.ok(&["revoke", &id.to_string()]);
    assert!(
        !send(&[], 43200, DENIED_WAIT_MS),
        "a revoked peer's datagram got past tcx"
    );
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

#[test]
fn headers_outside_the_skbs_linear_area_are_judged_at_tcx() {
    // tc reads the headers straight from the skb's linear area and falls
    // back to bpf_skb_load_bytes past it. A packet socket leaves all but
    // the Ethernet header of a frame of a page or more in page fragments,
    // so a jumbo datagram reaches tc with its IP and UDP headers outside
    // the linear area: it must be judged on them all the same.
    let peer = PeerHost::new();
    ip(&["link", "set", "dev", &peer.host_if, "mtu", "9000"]);
    ip(&[
        "-n",
        &peer.ns,
        "link",
        "set",
        "dev",
        &peer.peer_if,
        "mtu",
        "9000",
    ]);
    let cg = TestCgroup::new();
    let server = EchoServer::udp(&format!("{}:0", peer.host_v4));
    let agent = Agent::builder(&policy(server.port(), "udp"), &cg.path)
        .arg("--xdp-iface")
        .arg(&peer.host_if)
        .start();
    let status = json(&agent.ok(&["status", "--json"]));
    assert_eq!(status["ok"]["peer_filters"][0]["mode"], "tcx", "{status}");
    let (p, h) = (peer.peer_v4, peer.host_v4);
    let payload = vec![0x5a; 5000];
    let send = |sport: u16, wait| {
        let dgram = udp(p.into(), h.into(), sport, server.port(), &payload);
        let frame = eth(&peer, 0x0800, &ipv4(p, h, 17, sport, 0, &dgram));
        send_frames(&peer, SocketAddr::new(IpAddr::V4(p), sport), &[frame], wait)
    };
    assert!(
        !send(43400, DENIED_WAIT_MS),
        "an ungranted peer's jumbo datagram got past tcx"
    );
    agent.grant("db", &peer.peer_cidr(false), "10m");
    assert!(
        send(43401, 3000),
        "a granted peer's jumbo datagram was not answered"
    );
}

#[test]
fn standing_peer_allows_let_a_peer_through_tcx() {
    // A `peer:` allow in the policy never expires: the filter passes it
    // without reading the clock, a single host from the host map and a
    // prefix from the trie.
    let peer = PeerHost::new();
    let cg = TestCgroup::new();
    let v4 = EchoServer::tcp(&peer.host_addr(false, 0).to_string());
    let v6 = EchoServer::tcp(&peer.host_addr(true, 0).to_string());
    let mut net = peer.peer_v6.segments();
    net[4..].fill(0);
    let net = std::net::Ipv6Addr::from(net);
    let policy = format!(
        "[segment.db]\nports = [\"{}/tcp\", \"{}/tcp\"]\nallow = [\"peer:{}/32\", \"peer:{net}/64\"]\n",
        v4.port(),
        v6.port(),
        peer.peer_v4
    );
    let agent = Agent::builder(&policy, &cg.path)
        .arg("--xdp-iface")
        .arg(&peer.host_if)
        .start();
    let status = json(&agent.ok(&["status", "--json"]));
    assert_eq!(status["ok"]["peer_filters"][0]["mode"], "tcx", "{status}");
    assert_eq!(
        peer.probe(&["tcp", &v4.addr.to_string()], 3000),
        Outcome::Ok,
        "a standing single-host allow did not let the peer in"
    );
    assert_eq!(
        peer.probe(&["tcp", &v6.addr.to_string()], 3000),
        Outcome::Ok,
        "a standing prefix allow did not let the peer in"
    );
}
