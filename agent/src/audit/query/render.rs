//! `portcullis audit`'s human output: one escaped line per record.
use std::time::Duration;

use serde_json::{Map, Value};

use super::{AuditEvent, Record};
use crate::{actor::Actor, clock, termtext};

/// Fields shown in their own column, or not at all.
pub(super) const SHOWN: [&str; 7] = [
    "ts", "event", "actor", "identity", "segment", "prev", "hash",
];

/// One readable line: time, event, actor, identity → segment, details.
/// Every string shown (keys too) goes through [`termtext::escape`] first:
/// old records and cgroup names may hold anything.
pub(super) fn render(rec: &Record) -> String {
    match &rec.event {
        AuditEvent::Other(fields) => render_map(fields),
        known => render_known(known, rec.ts().unwrap_or(""), &rec.extra),
    }
}

/// A typed event: subject and actor from its fields, then every other field
/// it (and the line) carries, in the order they are written (sorted).
fn render_known(event: &AuditEvent, ts: &str, extra: &Map<String, Value>) -> String {
    let esc = |s: &str| termtext::escape(s).into_owned();
    let subject = subject(
        &esc(event.identity().unwrap_or("")),
        &esc(event.segment().unwrap_or("")),
    );
    let actor = event.actor().map(actor_column).unwrap_or_default();
    let (kind, mut fields) = event.clone().into_fields();
    fields.extend(extra.clone());
    let mut fields = Value::Object(fields);
    termtext::escape_value(&mut fields);
    let Value::Object(fields) = fields else {
        unreachable!("an object stays an object")
    };
    // A person denying a request, told apart from the kernel's denies of
    // the deny log (`audit --denies`), which share the name `deny`.
    let kind = match event {
        AuditEvent::Deny { .. } => REQUEST_DENY,
        _ => kind.as_ref(),
    };
    line(&esc(ts), kind, [subject, actor, details(&fields)])
}

/// How `portcullis audit` labels the audit log's `deny` (a denied request).
const REQUEST_DENY: &str = "deny (request)";

/// `by alice(1000)/pid 42`.
fn actor_column(a: &Actor) -> String {
    let mut s = match &a.user {
        Some(u) => format!("{}({})", termtext::escape(u), a.uid),
        None => format!("uid {}", a.uid),
    };
    if let Some(p) = a.pid {
        s.push_str(&format!("/pid {p}"));
    }
    format!("by {s}")
}

/// `identity → segment`, either alone, or nothing.
fn subject(identity: &str, segment: &str) -> String {
    match (identity, segment) {
        ("", "") => String::new(),
        (i, "") => i.to_string(),
        ("", s) => format!("on {s}"),
        (i, s) => format!("{i} → {s}"),
    }
}

/// The fields not shown in a column of their own, `key=value` (escaped already).
fn details(rec: &Map<String, Value>) -> String {
    let mut details = Vec::new();
    for (k, v) in rec {
        if SHOWN.contains(&k.as_str()) || v.is_null() {
            continue;
        }
        details.push(match (k.as_str(), v) {
            ("ttl_secs", Value::Number(n)) => {
                format!(
                    "ttl={}",
                    clock::human(Duration::from_secs(n.as_u64().unwrap_or(0)))
                )
            }
            // Quoted, not JSON-encoded: `s` is escaped already, and JSON
            // would double every backslash of the escapes.
            (_, Value::String(s)) if s.is_empty() || s.contains(char::is_whitespace) => {
                format!("{k}=\"{}\"", s.replace('"', "\\\""))
            }
            (_, Value::String(s)) => format!("{k}={s}"),
            (_, Value::Array(items)) if items.iter().all(Value::is_string) => format!(
                "{k}={}",
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => format!("{k}={v}"),
        });
    }
    details.join(" ")
}

/// `ts  event  col  col  col`, empty columns left out.
fn line(ts: &str, event: &str, cols: [String; 3]) -> String {
    let mut line = format!("{ts}  {event:<14}");
    for c in cols.iter().filter(|c| !c.is_empty()) {
        line.push_str("  ");
        line.push_str(c);
    }
    line.trim_end().to_string()
}

/// A record this version does not type, shown from its fields as written.
pub(super) fn render_map(rec: &Map<String, Value>) -> String {
    let mut v = Value::Object(rec.clone());
    termtext::escape_value(&mut v);
    match v {
        Value::Object(rec) => render_escaped(&rec),
        _ => unreachable!("an object stays an object"),
    }
}

fn render_escaped(rec: &Map<String, Value>) -> String {
    let text = |k: &str| rec.get(k).and_then(Value::as_str).unwrap_or("");
    let actor = match rec.get("actor") {
        Some(Value::Object(a)) => {
            let uid = a.get("uid").and_then(Value::as_u64);
            let user = a.get("user").and_then(Value::as_str);
            let pid = a.get("pid").and_then(Value::as_i64);
            let mut s = match (user, uid) {
                (Some(u), Some(id)) => format!("{u}({id})"),
                (None, Some(id)) => format!("uid {id}"),
                (Some(u), None) => u.to_string(),
                (None, None) => String::new(),
            };
            if let Some(p) = pid {
                s.push_str(&format!("/pid {p}"));
            }
            format!("by {s}")
        }
        _ => String::new(),
    };
    let subject = subject(text("identity"), text("segment"));
    match text("event") {
        // The audit log's `deny` is a person denying a request (it has a
        // request id): who denied, and why, with the request's fields.
        "deny" if rec.contains_key("request_id") => {
            return line(text("ts"), REQUEST_DENY, [subject, actor, details(rec)])
        }
        // The deny log's records: the kernel refused a connection.
        "deny" | "would_deny" => return render_deny(rec, &subject),
        "suppressed" => {
            return format!(
                "{}  {:<14}  {subject}  {} more denies in {}s{}",
                text("ts"),
                "suppressed",
                rec.get("suppressed").unwrap_or(&Value::Null),
                rec.get("window_secs").unwrap_or(&Value::Null),
                who(rec)
            )
        }
        _ => {}
    }
    line(text("ts"), text("event"), [subject, actor, details(rec)])
}

/// `uid 0 (root) gid 0 (root)` of a deny record, with a leading space;
/// empty for remote peers.
fn who(rec: &Map<String, Value>) -> String {
    let Some(uid) = rec.get("uid").and_then(Value::as_u64) else {
        return String::new();
    };
    let name = |k: &str| {
        rec.get(k)
            .and_then(Value::as_str)
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    };
    let gid = rec.get("gid").and_then(Value::as_u64).unwrap_or(0);
    format!(", uid {uid}{} gid {gid}{}", name("user"), name("group"))
}

/// `ts deny  cgroup:/x → db  sendmsg4 127.0.0.1:5432/udp, uid 0 (root) gid 0 (root)`.
fn render_deny(rec: &Map<String, Value>, subject: &str) -> String {
    let text = |k: &str| rec.get(k).and_then(Value::as_str).unwrap_or("");
    let addr = text("addr");
    let addr = if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    };
    let port = rec.get("port").and_then(Value::as_u64).unwrap_or(0);
    let mut line = format!(
        "{}  {:<14}  {subject}  {} {addr}:{port}/{}{}",
        text("ts"),
        text("event"),
        text("hook"),
        text("proto"),
        who(rec)
    );
    if let Some(peer) = rec.get("peer").and_then(Value::as_str) {
        line.push_str(&format!(" from {peer}"));
    }
    line
}
