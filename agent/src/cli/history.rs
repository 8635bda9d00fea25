//! How `portcullis request show` looks to people: the request, its
//! history line by line, the grant with its use, and how it ended. The
//! reply arrives escaped (`termtext::escaped`), reasons included.
use super::left;
use crate::control::{RequestHistoryView, UsageView};

fn usage(u: &UsageView) -> String {
    let mut s = format!("{} connection(s)", u.connections);
    if let Some(l) = &u.last_use {
        s.push_str(&format!(", last {l}"));
    }
    s
}

pub(super) fn render_history(v: &RequestHistoryView) -> String {
    let r = &v.request;
    let mut out = format!(
        "request {}: {} → {} ({})\n  state: {} ({}; from the {})\n  asked by {} at {} for {}\n",
        r.id,
        r.identity,
        r.segment,
        r.ports.join(", "),
        r.state,
        r.outcome,
        v.source,
        r.requester,
        r.created_at,
        left(r.ttl_secs),
    );
    if let Some(reason) = &r.reason {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    out.push_str(&format!(
        "  approvals: {} of {}\n",
        r.approvals.len(),
        r.approvals_required
    ));
    if let Some(g) = &v.grant {
        out.push_str(&format!(
            "  grant {}: live, until {} ({} left)",
            g.id,
            g.expires_at,
            left(g.remaining_secs)
        ));
        if let Some(u) = &g.usage {
            out.push_str(&format!("; used: {}", usage(u)));
        }
        out.push('\n');
    }
    if let Some(e) = &v.grant_end {
        out.push_str(&format!(
            "  grant {}: ended ({}) at {}",
            r.grant_id.unwrap_or(0),
            e.event,
            e.at
        ));
        if let Some(by) = &e.by {
            out.push_str(&format!(" by {by}"));
        }
        if let Some(why) = &e.why {
            out.push_str(&format!(": {why}"));
        }
        if let Some(u) = &e.usage {
            out.push_str(&format!("; used: {}", usage(u)));
        }
        out.push('\n');
    }
    out.push_str("  history:\n");
    for h in &v.history {
        out.push_str(&format!("    {} {:<14} ", h.at, h.event));
        if let Some(by) = &h.by {
            out.push_str(&format!("{by}: "));
        }
        out.push_str(&h.detail);
        out.push('\n');
    }
    if let Some(e) = &v.history_error {
        out.push_str(&format!("  (history incomplete: {e})\n"));
    }
    out
}
