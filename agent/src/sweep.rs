//! Judging every open flow, not only new ones: the sweep.
//!
//! The programs decide a flow when it opens (connect4/6) and, for flows
//! they marked, at every packet (cgroup_skb). Flows opened before the agent
//! started, before a reload protected their port, or whose revocation
//! request was lost (a full kill ring) are not marked. The sweep closes
//! that gap: it dumps this network namespace's established TCP and
//! connected UDP sockets (sock_diag), judges each flow to a protected port
//! with the kernel maps by the kernel's own rules, and destroys the
//! sockets of refused flows at once, idle or not.
//!
//! - A *local* flow has both ends on this host (both sockets are in the
//!   dump; for UDP, a destination that is this host, by the programs' rule,
//!   and a socket bound to its port; for a TCP connect still in SYN_SENT,
//!   whose server has no socket for it yet, a destination that is this host
//!   and a listener on its port). Its client
//!   is judged by uid, primary gid (of the process holding the socket,
//!   from /proc) and its cgroup with every ancestor, and only when that
//!   cgroup is below the agent's attach point (the programs see no other
//!   process). A refused local flow is cut at both ends: the client's
//!   socket and the server's accepted socket, so no backend stays
//!   half-open.
//! - Any other flow to a protected local port that a server accepted (a
//!   TCP listener, or an unconnected UDP socket, is bound to the port) is
//!   a *remote* one; the server's socket is judged by the peer entries for
//!   the remote address when the programs cover it: it is below the attach
//!   point, or XDP filters peers (which it does whatever the cgroup). A
//!   connection this host made *out* from a port that happens to be
//!   protected has no listener behind it and is left alone.
//!
//! A strict entry (a fleet grant marked `strict`) counts only until the
//! earlier of its deadline and "fresh until" (`PC_FRESH`), as in the
//! kernel; the agent asks for a sweep when it notices it has gone stale,
//! so idle flows admitted by strict entries are cut then too.
//!
//! A segment in audit mode is not judged: its refusals are let through and
//! logged, open flows included, until a reload makes it enforce (then the
//! reload's sweep cuts what it refuses).
//!
//! Sweeps run at start (before the agent reports ready), after every
//! reload, revoke and expiry, and whenever the programs ask for a flow to
//! be cut (the kill ring). A kill request only wakes the sweeper: nothing a
//! packet says is acted on, the sweep decides from the maps, so a forged
//! request cannot destroy an allowed flow, and one sweep (one dump per
//! protocol and family) serves every request read in one go. Sweeps are at
//! least [`MIN_INTERVAL`] apart.
//!
//! Owns the decision of which sockets to destroy; `sockdiag` is the netlink
//! shim, `explain::KernelView` the map reads. Kernel: sock_diag with
//! `INET_DIAG_CGROUP_ID` (≥ 5.7) and `SOCK_DESTROY` (≥ 4.5, CONFIG_INET_DIAG_DESTROY).
use std::{
    collections::{HashMap, HashSet},
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use agent_common::{expiry, key_of_ip, kind, port_entry, GrantKey, Proto};
use tracing::{debug, info, warn};

use crate::{
    agent::Agent,
    clock,
    explain::KernelView,
    sockdiag::{DiagError, DiagSocket, SockDiag, ALL_STATES},
};

/// Sweeps are at least this far apart, however many triggers arrive.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// TCP states of a flow worth cutting: ESTABLISHED, SYN_SENT, SYN_RECV,
/// FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT (1, 2, 3, 4, 5, 8).
const TCP_OPEN_STATES: u32 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8);
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_LISTEN: u8 = 10;
/// The state sock_diag reports for an unconnected UDP socket (TCP_CLOSE).
const UDP_UNCONNECTED: u8 = 7;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A socket's protocol, local and remote address and port.
type Ends = (u8, (IpAddr, u16), (IpAddr, u16));

/// Which end of a refused flow a socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The local client of a local flow.
    Client,
    /// The server's accepted socket of a refused local flow.
    Server,
    /// A server socket talking to a refused remote peer.
    Peer,
}

/// A socket to destroy, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cut {
    pub socket: DiagSocket,
    pub end: End,
    pub segment: u32,
}

/// What one sweep saw and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Report {
    pub sockets: usize,
    pub judged: usize,
    pub cut: usize,
}

