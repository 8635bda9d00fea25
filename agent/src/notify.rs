//! systemd integration: readiness and reload notifications, the watchdog,
//! and socket activation (sd_notify(3), sd_listen_fds(3)). Every function
//! is a no-op outside systemd (no NOTIFY_SOCKET / LISTEN_FDS).
//!
//! The watchdog is pinged from the agent's main loop, so an agent whose
//! loop is wedged stops pinging and systemd restarts it; the kernel keeps
//! enforcing meanwhile.
use std::{io, os::fd::FromRawFd, time::Duration};

use sd_notify::NotifyState;
use tracing::warn;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}

/// Enforcement is in place and the control socket answers.
pub(crate) fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("enforcing")]);
}

/// A policy reload has started (systemd's reload protocol wants the time).
pub(crate) fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading policy"),
    ];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The agent is shutting down (enforcement stays pinned).
pub(crate) fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping; enforcement stays in place"),
    ]);
}

/// Pings the watchdog at half the interval systemd asked for.
pub(crate) struct Watchdog(Option<tokio::time::Interval>);

impl Watchdog {
    pub(crate) fn from_env() -> Self {
        Self(sd_notify::watchdog_enabled().map(|d| {
            let mut i = tokio::time::interval((d / 2).max(Duration::from_millis(10)));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }))
    }

    /// Completes when the next ping is due; never when the watchdog is off.
    pub(crate) async fn tick(&mut self) {
        match &mut self.0 {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    pub(crate) fn ping(&self) {
        send(&[NotifyState::Watchdog]);
    }
}

/// The control socket passed by systemd socket activation, if any.
pub(crate) fn activated_listener() -> io::Result<Option<tokio::net::UnixListener>> {
    let Some(fd) = sd_notify::listen_fds()?.next() else {
        return Ok(None);
    };
    // SAFETY: systemd passed this descriptor to us (LISTEN_PID matched) and
    // nothing else in the process owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(std_listener).map(Some)
}
