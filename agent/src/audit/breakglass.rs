//! `portcullis report break-glass`: every `break_glass` record the audit
//! log holds (current and rotated files), joined with what became of its
//! grant: `grant_failed`, `extend`, and the one `revoke` or `expire` (with
//! the kernel's usage count). Read by the CLI from the files, like
//! `portcullis audit`: reviewers need read access to the log, not the agent.
use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::ExitCode,
    time::SystemTime,
};

use serde::Serialize;
use serde_json::Value;

use crate::{duration::parse_ttl, termtext};

/// One break-glass, for review.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Row {
    /// When it was opened (the record's `ts`).
    pub at: String,
    pub grant_id: u64,
    /// Who broke the glass: `user (uid N)`.
    pub by: String,
    pub identity: String,
    pub segment: String,
    pub ports: Vec<String>,
    pub ttl_secs: u64,
    pub reason: String,
    /// `live`, `revoked`, `expired`, `failed`, or `unknown` (its end is in
    /// no file read: the agent may be down, or the record rotated away).
    pub ended: String,
    /// The end's time and who or why (`revoked by root (uid 0)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_detail: Option<String>,
    /// Times it was extended.
    pub extended: u32,
    /// Connections the kernel counted for it (from its end record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_use: Option<String>,
}

fn actor(v: &Value) -> String {
    let uid = v["uid"].as_u64().unwrap_or(0);
    match v["user"].as_str() {
        Some(u) => format!("{u} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

fn ts_after(v: &Value, since: Option<SystemTime>) -> bool {
    let Some(since) = since else { return true };
    v["ts"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .is_none_or(|t| t >= since)
}

/// The break-glass rows of `lines` (oldest first), each with its end if a
/// later line records it. Lines that are not JSON are skipped.
pub(crate) fn collect(
    lines: impl Iterator<Item = String>,
    since: Option<SystemTime>,
    live: impl Fn(u64) -> bool,
) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for line in lines {
        if !line.contains("\"grant_id\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = v["grant_id"].as_u64() else {
            continue;
        };
        let event = v["event"].as_str().unwrap_or("");
        if event == "break_glass" {
            if !ts_after(&v, since) {
                continue;
            }
            let text = |k: &str| v[k].as_str().unwrap_or("").to_string();
            rows.push(Row {
                at: text("ts"),
                grant_id: id,
                by: actor(&v["actor"]),
                identity: text("identity"),
                segment: text("segment"),
                ports: v["ports"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| p.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                ttl_secs: v["ttl_secs"].as_u64().unwrap_or(0),
                reason: text("reason"),
                ended: "unknown".into(),
                end_detail: None,
                extended: 0,
                connections: None,
                last_use: None,
            });
            continue;
        }
        let Some(row) = rows.iter_mut().rev().find(|r| r.grant_id == id) else {
            continue;
        };
        let ts = v["ts"].as_str().unwrap_or("?");
        match event {
            "extend" => row.extended += 1,
            "grant_failed" => {
                row.ended = "failed".into();
                row.end_detail = Some(format!(
                    "at {ts}: {}",
                    v["error"].as_str().unwrap_or("the grant was not made")
                ));
            }
            "revoke" | "expire" => {
                row.ended = if event == "revoke" {
                    "revoked".into()
                } else {
                    "expired".into()
                };
                let mut detail = format!("at {ts}");
                if event == "revoke" {
                    detail.push_str(&format!(" by {}", actor(&v["actor"])));
                }
                if let Some(why) = v["why"].as_str() {
                    detail.push_str(&format!(" ({why})"));
                }
                row.end_detail = Some(detail);
                row.connections = v["usage"]["connections"].as_u64();
                row.last_use = v["usage"]["last_use"].as_str().map(str::to_string);
            }
            _ => {}
        }
    }
    for row in &mut rows {
        if row.ended == "unknown" && live(row.grant_id) {
            row.ended = "live".into();
        }
    }
    rows
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis: {msg}");
    ExitCode::from(code)
}

/// Runs `portcullis report break-glass`.
pub(crate) fn report(
    socket: &Path,
    since: Option<&str>,
    file: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    let since = match since
        .map(|s| {
            humantime::parse_rfc3339_weak(s).or_else(|_| {
                parse_ttl(s).map(|d| SystemTime::now() - d).map_err(|e| {
                    format!("--since {s:?}: give a duration like 7d or an RFC 3339 time ({e})")
                })
            })
        })
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let path = file.unwrap_or_else(|| super::query::log_paths(socket).0);
    // Opened first (a file that cannot be read is an error), then read
    // line by line: the log may be far larger than the report.
    let mut files = Vec::new();
    for f in super::chain_files(&path) {
        match File::open(&f) {
            Ok(file) => files.push(BufReader::new(file)),
            Err(e) => return fail(1, format!("cannot read {}: {e}", f.display())),
        }
    }
    let lines = files
        .into_iter()
        .flat_map(|r| r.lines().map_while(Result::ok));
    // A grant with no end in the log is live if the agent lists it.
    let live: Vec<u64> = match crate::control::call(socket, &crate::control::Request::List {}) {
        Ok(crate::control::Response::Ok(crate::control::Reply::List(l))) => {
            l.grants.iter().map(|g| g.id).collect()
        }
        _ => Vec::new(),
    };
    let rows = collect(lines, since, |id| live.contains(&id));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serializes")
        );
        return ExitCode::SUCCESS;
    }
    print!("{}", render(&rows));
    ExitCode::SUCCESS
}

/// The report for people; every field from the log escaped.
pub(crate) fn render(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no break-glass in the audit log\n".into();
    }
    let mut out = String::new();
    for r in rows {
        let e = termtext::escape;
        out.push_str(&format!(
            "{} grant {}: {} broke the glass on {} ({}) for {} as {}\n  reason: {}\n  ended: {}{}\n",
            e(&r.at),
            r.grant_id,
            e(&r.by),
            e(&r.segment),
            e(&r.ports.join(", ")),
            crate::clock::human(std::time::Duration::from_secs(r.ttl_secs)),
            e(&r.identity),
            e(&r.reason),
            r.ended,
            r.end_detail
                .as_deref()
                .map(|d| format!(" {}", e(d)))
                .unwrap_or_default(),
        ));
        if r.extended > 0 {
            out.push_str(&format!("  extended {} time(s)\n", r.extended));
        }
        if let Some(c) = r.connections {
            out.push_str(&format!(
                "  used: {c} connection(s){}\n",
                r.last_use
                    .as_deref()
                    .map(|l| format!(", last {}", e(l)))
                    .unwrap_or_default()
            ));
        }
    }
    out.push_str(&format!("{} break-glass(es)\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<String> {
        [
            r#"{"event":"grant","grant_id":1,"ts":"2026-12-07T01:00:00Z"}"#,
            r#"{"event":"break_glass","grant_id":2,"ts":"2026-12-07T02:00:00Z","segment":"db","identity":"user:alice","ports":["5432/tcp"],"ttl_secs":1800,"reason":"INC-1","actor":{"uid":1001,"user":"alice"}}"#,
            r#"{"event":"grant","grant_id":2,"ts":"2026-12-07T02:00:00Z"}"#,
            r#"{"event":"extend","grant_id":2,"ts":"2026-12-07T02:10:00Z"}"#,
            r#"{"event":"revoke","grant_id":2,"ts":"2026-12-07T02:20:00Z","actor":{"uid":0,"user":"root"},"usage":{"connections":3,"last_use":"2026-12-07T02:19:00Z"}}"#,
            r#"{"event":"break_glass","grant_id":5,"ts":"2026-12-07T03:00:00Z","segment":"db","identity":"user:bob","ports":[],"ttl_secs":60,"reason":"INC-2","actor":{"uid":1002,"user":"bob"}}"#,
            r#"{"event":"expire","grant_id":1,"ts":"2026-12-07T03:01:00Z"}"#,
            "not json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn break_glass_rows_carry_their_end_and_use() {
        let rows = collect(lines().into_iter(), None, |id| id == 5);
        assert_eq!(rows.len(), 2, "only break_glass records: {rows:?}");
        assert_eq!(rows[0].grant_id, 2);
        assert_eq!(rows[0].by, "alice (uid 1001)");
        assert_eq!(rows[0].reason, "INC-1");
        assert_eq!(rows[0].ended, "revoked");
        assert_eq!(
            rows[0].end_detail.as_deref(),
            Some("at 2026-12-07T02:20:00Z by root (uid 0)")
        );
        assert_eq!(rows[0].extended, 1);
        assert_eq!(rows[0].connections, Some(3));
        assert_eq!(rows[1].ended, "live");
        let rows = collect(lines().into_iter(), None, |_| false);
        assert_eq!(rows[1].ended, "unknown");
    }

    #[test]
    fn since_leaves_older_break_glass_out() {
        let since = humantime::parse_rfc3339_weak("2026-12-07T02:30:00Z").unwrap();
        let rows = collect(lines().into_iter(), Some(since), |_| false);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].grant_id, 5);
    }

    #[test]
    fn the_report_escapes_what_people_wrote() {
        let mut rows = collect(lines().into_iter(), None, |_| false);
        rows[0].reason = "x\u{1b}[2Jy".into();
        let text = render(&rows);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("2 break-glass(es)"), "{text}");
    }
}
