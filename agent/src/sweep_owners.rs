//! What /proc says of the process holding a socket: its primary gid (for
//! `group:`/`gid:` entries) and its cgroup (to place the socket's cgroup
//! without walking the hierarchy). Read once per sweep, only when needed.
use std::collections::{HashMap, HashSet};

/// What /proc says of the process holding socket `inode`.
pub(crate) trait Owners {
    /// Its primary (real) gid.
    fn gid_of(&mut self, inode: u32) -> Option<u32>;
    /// Its cgroup2 path (relative to the hierarchy's root, as in
    /// `/proc/PID/cgroup`).
    fn cgroup_of(&mut self, inode: u32) -> Option<String>;
}

/// /proc, scanned once per sweep and only when an owner is needed; each
/// holder's status and cgroup are read once, when first asked for.
#[derive(Default)]
pub(crate) struct ProcOwners {
    /// Socket inode → pid of a process holding it.
    by_inode: Option<HashMap<u32, i32>>,
    gids: HashMap<i32, Option<u32>>,
    cgroups: HashMap<i32, Option<String>>,
}

impl ProcOwners {
    fn scan() -> HashMap<u32, i32> {
        use procfs::process::{all_processes, FDTarget};
        let mut out = HashMap::new();
        let Ok(procs) = all_processes() else {
            return out;
        };
        for p in procs.flatten() {
            let Ok(fds) = p.fd() else {
                continue;
            };
            for fd in fds.flatten() {
                let FDTarget::Socket(inode) = fd.target else {
                    continue;
                };
                if let Ok(inode) = u32::try_from(inode) {
                    out.entry(inode).or_insert(p.pid);
                }
            }
        }
        out
    }

    fn holder(&mut self, inode: u32) -> Option<i32> {
        self.by_inode
            .get_or_insert_with(Self::scan)
            .get(&inode)
            .copied()
    }
}

impl Owners for ProcOwners {
    fn gid_of(&mut self, inode: u32) -> Option<u32> {
        let pid = self.holder(inode)?;
        *self.gids.entry(pid).or_insert_with(|| {
            procfs::process::Process::new(pid)
                .and_then(|p| p.status())
                .ok()
                .map(|s| s.rgid)
        })
    }

    fn cgroup_of(&mut self, inode: u32) -> Option<String> {
        let pid = self.holder(inode)?;
        self.cgroups
            .entry(pid)
            .or_insert_with(|| {
                let groups = procfs::process::Process::new(pid)
                    .and_then(|p| p.cgroups())
                    .ok()?;
                groups
                    .0
                    .into_iter()
                    .find(|g| g.hierarchy == 0 && g.controllers.is_empty())
                    .map(|g| g.pathname)
            })
            .clone()
    }
}

/// What to ask /proc for one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Ask {
    Gid(u32),
    Cgroup(u32),
}

/// Owners read ahead of the judging, so that /proc (a scan of every
/// process's descriptors: tens of milliseconds on a busy host) is read
/// without the agent's lock held. The judging runs under the lock and is
/// answered from what was read; what it asks that was not read yet is
/// answered `None` and noted, [`OwnersAhead::read_missed`] reads it (after
/// the lock is released) and the judging runs again. Only the last run,
/// which asked nothing new, decides.
pub(crate) struct OwnersAhead<O: Owners> {
    source: O,
    known: HashMap<Ask, Answer>,
    missed: HashSet<Ask>,
}

#[derive(Clone, Debug)]
enum Answer {
    Gid(Option<u32>),
    Cgroup(Option<String>),
}

impl<O: Owners> OwnersAhead<O> {
    pub(crate) fn new(source: O) -> Self {
        Self {
            source,
            known: HashMap::new(),
            missed: HashSet::new(),
        }
    }

    /// Reads from the source what the last judging asked for and was not
    /// known; false when it asked nothing new (its verdict stands).
    pub(crate) fn read_missed(&mut self) -> bool {
        if self.missed.is_empty() {
            return false;
        }
        for ask in std::mem::take(&mut self.missed) {
            let answer = match ask {
                Ask::Gid(inode) => Answer::Gid(self.source.gid_of(inode)),
                Ask::Cgroup(inode) => Answer::Cgroup(self.source.cgroup_of(inode)),
            };
            self.known.insert(ask, answer);
        }
        true
    }

    fn ask(&mut self, ask: Ask) -> Option<&Answer> {
        if !self.known.contains_key(&ask) {
            self.missed.insert(ask);
            return None;
        }
        self.known.get(&ask)
    }
}

impl<O: Owners> Owners for OwnersAhead<O> {
    fn gid_of(&mut self, inode: u32) -> Option<u32> {
        match self.ask(Ask::Gid(inode))? {
            Answer::Gid(g) => *g,
            Answer::Cgroup(_) => None,
        }
    }

    fn cgroup_of(&mut self, inode: u32) -> Option<String> {
        match self.ask(Ask::Cgroup(inode))? {
            Answer::Cgroup(c) => c.clone(),
            Answer::Gid(_) => None,
        }
    }
}
