//! Notifications to people (`[notify]` in agent.toml): webhooks (JSON, or
//! Slack's `{"text": ...}`) and commands (the JSON on standard input), for
//! the events each sink asks for.
//!
//! Events come from one place, the audit writer: [`Notifier::offer`] is
//! called by `AuditLog` with a record it has just written and fsynced, so
//! nothing is announced that the audit log does not hold, and every kind
//! of change is seen without a call at each place it happens. The audit
//! kind becomes a notification class in `event::classify`.
//!
//! Delivery never holds up a decision: `offer` formats the event and pushes
//! it onto each interested sink's bounded queue; a thread per sink
//! delivers, retries with backoff and gives up within bounds (`deliver`).
//! What is dropped or given up is counted ([`Counters`], shown as metrics)
//! and, through [`Notifier::take_failures`], audited once per burst as
//! `notify_failed` by the audit writer's heartbeat retry.
//!
//! Owns the notification format, the queues and the delivery threads. It
//! knows neither the audit log nor the agent (so neither imports cycle).
use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Map, Value};

pub(crate) mod config;
mod deliver;
mod event;

pub(crate) use config::{EventClass, NotifyConfig, Sink, Target};

/// At most one `notify_failed` audit record per this long: a sink that is
/// down for an hour makes tens of records, not thousands.
pub(crate) const BURST: Duration = Duration::from_secs(60);

/// One event, formatted once for every sink.
pub(crate) struct Prepared {
    class: EventClass,
    json: String,
    /// The Slack body, when a Slack sink wants the event.
    slack: Option<String>,
}

/// What has happened to notifications since the agent started.
#[derive(Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
    fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters as numbers, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NotifyStats {
    /// Deliveries that succeeded (one per event and sink).
    pub sent: u64,
    /// Events a sink gave up on after its retries.
    pub failed: u64,
    /// Events dropped because a sink's queue was full.
    pub dropped: u64,
    /// Tries after a failed one.
    pub retries: u64,
    /// Events waiting in the queues now.
    pub queued: u64,
}

/// Failures not yet audited.
#[derive(Default)]
struct Unreported {
    failed: u64,
    dropped: u64,
    /// The sinks that failed, as logs name them.
    sinks: BTreeSet<String>,
    last_error: Option<String>,
    last_report: Option<Instant>,
}

/// What a `notify_failed` record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failures {
    pub failed: u64,
    pub dropped: u64,
    pub sinks: Vec<String>,
    pub last_error: Option<String>,
}

/// State the agent and the delivery threads share.
pub(crate) struct Shared {
    counters: Counters,
    unreported: Mutex<Unreported>,
}

impl Shared {
    fn failed(&self, sink: &Target, why: &str) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        let mut u = self
            .unreported
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        u.failed += 1;
        u.sinks.insert(sink.to_string());
        u.last_error = Some(format!("{sink}: {why}"));
    }

    fn dropped(&self, sink: &Target) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let mut u = self
            .unreported
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        u.dropped += 1;
        u.sinks.insert(sink.to_string());
    }
}

struct SinkHandle {
    sink: Sink,
    queue: Arc<deliver::Queue>,
}

/// The handle the audit writer holds; cheap to clone.
#[derive(Clone)]
pub(crate) struct Notifier {
    sinks: Arc<Vec<SinkHandle>>,
    shared: Arc<Shared>,
    host: Arc<str>,
}

