//! The one policy question, answered in one place for every hook:
//! "may this subject reach this protected port now?"
//!
//! Two steps: port → segment id (an array load), then identity × segment →
//! expiry (hash lookups: uid, gid, then the caller's cgroup and each of its
//! ancestors). An entry counts only while the boot-time clock is below its
//! expiry, so a grant stops working at its instant with no help from user
//! space. Minimum kernel: 5.8 (`bpf_ktime_get_boot_ns`).
//!
//! The clock is read only when an entry's expiry is finite ([`Clock`]);
//! standing allows ([`NEVER`]) need no clock. The ancestor walk visits
//! only the cgroup levels at which the segment has cgroup entries (the
//! agent keeps a mask per segment in `CGROUP_LEVELS`), so a segment with
//! no cgroup entries costs no helper call and no lookup for them.
//!
//! Strict entries (fleet grants with `strict`): the expiry value carries
//! `agent_common::expiry::STRICT`, and such an entry works only until the
//! earlier of its deadline and `PC_FRESH` ("fresh until", which only the
//! agent moves forward, each time it hears from the fleet store). The
//! check is here, in the kernel, so a strict grant stops on time even if
//! the agent hangs: a stalled agent simply stops moving `PC_FRESH`. An
//! allow's expiry as the hooks cache it ([`LocalMatch::expiry`]) is that
//! earlier instant, so a marked flow decides again when freshness runs
//! out. Plain entries never read `PC_FRESH` (one bit test).
//!
//! Audit mode: the port entry carries the segment's mode bit, so the same
//! load that finds the segment tells whether a refusal is enforced or only
//! recorded ([`refused`]); the decision itself is the same in both modes.
use agent_common::{
    expiry, kind, peer_prefix_len, port_entry, port_index, verdict, DenyEvent, GrantKey,
    KillRequest, PeerKey, Proto, DENY_RING_WAKE_BYTES, MAX_CGROUP_DEPTH, NEVER,
};
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_boot_ns};

use aya_ebpf::maps::lpm_trie::Key;

use crate::debug;
use crate::maps::{
    CGROUP_LEVELS, COUNTERS, DENY_EVENTS, EPOCH, FENCE, FRESH, GRANTS, KILL_REQUESTS, LOCAL_NETS,
    PC_HOST_NETNS, PC_LOADS_ORDERED, PC_TICK_NS, PEERS, PEER_HOSTS, PORTS,
};

/// What a hook can tell about the local process behind a connection.
pub trait LocalSubject {
    fn uid(&self) -> u32;
    fn gid(&self) -> u32;
    /// The id of the caller's cgroup ancestor at `level` (0 = root), or 0
    /// past the caller's own level.
    fn ancestor_cgroup(&self, level: i32) -> u64;
}

/// The port entry of `port` (segment id and mode, see
/// `agent_common::port_entry`), or 0 when the port is in no segment.
#[inline(always)]
pub fn port_of(proto: Proto, port: u16) -> u32 {
    PORTS.get(port_index(proto, port)).copied().unwrap_or(0)
}

/// The segment id of a port entry.
#[inline(always)]
pub fn segment(entry: u32) -> u32 {
    port_entry::segment(entry)
}

/// Whether a port entry's segment only records refusals (audit mode).
#[inline(always)]
pub fn audit(entry: u32) -> bool {
    port_entry::audit(entry)
}

/// The [`DenyEvent::verdict`] a refusal on this port entry gets.
#[inline(always)]
pub fn verdict_of(entry: u32) -> u8 {
    if audit(entry) {
        verdict::WOULD_DENY
    } else {
        verdict::DENIED
    }
}

/// A refusal the decision reached on the port entry `entry`: counted and
/// reported (`event.verdict` from [`verdict_of`]), and whether the hook must
/// refuse — true in enforce mode, false in audit mode, where the
/// connection or packet goes through as if allowed.
#[inline(always)]
pub fn refused(entry: u32, event: DenyEvent) -> bool {
    let enforce = !audit(entry);
    if let Some(c) = COUNTERS.get_ptr_mut(segment(entry)) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe {
            if enforce {
                (*c).denied += 1;
            } else {
                (*c).would_deny += 1;
            }
        }
    }
    report_deny(event);
    enforce
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments, available to every program type.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The kernel's tick counter. The verifier inlines this helper into one
/// load of `jiffies` (64-bit kernels with the JIT), where
/// `bpf_ktime_get_boot_ns` is a call that reads the clocksource: ~39 ns
/// per call on this project's VMs (tsc clocksource) against ~0.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() }
}

