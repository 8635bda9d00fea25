//! `cgroup_skb` egress and ingress: every packet of a flow that connect4/6
//! let through to a protected port is checked again, so a revoked or
//! expired grant stops an open session at its next packet.
//!
//! Only sockets marked by connect4/6 (per-socket storage) are checked; for
//! every other socket the cost is one storage lookup. The flow's protected
//! endpoint is the socket's own destination, so no packet parsing is
//! needed. A dropped packet also asks the agent to destroy the socket, so
//! its owner sees an error at once. Minimum kernel: 5.10.
use agent_common::{hook, v4_mapped, DenyEvent, FlowMark, KillRequest, Proto};
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::generated::{
        bpf_get_socket_cookie, bpf_sk_fullsock, bpf_sk_storage_get, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::{decide, maps::FLOWS};

const PASS: i32 = 1;
const DROP: i32 = 0;
const AF_INET: u32 = 2;

/// The socket's owner, as far as a cgroup_skb program can tell: its cgroup
/// from the socket, its uid and gid from the mark connect4/6 left.
struct SocketOwner {
    skb: *mut __sk_buff,
    mark: FlowMark,
}

impl decide::LocalSubject for SocketOwner {
    #[inline(always)]
    fn uid(&self) -> u32 {
        self.mark.uid
    }
    #[inline(always)]
    fn gid(&self) -> u32 {
        self.mark.gid
    }
    #[inline(always)]
    fn ancestor_cgroup(&self, level: i32) -> u64 {
        // SAFETY: `skb` is the program's context pointer.
        unsafe { bpf_skb_ancestor_cgroup_id(self.skb, level) }
    }
}

#[cgroup_skb(egress)]
pub fn pc_skb_egress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx, hook::SKB_EGRESS)
}

#[cgroup_skb(ingress)]
pub fn pc_skb_ingress(ctx: SkBuffContext) -> i32 {
    on_packet(&ctx, hook::SKB_INGRESS)
}

/// An address of a socket as IPv6 bytes (v4-mapped for AF_INET).
#[inline(always)]
fn sock_addr(family: u32, v4: u32, v6: [u32; 4]) -> [u8; 16] {
    if family == AF_INET {
        return v4_mapped(v4.to_ne_bytes());
    }
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = v6[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, hook: u8) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: reading the socket pointer of the context; the verifier types
    // it as a nullable socket pointer, checked below.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    // SAFETY: `sk` is a non-null socket pointer from the context.
    let full: *mut bpf_sock = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return PASS;
    }
    // SAFETY: the map pointer is the address of the map definition (what
    // aya's own accessors pass); `full` is a full socket; no value to create.
    let mark = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&FLOWS).cast_mut().cast(),
            full.cast(),
            core::ptr::null_mut(),
            0,
        )
    } as *const FlowMark;
    if mark.is_null() {
        return PASS;
    }
    // SAFETY: `full` is a valid full socket; these fields are readable from
    // cgroup_skb programs. `mark` points at this socket's storage.
    let (protocol, dst_port, family, mark) =
        unsafe { ((*full).protocol, (*full).dst_port, (*full).family, *mark) };
    let Some(proto) = Proto::from_ip_proto(protocol) else {
        return PASS;
    };
    let port = u16::from_be(dst_port);
    let segment = decide::segment_of(proto, port);
    if segment == 0 {
        return PASS;
    }
    let owner = SocketOwner { skb, mark };
    let now = decide::now();
    if decide::local_allowed(segment, &owner, now) {
        return PASS;
    }
    // SAFETY: as above, plain field reads of a full socket. Each field is
    // read on its own with a volatile load: the verifier allows only
    // constant-offset loads from a socket pointer, and without `volatile`
    // LLVM merges neighbouring fields into one copy from a computed pointer.
    let (src, dst, src_port) = unsafe {
        use core::ptr::{addr_of, read_volatile as rv};
        let s6 = [
            rv(addr_of!((*full).src_ip6[0])),
            rv(addr_of!((*full).src_ip6[1])),
            rv(addr_of!((*full).src_ip6[2])),
            rv(addr_of!((*full).src_ip6[3])),
        ];
        let d6 = [
            rv(addr_of!((*full).dst_ip6[0])),
            rv(addr_of!((*full).dst_ip6[1])),
            rv(addr_of!((*full).dst_ip6[2])),
            rv(addr_of!((*full).dst_ip6[3])),
        ];
        (
            sock_addr(family, rv(addr_of!((*full).src_ip4)), s6),
            sock_addr(family, rv(addr_of!((*full).dst_ip4)), d6),
            rv(addr_of!((*full).src_port)) as u16,
        )
    };
    decide::count(segment, false);
    decide::report_deny(&DenyEvent {
        boot_ns: now,
        // SAFETY: context pointer.
        cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
        segment,
        uid: mark.uid,
        gid: mark.gid,
        port,
        peer_port: src_port,
        proto: proto as u8,
        hook,
        _pad: [0; 6],
        addr: dst,
        peer_addr: src,
    });
    let v4 = dst[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    decide::request_kill(&KillRequest {
        // SAFETY: context pointer.
        cookie: unsafe { bpf_get_socket_cookie(skb.cast()) },
        local_port: src_port,
        remote_port: port,
        proto: proto as u8,
        ip_version: if v4 { 4 } else { 6 },
        hook,
        _pad: 0,
        local_addr: src,
        remote_addr: dst,
    });
    DROP
}
