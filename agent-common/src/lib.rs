//! The ABI shared by Portcullis' eBPF programs (`agent-ebpf`) and its agent.
//!
//! Owns: map and program names, the layout of every map key, value and event,
//! and the limits both sides rely on. It does not own any logic beyond the
//! pure encodings both sides must agree on (port index, address keys).
//!
//! Every struct is `#[repr(C)]` with explicit padding fields so that the bytes
//! the kernel hashes are the bytes user space wrote. Changing any layout here
//! means bumping [`LAYOUT_VERSION`]: pinned maps live under a directory named
//! after it, so an upgraded agent never reads an old map with a new layout.
#![no_std]

/// Conversions for user space only (addresses, protocol names).
#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::{ip_of_key, key_of_ip};

/// Version of every map layout below. Part of the pin path (`v{N}`).
/// Layout 3: port entries carry the segment's mode bit ([`port_entry`]),
/// [`SegmentCounters`] counts would-be refusals, [`DenyEvent`] says whether
/// it was a refusal or an audit-mode one, and [`map_names::DISCOVERY`] exists.
/// Layout 4 (issue 16) adds [`map_names::USAGE`].
/// Layout 5 (the fast path, issue 15): [`FlowMark`] carries the cached
/// decision (segment, matched entry, expiry, policy epoch) and
/// [`FlowMark::used_ns`]; [`map_names::EPOCH`] and
/// [`map_names::CGROUP_LEVELS`] exist.
/// Layout 6 (issue 20): [`map_names::CGROUP_COVER`], read by the
/// `cgroup_mkdir` tracepoint.
/// Layout 7 (issue 19, strict fleet grants): an entry's expiry value may
/// carry [`expiry::STRICT`], and [`map_names::FRESH`] exists.
/// Layout 8: [`FlowMark::fast_until_jiffies`], the cheap-clock window of
/// a marked flow with a finite expiry.
pub const LAYOUT_VERSION: u32 = 8;