impl Notifier {
    /// Starts one delivery thread per sink; `None` when there are none.
    pub(crate) fn start(config: &NotifyConfig, host: &str) -> std::io::Result<Option<Notifier>> {
        if config.sinks.is_empty() {
            return Ok(None);
        }
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            unreported: Mutex::default(),
        });
        let mut sinks = Vec::new();
        for (i, sink) in config.sinks.iter().enumerate() {
            let queue = Arc::new(deliver::Queue::default());
            let (target, q, s) = (sink.target.clone(), queue.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("notify-{i}"))
                .spawn(move || deliver::run(target, q, s))?;
            sinks.push(SinkHandle {
                sink: sink.clone(),
                queue,
            });
        }
        Ok(Some(Notifier {
            sinks: Arc::new(sinks),
            shared,
            host: host.into(),
        }))
    }

    /// Whether some sink wants records of this audit kind.
    pub(crate) fn wants(&self, kind: &str) -> bool {
        event::classify(kind).is_some_and(|c| self.sinks.iter().any(|s| s.sink.events.contains(&c)))
    }

    /// Queues a written audit record for the sinks that want it. Never
    /// waits for a delivery.
    pub(crate) fn offer(&self, kind: &str, record: &Map<String, Value>) {
        let Some(class) = event::classify(kind) else {
            return;
        };
        let wanted: Vec<&SinkHandle> = self
            .sinks
            .iter()
            .filter(|s| s.sink.events.contains(&class))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let at = crate::clock::rfc3339_millis(SystemTime::now());
        let json = event::payload(class, kind, record, &at, &self.host).to_string();
        let slack = wanted
            .iter()
            .any(|s| {
                matches!(
                    s.sink.target,
                    Target::Webhook { slack: true, .. } | Target::WebhookFile { slack: true, .. }
                )
            })
            .then(|| event::slack_body(kind, record, &self.host).to_string());
        let item = Arc::new(Prepared { class, json, slack });
        for s in wanted {
            if s.queue.push(item.clone()) {
                self.shared.dropped(&s.sink.target);
            }
        }
    }

    pub(crate) fn stats(&self) -> NotifyStats {
        let c = &self.shared.counters;
        NotifyStats {
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            queued: self.sinks.iter().map(|s| s.queue.len() as u64).sum(),
        }
    }

    /// The failures since the last report, when there are some and the
    /// last report is at least [`BURST`] old; the caller audits them.
    pub(crate) fn take_failures(&self, now: Instant) -> Option<Failures> {
        let mut u = self
            .shared
            .unreported
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        take_due(&mut u, now)
    }
}

fn take_due(u: &mut Unreported, now: Instant) -> Option<Failures> {
    if u.failed == 0 && u.dropped == 0 {
        return None;
    }
    if u.last_report
        .is_some_and(|t| now.saturating_duration_since(t) < BURST)
    {
        return None;
    }
    let report = Failures {
        failed: std::mem::take(&mut u.failed),
        dropped: std::mem::take(&mut u.dropped),
        sinks: std::mem::take(&mut u.sinks).into_iter().collect(),
        last_error: u.last_error.take(),
    };
    u.last_report = Some(now);
    Some(report)
}

/// This host's name, as events carry it.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_reported_once_per_burst_with_their_count() {
        let mut u = Unreported::default();
        let t0 = Instant::now();
        assert_eq!(take_due(&mut u, t0), None);
        u.failed = 3;
        u.dropped = 1;
        u.sinks.insert("webhook https://a".into());
        u.last_error = Some("webhook https://a: answered HTTP 500".into());
        let r = take_due(&mut u, t0).unwrap();
        assert_eq!((r.failed, r.dropped), (3, 1));
        assert_eq!(r.sinks, vec!["webhook https://a".to_string()]);
        // More failures within the burst wait for its end, then come as one.
        u.failed = 2;
        assert_eq!(take_due(&mut u, t0 + BURST / 2), None);
        u.failed += 5;
        let r = take_due(&mut u, t0 + BURST).unwrap();
        assert_eq!(r.failed, 7);
        assert_eq!(take_due(&mut u, t0 + BURST * 3), None);
    }

    #[test]
    fn a_sink_gets_only_the_events_it_asked_for_and_a_full_queue_is_counted() {
        // A sink for approvals only: a request is not even queued for it.
        let dir = tempfile::tempdir().unwrap();
        let config = NotifyConfig {
            sinks: vec![Sink {
                target: Target::Command {
                    path: dir.path().join("missing"),
                },
                events: [EventClass::Approve].into_iter().collect(),
            }],
        };
        let n = Notifier::start(&config, "h").unwrap().unwrap();
        assert!(!n.wants("request"));
        assert!(n.wants("approval"));
        assert!(!n.wants("notify_failed"));
        n.offer("request", &Map::new());
        assert_eq!(n.stats().queued + n.stats().failed, 0);
        assert!(Notifier::start(&NotifyConfig::default(), "h")
            .unwrap()
            .is_none());
    }
}
