//! The kernel side, seen from user space: the only module that talks to aya.
//!
//! Owns loading the embedded eBPF object, pinning its maps under
//! `<bpffs>/v{LAYOUT_VERSION}/maps/`, attaching the programs through kernel
//! links pinned under `.../links/`, and every map read and write. It does
//! not decide what the maps should hold: `ledger` and the agent do.
//!
//! Restart safety: maps are re-opened from their pins, so their contents
//! survive the agent. New links are attached beside the old ones (cgroup
//! multi-attach: a connection passes only if every program allows it, and
//! both read the same maps) and then renamed over the old pins, which
//! releases the old links. There is no instant with no program attached.
//!
//! The agent also keeps a descriptor of every link it attached, so deleting
//! a pin alone does not detach anything while it runs; [`enforcement`]
//! checks the kernel against those links on every heartbeat and repairs.
//!
//! Split by lifecycle stage: [`loader`] (the object, its pins, layout
//! retirement, uninstall), [`links`] (cgroup attach, pin replacing),
//! `peer_filter` (XDP, tcx or clsact on the configured interfaces), [`maps`] (typed map I/O), `txn` (all-or-nothing writes),
//! [`enforcement`] (the kernel checked against what was attached), and
//! `bench` (BPF_PROG_TEST_RUN, feature `bench` only). This file holds the
//! shared types: the error, the configuration and the `Dataplane` itself.
use std::{
    io,
    path::{Path, PathBuf},
};

use agent_common::{
    map_names, Cover, CoverKey, DenyEvent, DiscoveryKey, Expiry, GrantKey, KillRequest, PeerKey,
    SegmentCounters, Sighting, Usage,
};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::ProgramError,
    Ebpf, EbpfError,
};

/// All-or-nothing application of a policy change.
mod txn;

mod batch;

mod enforcement;
pub(crate) use enforcement::KernelCheck;

#[cfg(feature = "bench")]
mod bench;
mod links;
mod loader;
mod maps;
mod ring;
mod tick;
pub(crate) use tick::prefetch as prefetch_tick;
mod usage;
pub(crate) use ring::Ring;

mod peer_filter;
pub(crate) use peer_filter::{PeerFilter, Placement};

