//! The policy-directory watch: a change to a policy file (or to the
//! directory itself) becomes one reload, after the files go quiet.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use nix::sys::inotify::{AddWatchFlags, Inotify, WatchDescriptor};
use tracing::{debug, info, warn};

use super::{disabled, Edge, Inbox, POLICY_DEBOUNCE, POLICY_MAX_WAIT};

/// Watches the policy path: the directory's entries, and the directory's
/// own name in its parent (so that a directory replaced wholesale, or a
/// symlink to it swapped, is seen too). A path that is a single file is
/// watched through its parent.
pub(crate) struct PolicyWatch {
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
    pub(crate) fn new(path: &Path) -> Self {
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
    pub(crate) async fn changed(&mut self) {
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
