//! The peer filter's frame parser and decision, shared by the XDP entry
//! point (`xdp.rs`, physical NICs with driver XDP) and the tc entry point
//! (`tc.rs`, tcx or clsact ingress on virtual devices): both judge a frame
//! the same way, byte for byte, and differ only in how they read the frame
//! and how they say "drop".
//!
//! A packet from a remote peer to a protected local port is dropped unless a
//! live `peer:` entry covers its source.
//!
//! Fails closed: the parser follows up to `MAX_VLAN_TAGS` 802.1Q/802.1ad
//! tags (0x8100, 0x88a8, 0x9100, 0x9200; a tag the kernel already took off
//! before tc counts as one walked), IPv4 options and the IPv6
//! extension-header chain; a frame it cannot follow to the transport ports
//! (a VLAN ethertype left after the tags it walks, truncated headers, an
//! extension chain too long or unknown) is dropped, since the kernel may
//! strip what the filter could not follow and deliver it. Non-first
//! fragments carry no ports and pass: their datagram can only be
//! reassembled if its first fragment (which does carry the ports) passed.
//!
//! A drop here never asks the agent to destroy a socket: a packet's
//! addresses are whatever its sender wrote.
use agent_common::{v4_mapped, DenyEvent, Proto, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS};

use crate::{debug, decide};