/// Map names (the ELF symbol names, and the file names under the pin directory).
pub mod map_names {
    /// `Array<u32>`: port index (see [`crate::port_index`]) → port entry:
    /// the segment id and its mode bit (see [`crate::port_entry`]; 0 =
    /// unprotected).
    pub const PORTS: &str = "PC_PORTS";
    /// `HashMap<GrantKey, Expiry>`: local identity × segment → expiry.
    pub const GRANTS: &str = "PC_GRANTS";
    /// `LpmTrie<PeerKey, Expiry>`: segment × remote source prefix → expiry,
    /// for prefixes shorter than a single host.
    pub const PEERS: &str = "PC_PEERS";
    /// `HashMap<PeerKey, Expiry>`: segment × single remote host (/32, /128)
    /// → expiry. Looked up before the trie: one O(1) lookup for the common
    /// case, whatever the number of entries.
    pub const PEER_HOSTS: &str = "PC_PEER_HOSTS";
    /// `LpmTrie<[u8; 16], u32>`: the prefixes the kernel delivers to this
    /// host (its local, broadcast and anycast routes, IPv4 as v4-mapped
    /// IPv6; prefix length over the 128 bits). Layout 2 (was a hash map of
    /// single addresses, `PC_LOCAL_ADDRS`).
    pub const LOCAL_NETS: &str = "PC_LOCAL_NETS";
    /// `PerCpuArray<SegmentCounters>`: indexed by segment id.
    pub const COUNTERS: &str = "PC_COUNTERS";
    /// `RingBuf` of [`crate::DenyEvent`].
    pub const DENY_EVENTS: &str = "PC_DENY_EVENTS";
    /// `SkStorage<FlowMark>`: sockets that connect4/6 let through to a
    /// protected port, so cgroup_skb knows which flows to re-check.
    pub const FLOWS: &str = "PC_FLOWS";
    /// `RingBuf` of [`crate::KillRequest`]: sockets whose flow was cut.
    pub const KILL_REQUESTS: &str = "PC_KILL_REQUESTS";
    /// `SkStorage<u32>`: this host's own TCP client sockets whose local
    /// (ephemeral) port is a protected number, marked by cgroup_skb egress
    /// at their SYN, so the ingress peer check lets their replies through.
    pub const OUTBOUND: &str = "PC_OUTBOUND";
    /// `LruHashMap<DiscoveryKey, Sighting>`: who the hooks saw reach which
    /// local port (protected or not) and how often. Bounded; the least
    /// recently seen entries make room.
    pub const DISCOVERY: &str = "PC_DISCOVERY";
    /// `Array<u64>`, one entry: the policy epoch. The agent bumps it after
    /// every write that can end an allow (a delete, a lowered expiry, a
    /// port change); a marked flow whose [`crate::FlowMark::epoch`]
    /// differs decides again at its next packet.
    pub const EPOCH: &str = "PC_EPOCH";
    /// `Array<u32>` indexed by segment id: bit `n` set when some cgroup
    /// entry of the segment is a cgroup at level `n` (0 = the root), so
    /// the ancestor walk looks only there. All bits set when the agent
    /// cannot tell a cgroup's level.
    pub const CGROUP_LEVELS: &str = "PC_CGROUP_LEVELS";
    /// `PerCpuHashMap<GrantKey, Usage>`: how much each local grant entry
    /// was used (admitted connections and datagrams, first and last use),
    /// created by the hooks at an entry's first use and removed by the
    /// agent when the entry leaves [`GRANTS`]. As large as [`GRANTS`].
    pub const USAGE: &str = "PC_USAGE";
    /// `HashMap<CoverKey, Cover>`: cgroup path (relative to the cgroup2
    /// mount) → the cgroup-kind entries a `unit:` or `cgroup:` identity
    /// resolved to that path holds. Written by the agent; read by the
    /// `cgroup_mkdir` tracepoint, which inserts those entries into
    /// [`GRANTS`] for a cgroup re-created at that path before `mkdir`
    /// returns.
    pub const CGROUP_COVER: &str = "PC_CGROUP_COVER";
    /// `Array<u64>`, one entry: "fresh until", the CLOCK_BOOTTIME instant
    /// until which this host counts as having heard from the fleet store
    /// (0: never). A strict entry ([`crate::expiry::STRICT`]) stops
    /// working at this instant whatever its own expiry; the agent moves it
    /// forward each time it hears from the store. Pinned, so a restarted
    /// agent inherits it instead of reviving strict entries.
    pub const FRESH: &str = "PC_FRESH";

    /// Every pinned map, in a fixed order.
    pub const ALL: [&str; 16] = [
        PORTS,
        GRANTS,
        PEERS,
        PEER_HOSTS,
        LOCAL_NETS,
        COUNTERS,
        DENY_EVENTS,
        FLOWS,
        KILL_REQUESTS,
        OUTBOUND,
        DISCOVERY,
        EPOCH,
        CGROUP_LEVELS,
        USAGE,
        CGROUP_COVER,
        FRESH,
    ];

    /// `Array<u32>`, one entry: the kernel debug switch (0 = off, the
    /// default). Not pinned: each agent's programs start with debug off,
    /// and the agent that loaded them is the only one that flips it.
    pub const DEBUG: &str = "PC_DEBUG";
    /// `PerCpuArray<DebugBudget>`, one entry: the per-CPU rate limit of
    /// debug lines. Not pinned.
    pub const DEBUG_BUDGET: &str = "PC_DEBUG_BUDGET";
    /// `RingBuf` of aya-log records (the name `aya-log` looks for). Not
    /// pinned; 128 KiB, so a reader that falls behind loses lines, never
    /// memory.
    pub const DEBUG_LOG: &str = "AYA_LOGS";
}