/// The cgroups the programs cover: the attach point, its ancestors and
/// what is below it, learned one judged socket at a time.
///
/// Nothing walks the hierarchy: a user with a delegated subtree can create
/// any number of cgroups, and a walk bounded to N of them would leave flows
/// in the rest unjudged, one unbounded would stall every sweep. Instead the
/// cgroup of each socket worth judging is found from the process holding
/// it (`/proc/PID/cgroup`), checked against the socket's cgroup id (the
/// directory's inode), and linked up to the attach point by `stat`: cost
/// grows with the flows judged, not with the cgroups that exist.
pub(crate) struct Cgroups {
    /// cgroup id → parent id, for the attach point and what was learned below it.
    below: HashMap<u64, u64>,
    /// The attach point's ancestors, root first (without the attach point).
    above: Vec<u64>,
    attach: u64,
    /// The cgroup2 mount and the attach point's directory; `None` in tests
    /// that give the links directly.
    paths: Option<(PathBuf, PathBuf)>,
}

impl Cgroups {
    /// The attach point and its ancestors; what is below is learned later.
    pub(crate) fn scan(mount: &Path, attach: &Path) -> std::io::Result<Self> {
        let attach_id = fs::metadata(attach)?.ino();
        let mut above = Vec::new();
        let mut dir = attach.to_path_buf();
        while dir != mount && dir.pop() && dir.starts_with(mount) {
            above.push(fs::metadata(&dir)?.ino());
        }
        above.reverse();
        Ok(Self {
            below: HashMap::from([(attach_id, 0)]),
            above,
            attach: attach_id,
            paths: Some((mount.to_path_buf(), attach.to_path_buf())),
        })
    }

    /// Known links only (tests): `below` maps cgroup id → parent id and
    /// holds the attach point (its parent ignored).
    #[cfg(test)]
    pub(crate) fn from_links(below: HashMap<u64, u64>, above: Vec<u64>, attach: u64) -> Self {
        Self {
            below,
            above,
            attach,
            paths: None,
        }
    }

    /// The attach point is the hierarchy's root: every cgroup is below it.
    fn covers_all(&self) -> bool {
        self.above.is_empty()
    }

    /// The cgroup and every ancestor (the ids the programs look up), or
    /// `None` when the cgroup is not known to be below the attach point.
    pub(crate) fn chain(&self, id: u64) -> Option<Vec<u64>> {
        self.below.get(&id)?;
        let mut out = self.above.clone();
        let mut path = vec![id];
        let mut at = id;
        while at != self.attach {
            at = *self.below.get(&at)?;
            path.push(at);
            if path.len() > self.below.len() {
                return None;
            }
        }
        out.extend(path.into_iter().rev());
        // The programs look at the first MAX_CGROUP_DEPTH levels (root = 0)
        // and no deeper: judge as they do.
        out.truncate(agent_common::MAX_CGROUP_DEPTH as usize);
        Some(out)
    }

    /// The chain of socket `s`'s cgroup, learning it from the process that
    /// holds the socket when it is not known yet. A cgroup that cannot be
    /// placed (removed since, or its holder moved elsewhere) is judged,
    /// when the attach point is the root, by the root's entries alone,
    /// which can only refuse more; below a child attach point it is not
    /// judged (it may not be below it at all).
    pub(crate) fn chain_of(
        &mut self,
        s: &DiagSocket,
        owners: &mut impl Owners,
    ) -> Option<Vec<u64>> {
        if !self.below.contains_key(&s.cgroup_id) {
            self.learn(s, owners);
        }
        self.chain(s.cgroup_id)
            .or_else(|| self.covers_all().then(|| vec![self.attach]))
    }

    /// Links the cgroup of `s` up to the attach point, from the cgroup path
    /// of the socket's holder, when that directory is the socket's cgroup.
    fn learn(&mut self, s: &DiagSocket, owners: &mut impl Owners) {
        let Some((mount, attach)) = &self.paths else {
            return;
        };
        let Some(rel) = owners.cgroup_of(s.inode) else {
            return;
        };
        let dir = mount.join(rel.trim_start_matches('/'));
        if !dir.starts_with(attach) || dir.components().any(|c| c.as_os_str() == "..") {
            return;
        }
        let mut at = dir;
        let mut ids = Vec::new();
        loop {
            let Ok(m) = fs::metadata(&at) else {
                return;
            };
            ids.push(m.ino());
            if at == *attach || !at.pop() {
                break;
            }
        }
        if ids.first() != Some(&s.cgroup_id) || ids.last() != Some(&self.attach) {
            return;
        }
        // Child → parent links; the attach point's own entry stays.
        self.below
            .extend(ids.windows(2).map(|pair| (pair[0], pair[1])));
    }
}