/// What the hook does with the frame.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// A frame as a hook sees it, from the Ethernet header on.
pub trait Frame {
    /// `N` bytes at `offset`, or `None` past the frame's end.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tags some switches still emit.
const ETH_P_QINQ1: u16 = 0x9100;
const ETH_P_QINQ2: u16 = 0x9200;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Headers past this offset are not followed (the packet is dropped if it
/// may be for a protected port). Also bounds offsets for the verifier.
const MAX_L4_OFFSET: usize = 1024;

/// A packet that cannot be parsed far enough to be judged, and why (a
/// `debug::reason` code).
pub struct Malformed(pub u32);

const TRUNCATED: Malformed = Malformed(debug::reason::TRUNCATED);
const BAD_IP: Malformed = Malformed(debug::reason::BAD_IP_HEADER);

/// Judges one frame for hook `hook` (`agent_common::hook::XDP` or `TC`);
/// `stripped` is how many VLAN tags the kernel took off before the hook ran
/// (0 or 1), so both hooks walk the same number of tags in all.
#[inline(always)]
pub fn judge<F: Frame>(f: &F, hook: u8, stripped: u32) -> Verdict {
    match try_frame(f, hook, stripped) {
        Ok(v) => v,
        // Truncated or inconsistent headers: the kernel would drop such a
        // packet too; never let it reach a protected port.
        Err(Malformed(why)) => {
            if debug::on() {
                debug::emit(hook as u32, why, 0, 0, 0);
            }
            Verdict::Drop
        }
    }
}

#[inline(always)]
fn bytes<const N: usize, F: Frame>(f: &F, offset: usize) -> Result<[u8; N], Malformed> {
    if offset > MAX_L4_OFFSET + 64 {
        return Err(TRUNCATED);
    }
    f.read::<N>(offset).ok_or(TRUNCATED)
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

fn try_frame<F: Frame>(f: &F, hook: u8, stripped: u32) -> Result<Verdict, Malformed> {
    let eth: [u8; 14] = bytes(f, 0)?;
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut off = 14usize;
    let mut tags = stripped;
    while tags < MAX_VLAN_TAGS && is_vlan(ethertype) {
        let tag: [u8; 4] = bytes(f, off)?;
        ethertype = be16([tag[2], tag[3]]);
        off += 4;
        tags += 1;
    }
    match ethertype {
        ETH_P_IP => ipv4(f, hook, off),
        ETH_P_IPV6 => ipv6(f, hook, off),
        // More tags than we walk: the kernel may strip them all and deliver
        // the packet inside, which we could not judge.
        t if is_vlan(t) => Err(Malformed(debug::reason::VLAN_STACK)),
        _ => Ok(Verdict::Pass),
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    matches!(
        ethertype,
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1 | ETH_P_QINQ2
    )
}

#[inline(always)]
fn ipv4<F: Frame>(f: &F, hook: u8, off: usize) -> Result<Verdict, Malformed> {
    let ip: [u8; 20] = bytes(f, off)?;
    if ip[0] >> 4 != 4 {
        return Err(BAD_IP);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(BAD_IP);
    }
    let proto = match ip[9] {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        _ => return Ok(Verdict::Pass),
    };
    let frag = be16([ip[6], ip[7]]);
    if frag & 0x1fff != 0 {
        return Ok(Verdict::Pass);
    }
    let src = v4_mapped([ip[12], ip[13], ip[14], ip[15]]);
    let dst = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
    transport(f, hook, off + ihl, proto, src, dst)
}

#[inline(always)]
fn ipv6<F: Frame>(f: &F, hook: u8, off: usize) -> Result<Verdict, Malformed> {
    let ip: [u8; 40] = bytes(f, off)?;
    if ip[0] >> 4 != 6 {
        return Err(BAD_IP);
    }
    let mut next = ip[6];
    let mut off = off + 40;
    let mut n = 0;
    while n < MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first.
            0 | 43 | 60 => {
                let h: [u8; 2] = bytes(f, off)?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            // Authentication header: length in 4-octet units, not counting the first two.
            51 => {
                let h: [u8; 2] = bytes(f, off)?;
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            // Fragment header: only the first fragment carries the ports.
            44 => {
                let h: [u8; 4] = bytes(f, off)?;
                next = h[0];
                if be16([h[2], h[3]]) >> 3 != 0 {
                    return Ok(Verdict::Pass);
                }
                off += 8;
            }
            _ => break,
        }
        if off > MAX_L4_OFFSET {
            return Err(Malformed(debug::reason::EXT_CHAIN));
        }
        n += 1;
    }
    let proto = match next {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        // Still inside an extension-header chain longer than we follow.
        0 | 43 | 60 | 51 | 44 => return Err(Malformed(debug::reason::EXT_CHAIN)),
        _ => return Ok(Verdict::Pass),
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    transport(f, hook, off, proto, src, dst)
}

#[inline(always)]
fn transport<F: Frame>(
    f: &F,
    hook: u8,
    off: usize,
    proto: Proto,
    src: [u8; 16],
    dst: [u8; 16],
) -> Result<Verdict, Malformed> {
    // The ports must be there.
    let ports: [u8; 4] = bytes(f, off)?;
    let sport = be16([ports[0], ports[1]]);
    let dport = be16([ports[2], ports[3]]);
    let entry = decide::port_of(proto, dport);
    if entry == 0 {
        return Ok(Verdict::Pass);
    }
    let segment = decide::segment(entry);
    let mut clock = decide::Clock::new();
    let found = decide::peer_match(segment, src, &mut clock);
    if debug::on() {
        debug_peer(f, hook, off, proto, found, segment, dport);
    }
    if found < debug::reason::FIRST_DENY {
        decide::count_allowed(segment);
        return Ok(Verdict::Pass);
    }
    // Audit mode records connection set-up only (TCP SYNs, every UDP
    // datagram): a flow it let in is not reported at every packet.
    if decide::audit(entry) && proto == Proto::Tcp && !is_syn(f, off) {
        return Ok(Verdict::Pass);
    }
    let refuse = decide::refused(
        entry,
        DenyEvent {
            boot_ns: clock.get(),
            cgroup_id: 0,
            segment,
            uid: 0,
            gid: 0,
            port: dport,
            peer_port: sport,
            proto: proto as u8,
            hook,
            verdict: decide::verdict_of(entry),
            _pad: [0; 5],
            addr: dst,
            peer_addr: src,
        },
    );
    Ok(if refuse { Verdict::Drop } else { Verdict::Pass })
}

/// Whether the TCP header at `off` is a SYN without ACK.
#[inline(always)]
fn is_syn<F: Frame>(f: &F, off: usize) -> bool {
    bytes::<14, F>(f, off).is_ok_and(|tcp| tcp[13] & 0x12 == 0x02)
}

/// The debug line of a peer decision: every drop, and of the packets let
/// through only TCP SYNs (connection set-up), so that bulk transfers do
/// not spend the debug budget.
#[inline(always)]
fn debug_peer<F: Frame>(
    f: &F,
    hook: u8,
    off: usize,
    proto: Proto,
    found: u32,
    segment: u32,
    port: u16,
) {
    if found < debug::reason::FIRST_DENY && (proto != Proto::Tcp || !is_syn(f, off)) {
        return;
    }
    debug::emit(hook as u32, found, segment, port as u32, 0);
}
