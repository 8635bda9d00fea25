//! Prometheus metrics: the counters the agent keeps only for metrics, the
//! [`Snapshot`] of every number the page shows, its text exposition
//! (`exposition`, version 0.0.4) and a minimal HTTP/1.1 endpoint (`http`).
//!
//! Off unless `--metrics-addr` (or `metrics_addr` in the agent config) is
//! set; a bare port listens on localhost only. The endpoint answers
//! `GET /metrics` and nothing else, reads at most [`MAX_REQUEST`] bytes of
//! a request within [`REQUEST_TIMEOUT`], serves a few connections at a time
//! and closes each after one answer: nothing a scraper (or anyone else who
//! can reach it) sends can hold the agent.
//!
//! Owns the counters the agent keeps only for metrics ([`AgentMetrics`]),
//! the exposition format and the endpoint. It does not know the agent: the
//! snapshot is taken and the endpoint started by [`crate::observe`].
use std::{sync::Arc, time::Duration};

use crate::denylog::{DenyLogView, DenyStats};

mod exposition;
mod http;

pub(crate) use exposition::render;
pub(crate) use http::serve;

/// Upper bounds (seconds) of the revocation latency histogram.
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative histogram with fixed buckets.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Observations ≤ each bound (not cumulative; summed when rendered).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    pub(crate) fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// What the agent counts only to report it.
#[derive(Clone, Debug)]
pub(crate) struct AgentMetrics {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// From a revocation being handled to the kernel map delete returning.
    pub revoke_latency: Histogram,
    /// The deny log's counters, once its reader runs.
    pub denies: Option<Arc<DenyStats>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            reloads_ok: 0,
            reloads_failed: 0,
            revoke_latency: Histogram::new(&LATENCY_BUCKETS),
            denies: None,
        }
    }
}

/// One segment's kernel counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SegmentCounts {
    pub name: String,
    /// The segment's id in the kernel maps (its counters' index).
    pub id: u32,
    pub allowed: u64,
    pub denied: u64,
    /// Refusals an audit-mode segment let through.
    pub would_deny: u64,
    /// Connections its current local allows and grants admitted (the
    /// kernel's usage map, read at scrape time).
    pub usage_connections: u64,
}

/// Every number the metrics page shows, taken at one moment; rendered by
/// [`render`]. Map entry counts are `None` when the map could not be read.
/// The snapshot the agent published last: the agent replaces it after
/// every change (under its own lock, in O(segments)); a scrape takes a
/// copy of the pointer under this board's lock, never the agent's, and
/// reads the kernel's per-segment counters itself.
#[derive(Default)]
pub(crate) struct Board(std::sync::Mutex<Arc<Snapshot>>);

impl Board {
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
    }

    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub segments: Vec<SegmentCounts>,
    pub grants_live: u64,
    pub requests_pending: u64,
    pub grant_entries: Option<u64>,
    pub peer_entries: Option<u64>,
    pub grant_capacity: u64,
    pub peer_capacity: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub enforcement_repairs: u64,
    pub enforcement_repair_failures: u64,
    pub enforcing: bool,
    pub audit_write_failures: u64,
    pub audit_writable: bool,
    pub audit_queued: u64,
    /// Whether the last journal write succeeded (grants are refused while not).
    pub journal_writable: bool,
    /// Journal changes (ends of grants) waiting in memory.
    pub journal_queued: u64,
    /// The deny log's counters, once its reader runs.
    pub denies: Option<DenyLogView>,
    /// The notifications' counters; `None` without `[notify]` sinks.
    pub notify: Option<crate::notifications::NotifyStats>,
    pub revoke_latency: Histogram,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            segments: Vec::new(),
            grants_live: 0,
            requests_pending: 0,
            grant_entries: None,
            peer_entries: None,
            grant_capacity: 0,
            peer_capacity: 0,
            reloads_ok: 0,
            reloads_failed: 0,
            enforcement_repairs: 0,
            enforcement_repair_failures: 0,
            enforcing: false,
            audit_write_failures: 0,
            audit_writable: false,
            audit_queued: 0,
            journal_writable: false,
            journal_queued: 0,
            denies: None,
            notify: None,
            revoke_latency: Histogram::new(&LATENCY_BUCKETS),
        }
    }
}
