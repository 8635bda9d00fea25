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
use std::{
    collections::BTreeSet,
    fs, io,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use agent_common::{
    global_names, map_names, port_index, program_names, Expiry, GrantKey, PeerKey, Proto,
    SegmentCounters, LAYOUT_VERSION, MAX_LOCAL_NETS, PORT_SLOTS,
};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, Xdp,
        XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};

use crate::{
    hostaddrs::LocalNet,
    ledger::{Change, EntryKey},
};

/// All-or-nothing application of a policy change.
mod txn;

mod enforcement;
pub use enforcement::KernelCheck;

/// The compiled programs, built by `build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("this binary was built with AYA_BUILD_SKIP=1 and holds no eBPF programs; rebuild without it (`cargo xtask build`)")]
    NoObject,
    #[error("{path} is not a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` (the agent does this itself when it runs as root)")]
    NoBpffs { path: PathBuf },
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
    #[error("attaching XDP to interface {iface} failed (does it exist? `ip link show {iface}`)")]
    XdpAttach {
        iface: String,
        #[source]
        source: ProgramError,
    },
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
pub struct PeerEntry {
    pub segment: u32,
    /// IPv6, IPv4 as v4-mapped.
    pub addr: [u8; 16],
    /// IPv6 prefix length (IPv4 prefixes are 96 + n).
    pub prefix: u8,
    pub expiry: u64,
}

/// Where and how to load.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// bpffs directory owned by this agent, e.g. `/sys/fs/bpf/portcullis`.
    pub bpffs: PathBuf,
    /// Filesystem path of the cgroup to attach to (the cgroup2 root by default).
    pub cgroup: PathBuf,
    pub max_grants: u32,
    pub max_peers: u32,
    /// Interfaces to attach the XDP program to (remote-peer enforcement).
    pub xdp_ifaces: Vec<String>,
}

/// How the XDP program ended up attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpAttachment {
    pub iface: String,
    /// "native", "generic", or "replaced" (a previous run's link kept its mode).
    pub mode: &'static str,
}

const SKB_PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    (program_names::SKB_EGRESS, CgroupSkbAttachType::Egress),
    (program_names::SKB_INGRESS, CgroupSkbAttachType::Ingress),
];

const SOCK_ADDR_PROGRAMS: [(&str, &str); 4] = [
    (program_names::CONNECT4, "connect4"),
    (program_names::CONNECT6, "connect6"),
    (program_names::SENDMSG4, "sendmsg4"),
    (program_names::SENDMSG6, "sendmsg6"),
];

/// What a held link is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LinkKind {
    Cgroup,
    Xdp(String),
}

/// A link this agent attached, held open beside its pin.
#[derive(Debug)]
struct HeldLink {
    /// File name under `links/`.
    pin: String,
    program: &'static str,
    kind: LinkKind,
    fd: OwnedFd,
    id: u32,
    prog_id: u32,
}

pub struct Dataplane {
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
    max_grants: u32,
    max_peers: u32,
    ports: Array<MapData, u32>,
    grants: HashMap<MapData, GrantKey, Expiry>,
    peers: LpmTrie<MapData, PeerKey, Expiry>,
    peer_hosts: HashMap<MapData, PeerKey, Expiry>,
    local_nets: LpmTrie<MapData, [u8; 16], u32>,
    counters: PerCpuArray<MapData, SegmentCounters>,
    deny_events: Option<RingBuf<MapData>>,
    kill_requests: Option<RingBuf<MapData>>,
    programs: Vec<&'static str>,
    xdp: Vec<XdpAttachment>,
    ebpf: Ebpf,
}

/// The capacity a map really has. A pinned map keeps the size it was
/// created with: a different size asked for on a later start takes effect
/// only after `portcullis uninstall`, and this says so.
fn capacity<K: aya::Pod, M: aya::maps::IterableMap<K, Expiry>>(
    map: &M,
    name: &str,
    asked: u32,
) -> u32 {
    match map.map().info() {
        Ok(info) if info.max_entries() != asked => {
            tracing::warn!(
                map = name,
                pinned = info.max_entries(),
                asked,
                "the pinned map keeps its size; a new size takes effect after `portcullis uninstall`"
            );
            info.max_entries()
        }
        Ok(info) => info.max_entries(),
        Err(_) => asked,
    }
}

