//! Crafted frames for remote-peer tests: Ethernet (with optional VLAN
//! tags), IPv4, IPv6 with extension headers, UDP and TCP with correct
//! checksums, sent from a peer namespace's interface with `pc-probe raw`.
//! Only the bytes the tests need; nothing here parses.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{netns::PeerHost, Outcome};

pub fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn eth(peer: &PeerHost, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&peer.host_mac);
    f.extend_from_slice(&peer.peer_mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet; `frag` is the flags+offset field (offset in 8-byte units).
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram with its checksum over the IPv4 or IPv6 pseudo-header.
pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&len.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => unreachable!(),
    }
    pseudo.extend_from_slice(&u);
    let c = match csum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An 8-byte options header (hop-by-hop or destination options) with PadN.
pub fn opts_header(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

pub fn frag_header(next: u8, offset_units: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset_units << 3) | more as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

pub fn hex(frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
        .collect()
}

/// Sends `frames` from the peer's interface and reports whether a UDP reply
/// reached `listen` (the crafted datagrams' source) within `wait_ms`.
pub fn send_frames(peer: &PeerHost, listen: SocketAddr, frames: &[Vec<u8>], wait_ms: u64) -> bool {
    let hexes = hex(frames);
    let mut args: Vec<&str> = vec!["raw", &peer.peer_if];
    let listen_s = listen.to_string();
    args.push(&listen_s);
    args.extend(hexes.iter().map(String::as_str));
    match peer.probe(&args, wait_ms) {
        Outcome::Ok => true,
        Outcome::Err(e) if e == "TIMEOUT" => false,
        Outcome::Err(e) => panic!("pc-probe raw: {e}"),
    }
}

/// An Ethernet frame from the peer to the host with `tags` (each a TPID
/// with VID 0, outermost first) before `ethertype`.
pub fn eth_tagged(peer: &PeerHost, tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    for (i, tpid) in tags.iter().enumerate() {
        if i > 0 {
            inner.extend_from_slice(&tpid.to_be_bytes());
        }
        inner.extend_from_slice(&[0, 0]);
    }
    inner.extend_from_slice(&ethertype.to_be_bytes());
    inner.extend_from_slice(payload);
    match tags.first() {
        // The first TPID takes the Ethernet type field; the rest follows it.
        Some(first) => {
            let mut f = eth(peer, *first, &[]);
            f.extend_from_slice(&inner);
            f
        }
        None => eth(peer, ethertype, payload),
    }
}

/// A bare IPv4 TCP ACK segment (no options) with its checksum: what the
/// packets of an established flow look like.
pub fn tcp_ack(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&t);
    let c = csum(&pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}
