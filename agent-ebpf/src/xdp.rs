//! XDP on the interfaces named with `--xdp-iface`: a packet from a remote
//! peer to a protected local port is dropped unless a live `peer:` entry
//! covers its source. One trie lookup decides.
//!
//! No bypass by malformed headers: the parser follows VLAN tags, IPv4
//! options and the IPv6 extension-header chain; a packet whose headers
//! cannot be followed to the transport ports is dropped when it could be
//! headed for a protected port. Non-first fragments carry no ports and pass:
//! their datagram can only be reassembled if its first fragment (which does
//! carry the ports) passed. Minimum kernel: 5.9 for XDP links.
use agent_common::{hook, v4_mapped, DenyEvent, KillRequest, Proto, MAX_IPV6_EXT_HEADERS};
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};

use crate::decide;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Headers past this offset are not followed (the packet is dropped if it
/// may be for a protected port). Also bounds offsets for the verifier.
const MAX_L4_OFFSET: usize = 1024;

/// A packet that cannot be parsed far enough to be judged.
struct Malformed;

#[xdp]
pub fn pc_xdp(ctx: XdpContext) -> u32 {
    match try_xdp(&ctx) {
        Ok(action) => action,
        // Truncated or inconsistent headers: the kernel would drop such a
        // packet too; never let it reach a protected port.
        Err(Malformed) => XDP_DROP,
    }
}

#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if offset > MAX_L4_OFFSET + 64 || start + offset + N > end {
        return Err(Malformed);
    }
    // SAFETY: bounds checked against data_end just above.
    Ok(unsafe { *((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

fn try_xdp(ctx: &XdpContext) -> Result<u32, Malformed> {
    let eth: [u8; 14] = bytes(ctx, 0)?;
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut off = 14usize;
    let mut tags = 0;
    while tags < 2 && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        let tag: [u8; 4] = bytes(ctx, off)?;
        ethertype = be16([tag[2], tag[3]]);
        off += 4;
        tags += 1;
    }
    match ethertype {
        ETH_P_IP => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        _ => Ok(XDP_PASS),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize) -> Result<u32, Malformed> {
    let ip: [u8; 20] = bytes(ctx, off)?;
    if ip[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Malformed);
    }
    let proto = match ip[9] {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        _ => return Ok(XDP_PASS),
    };
    let frag = be16([ip[6], ip[7]]);
    if frag & 0x1fff != 0 {
        return Ok(XDP_PASS);
    }
    let src = v4_mapped([ip[12], ip[13], ip[14], ip[15]]);
    let dst = v4_mapped([ip[16], ip[17], ip[18], ip[19]]);
    transport(ctx, off + ihl, proto, src, dst, 4)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize) -> Result<u32, Malformed> {
    let ip: [u8; 40] = bytes(ctx, off)?;
    if ip[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let mut next = ip[6];
    let mut off = off + 40;
    let mut n = 0;
    while n < MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first.
            0 | 43 | 60 => {
                let h: [u8; 2] = bytes(ctx, off)?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            // Authentication header: length in 4-octet units, not counting the first two.
            51 => {
                let h: [u8; 2] = bytes(ctx, off)?;
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            // Fragment header: only the first fragment carries the ports.
            44 => {
                let h: [u8; 4] = bytes(ctx, off)?;
                next = h[0];
                if be16([h[2], h[3]]) >> 3 != 0 {
                    return Ok(XDP_PASS);
                }
                off += 8;
            }
            _ => break,
        }
        if off > MAX_L4_OFFSET {
            return Err(Malformed);
        }
        n += 1;
    }
    let proto = match next {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        // Still inside an extension-header chain longer than we follow.
        0 | 43 | 60 | 51 | 44 => return Err(Malformed),
        _ => return Ok(XDP_PASS),
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    transport(ctx, off, proto, src, dst, 6)
}

#[inline(always)]
fn transport(
    ctx: &XdpContext,
    off: usize,
    proto: Proto,
    src: [u8; 16],
    dst: [u8; 16],
    ip_version: u8,
) -> Result<u32, Malformed> {
    // The ports must be there; for TCP the flags too (they tell a new
    // connection from an established one).
    let ports: [u8; 4] = bytes(ctx, off)?;
    let sport = be16([ports[0], ports[1]]);
    let dport = be16([ports[2], ports[3]]);
    let segment = decide::segment_of(proto, dport);
    if segment == 0 {
        return Ok(XDP_PASS);
    }
    let established = match proto {
        Proto::Tcp => {
            let flags: [u8; 1] = bytes(ctx, off + 13)?;
            // Anything but a bare SYN belongs to a connection that exists.
            flags[0] & 0x12 != 0x02
        }
        Proto::Udp => false,
    };
    let now = decide::now();
    if decide::peer_allowed(segment, src, now) {
        decide::count(segment, true);
        return Ok(XDP_PASS);
    }
    decide::count(segment, false);
    decide::report_deny(&DenyEvent {
        boot_ns: now,
        cgroup_id: 0,
        segment,
        uid: 0,
        gid: 0,
        port: dport,
        peer_port: sport,
        proto: proto as u8,
        hook: hook::XDP,
        _pad: [0; 6],
        addr: dst,
        peer_addr: src,
    });
    if established {
        // The local end of a cut TCP connection: the agent finds it by its
        // addresses (no cookie here) and resets it.
        decide::request_kill(&KillRequest {
            cookie: 0,
            local_port: dport,
            remote_port: sport,
            proto: proto as u8,
            ip_version,
            hook: hook::XDP,
            _pad: 0,
            local_addr: dst,
            remote_addr: src,
        });
    }
    Ok(XDP_DROP)
}