/// A program of the object, as its concrete type.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| DataplaneError::ProgramLoad {
            program: name,
            source,
        })
}

/// A program's link as a plain fd link, to pin it.
fn fd_link<L>(link: L, links: &Path, name: &str) -> Result<FdLink>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|e| DataplaneError::Pin {
        what: "link (needs kernel ≥ 5.7 for cgroup links)",
        path: links.join(name),
        source: Box::new(e),
    })
}

/// Pin directories of other layout versions under an agent's bpffs directory.
fn older_layouts(bpffs: &Path, current: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(bpffs) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.as_path() != current && p.is_dir())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('v'))
        })
        .collect();
    out.sort();
    out
}

/// Unpins an old layout: links first (which detaches its programs), then maps.
fn retire_layout(dir: &Path) -> io::Result<()> {
    for sub in ["links", "maps"] {
        if let Ok(entries) = fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                fs::remove_file(e.path())?;
            }
        }
        let _ = fs::remove_dir(dir.join(sub));
    }
    fs::remove_dir(dir)
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, op, source }
}

/// True when `path` is on a bpf filesystem.
fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The pin directory of the current layout under an agent's bpffs directory.
///
/// `PORTCULLIS_TEST_LAYOUT_VERSION` overrides the version in the path, for
/// the tests that simulate an upgrade across an incompatible layout; it
/// changes nothing else.
pub fn pin_dir(bpffs: &Path) -> PathBuf {
    let version = std::env::var("PORTCULLIS_TEST_LAYOUT_VERSION")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(LAYOUT_VERSION);
    bpffs.join(format!("v{version}"))
}

impl Dataplane {
    /// Loads the maps (re-using this layout's pins) and the programs, and
    /// attaches nothing: see [`Dataplane::attach`].
    pub fn open(cfg: &DataplaneConfig) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let parent = cfg.bpffs.parent().unwrap_or(Path::new("/"));
        let mount_probe = if cfg.bpffs.exists() {
            cfg.bpffs.as_path()
        } else {
            parent
        };
        if !is_bpffs(mount_probe) {
            return Err(DataplaneError::NoBpffs {
                path: mount_probe.to_path_buf(),
            });
        }
        // Only root may touch the pins: refuse a directory someone else owns
        // or may write, before anything is pinned or re-opened.
        crate::pindir::secure(&cfg.bpffs, is_bpffs)?;
        let pin_dir = pin_dir(&cfg.bpffs);
        for dir in [pin_dir.join("maps"), pin_dir.join("links")] {
            crate::pindir::create(&dir)?;
        }

        let mut loader = EbpfLoader::new();
        // PORTCULLIS_VERIFIER_LOG=1 puts the kernel verifier's full log into
        // load errors, for diagnosing a kernel that refuses the programs.
        if std::env::var_os("PORTCULLIS_VERIFIER_LOG").is_some_and(|v| v == "1") {
            loader
                .verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
        }
        let map_paths: Vec<(&str, PathBuf)> = map_names::ALL
            .iter()
            .map(|n| (*n, pin_dir.join("maps").join(n)))
            .collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader.map_max_entries(map_names::GRANTS, cfg.max_grants);
        loader.map_max_entries(map_names::PEERS, cfg.max_peers);
        loader.map_max_entries(map_names::PEER_HOSTS, cfg.max_peers);
        // Local-destination decisions apply to the host's network namespace
        // only: the agent's own (0 when the kernel cannot tell, kernel < 5.14).
        let host_netns = crate::hostaddrs::netns_cookie().unwrap_or(0);
        loader.override_global(global_names::HOST_NETNS, &host_netns, true);
        let mut ebpf = loader.load(OBJECT).map_err(DataplaneError::Load)?;
        // The maps just loaded are the ones pinned (created or re-opened).
        let map_ids = map_paths
            .iter()
            .filter_map(|(name, path)| {
                let name = map_names::ALL.iter().find(|n| *n == name)?;
                Some((*name, aya::maps::MapInfo::from_pin(path).ok()?.id()))
            })
            .collect();

