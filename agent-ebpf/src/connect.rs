//! `cgroup/connect4,6` and `cgroup/sendmsg4,6`: a local process connecting
//! (TCP, connected UDP) or sending a datagram (unconnected UDP) to a
//! protected port on this host gets EPERM unless a live grant covers it.
//! Destinations that are not this host's are never touched, and neither are
//! callers in another network namespace (a container's own loopback and
//! addresses are not this host's; what it sends to this host arrives from
//! the network and meets the ingress peer check). Minimum kernel: 4.17 for
//! the hooks, 5.7 for the netns cookie, 5.8 for the boot-time clock.
use agent_common::{hook, v4_mapped, DenyEvent, FlowMark, Proto};
use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_uid_gid,
        bpf_get_netns_cookie,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};

use crate::{debug, decide, discovery, maps::FLOWS, usage};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// The calling task, as seen from a sock_addr hook.
struct Caller {
    uid_gid: u64,
}

impl decide::LocalSubject for Caller {
    #[inline(always)]
    fn uid(&self) -> u32 {
        self.uid_gid as u32
    }
    #[inline(always)]
    fn gid(&self) -> u32 {
        (self.uid_gid >> 32) as u32
    }
    #[inline(always)]
    fn ancestor_cgroup(&self, level: i32) -> u64 {
        // SAFETY: helper with a plain integer argument.
        unsafe { bpf_get_current_ancestor_cgroup_id(level) }
    }
}

#[cgroup_sock_addr(connect4)]
pub fn pc_connect4(ctx: SockAddrContext) -> i32 {
    on_v4(&ctx, hook::CONNECT4)
}

/// Remembers who connected this socket to a protected port, and the
/// decision, so that cgroup_skb re-checks its flow only when the decision
/// can have changed (see `skb.rs::local_flow`). Created only for an allow
/// that can end under the flow ([`decide::LocalMatch::needs_mark`]); a
/// socket that already carries a mark (a UDP socket connected again) has
/// it rewritten whatever the allow, so it never keeps a decision about
/// another destination.
#[inline(always)]
fn mark_flow(ctx: &SockAddrContext, mark: FlowMark, create: bool) {
    // SAFETY: the context's socket is valid for the duration of the hook;
    // the returned pointer, when not null, points at this socket's storage.
    unsafe {
        let p = if create {
            let mut initial = mark;
            FLOWS.get_or_insert_ptr_mut(ctx, Some(&mut initial))
        } else {
            FLOWS.get_ptr_mut(ctx)
        };
        if !p.is_null() {
            // The epoch last, after an invalid one first: a packet on
            // another CPU that sees this epoch sees (on a strongly
            // ordered CPU) the fields written with it.
            (*p).epoch = 0;
            (*p).uid = mark.uid;
            (*p).gid = mark.gid;
            (*p).segment = mark.segment;
            (*p).kind = mark.kind;
            (*p).id = mark.id;
            (*p).expiry_ns = mark.expiry_ns;
            (*p).used_ns = mark.used_ns;
            (*p).fast_until_jiffies = mark.fast_until_jiffies;
            (*p).epoch = mark.epoch;
        }
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn pc_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_v4(&ctx, hook::SENDMSG4)
}

#[cgroup_sock_addr(connect6)]
pub fn pc_connect6(ctx: SockAddrContext) -> i32 {
    on_v6(&ctx, hook::CONNECT6)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn pc_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_v6(&ctx, hook::SENDMSG6)
}

/// Port (host order) and protocol of the destination, or `None` for
/// protocols no segment can protect.
#[inline(always)]
fn destination(ctx: &SockAddrContext) -> Option<(Proto, u16)> {
    // SAFETY: `sock_addr` is the context pointer the kernel passed in; these
    // are 4-byte reads of fields the verifier allows for sock_addr programs.
    let (port, proto) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    Some((Proto::from_ip_proto(proto)?, u16::from_be(port as u16)))
}

/// Whether the calling socket lives in the host's network namespace.
#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    // SAFETY: the helper takes the program's context pointer.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    decide::in_host_netns(cookie)
}

#[inline(always)]
fn on_v4(ctx: &SockAddrContext, hook: u8) -> i32 {
    let Some((proto, port)) = destination(ctx) else {
        return ALLOW;
    };
    let entry = decide::port_of(proto, port);
    if entry == 0 && !discovery::on() {
        return ALLOW;
    }
    // SAFETY: as in `destination`.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    if !decide::v4_is_local(ip) || !in_host_netns(ctx) {
        return ALLOW;
    }
    local(ctx, entry, proto, port, v4_mapped(ip), hook)
}

