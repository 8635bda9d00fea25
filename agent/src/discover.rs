//! `portcullis discover`: what listens on this host and who reaches it.
//!
//! Two sources, joined by port: the host's listening sockets (sock_diag:
//! TCP listeners and unconnected UDP sockets, with their owner's uid and
//! cgroup; the process from /proc, by socket inode), and the kernel's
//! discovery map (`PC_DISCOVERY`, fed by the hooks at every connect and
//! every remote connection set-up, protected port or not), which says who
//! reached which port, how often, first and last. Each port also says
//! whether a segment protects it, and in which mode.
//!
//! Owns the view (`DiscoveryView`) and its assembly. It does not own the
//! map (dataplane), the names (`cgroupfs`, the user database) or what a
//! person makes of it (`suggest`). Everything here is reported, never
//! acted on: names in it come from cgroup directories and process names
//! that local users choose, so the CLI escapes them and `suggest` only
//! writes a `unit:` that systemd confirms (see docs/security.md).
//!
//! Kernel: sock_diag with `INET_DIAG_CGROUP_ID` (5.7).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use agent_common::{ip_of_key, seen, DiscoveryKey, Proto, Sighting};
use serde::{Deserialize, Serialize};

use crate::{
    cgroupfs::{self, Hierarchy},
    clock,
    sockdiag::{DiagSocket, SockDiag},
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_LISTEN: u8 = 10;
/// What sock_diag reports for an unconnected UDP socket (TCP_CLOSE).
const UDP_UNCONNECTED: u8 = 7;
/// Most cgroup directories walked to name cgroup ids.
const MAX_CGROUPS: usize = 200_000;
/// Most processes whose descriptors are read to name listeners.
const MAX_PROCESSES: usize = 100_000;

/// A listening socket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ListenerView {
    /// "tcp" or "udp".
    pub proto: String,
    pub addr: String,
    pub port: u16,
    pub uid: u32,
    pub user: Option<String>,
    /// The owning process (the first found holding the socket).
    pub pid: Option<u32>,
    /// Its `comm`, chosen by whoever started it.
    pub process: Option<String>,
    /// The socket's cgroup, relative to the cgroup2 mount.
    pub cgroup: Option<String>,
    /// The systemd unit whose cgroup that is, as systemd confirms it.
    pub unit: Option<String>,
}

/// A client the kernel saw reach a port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ClientView {
    /// "local" or "peer".
    pub kind: String,
    /// Local clients: their cgroup (when it still exists) and its id.
    pub cgroup: Option<String>,
    pub cgroup_id: Option<u64>,
    /// Local clients: the unit whose cgroup it is, confirmed by systemd.
    pub unit: Option<String>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    /// Remote clients: their address.
    pub peer: Option<String>,
    /// Connections (TCP) or unconnected datagrams (UDP) seen.
    pub count: u64,
    /// RFC 3339, UTC.
    pub first_seen: String,
    pub last_seen: String,
    /// Seconds since the latest sighting.
    pub last_seen_secs_ago: u64,
}

/// One port: who listens, which segment protects it, who reached it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PortView {
    pub proto: String,
    pub port: u16,
    /// The protecting segment, or `None` for an unprotected port.
    pub segment: Option<String>,
    /// "enforce" or "audit" when protected.
    pub mode: Option<String>,
    pub listeners: Vec<ListenerView>,
    pub clients: Vec<ClientView>,
}

/// A segment as `suggest` needs it: its name, ports and mode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SegmentPorts {
    pub name: String,
    pub ports: Vec<String>,
    pub mode: String,
}

/// The whole answer of `discover`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct DiscoveryView {
    /// Whether the kernel records sightings (`discovery` setting).
    pub recording: bool,
    /// Capacity of the kernel's sighting map, and entries it holds now.
    pub capacity: u32,
    pub entries: usize,
    pub ports: Vec<PortView>,
    pub segments: Vec<SegmentPorts>,
}

/// What the agent knows that discovery joins in: per (proto, port), the
/// protecting segment's name and mode.
pub(crate) type Protection = BTreeMap<(Proto, u16), (String, String)>;

/// Assembles the view from the kernel's sightings and a look at the host.
pub(crate) fn build(
    sightings: Vec<(DiscoveryKey, Sighting)>,
    protection: &Protection,
    segments: Vec<SegmentPorts>,
    hierarchy: &Hierarchy,
    recording: bool,
) -> DiscoveryView {
    let now = clock::boot_ns();
    let mut names = Names::new(hierarchy);
    let mut ports: BTreeMap<(Proto, u16), PortView> = BTreeMap::new();
    let entries = sightings.len();
    for l in listeners() {
        let Some(proto) = Proto::from_u8(l.proto) else {
            continue;
        };
        let view = listener_view(&l, &mut names);
        port_entry(&mut ports, protection, proto, l.local.1)
            .listeners
            .push(view);
    }
    for (key, s) in sightings {
        let Some(proto) = Proto::from_u8(key.proto) else {
            continue;
        };
        let client = client_view(&key, &s, now, &mut names);
        port_entry(&mut ports, protection, proto, key.port)
            .clients
            .push(client);
    }
    for p in ports.values_mut() {
        p.listeners
            .sort_by(|a, b| (&a.addr, a.pid).cmp(&(&b.addr, b.pid)));
        p.listeners.dedup();
        p.clients.sort_by_key(|c| std::cmp::Reverse(c.count));
    }
    DiscoveryView {
        recording,
        capacity: agent_common::DISCOVERY_ENTRIES,
        entries,
        ports: ports.into_values().collect(),
        segments,
    }
}