        // Load (verify) every program now, attach none: the agent fills the
        // maps first and calls `attach` once they hold the policy.
        for (name, _) in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(|source| DataplaneError::ProgramLoad {
                program: name,
                source,
            })?;
        }
        for (name, _) in SKB_PROGRAMS {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().map_err(|source| DataplaneError::ProgramLoad {
                program: name,
                source,
            })?;
        }
        if !cfg.xdp_ifaces.is_empty() {
            let name = program_names::XDP;
            let prog: &mut Xdp = program(&mut ebpf, name)?;
            prog.load().map_err(|source| DataplaneError::ProgramLoad {
                program: name,
                source,
            })?;
        }

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name)
                .ok_or(DataplaneError::MissingMap { map: name })
        };
        let ports = Array::try_from(take(&mut ebpf, map_names::PORTS)?)
            .map_err(map_err(map_names::PORTS, "open"))?;
        let grants = HashMap::try_from(take(&mut ebpf, map_names::GRANTS)?)
            .map_err(map_err(map_names::GRANTS, "open"))?;
        let peer_hosts = HashMap::try_from(take(&mut ebpf, map_names::PEER_HOSTS)?)
            .map_err(map_err(map_names::PEER_HOSTS, "open"))?;
        let peers = LpmTrie::try_from(take(&mut ebpf, map_names::PEERS)?)
            .map_err(map_err(map_names::PEERS, "open"))?;
        let local_nets = LpmTrie::try_from(take(&mut ebpf, map_names::LOCAL_NETS)?)
            .map_err(map_err(map_names::LOCAL_NETS, "open"))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, map_names::COUNTERS)?)
            .map_err(map_err(map_names::COUNTERS, "open"))?;
        let deny_events = RingBuf::try_from(take(&mut ebpf, map_names::DENY_EVENTS)?)
            .map_err(map_err(map_names::DENY_EVENTS, "open"))?;
        let kill_requests = RingBuf::try_from(take(&mut ebpf, map_names::KILL_REQUESTS)?)
            .map_err(map_err(map_names::KILL_REQUESTS, "open"))?;

        Ok(Self {
            pin_dir,
            held: Vec::new(),
            map_ids,
            cgroup_ino: 0,
            bpffs: cfg.bpffs.clone(),
            cgroup: cfg.cgroup.clone(),
            xdp_ifaces: cfg.xdp_ifaces.clone(),
            max_grants: capacity(&grants, map_names::GRANTS, cfg.max_grants),
            max_peers: capacity(&peers, map_names::PEERS, cfg.max_peers),
            ports,
            grants,
            peers,
            peer_hosts,
            local_nets,
            counters,
            deny_events: Some(deny_events),
            kill_requests: Some(kill_requests),
            programs: Vec::new(),
            xdp: Vec::new(),
            ebpf,
        })
    }

    /// Attaches the loaded programs (call once the maps hold the policy).
    ///
    /// cgroup programs get new links beside any old ones (multi-attach: a
    /// connection passes only if every attached program allows it), pinned
    /// over this layout's previous pins, which releases the old links. XDP
    /// takes over an existing pinned link in place (BPF_LINK_UPDATE). Then
    /// links and maps of older layouts are retired. At no instant is a
    /// protected port without a program whose maps are complete.
    pub fn attach(&mut self) -> Result<()> {
        self.attach_cgroup()?;
        let links = self.pin_dir.join("links");
        let older = older_layouts(&self.bpffs, &self.pin_dir);
        self.xdp = attach_xdp(&mut self.ebpf, &links, &older, &self.xdp_ifaces)?;
        self.held.retain(|h| h.kind == LinkKind::Cgroup);
        for x in self.xdp.clone() {
            let pin = xdp_pin_name(&x.iface);
            self.hold(&links, &pin, program_names::XDP, LinkKind::Xdp(x.iface))?;
        }
        let mut programs = self.programs.clone();
        if !self.xdp.is_empty() {
            programs.push(program_names::XDP);
        }
        self.programs = programs;
        for dir in older {
            tracing::info!(dir = %dir.display(), "retiring the pins of an older map layout");
            retire_layout(&dir).map_err(|source| DataplaneError::PinDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Attaches the cgroup programs to the cgroup now at `self.cgroup` (new
    /// links beside old ones, pinned over them) and holds the new links.
    fn attach_cgroup(&mut self) -> Result<()> {
        let links = self.pin_dir.join("links");
        let cgroup_file =
            fs::File::open(&self.cgroup).map_err(|source| DataplaneError::Cgroup {
                path: self.cgroup.clone(),
                source,
            })?;
        let ino = cgroup_file
            .metadata()
            .map_err(|source| DataplaneError::Cgroup {
                path: self.cgroup.clone(),
                source,
            })?
            .ino();
        let mut programs = Vec::new();
        for (name, _) in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let attach_err = |source| DataplaneError::Attach {
                program: name,
                cgroup: self.cgroup.clone(),
                source,
            };
            // Kernel cgroup links take no flags and always stack with other
            // programs (multi-attach semantics): `Single` means flags 0 here.
            let id = prog
                .attach(&cgroup_file, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            pin_link_replacing(fd_link(link, &links, name)?, &links, name)?;
            self.hold(&links, name, name, LinkKind::Cgroup)?;
            programs.push(name);
        }
        for (name, attach_type) in SKB_PROGRAMS {
            let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            let attach_err = |source| DataplaneError::Attach {
                program: name,
                cgroup: self.cgroup.clone(),
                source,
            };
            let id = prog
                .attach(&cgroup_file, attach_type, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            pin_link_replacing(fd_link(link, &links, name)?, &links, name)?;
            self.hold(&links, name, name, LinkKind::Cgroup)?;
            programs.push(name);
        }
        self.cgroup_ino = ino;
        self.programs = programs;
        Ok(())
    }

    /// Opens the link pinned as `links/pin` and holds it (replacing the
    /// link held under that pin name before, which is then released).
    fn hold(
        &mut self,
        links: &Path,
        pin: &str,
        program: &'static str,
        kind: LinkKind,
    ) -> Result<()> {
        let path = links.join(pin);
        let pin_err = |e: io::Error| DataplaneError::Pin {
            what: "link (re-opening it to hold it)",
            path: path.clone(),
            source: Box::new(e),
        };
        let fd = enforcement::obj_get(&path).map_err(pin_err)?;
        let facts = enforcement::link_facts(&fd).map_err(pin_err)?;
        self.held.retain(|h| h.pin != pin);
        self.held.push(HeldLink {
            pin: pin.to_string(),
            program,
            kind,
            fd,
            id: facts.id,
            prog_id: facts.prog_id,
        });
        Ok(())
    }

    /// Lets go of the links this agent holds (for an uninstall through the
    /// agent: once the pins are gone too, nothing is attached).
    pub fn release_links(&mut self) {
        self.held.clear();
        self.programs.clear();
        self.xdp.clear();
    }

    /// This agent's bpffs directory (holding every layout's pins).
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Names of the attached programs.
    pub fn programs(&self) -> &[&'static str] {
        &self.programs
    }

    /// Where the XDP program is attached, and how.
    pub fn xdp(&self) -> &[XdpAttachment] {
        &self.xdp
    }

    /// Hands the kill-request ring buffer to its reader (once).
    pub fn take_kill_requests(&mut self) -> Option<RingBuf<MapData>> {
        self.kill_requests.take()
    }

    /// Hands the deny-event ring buffer to its reader (once).
    pub fn take_deny_events(&mut self) -> Option<RingBuf<MapData>> {
        self.deny_events.take()
    }

    /// Every (protocol, port) → segment entry the kernel holds now.
    pub fn read_ports(&self) -> Result<Vec<(Proto, u16, u32)>> {
        let mut out = Vec::new();
        for index in 0..PORT_SLOTS {
            let seg = self
                .ports
                .get(&index, 0)
                .map_err(map_err(map_names::PORTS, "read"))?;
            if seg != 0 {
                let proto = if index < 65536 {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                out.push((proto, (index & 0xffff) as u16, seg));
            }
        }
        Ok(out)
    }

    /// The segment protecting a port, as the kernel sees it (0 = none).
    pub fn port_segment(&self, proto: Proto, port: u16) -> Result<u32> {
        self.ports
            .get(&port_index(proto, port), 0)
            .map_err(map_err(map_names::PORTS, "read"))
    }

    pub fn set_port(&mut self, proto: Proto, port: u16, segment: u32) -> Result<()> {
        self.ports
            .set(port_index(proto, port), segment, 0)
            .map_err(map_err(map_names::PORTS, "write"))
    }

    /// Applies ledger changes in order and stops at the first failure.
    pub fn apply(&mut self, changes: &[Change]) -> Result<()> {
        changes.iter().try_for_each(|c| self.apply_one(c))
    }

    fn apply_one(&mut self, change: &Change) -> Result<()> {
        match *change {
            Change::Put(EntryKey::Local(key), at) => self
                .grants
                .insert(key, Expiry { at_boot_ns: at }, 0)
                .map_err(|e| full_or(e, map_names::GRANTS, self.max_grants, "insert")),
            Change::Delete(EntryKey::Local(key)) => ignore_missing(self.grants.remove(&key))
                .map_err(map_err(map_names::GRANTS, "delete")),
            // A single host (IPv6 /128, IPv4 /32 as v4-mapped): the host map.
            Change::Put(
                EntryKey::Peer {
                    segment,
                    addr,
                    prefix: 128,
                },
                at,
            ) => self
                .peer_hosts
                .insert(
                    PeerKey {
                        segment_be: segment.to_be_bytes(),
                        addr,
                    },
                    Expiry { at_boot_ns: at },
                    0,
                )
                .map_err(|e| full_or(e, map_names::PEER_HOSTS, self.max_peers, "insert")),
            Change::Delete(EntryKey::Peer {
                segment,
                addr,
                prefix: 128,
            }) => ignore_missing(self.peer_hosts.remove(&PeerKey {
                segment_be: segment.to_be_bytes(),
                addr,
            }))
            .map_err(map_err(map_names::PEER_HOSTS, "delete")),
            Change::Put(
                EntryKey::Peer {
                    segment,
                    addr,
                    prefix,
                },
                at,
            ) => {
                let key = peer_key(segment, addr, prefix);
                self.peers
                    .insert(&key, Expiry { at_boot_ns: at }, 0)
                    .map_err(|e| full_or(e, map_names::PEERS, self.max_peers, "insert"))
            }
            Change::Delete(EntryKey::Peer {
                segment,
                addr,
                prefix,
            }) => ignore_missing(self.peers.remove(&peer_key(segment, addr, prefix)))
                .map_err(map_err(map_names::PEERS, "delete")),
        }
    }

    /// Every local grant entry the kernel holds.
    pub fn read_grants(&self) -> Result<Vec<(GrantKey, u64)>> {
        self.grants
            .iter()
            .map(|r| r.map(|(k, v)| (k, v.at_boot_ns)))
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(map_names::GRANTS, "read"))
    }

    /// One local grant entry's expiry, as the kernel holds it.
    pub fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>> {
        match self.grants.get(key, 0) {
            Ok(v) => Ok(Some(v.at_boot_ns)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::GRANTS, "read")(e)),
        }
    }

    /// Every peer entry the kernel holds.
    pub fn read_peers(&self) -> Result<Vec<PeerEntry>> {
        let mut out = Vec::new();
        for r in self.peers.iter() {
            let (k, v) = r.map_err(map_err(map_names::PEERS, "read"))?;
            let data = k.data();
            let prefix = (k.prefix_len().saturating_sub(32)) as u8;
            out.push(PeerEntry {
                segment: u32::from_be_bytes(data.segment_be),
                addr: data.addr,
                prefix,
                expiry: v.at_boot_ns,
            });
        }
        for r in self.peer_hosts.iter() {
            let (k, v) = r.map_err(map_err(map_names::PEER_HOSTS, "read"))?;
            out.push(PeerEntry {
                segment: u32::from_be_bytes(k.segment_be),
                addr: k.addr,
                prefix: 128,
                expiry: v.at_boot_ns,
            });
        }
        Ok(out)
    }

    /// The peer entry that decides for a source address on a segment, as
    /// the XDP program and the ingress peer check find it: a live host entry, else the longest prefix,
    /// else an expired host entry.
    pub fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>> {
        let host = match self.peer_hosts.get(
            &PeerKey {
                segment_be: segment.to_be_bytes(),
                addr,
            },
            0,
        ) {
            Ok(v) => Some(v.at_boot_ns),
            Err(MapError::KeyNotFound) => None,
            Err(e) => return Err(map_err(map_names::PEER_HOSTS, "read")(e)),
        };
        if host.is_some_and(|at| at > crate::clock::boot_ns()) {
            return Ok(host);
        }
        match self.peers.get(&peer_key(segment, addr, 128), 0) {
            Ok(v) => Ok(Some(v.at_boot_ns)),
            Err(MapError::KeyNotFound) => Ok(host),
            Err(e) => Err(map_err(map_names::PEERS, "read")(e)),
        }
    }

    /// Whether `addr` falls in a prefix of the local-prefix trie (what the
    /// programs' `in_local_nets` asks).
    pub fn in_local_nets(&self, addr: [u8; 16]) -> Result<bool> {
        let key = aya::maps::lpm_trie::Key::new(128, addr);
        match self.local_nets.get(&key, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(map_names::LOCAL_NETS, "read")(e)),
        }
    }

    /// Makes the local-prefix trie hold exactly `nets` (adds first, so a
    /// prefix that stays local is never missing for an instant).
    pub fn set_local_addrs(&mut self, nets: &BTreeSet<LocalNet>) -> Result<()> {
        let current: BTreeSet<LocalNet> = self
            .local_nets
            .keys()
            .map(|k| {
                k.map(|k| LocalNet {
                    addr: k.data(),
                    prefix: k.prefix_len() as u8,
                })
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(map_names::LOCAL_NETS, "read"))?;
        let key = |n: &LocalNet| aya::maps::lpm_trie::Key::new(n.prefix as u32, n.addr);
        for n in nets.difference(&current) {
            self.local_nets.insert(&key(n), 1, 0).map_err(|e| {
                match full_or(e, map_names::LOCAL_NETS, MAX_LOCAL_NETS, "insert") {
                    DataplaneError::Full { capacity, .. } => {
                        DataplaneError::LocalNetsFull { capacity }
                    }
                    other => other,
                }
            })?;
        }
        for n in current.difference(nets) {
            ignore_missing(self.local_nets.remove(&key(n)))
                .map_err(map_err(map_names::LOCAL_NETS, "delete"))?;
        }
        Ok(())
    }

    /// Allowed/denied counts of a segment, summed over CPUs.
    pub fn counters(&self, segment: u32) -> Result<SegmentCounters> {
        let per_cpu = self
            .counters
            .get(&segment, 0)
            .map_err(map_err(map_names::COUNTERS, "read"))?;
        Ok(per_cpu
            .iter()
            .fold(SegmentCounters::default(), |acc, c| SegmentCounters {
                allowed: acc.allowed + c.allowed,
                denied: acc.denied + c.denied,
            }))
    }

    pub fn capacity(&self) -> (u32, u32) {
        (self.max_grants, self.max_peers)
    }

    /// Runs the XDP or a cgroup_skb program `repeat` times on `packet` (an
    /// Ethernet frame) under BPF_PROG_TEST_RUN, attached nowhere: its return
    /// value and the kernel's mean time per run. `ifindex` (cgroup_skb only)
    /// makes the packet arrive on that device instead of loopback (kernel ≥
    /// 5.10 for `ifindex` in the test context). For `portcullis
    /// bench-dataplane`; loads a program `open` did not.
    pub fn test_run(
        &mut self,
        name: &'static str,
        packet: &[u8],
        ifindex: Option<u32>,
        repeat: u32,
    ) -> Result<(u32, std::time::Duration)> {
        use aya::{TestRun, TestRunOptions};
        // The leading fields of `struct __sk_buff` up to `ifindex` (offset
        // 40); the kernel takes the rest as zero.
        let mut skb_ctx = [0u8; 44];
        if let Some(i) = ifindex {
            skb_ctx[40..44].copy_from_slice(&i.to_ne_bytes());
        }
        let opts = TestRunOptions {
            data_in: Some(packet),
            ctx_in: ifindex.map(|_| &skb_ctx[..]),
            repeat,
            ..TestRunOptions::new()
        };
        let load_err = |source| DataplaneError::ProgramLoad {
            program: name,
            source,
        };
        let result = if name == program_names::XDP {
            let prog: &mut Xdp = program(&mut self.ebpf, name)?;
            match prog.load() {
                Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
                Err(source) => return Err(load_err(source)),
            }
            prog.test_run(opts)
        } else {
            let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            match prog.load() {
                Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
                Err(source) => return Err(load_err(source)),
            }
            prog.test_run(opts)
        }
        .map_err(|source| DataplaneError::TestRun {
            program: name,
            source,
        })?;
        Ok((result.return_value, result.duration))
    }
}

fn peer_key(segment: u32, addr: [u8; 16], prefix: u8) -> aya::maps::lpm_trie::Key<PeerKey> {
    aya::maps::lpm_trie::Key::new(
        agent_common::peer_prefix_len(prefix as u32),
        PeerKey {
            segment_be: segment.to_be_bytes(),
            addr,
        },
    )
}

fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

fn full_or(e: MapError, map: &'static str, capacity: u32, op: &'static str) -> DataplaneError {
    if let MapError::SyscallError(ref s) = e {
        if s.io_error.raw_os_error() == Some(libc::E2BIG) {
            return DataplaneError::Full { map, capacity };
        }
    }
    DataplaneError::Map { map, op, source: e }
}

/// Pins `link` as `dir/name`, atomically replacing a link pinned there by a
/// previous run (which the kernel then releases).
fn pin_link_replacing(link: FdLink, dir: &Path, name: &str) -> Result<()> {
    // bpffs refuses names with a dot in them.
    let tmp = dir.join(format!("{name}_new"));
    let _ = fs::remove_file(&tmp);
    let final_path = dir.join(name);
    let pinned = link.pin(&tmp).map_err(|e| DataplaneError::Pin {
        what: "link",
        path: tmp.clone(),
        source: Box::new(e),
    })?;
    fs::rename(&tmp, &final_path).map_err(|e| DataplaneError::Pin {
        what: "link",
        path: final_path.clone(),
        source: Box::new(e),
    })?;
    // Closing our fd leaves the pin holding the link.
    drop(pinned);
    Ok(())
}

/// The pin name of an interface's XDP link (bpffs refuses dots in names).
fn xdp_pin_name(iface: &str) -> String {
    format!("xdp_{}", iface.replace('.', "_"))
}

/// Attaches the XDP program to each interface: into the link a previous run
/// pinned, in this layout or an older one (BPF_LINK_UPDATE swaps the
/// program atomically), else a new link in native mode, falling back to
/// generic mode. Unpins links of interfaces no longer configured.
fn attach_xdp(
    ebpf: &mut Ebpf,
    links: &Path,
    older: &[PathBuf],
    ifaces: &[String],
) -> Result<Vec<XdpAttachment>> {
    let name = program_names::XDP;
    let wanted: Vec<String> = ifaces.iter().map(|i| xdp_pin_name(i)).collect();
    if let Ok(entries) = fs::read_dir(links) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().to_string();
            if file.starts_with("xdp_") && !wanted.contains(&file) {
                tracing::info!(pin = %e.path().display(), "interface no longer configured; detaching its XDP program");
                let _ = fs::remove_file(e.path());
            }
        }
    }
    if ifaces.is_empty() {
        return Ok(Vec::new());
    }
    let prog: &mut Xdp = program(ebpf, name)?;
    let mut out = Vec::new();
    for iface in ifaces {
        let pin = links.join(xdp_pin_name(iface));
        let pin_err =
            |e: Box<dyn std::error::Error + Send + Sync>, path: &Path| DataplaneError::Pin {
                what: "XDP link",
                path: path.to_path_buf(),
                source: e,
            };
        let xdp_err = |source| DataplaneError::XdpAttach {
            iface: iface.clone(),
            source,
        };
        // A link pinned by a previous run of this or an older layout.
        let previous = std::iter::once(pin.clone())
            .chain(
                older
                    .iter()
                    .map(|d| d.join("links").join(xdp_pin_name(iface))),
            )
            .find(|p| p.exists());
        if let Some(prev) = previous {
            if prev != pin {
                // Pin the same link under this layout before the old layout is retired.
                let again = PinnedLink::from_pin(&prev).map_err(|e| pin_err(Box::new(e), &prev))?;
                FdLink::from(again)
                    .pin(&pin)
                    .map_err(|e| pin_err(Box::new(e), &pin))?;
            }
            let held = PinnedLink::from_pin(&pin).map_err(|e| pin_err(Box::new(e), &pin))?;
            let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(held))
                .map_err(|e| pin_err(Box::new(e), &pin))?;
            prog.attach_to_link(link).map_err(xdp_err)?;
            out.push(XdpAttachment {
                iface: iface.clone(),
                mode: "replaced",
            });
            continue;
        }
        let mode = new_xdp_link(prog, iface, &pin)?;
        out.push(XdpAttachment {
            iface: iface.clone(),
            mode,
        });
    }
    Ok(out)
}

