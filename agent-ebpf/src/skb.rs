//! `cgroup_skb` egress and ingress at the attach cgroup.
//!
//! Local flows: a flow that connect4/6 let through to a protected port by
//! an allow that can end under it (a finite expiry, a `group:` entry) is
//! marked (per-socket storage) with the decision; each of its packets
//! passes on one compare while the decision stands (same policy epoch, and
//! its expiry not reached: the clock is read only for a finite one), and
//! decides again otherwise, so a revoked or expired grant stops an open
//! session at its next packet. Flows allowed by a standing uid or cgroup
//! entry are not marked: the agent's sweep of open flows cuts them when
//! the policy removes their allow. A flow admitted by a strict entry
//! caches the earlier of the entry's deadline and "fresh until"
//! (`decide::until`), so it decides again when freshness runs out, and is
//! cut then unless the agent moved "fresh until" forward meanwhile; a
//! lowered "fresh until" bumps the epoch (`kernel/fastpath.rs`), like any
//! other write that can end an allow. The flow's protected endpoint is the
//! socket's own destination. A dropped packet also asks the agent to
//! destroy the socket, so its owner sees an error at once.
//!
//! Remote peers (ingress, on every interface, with no XDP needed): a packet
//! arriving from the network (not through this namespace's loopback) for a
//! socket on a protected local port — a listener, the sockets it accepted,
//! a UDP socket that heard from the network while unconnected — is dropped
//! unless a live `peer:` entry covers its source. Packets from local
//! processes come through loopback and were decided at connect. This host's
//! own clients whose ephemeral port happens to be a protected number are
//! marked when they speak first (a TCP SYN, a UDP datagram from a socket
//! that heard nothing yet) and, connected, their replies pass: the peer
//! was chosen by a local process. Drops here never ask for a
//! socket to be destroyed: nothing a packet says can make the agent kill
//! a socket. Minimum kernel: 5.10.
use agent_common::{hook, v4_mapped, DenyEvent, FlowMark, KillRequest, Proto, NEVER};
use aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE;
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::generated::{
        bpf_get_socket_cookie, bpf_sk_fullsock, bpf_sk_storage_delete, bpf_sk_storage_get,
        bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
};

use crate::{
    debug, decide, discovery,
    maps::{FLOWS, OUTBOUND},
    usage,
};

const PASS: i32 = 1;
/// A marked flow's packets refresh its grant's last use at most this often.
const USAGE_REFRESH_NS: u64 = 1_000_000_000;
const DROP: i32 = 0;
const AF_INET: u32 = 2;
/// The loopback device has this index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_LISTEN: u32 = 10;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

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

// Both hooks take the packet's socket as the context gives it (possibly
// not a full socket) and ask for the full socket only where a field of it
// is needed: `bpf_sk_storage_get` takes any socket (and finds nothing on
// one that is not full), and a marked or unmarked established flow then
// passes without the `bpf_sk_fullsock` call and without touching the
// full socket's fields (another cache line). Measured with
// `cargo xtask bench --only fastpath` (docs/performance.md, table 9).
#[cgroup_skb(egress)]
pub fn pc_skb_egress(ctx: SkBuffContext) -> i32 {
    let Some(sk) = sock(&ctx) else {
        return PASS;
    };
    // `mark_outbound` can act only on a TCP SYN (only TCP sockets are ever
    // in SYN_SENT) or on a socket whose local port is protected for UDP;
    // both are told from the socket's common fields.
    // SAFETY: state and local port are fields of every socket (the
    // verifier allows them on a non-full one); one volatile load each.
    let (state, local_port) = unsafe {
        use core::ptr::{addr_of, read_volatile as rv};
        (rv(addr_of!((*sk).state)), rv(addr_of!((*sk).src_port)))
    };
    if state == TCP_SYN_SENT || decide::port_of(Proto::Udp, local_port as u16) != 0 {
        if let Some(full) = fullsock(sk) {
            mark_outbound(full);
        }
    }
    local_flow(&ctx, sk, hook::SKB_EGRESS)
}

#[cgroup_skb(ingress)]
pub fn pc_skb_ingress(ctx: SkBuffContext) -> i32 {
    let Some(sk) = sock(&ctx) else {
        return PASS;
    };
    if local_flow(&ctx, sk, hook::SKB_INGRESS) == DROP {
        return DROP;
    }
    // From a process of this namespace: decided by connect4/6/sendmsg
    // (`remote_peer` passes it too), before any full-socket work.
    // SAFETY: context field read.
    if unsafe { (*ctx.skb.skb).ifindex } == LOOPBACK_IFINDEX {
        return PASS;
    }
    let Some(full) = fullsock(sk) else {
        return PASS;
    };
    remote_peer(&ctx, full, socket_facts(full))
}

