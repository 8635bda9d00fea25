//! What wakes the agent besides requests and timers: a change in the policy
//! directory (→ reload) and cgroups appearing or disappearing below the
//! attach point (→ re-resolve `unit:` and `cgroup:` identities, whose
//! kernel keys are cgroup ids that change when a unit restarts).
//!
//! Owns the inotify instances, the set of watched cgroup directories and
//! the debouncing. It decides nothing about policy or identities: each
//! watch's `changed()` returns when its owner should act, and the owner
//! (`server`) does. Both are cancel-safe, for use in `tokio::select!`.
//!
//! Kernel: inotify (Linux 2.6.13). On cgroup2, `mkdir`/`rmdir` of a child
//! cgroup is reported to a watch on its parent directory like on any other
//! filesystem, which is what the cgroup watch relies on. If inotify cannot
//! be set up (instance or watch limits), the watch logs why and stays
//! silent; SIGHUP and the periodic rescan still work.
use std::{
    collections::HashMap,
    ffi::OsString,
    fs,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor},
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};
use tracing::{debug, info, warn};

/// Quiet time after the last policy-file event before reloading: an
/// editor's write-then-rename, or a deploy tool writing several files,
/// becomes one reload.
pub const POLICY_DEBOUNCE: Duration = Duration::from_millis(200);
/// A policy directory that never goes quiet is still reloaded this often.
const POLICY_MAX_WAIT: Duration = Duration::from_secs(2);
/// At most one identity refresh per this much time while cgroups churn.
pub const CGROUP_DEBOUNCE: Duration = Duration::from_millis(50);
/// How deep below the attach point cgroup directories are watched; the
/// same depth at which `resolve` looks for a unit's cgroup. Deeper cgroups
/// are found by the periodic rescan.
pub const CGROUP_WATCH_DEPTH: usize = 8;
/// Upper bound on cgroup directories watched (each costs kernel memory and
/// counts against `fs.inotify.max_user_watches`).
const MAX_CGROUP_WATCHES: usize = 32_768;

/// How changes are turned into actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    /// Act once things have been quiet for the window (at the latest
    /// `max_wait` after the first change): a file being written is read
    /// when it is complete.
    Trailing { max_wait: Duration },
    /// Act at once on the first change, then at most once per window, with
    /// one more action after the last change: a unit that starts is
    /// covered without waiting, a burst costs one action per window.
    Leading,
}

/// Debounce state, separate from the clock so that it can be tested.
#[derive(Debug)]
struct Debounce {
    edge: Edge,
    window: Duration,
    /// When the pending action is due, if one is pending.
    due: Option<Instant>,
    /// When the first change of the pending action was seen.
    first: Option<Instant>,
    /// `Leading`: no immediate action before this.
    quiet_until: Option<Instant>,
}

impl Debounce {
    fn new(edge: Edge, window: Duration) -> Self {
        Debounce {
            edge,
            window,
            due: None,
            first: None,
            quiet_until: None,
        }
    }

    /// Notes a change at `now`; true if the owner should act at once.
    fn note(&mut self, now: Instant) -> bool {
        match self.edge {
            Edge::Trailing { max_wait } => {
                let first = *self.first.get_or_insert(now);
                self.due = Some((now + self.window).min(first + max_wait));
                false
            }
            Edge::Leading => match self.quiet_until {
                Some(until) if now < until => {
                    self.due = Some(until);
                    false
                }
                _ if self.due.is_none() => true,
                _ => false,
            },
        }
    }

    fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The owner acted at `now`.
    fn fired(&mut self, now: Instant) {
        self.due = None;
        self.first = None;
        self.quiet_until = Some(now + self.window);
    }
}

/// An inotify descriptor tokio can poll.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct Inbox {
    fd: AsyncFd<Fd>,
    debounce: Debounce,
}

