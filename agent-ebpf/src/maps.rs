//! Every map the programs use. Names, key and value layouts and sizes come
//! from `agent-common`; the agent pins each map by name and may override the
//! sizes of the grant and peer maps at load time.
use agent_common::{
    Cover, CoverKey, DebugBudget, DenyEvent, DiscoveryKey, Expiry, FlowMark, GrantKey, PeerKey,
    SegmentCounters, Sighting, Usage, DEFAULT_MAX_GRANTS, DEFAULT_MAX_PEERS, DENY_RING_BYTES,
    DISCOVERY_ENTRIES, KILL_RING_BYTES, MAX_COVERED_PATHS, MAX_LOCAL_NETS, MAX_SEGMENTS,
    PORT_SLOTS,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

/// Port index → port entry (segment id and mode bit). An array: one bounds
/// check and one load.
#[map(name = "PC_PORTS")]
pub static PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// Local identity × segment → expiry. Not preallocated: memory follows use.
#[map(name = "PC_GRANTS")]
pub static GRANTS: HashMap<GrantKey, Expiry> =
    HashMap::with_max_entries(DEFAULT_MAX_GRANTS, BPF_F_NO_PREALLOC);

/// Segment × remote source prefix → expiry (XDP and the cgroup_skb ingress peer check).
#[map(name = "PC_PEERS")]
pub static PEERS: LpmTrie<PeerKey, Expiry> =
    LpmTrie::with_max_entries(DEFAULT_MAX_PEERS, BPF_F_NO_PREALLOC);

/// Segment × single remote host → expiry (checked before `PEERS`).
#[map(name = "PC_PEER_HOSTS")]
pub static PEER_HOSTS: HashMap<PeerKey, Expiry> =
    HashMap::with_max_entries(DEFAULT_MAX_PEERS, BPF_F_NO_PREALLOC);

/// The prefixes the kernel delivers to this host (its local, broadcast and
/// anycast routes), IPv4 as v4-mapped IPv6. Kept current by the agent.
#[map(name = "PC_LOCAL_NETS")]
pub static LOCAL_NETS: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(MAX_LOCAL_NETS, BPF_F_NO_PREALLOC);

/// Per-segment allowed/denied counts.
#[map(name = "PC_COUNTERS")]
pub static COUNTERS: PerCpuArray<SegmentCounters> = PerCpuArray::with_max_entries(MAX_SEGMENTS, 0);

/// Deny events for the agent's deny log.
#[map(name = "PC_DENY_EVENTS")]
pub static DENY_EVENTS: RingBuf = RingBuf::with_byte_size(DENY_RING_BYTES, 0);

/// Sockets connect4/6 let through to a protected port (freed with the socket).
/// Minimum kernel: 5.2 (sk_storage), 5.10 for use from sock_addr programs.
#[btf_map(name = "PC_FLOWS")]
pub static FLOWS: SkStorage<FlowMark> = SkStorage::new();

/// The policy epoch (entry 0), bumped by the agent after every write that
/// can end an allow; see `skb.rs` for how marked flows use it.
#[map(name = "PC_EPOCH")]
pub static EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// "Fresh until" (entry 0, CLOCK_BOOTTIME ns): strict entries stop
/// working at this instant; the agent moves it forward each time it hears
/// from the fleet store (see `decide::fresh_until`).
#[map(name = "PC_FRESH")]
pub static FRESH: Array<u64> = Array::with_max_entries(1, 0);

/// Segment id → the cgroup levels at which the segment has cgroup entries
/// (bit n: level n), kept by the agent; the ancestor walk visits only those.
#[map(name = "PC_CGROUP_LEVELS")]
pub static CGROUP_LEVELS: Array<u32> = Array::with_max_entries(MAX_SEGMENTS, 0);

/// One slot per CPU that the decisions cached under the epoch update with
/// a fully ordered atomic: a memory barrier that touches no shared cache
/// line (see `decide::epoch_ordered`). Not pinned.
#[map(name = "PC_FENCE")]
pub static FENCE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sockets whose flow was just cut, for the agent to destroy.
#[map(name = "PC_KILL_REQUESTS")]
pub static KILL_REQUESTS: RingBuf = RingBuf::with_byte_size(KILL_RING_BYTES, 0);

/// Sockets on a protected local port: this host's own clients (their
/// ephemeral port happens to be a protected number), marked when they speak
/// first (a TCP SYN, a UDP datagram) by cgroup_skb egress so that the
/// ingress peer check passes the replies; UDP sockets that heard from the
/// network while unconnected are marked as servers' (see `skb.rs`).
#[btf_map(name = "PC_OUTBOUND")]
pub static OUTBOUND: SkStorage<u32> = SkStorage::new();

/// Who reached which local port, and how often (see `discovery.rs`).
/// An LRU: when full, the least recently seen entries make room.
#[map(name = "PC_DISCOVERY")]
pub static DISCOVERY: LruHashMap<DiscoveryKey, Sighting> =
    LruHashMap::with_max_entries(DISCOVERY_ENTRIES, 0);

/// 1 when the hooks feed `DISCOVERY`, set by the agent at load time.
#[unsafe(no_mangle)]
pub static PC_DISCOVERY_ON: u32 = 0;

/// 1 when the hooks count use in `USAGE` (always, but for the bench's
/// measurement of the path without it). Read-only data: the verifier
/// drops the branch not taken.
#[unsafe(no_mangle)]
pub static PC_USAGE_ON: u32 = 1;

/// Local grant entry → its use on this CPU (see `usage.rs`). Sized like
/// `GRANTS` (the agent overrides both alike); not preallocated.
#[map(name = "PC_USAGE")]
pub static USAGE: PerCpuHashMap<GrantKey, Usage> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_GRANTS, BPF_F_NO_PREALLOC);

/// Cgroup path → the cgroup-kind entries to give a cgroup created there
/// (see `cover.rs`). Written by the agent.
#[map(name = "PC_CGROUP_COVER")]
pub static CGROUP_COVER: HashMap<CoverKey, Cover> =
    HashMap::with_max_entries(MAX_COVERED_PATHS, BPF_F_NO_PREALLOC);

/// The kernel debug switch (entry 0: 0 off, else on); see `debug.rs`.
/// Not pinned: written only by the agent that loaded these programs.
#[map(name = "PC_DEBUG")]
pub static DEBUG: Array<u32> = Array::with_max_entries(1, 0);

/// Each CPU's debug-line budget for the current second.
#[map(name = "PC_DEBUG_BUDGET")]
pub static DEBUG_BUDGET: PerCpuArray<DebugBudget> = PerCpuArray::with_max_entries(1, 0);

/// An upper bound on the kernel's tick in ns (1/HZ, measured by the
/// agent), or 0 when unknown: see `decide::fast_window`.
#[unsafe(no_mangle)]
pub static PC_TICK_NS: u64 = 0;

/// 1 when the CPU keeps loads in order (x86), set by the agent at load
/// time: then `decide::epoch_ordered` needs no fence. Read-only data: the
/// verifier drops the branch not taken.
#[unsafe(no_mangle)]
pub static PC_LOADS_ORDERED: u32 = 0;

/// The host's network-namespace cookie, set by the agent at load time
/// (0: unknown, every namespace counts as the host's).
#[unsafe(no_mangle)]
pub static PC_HOST_NETNS: u64 = 0;

/// Keeps the event type in the object's BTF for tools like bpftool.
#[allow(dead_code)]
pub const _EVENT: Option<DenyEvent> = None;