/// Never attached: `cargo xtask bench` runs it under BPF_PROG_TEST_RUN to
/// time the ingress peer check. BPF_PROG_TEST_RUN hands a program a blank
/// socket (no protocol, no port), so this entry point takes the socket's
/// facts from the packet (a SYN to a listener on the destination port)
/// and then runs exactly the decision `pc_skb_ingress` runs.
#[cgroup_skb(ingress)]
pub fn pc_skb_ingress_bench(ctx: SkBuffContext) -> i32 {
    let Some(sk) = sock(&ctx) else {
        return PASS;
    };
    if local_flow(&ctx, sk, hook::SKB_INGRESS) == DROP {
        return DROP;
    }
    let Some(full) = fullsock(sk) else {
        return PASS;
    };
    let Some(facts) = packet_facts(&ctx) else {
        return PASS;
    };
    remote_peer(&ctx, full, facts)
}

/// What the ingress peer check needs to know about the receiving socket.
struct SockFacts {
    protocol: u32,
    state: u32,
    /// Host byte order.
    local_port: u32,
    /// Network byte order; 0 when unconnected.
    remote_port: u16,
}

#[inline(always)]
fn socket_facts(full: *mut bpf_sock) -> SockFacts {
    // SAFETY: plain field reads of a full socket, one volatile load each
    // (see `local_flow`: the verifier wants constant-offset loads).
    unsafe {
        use core::ptr::{addr_of, read_volatile as rv};
        SockFacts {
            protocol: rv(addr_of!((*full).protocol)),
            state: rv(addr_of!((*full).state)),
            local_port: rv(addr_of!((*full).src_port)),
            remote_port: rv(addr_of!((*full).dst_port)),
        }
    }
}

/// For the bench entry point: a listener's facts, read from the packet.
#[inline(always)]
fn packet_facts(ctx: &SkBuffContext) -> Option<SockFacts> {
    // SAFETY: context field read.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    let (protocol, port_at) = if proto == ETH_P_IP {
        let h: [u8; 20] = ctx.load(0).ok()?;
        (h[9] as u32, ((h[0] & 0x0f) as usize) * 4 + 2)
    } else if proto == ETH_P_IPV6 {
        let h: [u8; 40] = ctx.load(0).ok()?;
        (h[6] as u32, 42)
    } else {
        return None;
    };
    let port: [u8; 2] = ctx.load(port_at).ok()?;
    Some(SockFacts {
        protocol,
        state: TCP_LISTEN,
        local_port: u16::from_be_bytes(port) as u32,
        remote_port: 0,
    })
}

/// The packet's socket, if it has one: possibly not a full socket (a
/// request or time-wait socket), so only its common fields may be read
/// (`state`, ports, addresses, family) until [`fullsock`] says otherwise.
#[inline(always)]
fn sock(ctx: &SkBuffContext) -> Option<*mut bpf_sock> {
    let skb = ctx.skb.skb;
    // SAFETY: reading the socket pointer of the context; the verifier types
    // it as a nullable socket pointer, checked below.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    (!sk.is_null()).then_some(sk)
}

/// The full socket of `sk` (from [`sock`]), if it is one.
#[inline(always)]
fn fullsock(sk: *mut bpf_sock) -> Option<*mut bpf_sock> {
    // SAFETY: `sk` is a non-null socket pointer from the context.
    let full: *mut bpf_sock = unsafe { bpf_sk_fullsock(sk) };
    (!full.is_null()).then_some(full)
}

/// Per-socket storage of `map` for `full`, created (holding 1) when `create`.
#[inline(always)]
fn storage<T>(map: &T, full: *mut bpf_sock, create: bool) -> *mut u32 {
    storage_with(map, full, create, 1)
}

/// `storage`, created with `initial`.
#[inline(always)]
fn storage_with<T>(map: &T, full: *mut bpf_sock, create: bool, initial: u32) -> *mut u32 {
    let mut one: u32 = initial;
    // SAFETY: the map pointer is the address of the map definition (what
    // aya's own accessors pass); `full` is a full socket; `one` is the
    // initial value when the storage is created.
    unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(map).cast_mut().cast(),
            full.cast(),
            if create {
                core::ptr::from_mut(&mut one).cast()
            } else {
                core::ptr::null_mut()
            },
            if create {
                BPF_SK_STORAGE_GET_F_CREATE as u64
            } else {
                0
            },
        )
    }
    .cast()
}