/// Read-only globals the agent sets at load time (`EbpfLoader::set_global`).
pub mod global_names {
    /// `u64`: the network-namespace cookie of the host's namespace (the
    /// agent's own, from SO_NETNS_COOKIE), or 0 when the kernel cannot tell
    /// (then every namespace counts as the host's). Local-destination
    /// decisions apply only to callers in this namespace.
    pub const HOST_NETNS: &str = "PC_HOST_NETNS";
    /// `u32`: 1 when the hooks feed [`super::map_names::DISCOVERY`], 0 when
    /// discovery is off (`discovery = false`).
    pub const DISCOVERY_ON: &str = "PC_DISCOVERY_ON";
    /// `u32`: 1 (the default) when the hooks count use in
    /// [`super::map_names::USAGE`]; 0 only in a bench-built agent asked to
    /// measure the path without it.
    pub const USAGE_ON: &str = "PC_USAGE_ON";
    /// `u64`: an upper bound on the kernel's tick (1/HZ) in nanoseconds,
    /// measured by the agent at load time, or 0 when unknown (then a
    /// marked flow with a finite expiry reads the precise clock at every
    /// packet). See [`crate::FlowMark::fast_until_jiffies`].
    pub const TICK_NS: &str = "PC_TICK_NS";
    /// `u32`: 1 when the CPU never lets a load overtake an earlier load
    /// (x86, whose memory model is TSO), so that a decision cached under
    /// the policy epoch needs no fence between the epoch load and its map
    /// lookups; 0 (the default: weakly ordered, arm64 and others) keeps
    /// the fence. See `agent-ebpf/src/decide.rs` (`epoch_ordered`).
    pub const LOADS_ORDERED: &str = "PC_LOADS_ORDERED";
}

/// Program names (the Rust function names in `agent-ebpf`).
pub mod program_names {
    pub const CONNECT4: &str = "pc_connect4";
    pub const CONNECT6: &str = "pc_connect6";
    pub const SENDMSG4: &str = "pc_sendmsg4";
    pub const SENDMSG6: &str = "pc_sendmsg6";
    pub const SKB_EGRESS: &str = "pc_skb_egress";
    pub const SKB_INGRESS: &str = "pc_skb_ingress";
    pub const XDP: &str = "pc_xdp";
    /// The peer filter at tc ingress (tcx or clsact) on virtual devices.
    pub const TC_PEER: &str = "pc_tc_peer";
    /// Never attached: the ingress peer check with the socket's facts taken
    /// from the packet, for `cargo xtask bench` (BPF_PROG_TEST_RUN).
    pub const SKB_INGRESS_BENCH: &str = "pc_skb_ingress_bench";
    /// Tracepoint `cgroup:cgroup_mkdir`: covers a re-created cgroup from
    /// [`super::map_names::CGROUP_COVER`].
    pub const CGROUP_MKDIR: &str = "pc_cgroup_mkdir";
}

/// Longest cgroup path (relative to the cgroup2 mount, with its leading
/// `/`, without the NUL) the `cgroup_mkdir` tracepoint can cover. A longer
/// path is not put in [`map_names::CGROUP_COVER`]: its re-creation is
/// covered when the agent re-resolves it, as without the hook.
pub const COVER_PATH_MAX: usize = 127;
/// Most entries one covered path holds (segments × grants of identities
/// resolved to it); a path with more is left to the agent.
pub const COVER_ENTRIES: usize = 8;
/// Capacity of [`map_names::CGROUP_COVER`].
pub const MAX_COVERED_PATHS: u32 = 4096;

/// Key of [`map_names::CGROUP_COVER`]: the path's bytes, zero-filled to
/// the end (so the last byte is always NUL).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoverKey {
    pub path: [u8; COVER_PATH_MAX + 1],
}

/// One entry a covered path holds: the segment and the expiry of a
/// cgroup-kind [`GrantKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CoverEntry {
    pub segment: u32,
    pub _pad: u32,
    pub at_boot_ns: u64,
}

/// Value of [`map_names::CGROUP_COVER`]: the first `count` of `entries`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cover {
    pub count: u32,
    pub _pad: u32,
    pub entries: [CoverEntry; COVER_ENTRIES],
}

/// The value of a [`map_names::PORTS`] entry: the segment id in the low
/// bits, the segment's mode in [`port_entry::AUDIT`]. One load answers both
/// "which segment" and "enforce or audit", so audit mode costs nothing more
/// on the connect path.
pub mod port_entry {
    /// Set: the segment is in audit mode (decide, log `would_deny`, let through).
    pub const AUDIT: u32 = 1 << 31;
    /// The bits holding the segment id.
    pub const SEGMENT: u32 = !AUDIT;

