//! The account-files watch: `/etc/group` and `/etc/passwd` (and their
//! shadow and lock companions are ignored) changing means a `group:` may
//! have gained or lost members. The tools (`gpasswd`, `usermod`, `vigr`)
//! write a new file and rename it over the old one, so the watch is on
//! `/etc` itself, for those two names.
use std::{ffi::OsStr, path::Path};

use nix::sys::inotify::AddWatchFlags;
use tracing::{debug, info, warn};

use super::{disabled, Edge, Inbox, ACCOUNTS_DEBOUNCE};

/// The files whose change can change a group's members.
const FILES: [&str; 2] = ["group", "passwd"];

/// Watches `/etc` for new versions of `group` and `passwd`.
pub(crate) struct AccountsWatch {
    inbox: Option<Inbox>,
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ONLYDIR
}

impl AccountsWatch {
    /// Starts watching `dir` (`/etc`). Never fails: without inotify the
    /// watch logs why and the periodic `group_refresh` still works.
    pub(crate) fn new(dir: &Path) -> Self {
        let inbox = match Inbox::new(
            Edge::Trailing {
                max_wait: ACCOUNTS_DEBOUNCE * 5,
            },
            ACCOUNTS_DEBOUNCE,
        ) {
            Ok(inbox) => match inbox.inotify().add_watch(dir, mask()) {
                Ok(_) => {
                    info!(dir = %dir.display(), "watching group and passwd for membership changes");
                    Some(inbox)
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch the account files; group members are re-read every group_refresh only");
                    None
                }
            },
            Err(e) => {
                warn!(error = %e, "cannot start the account-files watch (inotify); group members are re-read every group_refresh only");
                None
            }
        };
        AccountsWatch { inbox }
    }

    /// Returns when `group` or `passwd` changed and went quiet for
    /// [`ACCOUNTS_DEBOUNCE`].
    pub(crate) async fn changed(&mut self) {
        let Some(inbox) = self.inbox.as_mut() else {
            return std::future::pending().await;
        };
        let result = inbox
            .next(|_, event| {
                event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                    || event
                        .name
                        .as_deref()
                        .is_some_and(|n| FILES.iter().any(|f| OsStr::new(f) == n))
            })
            .await;
        if let Err(e) = result {
            self.inbox = None;
            disabled("account-files", e).await;
        }
        debug!("group or passwd changed");
    }
}
