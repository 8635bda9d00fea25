//! Fleet mode: grants (and their revocations) across many hosts through
//! etcd v3, acknowledged per host, safe when the store is down.
//!
//! Layout: `config` (the `[fleet]` table), `layout` (the key layout and
//! which grants target this host), `value` (what the stored values say, and
//! the checks on that untrusted text), `reconcile` (a listing against what
//! is enforced: the pure diff), `store` (the etcd client: connect, TLS),
//! `watch` (the task that lists, watches, applies and acknowledges), `ops`
//! (the CLI's `--fleet` operations, run by the local agent, which holds
//! the credentials), `requests` (fleet access requests, decided by a
//! compare-and-swap). The core's side — a fleet grant as one more grant, with
//! its fleet id — is `agent/fleet.rs`. docs/fleet.md has the design.
use std::sync::Mutex;

pub(crate) mod config;
pub(crate) mod layout;
pub(crate) mod ops;
pub(crate) mod reconcile;
pub(crate) mod requests;
mod store;
pub(crate) mod value;
pub(crate) mod watch;

pub(crate) use config::FleetConfig;

/// What the watch task knows about the store, shared with the control
/// connections (`ops`) and `status`.
#[derive(Default)]
pub(crate) struct Link {
    state: Mutex<LinkState>,
}

#[derive(Clone, Default)]
pub(crate) struct LinkState {
    /// A connected client, while the watch runs; `None` while unreachable.
    pub client: Option<etcd_client::Client>,
    /// The store revision up to which every grant change is applied here.
    pub applied_revision: i64,
    /// When the store last answered (Unix ms); 0: never.
    pub heard_unix_ms: u64,
    /// Why the store is unreachable now, if it is.
    pub error: Option<String>,
    /// Fleet grants this host refused to apply, with why (by fleet id).
    pub refused: std::collections::BTreeMap<String, String>,
    /// Re-lists since start (reconnects and compactions).
    pub relists: u64,
}

impl Link {
    pub(crate) fn get(&self) -> LinkState {
        self.state.lock().expect("fleet link").clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.state.lock().expect("fleet link"));
    }
}
