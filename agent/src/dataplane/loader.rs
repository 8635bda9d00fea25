//! Loading: the embedded eBPF object, its maps pinned under
//! `<bpffs>/v{LAYOUT_VERSION}/maps/` (created or re-opened), the pin
//! directories of older layouts retired, and `uninstall`, which removes
//! every pin. Attaching is [`super::links`]; map contents are [`super::maps`].
//!
//! Kernel: BPF ring buffers and BTF (Linux 5.8); bpffs mounted.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use agent_common::{
    global_names, map_names, program_names, Expiry, Proto, LAYOUT_VERSION, PORT_SLOTS,
};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{Program, ProgramError},
    Ebpf, EbpfLoader,
};

use super::{
    links::{SKB_PROGRAMS, SOCK_ADDR_PROGRAMS},
    map_err, Dataplane, DataplaneConfig, DataplaneError, Result,
};

/// The compiled programs, built by `build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// The capacity a map really has. A pinned map keeps the size it was
/// created with: a different size asked for on a later start takes effect
/// only after `portcullis uninstall`, and this says so.
pub(super) fn capacity<K: aya::Pod, M: aya::maps::IterableMap<K, Expiry>>(
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
pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| DataplaneError::ProgramLoad {
            program: name,
            source,
        })
}

/// Loads (verifies) the programs `names` of `ebpf`, on up to as many
/// threads as the machine has cores (at most [`LOAD_THREADS`]).
///
/// A `BPF_PROG_LOAD` runs the verifier on the calling thread and, for root,
/// under no lock shared with other loads, and the verifier is nearly all of
/// an agent's start without grants (~1.3 s on a 2-core machine with kernel
/// 6.18, one program after the other; `connect4`/`connect6` ~0.3 s each).
/// Each thread takes the next program from `names` in its order, so the
/// costliest should come first. What is loaded, with which maps and
/// globals, is exactly what one thread would load; only the order of the
/// kernel's verifications changes. The first error is returned (the other
/// threads still finish the program they hold; nothing is attached).
fn load_programs(ebpf: &mut Ebpf, names: &[&'static str]) -> Result<()> {
    let mut all: std::collections::HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let mut work = Vec::with_capacity(names.len());
    for &name in names {
        let prog = all
            .remove(name)
            .ok_or(DataplaneError::MissingProgram { program: name })?;
        work.push((name, prog));
    }
    let queue = std::sync::Mutex::new(work.into_iter());
    let drain = || -> Result<()> {
        loop {
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
            let Some((name, prog)) = next else {
                return Ok(());
            };
            load_one(name, prog)?;
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, LOAD_THREADS)
        .min(names.len().max(1));
    std::thread::scope(|scope| {
        // Helpers beside this thread; one that cannot be spawned leaves its
        // share to the others (this thread always drains the queue too).
        let helpers: Vec<_> = (1..threads)
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("prog-load-{i}"))
                    .spawn_scoped(scope, drain)
                    .ok()
            })
            .collect();
        let mut result = drain();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// At most this many threads load programs at once.
const LOAD_THREADS: usize = 4;

/// Loads one program of the object, whatever its type.
fn load_one(name: &'static str, prog: &mut Program) -> Result<()> {
    let loaded = match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        Program::TracePoint(p) => p.load(),
        Program::Xdp(p) => p.load(),
        Program::SchedClassifier(p) => p.load(),
        _ => return Err(DataplaneError::MissingProgram { program: name }),
    };
    loaded.map_err(|source| DataplaneError::ProgramLoad {
        program: name,
        source,
    })
}

/// Pin directories of other layout versions under an agent's bpffs directory.
pub(super) fn older_layouts(bpffs: &Path, current: &Path) -> Vec<PathBuf> {
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
pub(super) fn retire_layout(dir: &Path) -> io::Result<()> {
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

/// True when `path` is on a bpf filesystem.
pub(super) fn is_bpffs(path: &Path) -> bool {
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
pub(crate) fn pin_dir(bpffs: &Path) -> PathBuf {
    let version = std::env::var("PORTCULLIS_TEST_LAYOUT_VERSION")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(LAYOUT_VERSION);
    bpffs.join(format!("v{version}"))
}

impl Dataplane {
    /// Loads the maps (re-using this layout's pins) and the programs, and
    /// attaches nothing: see [`Dataplane::attach`].
    pub(crate) fn open(cfg: &DataplaneConfig) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let parent = cfg.bpffs.parent().unwrap_or(Path::new("/"));
        let mount_probe = if cfg.bpffs.exists() {
            cfg.bpffs.as_path()
        } else {
            parent
        };
        if !mount_probe.exists() {
            return Err(DataplaneError::NoBpffsParent {
                parent: mount_probe.to_path_buf(),
            });
        }
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
        loader.map_max_entries(map_names::USAGE, cfg.max_grants);
        loader.map_max_entries(map_names::PEERS, cfg.max_peers);
        loader.map_max_entries(map_names::PEER_HOSTS, cfg.max_peers);
        // Local-destination decisions apply to the host's network namespace
        // only: the agent's own (0 when the kernel cannot tell, kernel < 5.14).
        let host_netns = crate::hostaddrs::netns_cookie().unwrap_or(0);
        loader.override_global(global_names::HOST_NETNS, &host_netns, true);
        let discovery_on = u32::from(cfg.discovery);
        loader.override_global(global_names::DISCOVERY_ON, &discovery_on, true);
        let usage_on = u32::from(!bench_without_usage());
        loader.override_global(global_names::USAGE_ON, &usage_on, true);
        // Marked flows with a finite expiry compare jiffies instead of
        // reading the precise clock at every packet; 0 keeps the precise read.
        let tick_ns = super::tick::tick_ns();
        loader.override_global(global_names::TICK_NS, &tick_ns, true);
        // The programs run on this CPU: on x86 (TSO) the epoch load is
        // ordered before the decision's lookups without a fence.
        let loads_ordered = u32::from(loads_ordered());
        loader.override_global(global_names::LOADS_ORDERED, &loads_ordered, true);
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
        // maps first and calls `attach` once they hold the policy. The
        // kernel verifies each program on the calling thread, so they load
        // side by side (`load_programs`).
        // Costliest first (verifier time on kernel 6.18: the connect programs
        // ~0.3 s each, ingress and sendmsg ~0.2 s, egress ~0.05 s).
        let mut names = vec![
            program_names::CONNECT6,
            program_names::CONNECT4,
            program_names::SKB_INGRESS,
            program_names::SENDMSG4,
            program_names::SENDMSG6,
            program_names::SKB_EGRESS,
        ];
        if !cfg.xdp_ifaces.is_empty() {
            names.extend([program_names::TC_PEER, program_names::XDP]);
        }
        names.push(program_names::CGROUP_MKDIR);
        debug_assert!(SOCK_ADDR_PROGRAMS
            .iter()
            .map(|(n, _)| *n)
            .chain(SKB_PROGRAMS.iter().map(|(n, _)| *n))
            .all(|n| names.contains(&n)));
        load_programs(&mut ebpf, &names)?;

        // Descriptors of their own for the batch operations (aya's typed
        // maps do not lend theirs): the same maps, through their pins.
        let raw_fd = |name: &'static str| {
            let path = pin_dir.join("maps").join(name);
            super::enforcement::obj_get(&path).map_err(|e| DataplaneError::Pin {
                what: "map (re-opening it for batch operations)",
                path,
                source: Box::new(e),
            })
        };
        let grants_fd = raw_fd(map_names::GRANTS)?;
        let ports_fd = raw_fd(map_names::PORTS)?;

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
        let discovery = HashMap::try_from(take(&mut ebpf, map_names::DISCOVERY)?)
            .map_err(map_err(map_names::DISCOVERY, "open"))?;
        let usage = PerCpuHashMap::try_from(take(&mut ebpf, map_names::USAGE)?)
            .map_err(map_err(map_names::USAGE, "open"))?;
        let cover = HashMap::try_from(take(&mut ebpf, map_names::CGROUP_COVER)?)
            .map_err(map_err(map_names::CGROUP_COVER, "open"))?;
        let deny_events = RingBuf::try_from(take(&mut ebpf, map_names::DENY_EVENTS)?)
            .map_err(map_err(map_names::DENY_EVENTS, "open"))?;
        let kill_requests = RingBuf::try_from(take(&mut ebpf, map_names::KILL_REQUESTS)?)
            .map_err(map_err(map_names::KILL_REQUESTS, "open"))?;
        let epoch = Array::try_from(take(&mut ebpf, map_names::EPOCH)?)
            .map_err(map_err(map_names::EPOCH, "open"))?;
        let fresh = Array::try_from(take(&mut ebpf, map_names::FRESH)?)
            .map_err(map_err(map_names::FRESH, "open"))?;
        let cgroup_levels = Array::try_from(take(&mut ebpf, map_names::CGROUP_LEVELS)?)
            .map_err(map_err(map_names::CGROUP_LEVELS, "open"))?;

        Ok(Self {
            pin_dir,
            held: Vec::new(),
            map_ids,
            cgroup_ino: 0,
            bpffs: cfg.bpffs.clone(),
            cgroup: cfg.cgroup.clone(),
            xdp_ifaces: cfg.xdp_ifaces.clone(),
            placement: cfg.placement,
            max_grants: capacity(&grants, map_names::GRANTS, cfg.max_grants),
            max_peers: capacity(&peers, map_names::PEERS, cfg.max_peers),
            ports,
            grants,
            peers,
            peer_hosts,
            local_nets,
            counters,
            discovery,
            epoch,
            fresh,
            cgroup_levels,
            usage,
            cover,
            deny_events: Some(deny_events),
            kill_requests: Some(kill_requests),
            programs: Vec::new(),
            filters: Vec::new(),
            grants_fd,
            ports_fd,
            ebpf,
        })
    }
}

/// Every (protocol, port) → segment entry of the ports map pinned under
/// `bpffs` (for `uninstall` to say which ports it opens).
pub(crate) fn pinned_ports(bpffs: &Path) -> Result<Vec<(Proto, u16)>> {
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
pub(crate) fn uninstall(bpffs: &Path) -> io::Result<Vec<PathBuf>> {
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

/// Whether usage counting is off: only in an agent built with the `bench`
/// feature, when `cargo xtask bench` sets `PORTCULLIS_BENCH_NO_USAGE` to
/// measure the connect path without it. Never in a release build.
fn bench_without_usage() -> bool {
    cfg!(feature = "bench") && std::env::var_os("PORTCULLIS_BENCH_NO_USAGE").is_some()
}

/// Whether this CPU never lets a load overtake an earlier one (x86's TSO
/// model), so the programs may skip the fence after the epoch load
/// (`PC_LOADS_ORDERED`). Every other architecture keeps the fence.
fn loads_ordered() -> bool {
    cfg!(any(target_arch = "x86", target_arch = "x86_64"))
}