    /// The entry for `segment` in the given mode.
    #[inline(always)]
    pub const fn new(segment: u32, audit: bool) -> u32 {
        if audit {
            segment | AUDIT
        } else {
            segment
        }
    }

    /// The segment id of an entry (0: unprotected).
    #[inline(always)]
    pub const fn segment(entry: u32) -> u32 {
        entry & SEGMENT
    }

    /// Whether an entry's segment is in audit mode.
    #[inline(always)]
    pub const fn audit(entry: u32) -> bool {
        entry & AUDIT != 0
    }
}

/// Port-index space: one slot per (protocol, port).
pub const PORT_SLOTS: u32 = 2 * 65536;
/// Largest segment id + 1 (ids start at 1; 0 means "no segment").
pub const MAX_SEGMENTS: u32 = 4096;
/// Default capacity of the grants map (configurable at load time).
pub const DEFAULT_MAX_GRANTS: u32 = 262_144;
/// Default capacity of the peer trie (configurable at load time).
pub const DEFAULT_MAX_PEERS: u32 = 65_536;
/// Capacity of the local-prefix trie.
pub const MAX_LOCAL_NETS: u32 = 4096;
/// Most 802.1Q/802.1ad tags the XDP program walks; a frame with more (or
/// any VLAN ethertype left after them) is dropped, since the kernel may
/// strip them and deliver what XDP could not follow.
pub const MAX_VLAN_TAGS: u32 = 8;
/// Size of the deny-event ring buffer in bytes (a power of two, page multiple).
pub const DENY_RING_BYTES: u32 = 256 * 1024;
/// Size of the kill-request ring buffer in bytes.
pub const KILL_RING_BYTES: u32 = 64 * 1024;
/// Most IPv6 extension headers the XDP program walks before it gives up
/// (and drops the packet if it is headed for a protected port).
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;
/// Deepest cgroup level whose ancestors the programs walk. systemd nests
/// services 2-4 levels deep; containers add a few more.
pub const MAX_CGROUP_DEPTH: i32 = 32;

/// Most kernel debug lines each CPU writes per second while debug is on;
/// past it lines are dropped (counted in [`DebugBudget::dropped`]).
pub const DEBUG_LINES_PER_SEC: u32 = 64;

/// Expiry value meaning "never expires" (standing allows).
pub const NEVER: u64 = u64::MAX;

/// Strict entries: the expiry value of a grant or peer entry whose access
/// must also stop once this host has not heard from the fleet store for a
/// while. The flag rides in the top bit of the value, as the audit mode
/// rides in the port entry ([`port_entry`]): one 8-byte load answers both
/// "until when" and "strict?", the value size, the batch writes and the
/// cgroup cover stay as they were, and an entry written without the flag
/// (every non-fleet writer) means what it always meant. CLOCK_BOOTTIME
/// needs 292 years of uptime to reach bit 63, so no real deadline has it.
/// [`NEVER`] (all bits set) is never strict: a strict entry always has a
/// finite deadline (fleet grants carry one).
///
/// Every reader must decode through [`until`](expiry::until): read raw, a
/// strict value looks like an expiry 292 years away. The readers are
/// `agent-ebpf/src/decide.rs` (grants, peer hosts, peer prefixes),
/// `agent-ebpf/src/cover.rs`, and in the agent the sweep, explain and
/// `dataplane::peer_lookup`.
pub mod expiry {
    use super::NEVER;

    /// The flag bit.
    pub const STRICT: u64 = 1 << 63;
    /// The latest deadline a strict value can carry (one below the
    /// value that would make it [`NEVER`]).
    pub const MAX_STRICT_DEADLINE: u64 = STRICT - 2;

    /// The value of a strict entry ending at `deadline` (boot-time ns),
    /// clamped to [`MAX_STRICT_DEADLINE`].
    #[inline(always)]
    pub const fn strict(deadline: u64) -> u64 {
        let d = if deadline > MAX_STRICT_DEADLINE {
            MAX_STRICT_DEADLINE
        } else {
            deadline
        };
        STRICT | d
    }

