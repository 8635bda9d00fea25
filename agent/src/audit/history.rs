//! One request's records, read back from the audit log (its rotated files
//! too, oldest first) for `portcullis request show`: the request, its
//! approvals, its decision or lapse, the grant it produced and that
//! grant's extensions and end. The agent keeps a decided request for ten
//! minutes only (`requests::KEEP_DECIDED`); the log keeps it as long as
//! rotation does.
//!
//! Read by the agent without its lock held (`server/conn.rs`): a large
//! log costs the asker time, never other callers.
use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
};

use serde_json::{Map, Value};

/// The records of request `id` and of the grant it produced, oldest first.
pub(crate) fn records_of(path: &Path, id: u64) -> io::Result<Vec<Map<String, Value>>> {
    let mut lines = Vec::new();
    for f in super::chain_files(path) {
        match File::open(&f) {
            Ok(file) => lines.push(BufReader::new(file)),
            // A file rotated away between listing and opening.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(select(
        lines
            .into_iter()
            .flat_map(|r| r.lines().map_while(Result::ok)),
        id,
    ))
}

/// The records of `lines` about request `id`, or about the grant it
/// produced (named by its `approve`, or by a `grant` with that request id).
pub(crate) fn select(lines: impl Iterator<Item = String>, id: u64) -> Vec<Map<String, Value>> {
    let request_key = format!("\"request_id\":{id}");
    let mut grant: Option<(u64, String)> = None;
    let mut out = Vec::new();
    for line in lines {
        let about_grant = grant.as_ref().is_some_and(|(_, key)| line.contains(key));
        if !line.contains(&request_key) && !about_grant {
            continue;
        }
        let Ok(Value::Object(rec)) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let ours = rec.get("request_id").and_then(Value::as_u64) == Some(id);
        let gid = rec.get("grant_id").and_then(Value::as_u64);
        let theirs = grant.as_ref().is_some_and(|(g, _)| gid == Some(*g));
        if !ours && !theirs {
            continue;
        }
        if ours && grant.is_none() {
            let event = rec.get("event").and_then(Value::as_str);
            if matches!(event, Some("grant" | "approve")) {
                if let Some(g) = gid {
                    grant = Some((g, format!("\"grant_id\":{g}")));
                }
            }
        }
        out.push(rec);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_brings_its_grant_and_the_grant_its_end() {
        let lines = [
            r#"{"event":"request","request_id":5,"segment":"db"}"#,
            r#"{"event":"request","request_id":51,"segment":"db"}"#,
            r#"{"event":"approval","request_id":5}"#,
            r#"{"event":"grant","grant_id":6,"request_id":5}"#,
            r#"{"event":"approve","grant_id":6,"request_id":5}"#,
            r#"{"event":"grant","grant_id":66,"request_id":null}"#,
            r#"{"event":"extend","grant_id":6}"#,
            r#"{"event":"revoke","grant_id":6,"request_id":5}"#,
            r#"{"event":"expire","grant_id":60}"#,
        ];
        let got: Vec<String> = select(lines.iter().map(|s| s.to_string()), 5)
            .iter()
            .map(|r| r["event"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ["request", "approval", "grant", "approve", "extend", "revoke"]
        );
    }
}