/// `PC_OUTBOUND` values: the socket spoke first (this host's own client),
/// or it heard from the network while unconnected (a server's socket).
const SENT_FIRST: u32 = 1;
const HEARD_FIRST: u32 = 2;

/// A socket on a protected local port that speaks before it hears from the
/// network is one of this host's own clients (its ephemeral port happens
/// to be protected): a TCP socket sending its SYN, or a UDP socket sending
/// before anything arrived from the network. Mark it, so that the ingress
/// peer check lets the replies through. A UDP socket that heard first
/// keeps its `HEARD_FIRST` mark (see `remote_peer`).
#[inline(always)]
fn mark_outbound(full: *mut bpf_sock) {
    // SAFETY: plain field reads of a full socket, one volatile load each
    // (see `local_flow`: the verifier wants constant-offset loads).
    let (protocol, state, local_port) = unsafe {
        use core::ptr::{addr_of, read_volatile as rv};
        (
            rv(addr_of!((*full).protocol)),
            rv(addr_of!((*full).state)),
            rv(addr_of!((*full).src_port)),
        )
    };
    let proto = if protocol == Proto::Tcp as u32 && state == TCP_SYN_SENT {
        Proto::Tcp
    } else if protocol == Proto::Udp as u32 {
        Proto::Udp
    } else {
        return;
    };
    if decide::port_of(proto, local_port as u16) == 0 {
        return;
    }
    // Created with SENT_FIRST; an existing mark (either value) stays.
    let _ = storage(&OUTBOUND, full, true);
}

/// Source and destination address (v4-mapped for IPv4) and source port of
/// the packet (the cgroup_skb packet starts at the IP header).
#[inline(always)]
fn packet_addrs(ctx: &SkBuffContext) -> Option<([u8; 16], [u8; 16], u16)> {
    // SAFETY: context field read.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    if proto == ETH_P_IP {
        let h: [u8; 20] = ctx.load(0).ok()?;
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        let sport: [u8; 2] = ctx.load(ihl).unwrap_or([0, 0]);
        return Some((
            v4_mapped([h[12], h[13], h[14], h[15]]),
            v4_mapped([h[16], h[17], h[18], h[19]]),
            u16::from_be_bytes(sport),
        ));
    }
    if proto == ETH_P_IPV6 {
        let h: [u8; 40] = ctx.load(0).ok()?;
        // Informational only: past extension headers this is not the port.
        let sport: [u8; 2] = ctx.load(40).unwrap_or([0, 0]);
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        return Some((src, dst, u16::from_be_bytes(sport)));
    }
    None
}

/// The ingress peer check: a packet from the network for a socket on a
/// protected local port passes only if a live `peer:` entry covers its
/// source. Local sources arriving from the network (spoofed 127.0.0.1, this
/// host's own addresses) are judged like any other peer.
#[inline(always)]
fn remote_peer(ctx: &SkBuffContext, full: *mut bpf_sock, facts: SockFacts) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: context field read.
    if unsafe { (*skb).ifindex } == LOOPBACK_IFINDEX {
        // From a process of this namespace: decided by connect4/6/sendmsg.
        return PASS;
    }
    let SockFacts {
        protocol,
        state,
        local_port,
        remote_port,
    } = facts;
    let Some(proto) = Proto::from_ip_proto(protocol) else {
        return PASS;
    };
    let port = local_port as u16;
    let entry = decide::port_of(proto, port);
    if entry == 0 {
        // Unprotected: only discovery looks, at connection set-up.
        if discovery::on() && (state == TCP_LISTEN || (proto == Proto::Udp && remote_port == 0)) {
            if let Some((src, _, _)) = packet_addrs(ctx) {
                discovery::peer(proto, port, src, decide::now());
            }
        }
        return PASS;
    }
    let segment = decide::segment(entry);
    match proto {
        // A reply to this host's own connection attempt, or to a client
        // marked at its SYN: its peer was chosen by a local process.
        Proto::Tcp => {
            if state == TCP_SYN_SENT || !storage(&OUTBOUND, full, false).is_null() {
                return PASS;
            }
        }
        // A connected UDP socket that spoke first hears only from the
        // peer its owner chose. A socket that heard from the network while
        // unconnected is a server's, for good: connected later to the peer
        // it heard from, it is still checked like a listener, so a revoked
        // peer is dropped.
        Proto::Udp => {
            // Only an unconnected socket is marked from here: a datagram
            // spoofed to a client's connected socket before the client
            // speaks must not make it a server's (and drop its replies).
            let mark = storage_with(&OUTBOUND, full, remote_port == 0, HEARD_FIRST);
            if !mark.is_null() {
                // SAFETY: a non-null pointer from bpf_sk_storage_get points
                // at the socket's u32 value.
                unsafe {
                    if remote_port == 0 && *mark != HEARD_FIRST {
                        *mark = HEARD_FIRST;
                    }
                    if remote_port != 0 && *mark == SENT_FIRST {
                        return PASS;
                    }
                }
            }
        }
    }
    let Some((src, dst, sport)) = packet_addrs(ctx) else {
        // Not IP: nothing a protected port could receive.
        return PASS;
    };
    // Connection set-up (a listener's packet) or an unconnected datagram.
    let setup = state == TCP_LISTEN || proto == Proto::Udp;
    // One clock for the sighting and the decision, read at most once: a
    // standing peer allow that is not a set-up packet never reads it.
    let mut clock = decide::Clock::new();
    if setup {
        discovery::peer(proto, port, src, clock.get());
    }
    let found = decide::peer_match(segment, src, &mut clock);
    // Allowed packets are logged only at connection set-up (a listener's
    // packet): per-packet lines would spend the budget on bulk transfers.
    if debug::on() && (found >= debug::reason::FIRST_DENY || state == TCP_LISTEN) {
        debug::emit(hook::SKB_INGRESS as u32, found, segment, port as u32, 0);
    }
    if found < debug::reason::FIRST_DENY {
        decide::count_allowed(segment);
        return PASS;
    }
    // Audit mode: a flow it let in keeps flowing, recorded once, at set-up.
    if decide::audit(entry) && !setup {
        return PASS;
    }
    let refuse = decide::refused(
        entry,
        DenyEvent {
            boot_ns: clock.get(),
            cgroup_id: 0,
            segment,
            uid: 0,
            gid: 0,
            port,
            peer_port: sport,
            proto: proto as u8,
            hook: hook::SKB_INGRESS,
            verdict: decide::verdict_of(entry),
            _pad: [0; 5],
            addr: dst,
            peer_addr: src,
        },
    );
    if refuse {
        DROP
    } else {
        PASS
    }
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