    /// Whether a value is a strict entry's.
    #[inline(always)]
    pub const fn is_strict(value: u64) -> bool {
        value != NEVER && value & STRICT != 0
    }

    /// The entry's own deadline (boot-time ns, or [`NEVER`]), flag removed.
    #[inline(always)]
    pub const fn deadline(value: u64) -> u64 {
        if is_strict(value) {
            value & !STRICT
        } else {
            value
        }
    }

    /// When the entry stops working, given the host's "fresh until"
    /// ([`super::map_names::FRESH`]): its deadline, or for a strict entry
    /// the earlier of its deadline and `fresh_until`. The entry works
    /// while the boot-time clock is below this.
    #[inline(always)]
    pub const fn until(value: u64, fresh_until: u64) -> u64 {
        if is_strict(value) {
            let d = value & !STRICT;
            if d < fresh_until {
                d
            } else {
                fresh_until
            }
        } else {
            value
        }
    }

    /// Which of two values one key should hold when two sources open it:
    /// the later deadline; on equal deadlines the non-strict one. A strict
    /// source that outlasts a non-strict one makes the entry strict (so
    /// while the host is stale it refuses even what the non-strict source
    /// alone would still allow: the kernel holds one value per key, and
    /// of the two single values this is the one that never lets a strict
    /// grant outlive the store).
    #[inline(always)]
    pub const fn later(a: u64, b: u64) -> u64 {
        let (da, db) = (deadline(a), deadline(b));
        if da > db || (da == db && !is_strict(a)) {
            a
        } else {
            b
        }
    }
}

/// Transport protocols a segment can protect. Values are the IP protocol numbers.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

impl Proto {
    /// From an IP protocol number; `None` for anything a segment cannot protect.
    #[inline(always)]
    pub const fn from_ip_proto(n: u32) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// Index into [`map_names::PORTS`] for a port in host byte order.
#[inline(always)]
pub const fn port_index(proto: Proto, port: u16) -> u32 {
    let base = match proto {
        Proto::Tcp => 0,
        Proto::Udp => 65536,
    };
    base + port as u32
}

/// Identity kinds in a [`GrantKey`].
pub mod kind {
    /// `id` is a cgroup v2 id (the cgroup directory's inode number).
    pub const CGROUP: u32 = 1;
    /// `id` is a uid.
    pub const UID: u32 = 2;
    /// `id` is a gid (the process's primary gid).
    pub const GID: u32 = 3;
}

/// Key of [`map_names::GRANTS`]: 16 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    pub kind: u32,
    pub segment: u32,
    pub id: u64,
}

/// Value of [`map_names::GRANTS`] and [`map_names::PEERS`]: when the access ends,
/// in nanoseconds of CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns`), or [`NEVER`].
/// An entry is live while `now < at_boot_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub at_boot_ns: u64,
}

/// Data part of an LPM key of [`map_names::PEERS`]: the segment id (big endian,
/// so it is matched as the first 32 prefix bits) then the source address as
/// IPv6 (IPv4 as v4-mapped). Prefix length = 32 + address prefix (v4: 96 + n).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub segment_be: [u8; 4],
    pub addr: [u8; 16],
}

/// Prefix length of a [`PeerKey`] for an IPv6 prefix of `v6_prefix` bits.
#[inline(always)]
pub const fn peer_prefix_len(v6_prefix: u32) -> u32 {
    32 + v6_prefix
}

/// The v4-mapped IPv6 form of an IPv4 address given as its 4 network-order bytes.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Per-segment decision counters (per CPU; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentCounters {
    pub allowed: u64,
    pub denied: u64,
    /// Refusals an audit-mode segment let through.
    pub would_deny: u64,
}

/// Value of [`map_names::USAGE`] (per CPU; user space sums `connections`
/// and takes the earliest `first_boot_ns` and latest `last_boot_ns`).
/// Times are CLOCK_BOOTTIME nanoseconds; 0 means never.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Connections (connect) and datagrams (unconnected sendmsg) admitted.
    pub connections: u64,
    pub first_boot_ns: u64,
    /// The last admitted connect or datagram, or packet of a flow it opened.
    pub last_boot_ns: u64,
}