use links::{pin_fd, HeldLink, LinkKind};
pub(crate) use loader::{pinned_ports, uninstall};
use maps::peer_key;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DataplaneError {
    #[error("this binary was built with AYA_BUILD_SKIP=1 and holds no eBPF programs; rebuild without it (`cargo xtask build`)")]
    NoObject,
    #[error("{path} is not a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` (the agent does this itself when it runs as root)")]
    NoBpffs { path: PathBuf },
    #[error("the bpffs directory's parent {parent} does not exist; the agent creates only its own directory: create the parent (`mkdir -m 0700 {parent}`) or choose a bpffs directory whose parent exists (default /sys/fs/bpf/portcullis)")]
    NoBpffsParent { parent: PathBuf },
    #[error(transparent)]
    Unsafe(#[from] crate::pindir::PinDirError),
    #[error("cannot create pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the eBPF object failed (needs root or CAP_BPF+CAP_NET_ADMIN, and a kernel ≥ 5.8 with BTF)")]
    Load(#[source] EbpfError),
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("kernel refused to load program {program} (BPF_PROG_LOAD)")]
    ProgramLoad {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot open cgroup {path} to attach to")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching {program} to cgroup {cgroup} failed (BPF_LINK_CREATE; needs kernel ≥ 5.7 for cgroup links)")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("no peer filter could be attached to interface {iface} (does it exist? `ip link show {iface}`); tried {tried}")]
    PeerFilter { iface: String, tried: String },
    #[error("pinning {what} at {path} failed")]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{op} on map {map} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {map} is full ({capacity} entries); raise its size in the agent config")]
    Full { map: &'static str, capacity: u32 },
    #[error("this host has more than {capacity} local, broadcast and anycast route prefixes (`ip route show table all type local`), more than map PC_LOCAL_NETS holds; the destinations left out are not protected as this host's")]
    LocalNetsFull { capacity: u32 },
    #[error("the change needs {needed} entries in map {map}, which holds {capacity}; nothing was changed (raise max_grants or max_peers in the agent config; a pinned map's size changes after `portcullis uninstall`)")]
    NoRoom {
        map: &'static str,
        capacity: u32,
        needed: usize,
    },
    #[cfg(feature = "bench")]
    #[error("BPF_PROG_TEST_RUN of {program} failed (needs kernel ≥ 5.10 for cgroup_skb)")]
    TestRun {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// One entry of the peer trie, as read back from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerEntry {
    pub segment: u32,
    /// IPv6, IPv4 as v4-mapped.
    pub addr: [u8; 16],
    /// IPv6 prefix length (IPv4 prefixes are 96 + n).
    pub prefix: u8,
    pub expiry: u64,
}

/// Reads one segment's counters, summed over CPUs (`None` if the read fails).
pub(crate) type CountersReader = Box<dyn Fn(u32) -> Option<SegmentCounters> + Send + Sync>;

/// Reads the usage map on its own descriptor: admitted connections summed
/// per segment id (see `Dataplane::usage_reader`).
pub(crate) type UsageReader = Box<dyn Fn() -> std::collections::BTreeMap<u32, u64> + Send + Sync>;

/// Where and how to load.
#[derive(Clone, Debug)]
pub(crate) struct DataplaneConfig {
    /// bpffs directory owned by this agent, e.g. `/sys/fs/bpf/portcullis`.
    pub bpffs: PathBuf,
    /// Filesystem path of the cgroup to attach to (the cgroup2 root by default).
    pub cgroup: PathBuf,
    pub max_grants: u32,
    pub max_peers: u32,
    /// Interfaces to attach the peer filter to (native XDP on physical
    /// NICs, tc ingress on virtual devices).
    pub xdp_ifaces: Vec<String>,
    /// Whether the hooks feed the discovery map (`discovery` setting).
    pub discovery: bool,
    /// Which peer filter modes may be used (`peer_filter` setting).
    pub placement: Placement,
}

pub(crate) struct Dataplane {
    pin_dir: PathBuf,
    /// Links attached by this agent (cgroup programs and XDP).
    held: Vec<HeldLink>,
    /// Ids of this agent's maps, by map name, as pinned at load.
    map_ids: Vec<(&'static str, u32)>,
    /// Inode (cgroup id) of the cgroup the programs were last attached to.
    cgroup_ino: u64,
    bpffs: PathBuf,
    cgroup: PathBuf,
    xdp_ifaces: Vec<String>,
    placement: Placement,
    max_grants: u32,
    max_peers: u32,
    ports: Array<MapData, u32>,
    grants: HashMap<MapData, GrantKey, Expiry>,
    peers: LpmTrie<MapData, PeerKey, Expiry>,
    peer_hosts: HashMap<MapData, PeerKey, Expiry>,
    local_nets: LpmTrie<MapData, [u8; 16], u32>,
    counters: PerCpuArray<MapData, SegmentCounters>,
    discovery: HashMap<MapData, DiscoveryKey, Sighting>,
    /// The policy epoch (`PC_EPOCH`, one entry).
    epoch: Array<MapData, u64>,
    /// "Fresh until" for strict entries (`PC_FRESH`, one entry).
    fresh: Array<MapData, u64>,
    /// Segment id → cgroup-level mask (`PC_CGROUP_LEVELS`).
    cgroup_levels: Array<MapData, u32>,
    usage: PerCpuHashMap<MapData, GrantKey, Usage>,
    cover: HashMap<MapData, CoverKey, Cover>,
    deny_events: Option<RingBuf<MapData>>,
    kill_requests: Option<RingBuf<MapData>>,
    programs: Vec<&'static str>,
    /// Where the peer filter is attached, and how.
    filters: Vec<PeerFilter>,
    /// The grants and ports maps again, for batch reads and writes.
    grants_fd: std::os::fd::OwnedFd,
    ports_fd: std::os::fd::OwnedFd,
    ebpf: Ebpf,
}

pub(crate) fn map_err(
    map: &'static str,
    op: &'static str,
) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, op, source }
}

impl Dataplane {
    /// This agent's bpffs directory (holding every layout's pins).
    pub(crate) fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub(crate) fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub(crate) fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Where the peer filter is attached, and how.
    pub(crate) fn filters(&self) -> &[PeerFilter] {
        &self.filters
    }

    /// Hands the kill-request ring buffer to its reader (once).
    pub(crate) fn take_kill_requests(&mut self) -> Option<Ring<KillRequest>> {
        self.kill_requests.take().map(Ring::new)
    }

    /// Hands the deny-event ring buffer to its reader (once).
    /// The loaded object, for `kernlog` to take its debug maps.
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub(crate) fn take_deny_events(&mut self) -> Option<Ring<DenyEvent>> {
        self.deny_events.take().map(Ring::new)
    }
}