/// The re-check of a local flow connect4/6 admitted (marked sockets only).
///
/// The fast path is one storage read, one load of the policy epoch and a
/// compare (plus, when the cached allow has a finite expiry, a jiffies
/// load and compare, and a precise clock read only past the flow's
/// jiffies window: at most every 200 ms, and at every packet in the last
/// 100 ms before the expiry).
/// Why a packet never acts on a stale allow once a revoke has returned:
/// the agent writes the maps (delete, lowered expiry, port change), then a
/// full fence, then the new epoch, and only then replies. Whoever acts on
/// the reply (the revoking user, a process told by it) is causally after
/// the epoch write: the reply travels through the kernel's socket locks
/// (release on the agent's side, acquire on the reader's), so a packet
/// sent after it, on any CPU, loads the new epoch (a volatile 8-byte load:
/// never torn, never cached in a register across packets), finds its mark
/// stale and decides again. That decision reads the epoch with a barrier
/// after it (`decide::epoch_ordered`), so the lookups see at least the
/// maps as they were when that epoch was written: the deleted entry is
/// gone. A decision cached under epoch E therefore never saw maps older
/// than E's. Packets concurrent with the revoke (not causally after its
/// reply) may pass on the old epoch; that is the same window a packet
/// already in flight has. Two re-decisions of one socket on two CPUs may
/// interleave their mark writes; each writes the epoch last after zeroing
/// it, and each only ever writes an allow that was true at its epoch; the
/// epoch bump of any later change, and the expiry (re-decided at its
/// instant), bound what a mixed mark can let through.
#[inline(always)]
fn local_flow(ctx: &SkBuffContext, sk: *mut bpf_sock, hook: u8) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the map pointer is the address of the map definition (what
    // aya's own accessors pass); `sk` is the context's socket, which the
    // helper accepts full or not (it finds no storage on one that is not
    // full); no value to create.
    let mark = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&FLOWS).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            0,
        )
    } as *mut FlowMark;
    if mark.is_null() {
        return PASS;
    }
    // SAFETY: `mark` points at this socket's storage (freed with the
    // socket, which the packet holds). Volatile: another CPU may rewrite it.
    let (cached_epoch, expiry) = unsafe {
        use core::ptr::{addr_of, read_volatile as rv};
        (rv(addr_of!((*mark).epoch)), rv(addr_of!((*mark).expiry_ns)))
    };
    // The one compare: the decision stands while nothing that could end an
    // allow was written since, and its expiry (if any) is ahead.
    if cached_epoch != 0 && cached_epoch == decide::epoch() {
        if expiry == NEVER {
            return PASS;
        }
        // A finite expiry: jiffies (one inlined load) while the flow's
        // window lasts, the precise clock (~39 ns a call here) past it;
        // `decide::fast_window` has why this never passes a packet after
        // the expiry (bar the time a suspend adds: at most 200 ms).
        let j = decide::jiffies();
        // SAFETY: as above.
        if j < unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*mark).fast_until_jiffies)) }
        {
            return PASS;
        }
        let now = decide::now();
        if now < expiry {
            // SAFETY: as above.
            unsafe {
                use core::ptr::{addr_of, addr_of_mut, read_volatile as rv, write_volatile as wv};
                wv(
                    addr_of_mut!((*mark).fast_until_jiffies),
                    decide::fast_window(j, now, expiry),
                );
                // A grant's last use (idle timeouts): refreshed at most
                // once a second per flow, at a precise read.
                if now.wrapping_sub(rv(addr_of!((*mark).used_ns))) >= USAGE_REFRESH_NS {
                    wv(addr_of_mut!((*mark).used_ns), now);
                    usage::record_key(
                        rv(addr_of!((*mark).segment)),
                        rv(addr_of!((*mark).kind)),
                        rv(addr_of!((*mark).id)),
                        now,
                        false,
                    );
                }
            }
            return PASS;
        }
    }
    // A socket with storage is a full one; the verifier wants it checked.
    let Some(full) = fullsock(sk) else {
        return PASS;
    };
    // Decide again: epoch first, with a barrier before the lookups.
    let epoch = decide::epoch_ordered();
    // Before any precise read (see `decide::fast_window`).
    let j0 = decide::jiffies();
    // SAFETY: `full` is a valid full socket; these fields are readable from
    // cgroup_skb programs. `mark` points at this socket's storage.
    let (protocol, dst_port, family, uid, gid) = unsafe {
        (
            (*full).protocol,
            (*full).dst_port,
            (*full).family,
            (*mark).uid,
            (*mark).gid,
        )
    };
    let Some(proto) = Proto::from_ip_proto(protocol) else {
        return PASS;
    };
    let port = u16::from_be(dst_port);
    let entry = decide::port_of(proto, port);
    let segment = decide::segment(entry);
    let owner = SocketOwner {
        skb,
        mark: FlowMark {
            uid,
            gid,
            ..FlowMark::default()
        },
    };
    let mut clock = decide::Clock::new();
    let unprotected = entry == 0;
    let found = if unprotected {
        // No longer protected: passes, and stays so until a port change
        // bumps the epoch.
        decide::LocalMatch {
            reason: debug::reason::UID,
            id: 0,
            level: 0,
            expiry: NEVER,
        }
    } else {
        decide::local_match(segment, &owner, &mut clock)
    };
    if found.allowed() {
        // The flow's use, now (and from here at most once a second), and
        // its jiffies window.
        let (used, fast_until) = if unprotected {
            (0, 0)
        } else {
            let now = clock.get();
            usage::record(segment, &found, now, false);
            (now, decide::fast_window(j0, now, found.expiry))
        };
        // SAFETY: as above; the epoch last, after an invalid one first.
        unsafe {
            use core::ptr::{addr_of_mut, write_volatile as wv};
            wv(addr_of_mut!((*mark).epoch), 0);
            (*mark).used_ns = used;
            (*mark).segment = segment;
            (*mark).kind = found.kind();
            (*mark).id = found.id;
            (*mark).fast_until_jiffies = fast_until;
            wv(addr_of_mut!((*mark).expiry_ns), found.expiry);
            wv(addr_of_mut!((*mark).epoch), epoch);
        }
        return PASS;
    }
    let mark = FlowMark {
        uid,
        gid,
        ..FlowMark::default()
    };
    // Only the cut is logged: every packet of an admitted flow passes here.
    if debug::on() {
        debug::emit(hook as u32, found.reason, segment, port as u32, found.id);
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
    let refuse = decide::refused(
        entry,
        DenyEvent {
            boot_ns: clock.get(),
            // SAFETY: context pointer.
            cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
            segment,
            uid: mark.uid,
            gid: mark.gid,
            port,
            peer_port: src_port,
            proto: proto as u8,
            hook,
            verdict: decide::verdict_of(entry),
            _pad: [0; 5],
            addr: dst,
            peer_addr: src,
        },
    );
    if !refuse {
        // Audit mode: recorded once, then the flow is no longer re-checked
        // (the sweep judges it again when the segment enforces).
        // SAFETY: `full` is a full socket; the map pointer as above.
        unsafe {
            bpf_sk_storage_delete(core::ptr::from_ref(&FLOWS).cast_mut().cast(), full.cast());
        }
        return PASS;
    }
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
