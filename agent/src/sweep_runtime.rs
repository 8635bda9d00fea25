//! When sweeps run: the sweeper thread (one sweep per wake-up, at least
//! [`MIN_INTERVAL`] apart), the triggers that wake it (revoke, expiry,
//! reload) and the kill-ring reader, whose requests only wake it.
use std::{
    path::Path,
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::Instant,
};

use tracing::{debug, info, warn};

use super::{Sweeper, MIN_INTERVAL};
use crate::agent::Agent;

/// Asks the sweeper thread for a sweep. Requests made while one is pending
/// are one request.
#[derive(Clone)]
pub(crate) struct Trigger(SyncSender<()>);

impl Trigger {
    pub(crate) fn sweep(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => debug!("sweeper gone; sweep not run"),
        }
    }
}

static TRIGGER: std::sync::OnceLock<Trigger> = std::sync::OnceLock::new();

/// Asks the agent's sweeper for a sweep (after a revoke, an expiry, a
/// reload). Does nothing before [`start`].
pub(crate) fn request() {
    if let Some(t) = TRIGGER.get() {
        t.sweep();
    }
}

/// Sweeps once now (the start-up sweep, before the agent reports ready),
/// then starts the sweeper thread that [`request`] and the kill ring wake.
/// Without sock_diag, says why and returns `None`: the programs still drop
/// refused flows' packets, but unmarked flows are not cut.
pub(crate) fn start(mount: &Path, attach: &Path, agent: Arc<Mutex<Agent>>) -> Option<Trigger> {
    let all_remote = agent.lock().expect("agent lock").has_peer_filter();
    let mut sweeper = match Sweeper::open(mount, attach, all_remote) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot open sock_diag: flows opened before enforcement are not swept");
            return None;
        }
    };
    let mut once = move || match sweeper.sweep(&agent) {
        Ok(r) if r.cut > 0 => info!(
            sockets = r.sockets,
            judged = r.judged,
            cut = r.cut,
            "swept open flows"
        ),
        Ok(r) => debug!(sockets = r.sockets, judged = r.judged, "swept open flows"),
        Err(e) => warn!(error = %e, "sweeping open flows failed"),
    };
    once();
    let (trigger, wake) = channel();
    let _ = TRIGGER.set(trigger.clone());
    std::thread::Builder::new()
        .name("sweeper".into())
        .spawn(move || run(wake, once))
        .map_err(|e| warn!(error = %e, "cannot start the sweeper thread"))
        .ok()?;
    Some(trigger)
}

/// A trigger and the receiving end for [`run`].
pub(crate) fn channel() -> (Trigger, Receiver<()>) {
    let (tx, rx) = sync_channel(1);
    (Trigger(tx), rx)
}

/// The sweeper thread's loop: one sweep per wake-up, at least
/// [`MIN_INTERVAL`] apart; `once` runs one sweep.
pub(crate) fn run(wake: Receiver<()>, mut once: impl FnMut()) {
    let mut last: Option<Instant> = None;
    while wake.recv().is_ok() {
        if let Some(at) = last {
            let since = at.elapsed();
            if since < MIN_INTERVAL {
                std::thread::sleep(MIN_INTERVAL - since);
            }
        }
        // Whatever arrived meanwhile is covered by this sweep.
        while wake.try_recv().is_ok() {}
        last = Some(Instant::now());
        once();
    }
}

/// Reads kill requests from the programs until the ring buffer closes.
/// Each read (however many requests it holds) wakes the sweeper once;
/// what a request says is never acted on by itself.
pub(crate) async fn serve_kill_requests(
    ring: crate::dataplane::Ring<agent_common::KillRequest>,
    trigger: Trigger,
) {
    let mut ring = match ring.into_async() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot watch the kill-request ring buffer; revocations and expiries still sweep");
            return;
        }
    };
    loop {
        match ring.next_batch(|_request| {}).await {
            Ok(0) => {}
            Ok(n) => {
                debug!(requests = n, "kill requests: sweeping");
                trigger.sweep();
            }
            Err(e) => {
                warn!(error = %e, "kill-request ring buffer failed");
                return;
            }
        }
    }
}