fn port_entry<'a>(
    ports: &'a mut BTreeMap<(Proto, u16), PortView>,
    protection: &Protection,
    proto: Proto,
    port: u16,
) -> &'a mut PortView {
    ports.entry((proto, port)).or_insert_with(|| {
        let seg = protection.get(&(proto, port));
        PortView {
            proto: proto.name().to_owned(),
            port,
            segment: seg.map(|(n, _)| n.clone()),
            mode: seg.map(|(_, m)| m.clone()),
            listeners: Vec::new(),
            clients: Vec::new(),
        }
    })
}

fn listener_view(l: &Listener, names: &mut Names) -> ListenerView {
    let cgroup = names.cgroup(l.cgroup_id);
    ListenerView {
        proto: if l.proto == TCP { "tcp" } else { "udp" }.to_owned(),
        addr: l.local.0.to_string(),
        port: l.local.1,
        uid: l.uid,
        user: names.user(l.uid),
        pid: l.pid,
        process: l.process.clone(),
        unit: cgroup.as_deref().and_then(|c| names.unit(c)),
        cgroup,
    }
}

fn client_view(key: &DiscoveryKey, s: &Sighting, now: u64, names: &mut Names) -> ClientView {
    let when = |ns: u64| clock::rfc3339(clock::wall_of(ns));
    let common = ClientView {
        kind: String::new(),
        cgroup: None,
        cgroup_id: None,
        unit: None,
        uid: None,
        user: None,
        gid: None,
        peer: None,
        count: s.count,
        first_seen: when(s.first_ns),
        last_seen: when(s.last_ns),
        last_seen_secs_ago: now.saturating_sub(s.last_ns) / 1_000_000_000,
    };
    if key.kind == seen::PEER {
        return ClientView {
            kind: "peer".into(),
            peer: Some(ip_of_key(key.addr).to_string()),
            ..common
        };
    }
    let cgroup = names.cgroup(key.cgroup_id);
    ClientView {
        kind: "local".into(),
        unit: cgroup.as_deref().and_then(|c| names.unit(c)),
        cgroup,
        cgroup_id: Some(key.cgroup_id),
        uid: Some(key.uid),
        user: names.user(key.uid),
        gid: Some(key.gid),
        ..common
    }
}

/// A listening socket and, when found, its process.
struct Listener {
    proto: u8,
    local: (IpAddr, u16),
    uid: u32,
    cgroup_id: u64,
    pid: Option<u32>,
    process: Option<String>,
}

/// Every TCP listener and unconnected UDP socket of this network namespace.
fn listeners() -> Vec<Listener> {
    let Ok(mut diag) = SockDiag::open() else {
        return Vec::new();
    };
    let mut sockets: Vec<DiagSocket> = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        if let Ok(s) = diag.dump(TCP, family, 1 << TCP_LISTEN) {
            sockets.extend(s);
        }
        if let Ok(s) = diag.dump(UDP, family, 1 << UDP_UNCONNECTED) {
            sockets.extend(s.into_iter().filter(|s| s.remote.1 == 0));
        }
    }
    let owners = socket_owners();
    sockets
        .into_iter()
        .map(|s| {
            let owner = owners.get(&s.inode);
            Listener {
                proto: s.proto,
                local: s.local,
                uid: s.uid,
                cgroup_id: s.cgroup_id,
                pid: owner.map(|o| o.0),
                process: owner.map(|o| o.1.clone()),
            }
        })
        .collect()
}

/// Socket inode → (pid, comm) of a process holding it, from /proc.
fn socket_owners() -> HashMap<u32, (u32, String)> {
    use procfs::process::{all_processes, FDTarget};
    let mut out = HashMap::new();
    let Ok(procs) = all_processes() else {
        return out;
    };
    for p in procs.flatten().take(MAX_PROCESSES) {
        let Ok(fds) = p.fd() else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let FDTarget::Socket(inode) = fd.target else {
                continue;
            };
            let Ok(inode) = u32::try_from(inode) else {
                continue;
            };
            let name = comm.get_or_insert_with(|| p.stat().map(|s| s.comm).unwrap_or_default());
            out.entry(inode)
                .or_insert_with(|| (p.pid as u32, name.clone()));
        }
    }
    out
}

/// Every cgroup directory's id → its path (at most [`MAX_CGROUPS`]).
fn walk(hierarchy: &Hierarchy) -> HashMap<u64, Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    let mut stack = vec![hierarchy.mount.clone()];
    while let Some(dir) = stack.pop() {
        if out.len() >= MAX_CGROUPS {
            break;
        }
        if let Ok(m) = std::fs::metadata(&dir) {
            out.insert(m.ino(), Some(hierarchy.relative(&dir)));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

/// Names for ids, looked up once per answer.
struct Names<'a> {
    hierarchy: &'a Hierarchy,
    cgroups: HashMap<u64, Option<String>>,
    units: HashMap<String, Option<String>>,
    users: HashMap<u32, Option<String>>,
}

impl<'a> Names<'a> {
    fn new(hierarchy: &'a Hierarchy) -> Self {
        Self {
            hierarchy,
            cgroups: HashMap::new(),
            units: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// The path of cgroup `id`: the hierarchy is walked once per answer
    /// (bounded), not once per id.
    fn cgroup(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if self.cgroups.is_empty() {
            self.cgroups = walk(self.hierarchy);
        }
        self.cgroups.get(&id).cloned().flatten()
    }

    /// The unit `cgroup` belongs to, by systemd's word only.
    fn unit(&mut self, cgroup: &str) -> Option<String> {
        cgroupfs::unit_like(cgroup)?;
        self.units
            .entry(cgroup.to_owned())
            .or_insert_with(|| cgroupfs::verified_unit(cgroup))
            .clone()
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }
}
