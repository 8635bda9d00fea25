//! Observers of the running agent: the deny-log reader and the metrics
//! endpoint, started once the agent enforces, and the metrics [`Snapshot`]
//! taken from the agent. The glue between [`crate::agent`] and
//! [`crate::metrics`], so that neither imports the other's internals.
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tracing::info;

use crate::{
    agent::Agent,
    cgroupfs::Hierarchy,
    control::Reply,
    denylog::{DenyLogConfig, DenyLogger, DenyStats},
    metrics::{SegmentCounts, Snapshot},
};

/// The deny-log reader and the metrics endpoint, started once the agent
/// enforces; [`Observers::stop`] flushes the deny log's open windows.
pub struct Observers {
    deny: Option<DenyLogger>,
    endpoint: Option<tokio::task::JoinHandle<()>>,
}

impl Observers {
    pub async fn start(
        shared: &Arc<std::sync::Mutex<Agent>>,
        ring: Option<crate::dataplane::Ring<agent_common::DenyEvent>>,
        hierarchy: Hierarchy,
        deny_log: &DenyLogConfig,
        metrics_addr: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut deny = None;
        if let Some(ring) = ring {
            let stats = Arc::new(DenyStats::new(deny_log.path.clone()));
            let agent = shared.clone();
            let names =
                Box::new(move || agent.lock().map(|a| a.segment_names()).unwrap_or_default());
            deny = Some(
                DenyLogger::spawn(ring, deny_log.clone(), hierarchy, names, stats.clone())
                    .context("starting the deny-log reader thread")?,
            );
            if let Ok(mut a) = shared.lock() {
                a.set_deny_stats(stats);
            }
        }
        let mut endpoint = None;
        if let Some(addr) = metrics_addr {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            info!(addr = %bound, "metrics endpoint listening on http://{bound}/metrics");
            let agent = shared.clone();
            let page: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
                agent
                    .lock()
                    .map(|a| crate::metrics::render(&snapshot(&a)))
                    .unwrap_or_default()
            });
            endpoint = Some(tokio::spawn(crate::metrics::serve(listener, page)));
        }
        Ok(Self { deny, endpoint })
    }

    /// Stops both. Call without holding the agent lock: the deny-log reader
    /// takes it to name segments.
    pub fn stop(self) {
        if let Some(e) = self.endpoint {
            e.abort();
        }
        if let Some(d) = self.deny {
            d.stop();
        }
    }
}

/// What the metrics page shows of `agent` now (its lock held by the caller).
pub fn snapshot(agent: &Agent) -> Snapshot {
    let (segments, grants_live, grant_capacity, peer_capacity) = match agent.status() {
        Reply::Status(s) => (s.segments, s.grants, s.grant_capacity, s.peer_capacity),
        _ => (Vec::new(), 0, 0, 0),
    };
    let requests_pending = match agent.list() {
        Reply::List(l) => l.pending.len(),
        _ => 0,
    };
    Snapshot {
        segments: segments
            .into_iter()
            .map(|s| SegmentCounts {
                name: s.name,
                allowed: s.allowed,
                denied: s.denied,
            })
            .collect(),
        grants_live: grants_live as u64,
        requests_pending: requests_pending as u64,
        grant_entries: agent.map_entries().0.ok().map(|n| n as u64),
        peer_entries: agent.map_entries().1.ok().map(|n| n as u64),
        grant_capacity: u64::from(grant_capacity),
        peer_capacity: u64::from(peer_capacity),
        reloads_ok: agent.metrics().reloads_ok,
        reloads_failed: agent.metrics().reloads_failed,
        enforcement_repairs: agent.enforcement().repairs,
        enforcement_repair_failures: agent.enforcement().repair_failures,
        enforcing: agent.enforcing(),
        audit_write_failures: agent.audit_health().0,
        audit_writable: agent.audit_health().1.is_none(),
        audit_queued: agent.audit_health().2 as u64,
        denies: agent.metrics().denies.as_ref().map(|d| d.view()),
        revoke_latency: agent.metrics().revoke_latency.clone(),
        usage_connections: agent.usage_by_segment(),
    }
}