#[inline(always)]
fn on_v6(ctx: &SockAddrContext, hook: u8) -> i32 {
    let Some((proto, port)) = destination(ctx) else {
        return ALLOW;
    };
    let entry = decide::port_of(proto, port);
    if entry == 0 && !discovery::on() {
        return ALLOW;
    }
    // SAFETY: as in `destination`; four aligned 4-byte reads.
    let w = unsafe {
        let a = &(*ctx.sock_addr).user_ip6;
        [a[0], a[1], a[2], a[3]]
    };
    let mut ip = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        ip[i * 4] = b[0];
        ip[i * 4 + 1] = b[1];
        ip[i * 4 + 2] = b[2];
        ip[i * 4 + 3] = b[3];
        i += 1;
    }
    if !decide::v6_is_local(ip) || !in_host_netns(ctx) {
        return ALLOW;
    }
    local(ctx, entry, proto, port, ip, hook)
}

/// A process of the host's namespace reaches local `port`: seen by
/// discovery, and decided when the port is protected (`entry` not 0).
/// The caller's uid/gid is read once here for both.
#[inline(always)]
fn local(
    ctx: &SockAddrContext,
    entry: u32,
    proto: Proto,
    port: u16,
    addr: [u8; 16],
    hook: u8,
) -> i32 {
    // SAFETY: helper without arguments.
    let uid_gid = unsafe { bpf_get_current_uid_gid() };
    if entry == 0 {
        discovery::local(proto, port, uid_gid, &mut decide::Clock::new());
        return ALLOW;
    }
    verdict(ctx, entry, proto, port, addr, hook, uid_gid)
}

#[inline(always)]
fn verdict(
    ctx: &SockAddrContext,
    entry: u32,
    proto: Proto,
    port: u16,
    addr: [u8; 16],
    hook: u8,
    uid_gid: u64,
) -> i32 {
    let caller = Caller { uid_gid };
    let segment = decide::segment(entry);
    let connect = hook == hook::CONNECT4 || hook == hook::CONNECT6;
    // Read before the decision, with a barrier after it: the mark caches
    // the decision under this epoch (see `decide::epoch_ordered`).
    let epoch = if connect { decide::epoch_ordered() } else { 0 };
    // Before any precise read (see `decide::fast_window`).
    let j0 = decide::jiffies();
    let mut clock = decide::Clock::new();
    let found = decide::local_match(segment, &caller, &mut clock);
    if debug::on() {
        debug::emit(
            hook as u32,
            debug::code(found.reason, found.level),
            segment,
            port as u32,
            found.id,
        );
    }
    // After the decision, on its clock (which an allow reads for usage and
    // a refusal for its event anyway): no second uid/gid call or clock read.
    discovery::local(proto, port, uid_gid, &mut clock);
    if found.allowed() {
        decide::count_allowed(segment);
        let now = clock.get();
        usage::record(segment, &found, now, true);
        // Unconnected sends are checked one by one by sendmsg4/6; connected
        // sockets allowed by something that can end under them carry a
        // flow that cgroup_skb keeps checking. A standing uid or cgroup
        // allow is not marked: when the policy removes it, the agent's
        // sweep of open flows cuts the flow.
        if connect {
            mark_flow(
                ctx,
                FlowMark {
                    uid: decide::LocalSubject::uid(&caller),
                    gid: decide::LocalSubject::gid(&caller),
                    segment,
                    kind: found.kind(),
                    id: found.id,
                    epoch,
                    expiry_ns: found.expiry,
                    used_ns: now,
                    fast_until_jiffies: decide::fast_window(j0, now, found.expiry),
                },
                found.needs_mark(),
            );
        }
        return ALLOW;
    }
    // In audit mode the connection goes through unmarked: its flow is not
    // re-checked per packet, and the sweep cuts it once the segment
    // enforces.
    let refuse = decide::refused(
        entry,
        DenyEvent {
            boot_ns: clock.get(),
            // SAFETY: helper without arguments.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            segment,
            uid: decide::LocalSubject::uid(&caller),
            gid: decide::LocalSubject::gid(&caller),
            port,
            peer_port: 0,
            proto: proto as u8,
            hook,
            verdict: decide::verdict_of(entry),
            _pad: [0; 5],
            addr,
            peer_addr: [0; 16],
        },
    );
    if refuse {
        DENY
    } else {
        ALLOW
    }
}
