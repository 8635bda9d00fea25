//! From an audit record to a notification: which class of event an audit
//! kind is ([`classify`]), the JSON every sink but Slack receives
//! ([`payload`]) and the one line a Slack-compatible webhook shows
//! ([`slack_text`]).
//!
//! Works on the record as written (its kind and fields), not on the typed
//! `AuditEvent`, so a kind added later (`break_glass`) is notified by name
//! with the fields it carries. Every text field comes from people
//! (reasons, user names, identities): in the JSON it is escaped by the
//! serializer; in the Slack text, Slack's markup characters and control
//! characters are neutralised and each field is cut to a bounded length.
use serde_json::{json, Map, Value};

use super::EventClass;

/// Version of the event JSON's shape (`version` field).
pub(crate) const FORMAT: u32 = 1;

/// Longest text taken from one field into a Slack line (characters).
const SLACK_FIELD: usize = 300;

/// The notification class of an audit kind; `None`: not notified.
pub(crate) fn classify(kind: &str) -> Option<EventClass> {
    Some(match kind {
        "request" => EventClass::Request,
        // One approval of several, and the last one that grants.
        "approve" | "approval" => EventClass::Approve,
        "deny" => EventClass::Deny,
        // Access opened, or a live grant's expiry moved later.
        "grant" | "extend" => EventClass::Grant,
        "revoke" | "membership_revoke" => EventClass::Revoke,
        // A grant's or a pending request's end.
        "expire" | "request_expire" => EventClass::Expire,
        "lock" | "unlock" => EventClass::Lock,
        "break_glass" => EventClass::BreakGlass,
        // Enforcement found missing (repaired or not), or lifted.
        "enforcement_repaired" | "uninstall" => EventClass::Enforcement,
        _ => return None,
    })
}

/// The event every JSON sink receives. `record` is the audit record's
/// fields (without `ts`, `prev`, `hash`), `at` when it was written.
pub(crate) fn payload(
    class: EventClass,
    kind: &str,
    record: &Map<String, Value>,
    at: &str,
    host: &str,
) -> Value {
    let field = |k: &str| record.get(k).cloned().unwrap_or(Value::Null);
    let request_id = record.get("request_id").and_then(Value::as_u64);
    // A request still waiting for an approver: say how to approve it.
    let approve_command = match (kind, request_id) {
        ("request" | "approval", Some(id)) => Value::String(format!("portcullis approve {id}")),
        _ => Value::Null,
    };
    let at = record
        .get("happened_at")
        .and_then(Value::as_str)
        .unwrap_or(at);
    json!({
        "version": FORMAT,
        "event": class.name(),
        "audit_event": kind,
        "at": at,
        "host": host,
        "actor": field("actor"),
        "identity": field("identity"),
        "segment": field("segment"),
        "ports": field("ports"),
        "ttl_secs": field("ttl_secs"),
        "expires_at": field("expires_at"),
        "reason": record.get("reason").or_else(|| record.get("why")).cloned().unwrap_or(Value::Null),
        "request_id": field("request_id"),
        "grant_id": field("grant_id"),
        "approve_command": approve_command,
        "summary": summary(kind, record, host, false),
        "record": Value::Object(record.clone()),
    })
}

/// The Slack-compatible body: `{"text": "..."}`.
pub(crate) fn slack_body(kind: &str, record: &Map<String, Value>, host: &str) -> Value {
    json!({ "text": slack_text(kind, record, host) })
}

/// One line for a chat: what happened, to whom, where, and for a request
/// the command that approves it; every field escaped for Slack.
pub(crate) fn slack_text(kind: &str, record: &Map<String, Value>, host: &str) -> String {
    summary(kind, record, host, true)
}

/// The sentence both shapes carry; `slack` escapes each field for Slack.
fn summary(kind: &str, record: &Map<String, Value>, host: &str, slack: bool) -> String {
    let text = |v: &str| {
        if slack {
            slack_escape(v)
        } else {
            v.to_string()
        }
    };
    let s = |k: &str| record.get(k).and_then(Value::as_str).map(text);
    let n = |k: &str| record.get(k).and_then(Value::as_u64);
    let actor = record.get("actor").map(|a| {
        let uid = a.get("uid").and_then(Value::as_u64);
        match (a.get("user").and_then(Value::as_str), uid) {
            (Some(name), Some(uid)) => format!("{} (uid {uid})", text(name)),
            (None, Some(uid)) => format!("uid {uid}"),
            _ => "someone".into(),
        }
    });
    let mut out = format!("[portcullis on {}] {kind}:", text(host));
    if let Some(id) = n("request_id") {
        out.push_str(&format!(" request {id}"));
    }
    if let Some(id) = n("grant_id") {
        out.push_str(&format!(" grant {id}"));
    }
    if let Some(a) = actor {
        out.push_str(&format!(" by {a}"));
    }
    if let Some(i) = s("identity") {
        out.push_str(&format!(" for {i}"));
    }
    if let Some(seg) = s("segment") {
        out.push_str(&format!(" on {seg}"));
    }
    if let Some(ports) = record.get("ports").and_then(Value::as_array) {
        let ports: Vec<String> = ports.iter().filter_map(Value::as_str).map(text).collect();
        out.push_str(&format!(" ({})", ports.join(", ")));
    }
    if let Some(ttl) = n("ttl_secs") {
        out.push_str(&format!(
            " for {}",
            crate::clock::human(std::time::Duration::from_secs(ttl))
        ));
    }
    if let (Some(a), Some(r)) = (n("approvals"), n("required")) {
        out.push_str(&format!(", {a} of {r} approvals"));
    }
    if let Some(reason) = s("reason").or_else(|| s("why")) {
        out.push_str(&format!(", reason: {reason}"));
    }
    if matches!(kind, "request" | "approval") {
        if let Some(id) = n("request_id") {
            out.push_str(&format!(". Approve: portcullis approve {id}"));
        }
    }
    out
}