/// Which program made a decision.
pub mod hook {
    pub const CONNECT4: u8 = 1;
    pub const CONNECT6: u8 = 2;
    pub const SENDMSG4: u8 = 3;
    pub const SENDMSG6: u8 = 4;
    pub const SKB_EGRESS: u8 = 5;
    pub const SKB_INGRESS: u8 = 6;
    pub const XDP: u8 = 7;
    /// The peer filter at tc ingress (virtual devices).
    pub const TC: u8 = 8;
}

/// A refused connection or packet, sent through [`map_names::DENY_EVENTS`].
///
/// `addr`/`port` are always the protected endpoint (the server side);
/// `peer_addr`/`peer_port` the side that was refused (the client): for
/// local hooks the client socket's own address (zero when it has none yet,
/// as in connect4/6), for XDP the remote source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyEvent {
    /// CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// The caller's cgroup id (0 for remote peers).
    pub cgroup_id: u64,
    pub segment: u32,
    /// The caller's uid and primary gid (0 for remote peers).
    pub uid: u32,
    pub gid: u32,
    /// Protected port, host byte order.
    pub port: u16,
    /// Client port, host byte order (0 when unknown).
    pub peer_port: u16,
    /// [`Proto`] as its IP protocol number.
    pub proto: u8,
    /// One of [`hook`].
    pub hook: u8,
    /// One of [`verdict`]: refused, or let through by audit mode.
    pub verdict: u8,
    pub _pad: [u8; 5],
    /// Protected address, v4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Client address, v4-mapped for IPv4 (zero when unknown).
    pub peer_addr: [u8; 16],
}

/// What a [`DenyEvent`] records.
pub mod verdict {
    /// The connection or packet was refused.
    pub const DENIED: u8 = 0;
    /// The segment is in audit mode: it would have been refused, and was let through.
    pub const WOULD_DENY: u8 = 1;
}

/// Capacity of [`map_names::DISCOVERY`] (an LRU: the oldest entries make room).
pub const DISCOVERY_ENTRIES: u32 = 16_384;

/// What kind of client a [`DiscoveryKey`] names.
pub mod seen {
    /// A local process: `cgroup_id`, `uid`, `gid` are set.
    pub const LOCAL: u8 = 1;
    /// A remote peer: `addr` is set.
    pub const PEER: u8 = 2;
}

/// Key of [`map_names::DISCOVERY`]: a local port and who reached it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiscoveryKey {
    /// The local port reached, host byte order.
    pub port: u16,
    /// [`Proto`] as its IP protocol number.
    pub proto: u8,
    /// One of [`seen`].
    pub kind: u8,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    /// The peer's address, v4-mapped for IPv4 (zero for local clients).
    pub addr: [u8; 16],
}

/// Value of [`map_names::DISCOVERY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sighting {
    /// CLOCK_BOOTTIME nanoseconds of the first and the latest sighting.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Connections (TCP) or datagrams sent unconnected (UDP) seen.
    pub count: u64,
}

/// What connect4/6 remember about a socket they let through to a
/// protected port by an allow that can end under it (a finite expiry, or a
/// `group:` entry): the identity facts cgroup_skb cannot see itself, and
/// the decision, cached. A packet passes on one compare while `epoch`
/// equals [`map_names::EPOCH`] and the clock is below `expiry_ns` (not read
/// when it is [`NEVER`]; for a finite one, the cheap jiffies counter is
/// compared with `fast_until_jiffies` first and the precise clock read
/// only past it); otherwise the flow decides again and the mark is
/// rewritten (or the packet dropped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowMark {
    pub uid: u32,
    pub gid: u32,
    /// The segment of the decision.
    pub segment: u32,
    /// The [`kind`] of the entry that allowed the flow.
    pub kind: u32,
    /// That entry's id (uid, gid or cgroup id).
    pub id: u64,
    /// The policy epoch read before the decision.
    pub epoch: u64,
    /// When the allowing entry ends (CLOCK_BOOTTIME ns), or [`NEVER`].
    pub expiry_ns: u64,
    /// When a packet of this flow last refreshed the entry's usage
    /// (`PC_USAGE` last use, at most once a second per flow).
    pub used_ns: u64,
    /// While `bpf_jiffies64()` is below this, a packet passes without
    /// reading the precise clock (0: read it at every packet). Set at each
    /// precise read that found the expiry ahead, from that read, so that
    /// the window ends a margin before `expiry_ns` and at most a short
    /// interval after the read (`agent-ebpf/src/decide.rs::fast_window`
    /// has the argument and its bounds).
    pub fast_until_jiffies: u64,
}

