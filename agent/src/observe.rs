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
    denylog::{DenyLogConfig, DenyLogger, DenyStats},
    kernel::{CountersReader, UsageReader},
    metrics::{Board, Snapshot},
};

/// The deny-log reader and the metrics endpoint, started once the agent
/// enforces; [`Observers::stop`] flushes the deny log's open windows.
pub(crate) struct Observers {
    deny: Option<DenyLogger>,
    endpoint: Option<tokio::task::JoinHandle<()>>,
}

impl Observers {
    pub(crate) async fn start(
        shared: &Arc<std::sync::Mutex<Agent>>,
        ring: Option<crate::dataplane::Ring<agent_common::DenyEvent>>,
        hierarchy: Hierarchy,
        deny_log: &DenyLogConfig,
        metrics_addr: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut deny = None;
        let mut deny_stats = None;
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
                a.set_deny_stats(stats.clone());
            }
            deny_stats = Some(stats);
        }
        let mut endpoint = None;
        if let Some(addr) = metrics_addr {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            info!(addr = %bound, "metrics endpoint listening on http://{bound}/metrics");
            // A scrape reads the board the agent publishes, the kernel's
            // counters on their own descriptor and the deny log's own
            // counters: it never waits for the agent's lock.
            let (board, counters, usage) = {
                let a = shared.lock().expect("agent lock");
                a.publish();
                (
                    a.board(),
                    a.kernel().counters_reader().ok(),
                    a.kernel().usage_reader().ok(),
                )
            };
            let page: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
                scrape(
                    &board,
                    counters.as_ref(),
                    usage.as_ref(),
                    deny_stats.as_deref(),
                )
            });
            endpoint = Some(tokio::spawn(crate::metrics::serve(listener, page)));
        }
        Ok(Self { deny, endpoint })
    }

    /// Stops both. Call without holding the agent lock: the deny-log reader
    /// takes it to name segments.
    pub(crate) fn stop(self) {
        if let Some(e) = self.endpoint {
            e.abort();
        }
        if let Some(d) = self.deny {
            d.stop();
        }
    }
}

/// One metrics page: the board's snapshot with the kernel's per-segment
/// counters, the use of its entries and the deny log's read now. Takes no agent lock.
pub(crate) fn scrape(
    board: &Board,
    counters: Option<&CountersReader>,
    usage: Option<&UsageReader>,
    denies: Option<&DenyStats>,
) -> String {
    let mut s = Snapshot::clone(&board.current());
    if let Some(read) = counters {
        for seg in &mut s.segments {
            if let Some(c) = read(seg.id) {
                seg.allowed = c.allowed;
                seg.denied = c.denied;
                seg.would_deny = c.would_deny;
            }
        }
    }
    if let Some(read) = usage {
        let by_segment = read();
        for seg in &mut s.segments {
            seg.usage_connections = by_segment.get(&seg.id).copied().unwrap_or(0);
        }
    }
    s.denies = denies.map(DenyStats::view);
    crate::metrics::render(&s)
}