/// Attaches the XDP program to `iface` through a new link pinned at `pin`:
/// native mode, else generic. Returns the mode.
fn new_xdp_link(prog: &mut Xdp, iface: &str, pin: &Path) -> Result<&'static str> {
    let xdp_err = |source| DataplaneError::XdpAttach {
        iface: iface.to_string(),
        source,
    };
    let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
        Ok(id) => (id, "native"),
        Err(native) => {
            tracing::info!(%iface, error = %native, "native XDP unavailable; using generic mode");
            (
                prog.attach(iface, XdpMode::Skb).map_err(xdp_err)?,
                "generic",
            )
        }
    };
    let link = prog.take_link(id).map_err(xdp_err)?;
    let link = FdLink::try_from(link).map_err(|e| DataplaneError::Pin {
        what: "XDP link (needs kernel ≥ 5.9 for XDP links)",
        path: pin.to_path_buf(),
        source: Box::new(e),
    })?;
    link.pin(pin).map_err(|e| DataplaneError::Pin {
        what: "XDP link",
        path: pin.to_path_buf(),
        source: Box::new(e),
    })?;
    Ok(mode)
}

/// Pins the object behind `fd` at `path` (BPF_OBJ_PIN).
fn pin_fd(fd: &OwnedFd, path: &Path) -> Result<()> {
    enforcement::obj_pin(fd, path).map_err(|e| DataplaneError::Pin {
        what: "link",
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Every (protocol, port) → segment entry of the ports map pinned under
/// `bpffs` (for `uninstall` to say which ports it opens).
pub fn pinned_ports(bpffs: &Path) -> Result<Vec<(Proto, u16)>> {
    let path = pin_dir(bpffs).join("maps").join(map_names::PORTS);
    let data = MapData::from_pin(&path).map_err(map_err(map_names::PORTS, "open"))?;
    let map = aya::maps::Map::from_map_data(data).map_err(map_err(map_names::PORTS, "open"))?;
    let ports: Array<MapData, u32> =
        Array::try_from(map).map_err(map_err(map_names::PORTS, "open"))?;
    let mut out = Vec::new();
    for index in 0..PORT_SLOTS {
        if ports.get(&index, 0).unwrap_or(0) != 0 {
            let proto = if index < 65536 {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            out.push((proto, (index & 0xffff) as u16));
        }
    }
    Ok(out)
}

/// Removes every program, link and map this agent pinned under `bpffs`:
/// the one way to stop enforcing. Returns the paths removed.
pub fn uninstall(bpffs: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !bpffs.exists() {
        return Ok(removed);
    }
    // Links first: unpinning them detaches the programs.
    let mut dirs = vec![bpffs.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort_by_key(|p| !p.components().any(|c| c.as_os_str() == "links"));
    for f in files {
        fs::remove_file(&f)?;
        removed.push(f);
    }
    let mut all_dirs: Vec<PathBuf> = walk_dirs(bpffs)?;
    all_dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in all_dirs {
        fs::remove_dir(&d)?;
    }
    Ok(removed)
}

fn walk_dirs(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        for e in fs::read_dir(&out[i])? {
            let e = e?;
            if e.file_type()?.is_dir() {
                out.push(e.path());
            }
        }
        i += 1;
    }
    Ok(out)
}