/// Past this many unread bytes in [`map_names::DENY_EVENTS`] a deny event
/// wakes the agent; below it, events wait for the agent's timed poll.
pub const DENY_RING_WAKE_BYTES: u64 = DENY_RING_BYTES as u64 / 4;
/// Levels of the cgroup mask ([`map_names::CGROUP_LEVELS`]): one bit each.
pub const CGROUP_LEVEL_BITS: u32 = 32;

/// A socket whose flow a program just cut, for the agent to destroy
/// (SOCK_DESTROY) so that its owner sees an error at once instead of
/// waiting for TCP to give up. Addresses and ports are from the socket's
/// own point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillRequest {
    /// The socket cookie. Only cgroup_skb asks (for flows connect4/6
    /// admitted); nothing a packet from the network says can cause a request.
    pub cookie: u64,
    /// Local and remote port, host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// [`Proto`] as its IP protocol number.
    pub proto: u8,
    /// 4 or 6: the IP version of the packet.
    pub ip_version: u8,
    /// One of [`hook`].
    pub hook: u8,
    pub _pad: u8,
    /// Local and remote address, v4-mapped for IPv4.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Value of [`map_names::DEBUG_BUDGET`]: this CPU's debug-line budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugBudget {
    /// CLOCK_BOOTTIME nanoseconds at which the current one-second window began.
    pub window_ns: u64,
    /// Lines written in the current window.
    pub used: u32,
    /// Lines dropped by the limit since the programs were loaded.
    pub dropped: u32,
}