/// Text safe in a Slack message: `&`, `<`, `>` as Slack's entities (so no
/// `<!channel>`, `<@U…>` or `<url|label>` can be formed), each control
/// character (and the Unicode line and paragraph separators) as a visible
/// `\u{…}`, cut to [`SLACK_FIELD`] characters.
pub(crate) fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(SLACK_FIELD * 2));
    for (i, c) in s.chars().enumerate() {
        if i == SLACK_FIELD {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_record(reason: &str) -> Map<String, Value> {
        let v = json!({
            "request_id": 7,
            "segment": "db",
            "identity": "user:alice",
            "ports": ["tcp/5432"],
            "ttl_secs": 3600,
            "reason": reason,
            "expires_at": "2026-12-07T02:00:00Z",
            "actor": {"uid": 1000, "user": "alice", "pid": 42},
        });
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_audit_kind_of_the_issue_maps_to_its_event_and_others_to_none() {
        let cases = [
            ("request", EventClass::Request),
            ("approve", EventClass::Approve),
            ("approval", EventClass::Approve),
            ("deny", EventClass::Deny),
            ("grant", EventClass::Grant),
            ("extend", EventClass::Grant),
            ("revoke", EventClass::Revoke),
            ("membership_revoke", EventClass::Revoke),
            ("expire", EventClass::Expire),
            ("request_expire", EventClass::Expire),
            ("lock", EventClass::Lock),
            ("unlock", EventClass::Lock),
            ("break_glass", EventClass::BreakGlass),
            ("enforcement_repaired", EventClass::Enforcement),
            ("uninstall", EventClass::Enforcement),
        ];
        for (kind, class) in cases {
            assert_eq!(classify(kind), Some(class), "{kind}");
        }
        // Every class has a source.
        for c in EventClass::ALL {
            assert!(cases.iter().any(|(_, k)| *k == c), "{c} has no audit kind");
        }
        // Never notified: the agent's own bookkeeping, and its own failures
        // (a notification about a failed notification would loop).
        for kind in [
            "notify_failed",
            "agent_start",
            "rotate",
            "refused",
            "policy_reload",
            "records_lost",
            "grant_failed",
        ] {
            assert_eq!(classify(kind), None, "{kind}");
        }
    }

    #[test]
    fn the_json_says_who_what_where_for_how_long_why_and_how_to_approve() {
        let rec = request_record("deploy fix");
        let p = payload(
            EventClass::Request,
            "request",
            &rec,
            "2026-12-07T01:00:00.000Z",
            "db1",
        );
        assert_eq!(p["version"], 1);
        assert_eq!(p["event"], "request");
        assert_eq!(p["audit_event"], "request");
        assert_eq!(p["host"], "db1");
        assert_eq!(p["at"], "2026-12-07T01:00:00.000Z");
        assert_eq!(p["actor"]["user"], "alice");
        assert_eq!(p["identity"], "user:alice");
        assert_eq!(p["segment"], "db");
        assert_eq!(p["ports"], json!(["tcp/5432"]));
        assert_eq!(p["ttl_secs"], 3600);
        assert_eq!(p["reason"], "deploy fix");
        assert_eq!(p["request_id"], 7);
        assert_eq!(p["grant_id"], Value::Null);
        assert_eq!(p["approve_command"], "portcullis approve 7");
        assert_eq!(p["record"]["expires_at"], "2026-12-07T02:00:00Z");
        assert!(
            p["summary"]
                .as_str()
                .unwrap()
                .contains("portcullis approve 7"),
            "{p}"
        );
        // A decided request needs no approve command; a late record keeps
        // the time it happened.
        let mut rec = rec;
        rec.insert("grant_id".into(), json!(9));
        rec.insert("happened_at".into(), json!("2026-12-07T00:59:00.000Z"));
        let p = payload(EventClass::Approve, "approve", &rec, "later", "db1");
        assert_eq!(p["approve_command"], Value::Null);
        assert_eq!(p["grant_id"], 9);
        assert_eq!(p["at"], "2026-12-07T00:59:00.000Z");
    }

    #[test]
    fn hostile_text_stays_data_in_json_and_plain_text_in_slack() {
        let hostile =
            "\"}, \"event\": \"approve\" <!channel> <https://evil|click> & \u{1b}[2J\u{202e}";
        let rec = request_record(hostile);
        let p = payload(EventClass::Request, "request", &rec, "t", "h");
        let body = p.to_string();
        let back: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(back["reason"], hostile);
        assert_eq!(back["event"], "request");
        assert!(!body.contains('\u{1b}'), "{body}");
        let text = slack_text("request", &rec, "h");
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(text.contains("&amp;"), "{text}");
        assert!(text.contains("\\u{1b}[2J\\u{202e}"), "{text}");
        assert!(!text.chars().any(char::is_control), "{text}");
        let long = slack_escape(&"x".repeat(10_000));
        assert_eq!(long.chars().count(), SLACK_FIELD + 1);
        let body = slack_body("request", &rec, "h");
        assert_eq!(body.as_object().unwrap().len(), 1);
        assert!(body["text"].as_str().unwrap().starts_with("[portcullis on h] request: request 7 by alice (uid 1000) for user:alice on db (tcp/5432) for 1h, reason: "));
    }
}