/// How far before its expiry a marked flow stops trusting jiffies and
/// reads the precise clock at every packet: the tolerance for a jiffies
/// counter that lags the clock (a late tick: interrupts held off, a
/// preempted vCPU).
pub const FAST_MARGIN_NS: u64 = 100_000_000;
/// The longest a marked flow passes on jiffies alone after a precise
/// read: the bound on what a suspend can add (see [`fast_window`]).
pub const FAST_RECHECK_NS: u64 = 200_000_000;

/// The `FlowMark::fast_until_jiffies` of a flow whose allow ends at
/// `expiry` (CLOCK_BOOTTIME ns, finite), given `j0`, a [`jiffies`]
/// reading, and `now`, a precise reading of that clock taken after it
/// that found `now < expiry`: packets pass while `jiffies()` is below the
/// result without reading the precise clock. 0 (no window) when the tick
/// length is unknown or the expiry too close.
///
/// Why no packet passes after the expiry: let T be `PC_TICK_NS`, an upper
/// bound on the real tick T' (the agent measures HZ and rounds down), t0
/// the instant of `j0`, and k = W / T (rounded down) with
/// W = min(expiry - now - FAST_MARGIN_NS, FAST_RECHECK_NS); the window is
/// j0 + k - 1. `jiffies` counts the ticks of the monotonic clock that
/// the tick handler has accounted, so a reading at monotonic time t is at
/// least j0 + (t - t0)/T' - 1 - L, L the ticks not accounted yet (0 or 1
/// for a timely tick). A packet that passes saw jiffies <= j0 + k - 2, so
/// (t - t0) <= (k - 1 + L)·T' <= W + (L - 1)·T: at most W for L <= 1, and
/// below W + FAST_MARGIN_NS, hence below `expiry - now`, for a jiffies
/// lag up to the margin (100 ms). `now` was read after t0, so t - (the
/// instant of `now`) is smaller still. Without a suspend CLOCK_BOOTTIME
/// advanced exactly as the monotonic clock did: boot time at the packet
/// is below the expiry.
///
/// A suspend is the one case where this gives way: CLOCK_BOOTTIME counts
/// the time suspended, jiffies does not. A flow whose allow expired while
/// the machine slept passes at most FAST_RECHECK_NS (200 ms) of awake time
/// after the resume, until its window ends and the precise read cuts it.
/// Revocations are unaffected (the epoch compare comes first, and a
/// revoke bumps the epoch).
#[inline(always)]
pub fn fast_window(j0: u64, now: u64, expiry: u64) -> u64 {
    // SAFETY: a read of a constant the loader set; volatile so the
    // compiler does not fold the default (0: unknown) in.
    let tick = unsafe { core::ptr::read_volatile(&PC_TICK_NS) };
    if tick == 0 || expiry == NEVER || expiry <= now.saturating_add(FAST_MARGIN_NS) {
        return 0;
    }
    let left = expiry - now - FAST_MARGIN_NS;
    let w = if left < FAST_RECHECK_NS {
        left
    } else {
        FAST_RECHECK_NS
    };
    let k = w / tick;
    if k < 2 {
        return 0;
    }
    j0 + k - 1
}

/// The boot-time clock, read at most once per decision and only when
/// something needs it (a finite expiry, a deny event).
pub struct Clock {
    now: u64,
}

impl Clock {
    #[inline(always)]
    pub fn new() -> Self {
        Clock { now: 0 }
    }

    /// Now, read on first use (the boot-time clock is never 0 once a
    /// program runs).
    #[inline(always)]
    pub fn get(&mut self) -> u64 {
        if self.now == 0 {
            self.now = now();
        }
        self.now
    }
}