// The ABI checked at compile time, on both sides: the eBPF build fails
// here too if a layout drifts. Sizes are the sums of the fields (no
// implicit padding); a change means a new LAYOUT_VERSION.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<GrantKey>() == 16 && align_of::<GrantKey>() == 8);
    assert!(size_of::<Expiry>() == 8);
    assert!(size_of::<PeerKey>() == 20);
    assert!(size_of::<SegmentCounters>() == 24);
    // 2 + 1 + 1 + 4 + 4 + 4 + 8 + 16
    assert!(size_of::<DiscoveryKey>() == 40 && align_of::<DiscoveryKey>() == 8);
    assert!(size_of::<Sighting>() == 24);
    // 8 + 8 + 4 * 3 + 2 + 2 + 1 + 1 + 1 + 5 + 16 + 16
    assert!(size_of::<DenyEvent>() == 72);
    assert!(size_of::<FlowMark>() == 56 && align_of::<FlowMark>() == 8);
    assert!(MAX_CGROUP_DEPTH as u32 <= CGROUP_LEVEL_BITS);
    // 8 + 2 + 2 + 1 + 1 + 1 + 1 + 16 + 16
    assert!(size_of::<KillRequest>() == 48);
    assert!(size_of::<DebugBudget>() == 16);
    assert!(size_of::<Usage>() == 24);
    assert!(size_of::<CoverKey>() == 128);
    assert!(size_of::<Cover>() == 8 + 16 * COVER_ENTRIES && align_of::<Cover>() == 8);
    // Ring buffer sizes must be powers of two and page multiples (a power
    // of two of at least a page is one).
    assert!(DENY_RING_BYTES.is_power_of_two() && DENY_RING_BYTES >= 4096);
    assert!(KILL_RING_BYTES.is_power_of_two() && KILL_RING_BYTES >= 4096);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], made only of integers and byte arrays,
    // with no implicit padding (checked by the layout tests below), so every
    // bit pattern is valid and no uninitialised byte is ever read.
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::Expiry {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::SegmentCounters {}
    unsafe impl aya::Pod for super::DenyEvent {}
    unsafe impl aya::Pod for super::FlowMark {}
    unsafe impl aya::Pod for super::KillRequest {}
    unsafe impl aya::Pod for super::DebugBudget {}
    unsafe impl aya::Pod for super::DiscoveryKey {}
    unsafe impl aya::Pod for super::Sighting {}
    unsafe impl aya::Pod for super::CoverKey {}
    unsafe impl aya::Pod for super::Cover {}
    unsafe impl aya::Pod for super::Usage {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<GrantKey>(), 16);
        assert_eq!(align_of::<GrantKey>(), 8);
        assert_eq!(size_of::<Expiry>(), 8);
        assert_eq!(size_of::<PeerKey>(), 20);
        assert_eq!(size_of::<SegmentCounters>(), 24);
        assert_eq!(size_of::<DiscoveryKey>(), 40);
        assert_eq!(size_of::<Sighting>(), 24);
        // 8 + 8 + 4 * 3 + 2 + 2 + 1 + 1 + 1 + 5 + 16 + 16
        assert_eq!(size_of::<DenyEvent>(), 72);
        assert_eq!(size_of::<FlowMark>(), 56);
        // 8 + 2 + 2 + 1 + 1 + 1 + 1 + 16 + 16
        assert_eq!(size_of::<KillRequest>(), 48);
        assert_eq!(size_of::<DebugBudget>(), 16);
        assert_eq!(size_of::<Usage>(), 24);
    }

    #[test]
    fn port_index_separates_protocols() {
        assert_eq!(port_index(Proto::Tcp, 0), 0);
        assert_eq!(port_index(Proto::Tcp, 65535), 65535);
        assert_eq!(port_index(Proto::Udp, 0), 65536);
        assert_eq!(port_index(Proto::Udp, 65535), PORT_SLOTS - 1);
    }

    #[test]
    fn v4_mapped_form() {
        assert_eq!(
            v4_mapped([127, 0, 0, 1]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
        assert_eq!(peer_prefix_len(96 + 24), 152);
    }

    #[test]
    fn port_entry_round_trip() {
        let e = port_entry::new(MAX_SEGMENTS - 1, true);
        assert_eq!(port_entry::segment(e), MAX_SEGMENTS - 1);
        assert!(port_entry::audit(e));
        assert!(!port_entry::audit(port_entry::new(7, false)));
        assert_eq!(port_entry::new(7, false), 7);
    }

    #[test]
    fn strict_values_decode_and_never_is_never_strict() {
        use expiry::*;
        assert!(!is_strict(NEVER));
        assert_eq!(until(NEVER, 0), NEVER);
        assert!(!is_strict(1_000));
        assert_eq!(until(1_000, 0), 1_000, "a plain value ignores freshness");
        let v = strict(1_000);
        assert!(is_strict(v));
        assert_eq!(deadline(v), 1_000);
        assert_eq!(until(v, 500), 500, "stale first: freshness decides");
        assert_eq!(until(v, 5_000), 1_000, "fresh longer: the deadline decides");
        assert_eq!(until(v, 0), 0, "never heard: not live");
        assert_ne!(strict(NEVER), NEVER);
        assert_eq!(deadline(strict(NEVER)), MAX_STRICT_DEADLINE);
    }

    #[test]
    fn the_later_value_wins_and_plain_wins_a_tie() {
        use expiry::*;
        assert_eq!(later(strict(10), 20), 20);
        assert_eq!(later(20, strict(10)), 20);
        assert_eq!(later(strict(30), 20), strict(30));
        assert_eq!(later(strict(20), 20), 20);
        assert_eq!(later(20, strict(20)), 20);
        assert_eq!(later(strict(50), NEVER), NEVER);
    }

    #[test]
    fn proto_numbers() {
        assert_eq!(Proto::from_ip_proto(6), Some(Proto::Tcp));
        assert_eq!(Proto::from_ip_proto(17), Some(Proto::Udp));
        assert_eq!(Proto::from_ip_proto(132), None);
    }
}
