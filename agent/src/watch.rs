//! What wakes the agent besides requests and timers: a change in the policy
//! directory (→ reload), in /etc/group or /etc/passwd (→ group members read
//! again) and cgroups appearing or disappearing below the
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
    os::fd::{AsFd, AsRawFd, RawFd},
    time::Duration,
};

use nix::{
    errno::Errno,
    sys::inotify::{InitFlags, Inotify, InotifyEvent},
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::Instant,
};
use tracing::warn;

mod accounts;
mod cgroup;
mod policy;
#[cfg(test)]
mod tests;
pub(crate) use accounts::AccountsWatch;
pub(crate) use cgroup::CgroupWatch;
pub(crate) use policy::PolicyWatch;

/// Quiet time after the last policy-file event before reloading: an
/// editor's write-then-rename, or a deploy tool writing several files,
/// becomes one reload.
pub(crate) const POLICY_DEBOUNCE: Duration = Duration::from_millis(200);
/// A policy directory that never goes quiet is still reloaded this often.
const POLICY_MAX_WAIT: Duration = Duration::from_secs(2);
/// Quiet time after the last change to /etc/group or /etc/passwd before
/// group members are read again (a `useradd` writes several files).
pub(crate) const ACCOUNTS_DEBOUNCE: Duration = Duration::from_millis(100);
/// At most one identity refresh per this much time while cgroups churn.
pub(crate) const CGROUP_DEBOUNCE: Duration = Duration::from_millis(50);
/// How deep below the attach point cgroup directories are watched; the
/// same depth at which `resolve` looks for a unit's cgroup. Deeper cgroups
/// are found by the periodic rescan.
pub(crate) const CGROUP_WATCH_DEPTH: usize = 8;
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