impl Inbox {
    fn new(edge: Edge, window: Duration) -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: `Fd` owns the inotify descriptor and is moved into the
        // AsyncFd, which deregisters it before the descriptor is closed;
        // nothing else closes or replaces it.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) }?;
        Ok(Inbox {
            fd,
            debounce: Debounce::new(edge, window),
        })
    }

    fn inotify(&self) -> &Inotify {
        &self.fd.get_ref().0
    }

    /// Waits until the owner should act. `relevant` sees every event (with
    /// the inotify instance, to add watches) and says whether it counts as
    /// a change. Cancel-safe: no await sits between reading events and
    /// recording what they meant.
    async fn next(
        &mut self,
        mut relevant: impl FnMut(&Inotify, InotifyEvent) -> bool,
    ) -> std::io::Result<()> {
        loop {
            let due = self.debounce.due();
            let sleep = tokio::time::sleep_until(due.unwrap_or_else(Instant::now));
            tokio::select! {
                ready = self.fd.readable() => {
                    let mut guard = ready?;
                    let mut changed = false;
                    loop {
                        match guard.get_inner().0.read_events() {
                            Ok(events) => {
                                for event in events {
                                    changed |= relevant(&guard.get_inner().0, event);
                                }
                            }
                            Err(Errno::EAGAIN) => {
                                guard.clear_ready();
                                break;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    let now = Instant::now();
                    if changed && self.debounce.note(now) {
                        self.debounce.fired(now);
                        return Ok(());
                    }
                }
                _ = sleep, if due.is_some() => {
                    self.debounce.fired(Instant::now());
                    return Ok(());
                }
            }
        }
    }
}

/// Logs why a watch stopped and then never returns.
async fn disabled(what: &str, error: std::io::Error) {
    warn!(%error, "{what} watch stopped; SIGHUP and the periodic rescan still work");
    std::future::pending::<()>().await
}

/// Watches the policy path: the directory's entries, and the directory's
/// own name in its parent (so that a directory replaced wholesale, or a
/// symlink to it swapped, is seen too). A path that is a single file is
/// watched through its parent.
pub struct PolicyWatch {
    inbox: Option<Inbox>,
    path: PathBuf,
    parent: PathBuf,
    name: Option<OsString>,
    dir_wd: Option<WatchDescriptor>,
    parent_wd: Option<WatchDescriptor>,
}

fn dir_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

impl PolicyWatch {
    /// Starts watching `path` (a directory of policy files, or one file).
    /// Never fails: without inotify the watch logs why and stays silent.
    pub fn new(path: &Path) -> Self {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut watch = PolicyWatch {
            inbox: None,
            path: path.to_path_buf(),
            parent,
            name: path.file_name().map(ToOwned::to_owned),
            dir_wd: None,
            parent_wd: None,
        };
        match Inbox::new(
            Edge::Trailing {
                max_wait: POLICY_MAX_WAIT,
            },
            POLICY_DEBOUNCE,
        ) {
            Ok(inbox) => {
                match inbox.inotify().add_watch(&watch.parent, dir_mask()) {
                    Ok(wd) => watch.parent_wd = Some(wd),
                    Err(e) => {
                        warn!(dir = %watch.parent.display(), error = %e, "cannot watch the policy directory's parent")
                    }
                }
                watch.dir_wd = watch_dir(inbox.inotify(), &watch.path, None);
                info!(path = %watch.path.display(), "watching policy files for changes");
                watch.inbox = Some(inbox);
            }
            Err(e) => {
                warn!(error = %e, "cannot start the policy watch (inotify); reload with SIGHUP")
            }
        }
        watch
    }

    /// Returns when a policy file changed and things have been quiet for
    /// [`POLICY_DEBOUNCE`].
    pub async fn changed(&mut self) {
        let Some(inbox) = self.inbox.as_mut() else {
            return std::future::pending().await;
        };
        let (path, name) = (&self.path, &self.name);
        let (dir_wd, parent_wd) = (&mut self.dir_wd, &mut self.parent_wd);
        let result = inbox
            .next(|inotify, event| {
                if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    return true;
                }
                if Some(event.wd) == *dir_wd {
                    if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                        *dir_wd = None;
                    }
                    return true;
                }
                if Some(event.wd) == *parent_wd {
                    if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                        *parent_wd = None;
                        return false;
                    }
                    if event.name.is_none() || event.name != *name {
                        return false;
                    }
                    // The directory itself was created, replaced or moved:
                    // follow whatever is at the path now.
                    *dir_wd = watch_dir(inotify, path, dir_wd.take());
                    return true;
                }
                false
            })
            .await;
        if let Err(e) = result {
            self.inbox = None;
            disabled("policy", e).await;
        }
        debug!(path = %self.path.display(), "policy files changed");
    }
}

/// (Re-)watches `path` if it is a directory, dropping the previous watch.
fn watch_dir(
    inotify: &Inotify,
    path: &Path,
    previous: Option<WatchDescriptor>,
) -> Option<WatchDescriptor> {
    if let Some(wd) = previous {
        // Fails harmlessly when the kernel already dropped it.
        let _ = inotify.rm_watch(wd);
    }
    if !path.is_dir() {
        return None;
    }
    match inotify.add_watch(path, dir_mask()) {
        Ok(wd) => Some(wd),
        Err(e) => {
            warn!(dir = %path.display(), error = %e, "cannot watch the policy directory");
            None
        }
    }
}