/// The policy epoch as this CPU sees it now: a plain (volatile, so not
/// torn, hoisted or merged) 8-byte load. Enough for the per-packet compare
/// (see `skb.rs::local_flow` for why); a decision whose result is cached
/// under the epoch reads it with [`epoch_ordered`] instead.
#[inline(always)]
pub fn epoch() -> u64 {
    match EPOCH.get_ptr(0) {
        // SAFETY: pointer into the one-entry array's value.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// The policy epoch, then a full memory barrier before anything the
/// caller reads next: the map lookups of the decision that will be cached
/// under this epoch.
///
/// Why: the agent writes the maps, then (after a full fence of its own)
/// the new epoch. On a weakly ordered CPU a later load may be satisfied
/// before an earlier one, so without a barrier a decision could read the
/// *new* epoch and an *old* grant entry, and cache a stale allow under the
/// new epoch, where no packet would ever re-check it. The barrier is an
/// atomic fetch-and-add on this CPU's own slot of `FENCE` (no cache line
/// shared between CPUs): BPF atomics with a fetch are fully ordered (x86
/// `lock xadd`, arm64 `ldaddal` or an LL/SC loop between `dmb ish`), so the
/// epoch load is ordered before it and the lookups after it. Pairs with the
/// agent's fence between its map writes and its epoch write
/// (`kernel/fastpath.rs`).
///
/// On x86 (`PC_LOADS_ORDERED`, set by the agent for the CPU it runs on)
/// the barrier is left out: x86's memory model (TSO) never lets a load
/// be satisfied before an earlier load (the kernel's own `smp_rmb()` is
/// a compiler barrier there), and load→load order is all this side of
/// the pairing needs; the agent's fence stays. What remains is the
/// compiler's order: the epoch load is volatile and the lookups are
/// helper calls after it, which LLVM does not move above a volatile
/// access, and an empty asm block says so explicitly. Saves a per-CPU
/// array lookup and a locked instruction (which also drains the store
/// buffer) on every allowed connect.
#[inline(always)]
pub fn epoch_ordered() -> u64 {
    let e = epoch();
    // SAFETY: a read of a constant the loader set; volatile so the
    // compiler does not fold the default (0: keep the fence) in.
    if unsafe { core::ptr::read_volatile(&PC_LOADS_ORDERED) } != 0 {
        // SAFETY: an empty asm block without `nomem`: no instruction, but
        // the compiler must assume it touches memory, so no load moves
        // across it (`compiler_fence` has no BPF lowering).
        unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
        return e;
    }
    if let Some(p) = FENCE.get_ptr_mut(0) {
        let mut v: u64 = 1;
        // SAFETY: `p` is this CPU's slot of a per-CPU array: a valid,
        // aligned u64. BPF_ATOMIC | BPF_ADD | BPF_FETCH (Linux 5.12): adds
        // `v` to the slot and returns the old value in `v`.
        unsafe {
            core::arch::asm!(
                "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
                p = in(reg) p,
                v = inout(reg) v,
                options(nostack),
            );
        }
        let _ = v;
    }
    e
}

/// "Fresh until": a plain (volatile: never hoisted or merged) 8-byte load
/// of `PC_FRESH`; 0 (stale since boot) when missing.
#[inline(always)]
pub fn fresh_until() -> u64 {
    match FRESH.get_ptr(0) {
        // SAFETY: pointer into the one-entry array's value.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// When an entry whose value is `at` stops working: its deadline, or for
/// a strict entry the earlier of that and [`fresh_until`] (read only then).
#[inline(always)]
pub fn until(at: u64) -> u64 {
    if expiry::is_strict(at) {
        expiry::until(at, fresh_until())
    } else {
        at
    }
}

/// What a grant lookup found: live (with its expiry), expired, or nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Found {
    Live(u64),
    Expired,
    Missing,
}

#[inline(always)]
fn lookup(key: &GrantKey, clock: &mut Clock) -> Found {
    match GRANTS.get_ptr(key) {
        Some(v) => {
            // SAFETY: the pointer comes from a successful lookup and points
            // to an 8-byte value inside the map; a concurrent update can
            // only replace it with another valid u64.
            let at = unsafe { (*v).at_boot_ns };
            // A standing allow needs no clock.
            if at == NEVER {
                return Found::Live(at);
            }
            // A strict entry ends at the earlier of its deadline and
            // "fresh until": that is the expiry a flow's mark caches.
            let at = until(at);
            if at > clock.get() {
                Found::Live(at)
            } else {
                Found::Expired
            }
        }
        None => Found::Missing,
    }
}

/// How the local decision ended: the rule that matched, or why none did
/// (a [`debug::reason`] code), and the matched identity (uid, gid or
/// cgroup id) and cgroup level, for the debug line; for an allow, the
/// matched entry's expiry ([`NEVER`] for a standing one).
#[derive(Clone, Copy)]
pub struct LocalMatch {
    pub reason: u32,
    pub id: u64,
    pub level: u32,
    pub expiry: u64,
}

impl LocalMatch {
    #[inline(always)]
    pub fn allowed(&self) -> bool {
        self.reason < debug::reason::FIRST_DENY
    }

    /// The [`kind`] of the matched entry (0 when nothing matched).
    #[inline(always)]
    pub fn kind(&self) -> u32 {
        match self.reason {
            debug::reason::UID => kind::UID,
            debug::reason::GID => kind::GID,
            debug::reason::CGROUP => kind::CGROUP,
            _ => 0,
        }
    }

    /// Whether an allow can end under an open flow without the agent's
    /// sweep knowing whom it let in: a finite expiry (the kernel ends it
    /// at its instant), or a `gid:` entry (the sweep cannot see a
    /// socket's gid). `group:NAME` is expanded to uid entries by the agent,
    /// so a GID reason means a `gid:N` entry. Only such flows are marked.
    #[inline(always)]
    pub fn needs_mark(&self) -> bool {
        self.allowed() && (self.expiry != NEVER || self.reason == debug::reason::GID)
    }
}

/// Which live grant on `segment` covers the subject's uid, primary gid,
/// cgroup or one of its ancestors (in that order), or why none does.
#[inline(always)]
pub fn local_match<S: LocalSubject>(segment: u32, subject: &S, clock: &mut Clock) -> LocalMatch {
    let uid = subject.uid() as u64;
    let mut expired = false;
    match lookup(
        &GrantKey {
            kind: kind::UID,
            segment,
            id: uid,
        },
        clock,
    ) {
        Found::Live(expiry) => {
            return LocalMatch {
                reason: debug::reason::UID,
                id: uid,
                level: 0,
                expiry,
            }
        }
        Found::Expired => expired = true,
        Found::Missing => {}
    }
    let gid = subject.gid() as u64;
    match lookup(
        &GrantKey {
            kind: kind::GID,
            segment,
            id: gid,
        },
        clock,
    ) {
        Found::Live(expiry) => {
            return LocalMatch {
                reason: debug::reason::GID,
                id: gid,
                level: 0,
                expiry,
            }
        }
        Found::Expired => expired = true,
        Found::Missing => {}
    }
    // Only the levels at which the segment has cgroup entries (all of
    // them when the mask is unknown).
    let mask = CGROUP_LEVELS.get(segment).copied().unwrap_or(u32::MAX);
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        if (mask >> level) == 0 {
            break;
        }
        if mask & (1 << level) != 0 {
            let id = subject.ancestor_cgroup(level);
            if id == 0 {
                break;
            }
            match lookup(
                &GrantKey {
                    kind: kind::CGROUP,
                    segment,
                    id,
                },
                clock,
            ) {
                Found::Live(expiry) => {
                    return LocalMatch {
                        reason: debug::reason::CGROUP,
                        id,
                        level: level as u32,
                        expiry,
                    }
                }
                Found::Expired => expired = true,
                Found::Missing => {}
            }
        }
        level += 1;
    }
    LocalMatch {
        reason: if expired {
            debug::reason::GRANT_EXPIRED
        } else {
            debug::reason::NO_GRANT
        },
        id: uid,
        level: 0,
        expiry: 0,
    }
}

/// Whether a `peer:` entry whose value is `at` works now: a standing one
/// ([`NEVER`]) without reading the clock.
#[inline(always)]
fn peer_live(at: u64, clock: &mut Clock) -> bool {
    at == NEVER || until(at) > clock.get()
}

/// Which live `peer:` entry on `segment` covers the remote address `addr`
/// (IPv6, IPv4 as v4-mapped), as a [`debug::reason`] code: a host lookup,
/// then a longest-prefix match. Allowed when below `FIRST_DENY`. The clock
/// is read only for an entry with a finite expiry.
#[inline(always)]
pub fn peer_match(segment: u32, addr: [u8; 16], clock: &mut Clock) -> u32 {
    let data = PeerKey {
        segment_be: segment.to_be_bytes(),
        addr,
    };
    let mut expired = false;
    // Single hosts first: a hash lookup, flat in the number of entries.
    if let Some(v) = PEER_HOSTS.get_ptr(&data) {
        // SAFETY: pointer from a successful lookup to an 8-byte value.
        if peer_live(unsafe { (*v).at_boot_ns }, clock) {
            return debug::reason::PEER_HOST;
        }
        expired = true;
    }
    // Then the prefixes: the longest match decides.
    let key = Key::new(peer_prefix_len(128), data);
    match PEERS.get(&key) {
        Some(v) if peer_live(v.at_boot_ns, clock) => debug::reason::PEER_PREFIX,
        Some(_) => debug::reason::PEER_EXPIRED,
        None if expired => debug::reason::PEER_EXPIRED,
        None => debug::reason::NO_PEER,
    }
}

/// Whether an IPv4 address (network-order bytes) reaches this host.
/// 0.0.0.0 counts (connecting to it reaches the local host), and so do
/// limited broadcast and multicast, which are delivered locally too; then
/// every prefix of the kernel's local routes (addresses, subnet broadcast
/// addresses, `local` routes).
#[inline(always)]
pub fn v4_is_local(addr: [u8; 4]) -> bool {
    if addr[0] == 127
        || addr == [0, 0, 0, 0]
        || addr == [255, 255, 255, 255]
        || addr[0] & 0xf0 == 0xe0
    {
        return true;
    }
    in_local_nets(agent_common::v4_mapped(addr))
}

/// Whether the kernel delivers `addr` (IPv6 bytes) locally: a longest-prefix
/// match in the mirror of its local, broadcast and anycast routes.
#[inline(always)]
fn in_local_nets(addr: [u8; 16]) -> bool {
    LOCAL_NETS.get(&Key::new(128, addr)).is_some()
}

/// Whether a caller in the network namespace `cookie` is in the host's
/// namespace, the only one whose "this host" the programs protect. True
/// when the agent could not learn the host's cookie (kernel < 5.14).
#[inline(always)]
pub fn in_host_netns(cookie: u64) -> bool {
    // SAFETY: a read of a plain u64 the loader set; volatile so the
    // compiler does not fold the load-time value 0 into the code.
    let host = unsafe { core::ptr::read_volatile(&PC_HOST_NETNS) };
    host == 0 || host == cookie
}

/// Whether an IPv6 address (network-order bytes) belongs to this host,
/// including `::`, `::1` and v4-mapped forms of local IPv4 addresses.
#[inline(always)]
pub fn v6_is_local(addr: [u8; 16]) -> bool {
    let head_zero = addr[0]
        | addr[1]
        | addr[2]
        | addr[3]
        | addr[4]
        | addr[5]
        | addr[6]
        | addr[7]
        | addr[8]
        | addr[9]
        == 0;
    // Multicast is delivered to local listeners too.
    if addr[0] == 0xff {
        return true;
    }
    if head_zero && addr[10] == 0xff && addr[11] == 0xff {
        return v4_is_local([addr[12], addr[13], addr[14], addr[15]]);
    }
    if head_zero
        && addr[10] == 0
        && addr[11] == 0
        && addr[12] == 0
        && addr[13] == 0
        && addr[14] == 0
    {
        // `::` or `::1`
        if addr[15] <= 1 {
            return true;
        }
    }
    in_local_nets(addr)
}

/// Counts an allowed connection or packet (refusals: [`refused`]).
#[inline(always)]
pub fn count_allowed(segment: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(segment) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate while running.
        unsafe {
            (*c).allowed += 1;
        }
    }
}

/// Reports a refusal to the agent. The event does not wake the agent (it
/// polls on a timer) unless the ring is a quarter full, so a flood of
/// denies costs no wake-up per deny. Dropped silently when the ring is
/// full; the counters still record it.
#[inline(always)]
pub fn report_deny(event: DenyEvent) {
    let flags = if DENY_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= DENY_RING_WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let _ = DENY_EVENTS.output::<DenyEvent>(&event, flags as u64);
}

/// Asks the agent to destroy a socket whose flow was just cut. Best effort:
/// the drop is the guarantee, the destroy is the courtesy.
#[inline(always)]
pub fn request_kill(request: &KillRequest) {
    let _ = KILL_REQUESTS.output::<KillRequest>(request, 0);
}