/// Whether `ip` is this host's by the programs' rule (`decide::v4_is_local`,
/// `v6_is_local`): loopback, unspecified, limited broadcast, multicast, then
/// the mirror of the kernel's local routes. An unreadable map counts as local.
fn this_host(kernel: &(impl KernelView + ?Sized), ip: IpAddr) -> bool {
    let addr = key_of_ip(ip);
    let v4 = addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    let by_rule = if v4 {
        let a = &addr[12..];
        a[0] == 127 || a == [0, 0, 0, 0] || a == [255; 4] || a[0] & 0xf0 == 0xe0
    } else {
        addr[0] == 0xff || (addr[..15] == [0; 15] && addr[15] <= 1)
    };
    by_rule || kernel.in_local_nets(addr).unwrap_or(true)
}

/// Who holds a socket: the process's gid and cgroup, from /proc.
#[path = "sweep_owners.rs"]
mod owners;
pub(crate) use owners::{Owners, OwnersAhead, ProcOwners};

/// Whether a live entry in the grant map covers this local client, by the
/// programs' rule: uid, then the cgroup and its ancestors, then the gid.
fn local_allowed(
    kernel: &(impl KernelView + ?Sized),
    owners: &mut impl Owners,
    segment: u32,
    s: &DiagSocket,
    chain: &[u64],
    now: u64,
    fresh: u64,
) -> bool {
    let live = |kind, id| {
        kernel
            .grant_expiry(&GrantKey { kind, segment, id })
            .ok()
            .flatten()
            .is_some_and(|at| expiry::until(at, fresh) > now)
    };
    if live(kind::UID, s.uid as u64) || chain.iter().any(|&c| live(kind::CGROUP, c)) {
        return true;
    }
    owners
        .gid_of(s.inode)
        .is_some_and(|g| live(kind::GID, g as u64))
}

