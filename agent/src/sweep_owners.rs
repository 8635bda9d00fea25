//! What /proc says of the process holding a socket: its primary gid (for
//! `group:`/`gid:` entries) and its cgroup (to place the socket's cgroup
//! without walking the hierarchy). Read once per sweep, only when needed.
use std::collections::HashMap;

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
