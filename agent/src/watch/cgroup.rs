//! The cgroup-tree watch: directories below the attach point, to a bounded
//! depth, so that units and cgroups that come and go are re-resolved.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, Inotify, InotifyEvent, WatchDescriptor},
};
use tracing::{info, warn};

use super::{disabled, Edge, Inbox, CGROUP_DEBOUNCE, CGROUP_WATCH_DEPTH, MAX_CGROUP_WATCHES};

/// Watches the cgroup directories below the attach point, to
/// [`CGROUP_WATCH_DEPTH`] levels, adding a watch for each new directory
/// (and whatever was created in it before the watch was in place).
pub(crate) struct CgroupWatch {
    inbox: Option<Inbox>,
    tree: Tree,
}

/// The watched directories: watch descriptor → (path, depth below root).
struct Tree {
    root: PathBuf,
    dirs: HashMap<WatchDescriptor, (PathBuf, usize)>,
    /// Set once a limit was hit (logged once).
    full: bool,
}

fn cgroup_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR
}

impl Tree {
    /// Watches `dir` (at `depth`) and the directories below it.
    fn add(&mut self, inotify: &Inotify, dir: PathBuf, depth: usize) {
        let mut stack = vec![(dir, depth)];
        while let Some((dir, depth)) = stack.pop() {
            if self.dirs.len() >= MAX_CGROUP_WATCHES {
                self.limit(&format!("{MAX_CGROUP_WATCHES} directories"));
                return;
            }
            // Below a delegated cgroup (a user's session manager, a
            // container runtime) its owner creates what it likes, and
            // nothing there can stand for a unit or a `cgroup:` identity
            // (`Hierarchy::trusted_id`): not watched, so that churn there
            // costs the agent nothing.
            if depth > 0 && crate::cgroupfs::is_delegated(&dir) {
                continue;
            }
            match inotify.add_watch(&dir, cgroup_mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, (dir.clone(), depth));
                }
                // Removed before we got to it: nothing to watch.
                Err(Errno::ENOENT | Errno::ENOTDIR) => continue,
                Err(Errno::ENOSPC) => {
                    self.limit("fs.inotify.max_user_watches");
                    return;
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch cgroup directory");
                    continue;
                }
            }
            if depth + 1 >= CGROUP_WATCH_DEPTH {
                continue;
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }

    fn limit(&mut self, what: &str) {
        if !self.full {
            self.full = true;
            warn!(
                watched = self.dirs.len(),
                "cgroup watch reached its limit ({what}); further cgroups are found by the periodic rescan"
            );
        }
    }

    /// Stops watching `dir` and everything below it (it was moved away).
    fn remove_below(&mut self, inotify: &Inotify, dir: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, (path, _))| path.starts_with(dir))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            let _ = inotify.rm_watch(wd);
            self.dirs.remove(&wd);
        }
    }

    /// Whether `event` means a cgroup appeared or disappeared.
    fn event(&mut self, inotify: &Inotify, event: InotifyEvent) -> bool {
        if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            // Events were lost: walk the tree again (watching a directory
            // that is already watched just returns its descriptor).
            let root = self.root.clone();
            self.add(inotify, root, 0);
            return true;
        }
        if event.mask.contains(AddWatchFlags::IN_IGNORED) {
            self.dirs.remove(&event.wd);
            return false;
        }
        if !event.mask.contains(AddWatchFlags::IN_ISDIR) {
            return false;
        }
        let (Some((parent, depth)), Some(name)) = (self.dirs.get(&event.wd), &event.name) else {
            return false;
        };
        let (path, depth) = (parent.join(name), depth + 1);
        if event
            .mask
            .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
        {
            if depth < CGROUP_WATCH_DEPTH {
                self.add(inotify, path, depth);
            }
        } else if event.mask.contains(AddWatchFlags::IN_MOVED_FROM) {
            self.remove_below(inotify, &path);
        }
        true
    }
}

impl CgroupWatch {
    /// Starts watching the cgroup tree at `root` (the attach point: only
    /// processes there and below are checked, so only cgroups there and
    /// below can change a decision). Never fails: without inotify the
    /// watch logs why and stays silent.
    pub(crate) fn new(root: &Path) -> Self {
        let mut tree = Tree {
            root: root.to_path_buf(),
            dirs: HashMap::new(),
            full: false,
        };
        let inbox = match Inbox::new(Edge::Leading, CGROUP_DEBOUNCE) {
            Ok(inbox) => {
                tree.add(inbox.inotify(), root.to_path_buf(), 0);
                info!(root = %root.display(), directories = tree.dirs.len(), "watching cgroups for units and cgroups that come and go");
                Some(inbox)
            }
            Err(e) => {
                warn!(error = %e, "cannot start the cgroup watch (inotify); identities are re-resolved by the periodic rescan only");
                None
            }
        };
        CgroupWatch { inbox, tree }
    }

    /// How many directories are watched.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.tree.dirs.len()
    }

    /// Returns when cgroups appeared or disappeared: at once for the first
    /// change, then at most once per [`CGROUP_DEBOUNCE`].
    pub(crate) async fn changed(&mut self) {
        let Some(inbox) = self.inbox.as_mut() else {
            return std::future::pending().await;
        };
        let tree = &mut self.tree;
        if let Err(e) = inbox
            .next(|inotify, event| tree.event(inotify, event))
            .await
        {
            self.inbox = None;
            disabled("cgroup", e).await;
        }
    }
}