/// Decides which sockets of `sockets` (one dump of every family and
/// protocol) to destroy, reading only the kernel maps.
pub(crate) fn judge(
    sockets: &[DiagSocket],
    cgroups: &mut Cgroups,
    kernel: &(impl KernelView + ?Sized),
    owners: &mut impl Owners,
    all_remote: bool,
) -> (Vec<Cut>, usize) {
    let now = clock::boot_ns();
    // Strict entries work only until "fresh until", as in the kernel; an
    // unreadable value counts as stale (cuts, never keeps).
    let fresh = kernel.fresh_until().unwrap_or(0);
    let by_ends: HashMap<Ends, &DiagSocket> = sockets
        .iter()
        .filter(|s| s.state != TCP_LISTEN)
        .map(|s| ((s.proto, s.local, s.remote), s))
        .collect();
    // UDP sockets bound to a port: (port, address), the address
    // unspecified for a wildcard bind.
    let udp_bound: HashSet<(u16, IpAddr)> = sockets
        .iter()
        .filter(|s| s.proto == UDP)
        .map(|s| (s.local.1, s.local.0))
        .collect();
    // Ports a server accepts on: (proto, port, address), the address
    // unspecified for a wildcard bind.
    let serving: HashSet<(u8, u16, IpAddr)> = sockets
        .iter()
        .filter(|s| {
            (s.proto == TCP && s.state == TCP_LISTEN)
                || (s.proto == UDP && s.state == UDP_UNCONNECTED)
        })
        .map(|s| (s.proto, s.local.1, s.local.0))
        .collect();
    let serves = |proto: u8, (ip, port): (IpAddr, u16)| {
        serving.contains(&(proto, port, ip))
            || serving.contains(&(proto, port, IpAddr::V4([0; 4].into())))
            || serving.contains(&(proto, port, IpAddr::V6([0u8; 16].into())))
    };
    let accepted = |s: &DiagSocket| serves(s.proto, s.local);
    // A segment in audit mode cuts nothing: its refusals are only logged
    // (by the programs, at connect); its flows are judged again once a
    // reload makes it enforce.
    let segment = |proto: u8, port: u16| {
        Proto::from_u8(proto)
            .and_then(|p| kernel.port_entry(p, port).ok())
            .filter(|&e| !port_entry::audit(e))
            .map_or(0, port_entry::segment)
    };
    let open = |s: &DiagSocket| match s.proto {
        TCP => TCP_OPEN_STATES & (1 << s.state) != 0,
        _ => s.state == TCP_ESTABLISHED,
    };
    let mut cuts = Vec::new();
    let mut judged = 0;
    let mut servers_of_local: HashSet<u64> = HashSet::new();
    // Local flows first, from their client's side.
    for s in sockets.iter().filter(|s| open(s)) {
        let seg = segment(s.proto, s.remote.1);
        if seg == 0 {
            continue;
        }
        let mirror = by_ends.get(&(s.proto, s.remote, s.local)).copied();
        // A connected UDP socket is a local flow only when its destination
        // is this host: a local socket bound to the same port number says
        // nothing about a datagram sent to another host.
        // Likewise a TCP connect still in its handshake (SYN_SENT) has no
        // server socket to mirror it while its SYNs go unanswered (dropped by
        // a full accept queue, then by the programs once its allow is
        // revoked): it is a local flow when its destination is this host and
        // a listener there serves the port. Left out, such a connect would
        // hang until its own timeout, each retransmitted SYN dropped.
        let local = mirror.is_some()
            || (s.proto == UDP
                && this_host(kernel, s.remote.0)
                && (udp_bound.contains(&(s.remote.1, s.remote.0))
                    || udp_bound.contains(&(s.remote.1, IpAddr::V4([0; 4].into())))
                    || udp_bound.contains(&(s.remote.1, IpAddr::V6([0u8; 16].into())))))
            || (s.proto == TCP
                && s.state == TCP_SYN_SENT
                && this_host(kernel, s.remote.0)
                && serves(TCP, s.remote));
        if !local {
            continue;
        }
        if let Some(m) = mirror {
            servers_of_local.insert(m.cookie);
        }
        let Some(chain) = cgroups.chain_of(s, owners) else {
            continue;
        };
        judged += 1;
        if local_allowed(kernel, owners, seg, s, &chain, now, fresh) {
            continue;
        }
        cuts.push(Cut {
            socket: *s,
            end: End::Client,
            segment: seg,
        });
        if let Some(m) = mirror {
            cuts.push(Cut {
                socket: *m,
                end: End::Server,
                segment: seg,
            });
        }
    }
    // Then remote peers, from the server's side.
    for s in sockets.iter().filter(|s| open(s)) {
        if servers_of_local.contains(&s.cookie)
            || by_ends.contains_key(&(s.proto, s.remote, s.local))
        {
            continue;
        }
        let seg = segment(s.proto, s.local.1);
        if seg == 0 || !accepted(s) || !(all_remote || cgroups.chain_of(s, owners).is_some()) {
            continue;
        }
        judged += 1;
        let allowed = kernel
            .peer_lookup(seg, key_of_ip(s.remote.0))
            .ok()
            .flatten()
            .is_some_and(|at| expiry::until(at, fresh) > now);
        if !allowed {
            cuts.push(Cut {
                socket: *s,
                end: End::Peer,
                segment: seg,
            });
        }
    }
    (cuts, judged)
}

