//! The Prometheus text exposition format (version 0.0.4) of a metrics
//! [`Snapshot`]: family names, HELP and TYPE lines, label escaping,
//! cumulative histogram buckets. Knows nothing of where the numbers come
//! from.
use std::fmt::Write as _;

use super::{Histogram, Snapshot};

/// Text exposition builder: HELP and TYPE before each family's samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<f64>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", float(value.into()));
    }

    /// One family with a single unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Into<f64>) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cumulative = 0u64;
        for (bound, n) in h.bounds.iter().zip(&h.counts) {
            cumulative += n;
            self.sample(
                &format!("{name}_bucket"),
                &[("le", &float(*bound))],
                cumulative as f64,
            );
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

/// Counters are u64; f64 holds them exactly up to 2^53, which per-CPU
/// packet counters do not reach in practice.
fn n(v: impl TryInto<u64>) -> f64 {
    v.try_into().unwrap_or(u64::MAX) as f64
}

/// The metrics page for a snapshot.
pub(crate) fn render(s: &Snapshot) -> String {
    let mut e = Exposition::default();
    e.family(
        "portcullis_segment_allowed_total",
        "counter",
        "Connections and packets to the segment's ports that the kernel let through.",
    );
    for seg in &s.segments {
        e.sample(
            "portcullis_segment_allowed_total",
            &[("segment", &seg.name)],
            n(seg.allowed),
        );
    }
    e.family(
        "portcullis_segment_denied_total",
        "counter",
        "Connections and packets to the segment's ports that the kernel refused.",
    );
    for seg in &s.segments {
        e.sample(
            "portcullis_segment_denied_total",
            &[("segment", &seg.name)],
            n(seg.denied),
        );
    }
    e.family(
        "portcullis_segment_would_deny_total",
        "counter",
        "Connections and packets a segment in audit mode would have refused, and let through.",
    );
    for seg in &s.segments {
        e.sample(
            "portcullis_segment_would_deny_total",
            &[("segment", &seg.name)],
            n(seg.would_deny),
        );
    }
    e.family(
        "portcullis_segment_usage_connections",
        "gauge",
        "Connections the segment's current local allows and grants admitted (kernel usage map).",
    );
    for seg in &s.segments {
        e.sample(
            "portcullis_segment_usage_connections",
            &[("segment", &seg.name)],
            n(seg.usage_connections),
        );
    }
    e.single(
        "portcullis_grants_live",
        "gauge",
        "Just-in-time grants in force.",
        n(s.grants_live),
    );
    e.single(
        "portcullis_requests_pending",
        "gauge",
        "Access requests waiting for an approver.",
        n(s.requests_pending),
    );
    e.family(
        "portcullis_map_entries",
        "gauge",
        "Entries in a kernel map (grants: local identities; peers: remote prefixes).",
    );
    if let Some(l) = s.grant_entries {
        e.sample("portcullis_map_entries", &[("map", "grants")], n(l));
    }
    if let Some(p) = s.peer_entries {
        e.sample("portcullis_map_entries", &[("map", "peers")], n(p));
    }
    e.family(
        "portcullis_map_capacity",
        "gauge",
        "Capacity of a kernel map; inserts fail once entries reach it.",
    );
    e.sample(
        "portcullis_map_capacity",
        &[("map", "grants")],
        n(s.grant_capacity),
    );
    e.sample(
        "portcullis_map_capacity",
        &[("map", "peers")],
        n(s.peer_capacity),
    );
    e.family(
        "portcullis_policy_reloads_total",
        "counter",
        "Policy reloads by result.",
    );
    e.sample(
        "portcullis_policy_reloads_total",
        &[("result", "success")],
        n(s.reloads_ok),
    );
    e.sample(
        "portcullis_policy_reloads_total",
        &[("result", "failure")],
        n(s.reloads_failed),
    );
    e.single(
        "portcullis_enforcement_repairs_total",
        "counter",
        "Times the heartbeat found a program, link or pin missing in the kernel and put it back.",
        n(s.enforcement_repairs),
    );
    e.single(
        "portcullis_enforcement_repair_failures_total",
        "counter",
        "Heartbeats that found enforcement missing and could not repair it.",
        n(s.enforcement_repair_failures),
    );
    e.single(
        "portcullis_enforcement_ok",
        "gauge",
        "1 while the kernel has every program attached and every pin in place, 0 otherwise.",
        if s.enforcing { 1.0 } else { 0.0 },
    );
    e.single(
        "portcullis_audit_write_failures_total",
        "counter",
        "Audit records that could not be written (grants are refused meanwhile).",
        n(s.audit_write_failures),
    );
    e.single(
        "portcullis_audit_log_writable",
        "gauge",
        "1 when the last audit write succeeded, 0 while the log cannot be written.",
        if s.audit_writable { 1.0 } else { 0.0 },
    );
    e.single(
        "portcullis_journal_writable",
        "gauge",
        "1 when the last write to the agent's journal succeeded, 0 while it cannot be written (new grants, requests and approvals are refused meanwhile).",
        if s.journal_writable { 1.0 } else { 0.0 },
    );
    e.single(
        "portcullis_journal_changes_queued",
        "gauge",
        "Ends of grants and decided requests waiting in memory for the journal to take writes again.",
        n(s.journal_queued),
    );
    e.single(
        "portcullis_audit_records_queued",
        "gauge",
        "Records of revocations, expiries and other events waiting in memory for the audit log to take writes again.",
        n(s.audit_queued),
    );
    if let Some(v) = &s.denies {
        e.family(
            "portcullis_deny_events_total",
            "counter",
            "Kernel deny events read by the agent, by what became of them (logged, or suppressed by the rate limit).",
        );
        e.sample(
            "portcullis_deny_events_total",
            &[("outcome", "logged")],
            n(v.logged),
        );
        e.sample(
            "portcullis_deny_events_total",
            &[("outcome", "suppressed")],
            n(v.suppressed),
        );
        e.single(
            "portcullis_deny_log_write_failures_total",
            "counter",
            "Deny log lines that could not be written.",
            n(v.write_failures),
        );
    }
    if let Some(v) = &s.notify {
        e.family(
            "portcullis_notifications_total",
            "counter",
            "Notifications ([notify] sinks), by what became of them: sent (one per event and sink), failed (given up after the retries), dropped (a full queue).",
        );
        for (outcome, count) in [
            ("sent", v.sent),
            ("failed", v.failed),
            ("dropped", v.dropped),
        ] {
            e.sample(
                "portcullis_notifications_total",
                &[("outcome", outcome)],
                n(count),
            );
        }
        e.single(
            "portcullis_notification_retries_total",
            "counter",
            "Delivery tries after a failed one.",
            n(v.retries),
        );
        e.single(
            "portcullis_notifications_queued",
            "gauge",
            "Events waiting in the sinks' queues.",
            n(v.queued),
        );
    }
    e.histogram(
        "portcullis_revocation_enforcement_seconds",
        "Time from the agent handling a revocation to the kernel map delete returning (enforced from then on).",
        &s.revoke_latency,
    );
    e.out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::{SegmentCounts, LATENCY_BUCKETS};

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_count() {
        let mut h = Histogram::new(&LATENCY_BUCKETS);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let mut e = Exposition::default();
        e.histogram("x_seconds", "help", &h);
        let text = e.out;
        assert!(
            text.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{le=\"0.001\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"2.5\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"), "{text}");
        assert!(text.starts_with("# HELP x_seconds help\n# TYPE x_seconds histogram\n"));
    }

    #[test]
    fn labels_and_help_are_escaped() {
        let mut e = Exposition::default();
        e.family("m", "gauge", "a \\ b\nc");
        e.sample("m", &[("segment", "we\"ird\\na\nme")], 1.0);
        assert_eq!(
            e.out,
            "# HELP m a \\\\ b\\nc\n# TYPE m gauge\nm{segment=\"we\\\"ird\\\\na\\nme\"} 1\n"
        );
    }

    #[test]
    fn a_snapshot_renders_every_family_with_its_labels() {
        let mut s = Snapshot::default();
        s.segments.push(SegmentCounts {
            name: "db".into(),
            id: 1,
            allowed: 3,
            denied: 4,
            would_deny: 0,
            usage_connections: 7,
        });
        s.grants_live = 2;
        s.grant_entries = Some(5);
        s.grant_capacity = 100;
        s.audit_writable = true;
        let text = render(&s);
        for line in [
            "portcullis_segment_allowed_total{segment=\"db\"} 3\n",
            "portcullis_segment_denied_total{segment=\"db\"} 4\n",
            "portcullis_grants_live 2\n",
            "portcullis_segment_usage_connections{segment=\"db\"} 7\n",
            "portcullis_map_entries{map=\"grants\"} 5\n",
            "portcullis_map_capacity{map=\"grants\"} 100\n",
            "portcullis_audit_log_writable 1\n",
            "portcullis_revocation_enforcement_seconds_count 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // Unread maps and an absent deny log leave their samples out.
        assert!(
            !text.contains("portcullis_map_entries{map=\"peers\"}"),
            "{text}"
        );
        assert!(!text.contains("portcullis_deny_events_total{"), "{text}");
        assert!(!text.contains("portcullis_notifications_total"), "{text}");
        s.notify = Some(crate::notifications::NotifyStats {
            sent: 4,
            failed: 1,
            dropped: 2,
            retries: 3,
            queued: 5,
        });
        let text = render(&s);
        for line in [
            "portcullis_notifications_total{outcome=\"sent\"} 4\n",
            "portcullis_notifications_total{outcome=\"failed\"} 1\n",
            "portcullis_notifications_total{outcome=\"dropped\"} 2\n",
            "portcullis_notification_retries_total 3\n",
            "portcullis_notifications_queued 5\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