/// Watches the cgroup directories below the attach point, to
/// [`CGROUP_WATCH_DEPTH`] levels, adding a watch for each new directory
/// (and whatever was created in it before the watch was in place).
pub struct CgroupWatch {
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
    pub fn new(root: &Path) -> Self {
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
    pub fn watched(&self) -> usize {
        self.tree.dirs.len()
    }

    /// Returns when cgroups appeared or disappeared: at once for the first
    /// change, then at most once per [`CGROUP_DEBOUNCE`].
    pub async fn changed(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn trailing_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let mut d = Debounce::new(
            Edge::Trailing {
                max_wait: 1000 * MS,
            },
            200 * MS,
        );
        assert_eq!(d.due(), None);
        assert!(!d.note(t0));
        assert_eq!(d.due(), Some(t0 + 200 * MS));
        // A write then a rename 5 ms later: still one action, 200 ms after the last.
        assert!(!d.note(t0 + 5 * MS));
        assert_eq!(d.due(), Some(t0 + 205 * MS));
        // A writer that never stops is still acted on after max_wait.
        for i in 1..10 {
            d.note(t0 + i * 150 * MS);
        }
        assert_eq!(d.due(), Some(t0 + 1000 * MS));
        d.fired(t0 + 1000 * MS);
        assert_eq!(d.due(), None);
        // The next change starts a new window.
        assert!(!d.note(t0 + 1100 * MS));
        assert_eq!(d.due(), Some(t0 + 1300 * MS));
    }

    #[test]
    fn leading_acts_at_once_then_once_per_window() {
        let t0 = Instant::now();
        let mut d = Debounce::new(Edge::Leading, 50 * MS);
        assert!(d.note(t0), "the first change is acted on at once");
        d.fired(t0);
        // More changes inside the window: one trailing action at its end.
        assert!(!d.note(t0 + 10 * MS));
        assert!(!d.note(t0 + 20 * MS));
        assert_eq!(d.due(), Some(t0 + 50 * MS));
        d.fired(t0 + 50 * MS);
        assert_eq!(d.due(), None);
        // After a quiet window, at once again.
        assert!(d.note(t0 + 200 * MS));
    }

    #[tokio::test]
    async fn policy_watch_sees_a_write_then_rename_as_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).unwrap();
        let mut watch = PolicyWatch::new(&policies);
        // As an editor saves: write a temporary file, rename it over the original.
        fs::write(policies.join(".db.toml.tmp"), "x").unwrap();
        fs::rename(policies.join(".db.toml.tmp"), policies.join("db.toml")).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("a change within 5 s");
        // Both events were consumed by that one change.
        assert!(
            tokio::time::timeout(3 * POLICY_DEBOUNCE, watch.changed())
                .await
                .is_err(),
            "a second change was reported for one save"
        );
        // The directory replaced wholesale is followed.
        fs::rename(&policies, dir.path().join("old")).unwrap();
        fs::create_dir(&policies).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the directory's replacement is seen");
        fs::write(policies.join("new.toml"), "y").unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("a file in the new directory is seen");
    }

    #[tokio::test]
    async fn unrelated_files_next_to_the_directory_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).unwrap();
        let mut watch = PolicyWatch::new(&policies);
        fs::write(dir.path().join("agent.toml"), "x").unwrap();
        assert!(
            tokio::time::timeout(3 * POLICY_DEBOUNCE, watch.changed())
                .await
                .is_err(),
            "a file beside the policy directory counted as a change"
        );
    }

    /// A plain directory tree stands in for cgroupfs here: the watch only
    /// uses directory events. The end-to-end tests use real cgroups.
    #[tokio::test]
    async fn cgroup_watch_follows_new_directories_down_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("a/b")).unwrap();
        let mut watch = CgroupWatch::new(&root);
        assert_eq!(watch.watched(), 3);
        let within = Duration::from_secs(5);
        fs::create_dir(root.join("a/b/c")).unwrap();
        tokio::time::timeout(within, watch.changed()).await.unwrap();
        // The new directory is watched: a change below it is seen too.
        fs::create_dir(root.join("a/b/c/d")).unwrap();
        tokio::time::timeout(within, watch.changed()).await.unwrap();
        assert_eq!(watch.watched(), 5);
        fs::remove_dir(root.join("a/b/c/d")).unwrap();
        tokio::time::timeout(within, watch.changed()).await.unwrap();
        // Files are not cgroups.
        fs::write(root.join("a/file"), "x").unwrap();
        assert!(tokio::time::timeout(3 * CGROUP_DEBOUNCE, watch.changed())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn cgroup_watch_stops_at_its_depth() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut deep = root.clone();
        for i in 0..CGROUP_WATCH_DEPTH + 2 {
            deep = deep.join(format!("l{i}"));
        }
        fs::create_dir_all(&deep).unwrap();
        let watch = CgroupWatch::new(&root);
        // The root and the levels below it, down to the depth limit.
        assert_eq!(watch.watched(), CGROUP_WATCH_DEPTH);
    }
}