/// The sweeper: a netlink socket and the cgroup hierarchy it judges in.
pub(crate) struct Sweeper {
    diag: SockDiag,
    mount: PathBuf,
    attach: PathBuf,
    /// XDP filters peers: remote flows are judged whatever the server's cgroup.
    all_remote: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SweepError {
    #[error("listing sockets (sock_diag) failed")]
    Diag(#[from] DiagError),
    #[error("reading the cgroup tree at {path} failed")]
    Cgroups {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Sweeper {
    pub(crate) fn open(mount: &Path, attach: &Path, all_remote: bool) -> Result<Self, SweepError> {
        Ok(Self {
            diag: SockDiag::open()?,
            mount: mount.to_path_buf(),
            attach: attach.to_path_buf(),
            all_remote,
        })
    }

    /// Every TCP and UDP socket, both families.
    fn dump(&mut self) -> Result<Vec<DiagSocket>, SweepError> {
        let mut all = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            all.extend(self.diag.dump(TCP, family, ALL_STATES)?);
            all.extend(self.diag.dump(UDP, family, ALL_STATES)?);
        }
        Ok(all)
    }

    /// What a sweep judges: the sockets and the covered cgroups, read
    /// without any lock held.
    pub(crate) fn snapshot(&mut self) -> Result<Snapshot, SweepError> {
        let sockets = self.dump()?;
        let cgroups =
            Cgroups::scan(&self.mount, &self.attach).map_err(|source| SweepError::Cgroups {
                path: self.attach.display().to_string(),
                source,
            })?;
        Ok(Snapshot {
            sockets,
            cgroups,
            all_remote: self.all_remote,
        })
    }

    /// Destroys the sockets of `cuts`; returns how many were destroyed.
    pub(crate) fn cut(&mut self, cuts: &[Cut]) -> usize {
        let mut n = 0;
        for cut in cuts {
            let s = &cut.socket;
            match self.diag.destroy(&s.id()) {
                Ok(true) => {
                    n += 1;
                    info!(
                        end = ?cut.end,
                        segment = cut.segment,
                        local = %format!("{}:{}", s.local.0, s.local.1),
                        remote = %format!("{}:{}", s.remote.0, s.remote.1),
                        uid = s.uid,
                        "cut flow: socket destroyed"
                    );
                }
                Ok(false) => debug!(?s, "cut flow: socket already gone"),
                Err(e) => warn!(error = %e, ?s, "cut flow: destroying the socket failed"),
            }
        }
        n
    }

    /// One sweep for the running agent: snapshot, judge under the agent's
    /// lock with its maps (the holders of sockets read from /proc with the
    /// lock released, see [`Snapshot::judge_locked`]), destroy.
    pub(crate) fn sweep(&mut self, agent: &Mutex<Agent>) -> Result<Report, SweepError> {
        let mut snap = self.snapshot()?;
        let (cuts, judged) = snap.judge_locked(agent, ProcOwners::default(), |a, snap, owners| {
            snap.judge(a.kernel(), owners)
        });
        Ok(Report {
            sockets: snap.sockets.len(),
            judged,
            cut: self.cut(&cuts),
        })
    }
}

/// The sockets and cgroups one sweep judges.
pub(crate) struct Snapshot {
    pub sockets: Vec<DiagSocket>,
    pub cgroups: Cgroups,
    pub all_remote: bool,
}

impl Snapshot {
    pub(crate) fn judge(
        &mut self,
        kernel: &(impl KernelView + ?Sized),
        owners: &mut impl Owners,
    ) -> (Vec<Cut>, usize) {
        judge(
            &self.sockets,
            &mut self.cgroups,
            kernel,
            owners,
            self.all_remote,
        )
    }
}

impl Snapshot {
    /// Judges under `lock`, reading the sockets' holders (`owners`, /proc)
    /// only while it is released: a scan of every process's descriptors
    /// takes tens of milliseconds on a busy host, and a revoke, a grant or
    /// any control request waited that long behind it. The judging asks,
    /// what it asked and was not read is read outside the lock, and it runs
    /// again until it asks nothing new (each socket asks for its holder's
    /// cgroup and gid at most: a few runs). Only that last run decides:
    /// with every answer it needed, from the maps as they are under the
    /// lock, as one run with /proc read under the lock would.
    /// `judge` is [`Snapshot::judge`] with the maps of what `lock` holds.
    pub(crate) fn judge_locked<T, O: Owners>(
        &mut self,
        lock: &Mutex<T>,
        owners: O,
        judge: impl Fn(&T, &mut Self, &mut OwnersAhead<O>) -> (Vec<Cut>, usize),
    ) -> (Vec<Cut>, usize) {
        let mut owners = OwnersAhead::new(owners);
        loop {
            let verdict = {
                let held = lock.lock().expect("agent lock");
                judge(&held, self, &mut owners)
            };
            if !owners.read_missed() {
                return verdict;
            }
        }
    }
}

/// The sweeper thread, its triggers and the kill-ring reader.
#[path = "sweep_runtime.rs"]
mod runtime;
pub(crate) use runtime::{request, serve_kill_requests, start};

#[cfg(test)]
#[path = "sweep_tests.rs"]
mod tests;
