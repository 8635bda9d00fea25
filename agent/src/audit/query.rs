//! `portcullis audit`: reading the audit log and the deny log for people.
//!
//! The CLI runs on the agent's host and reads the files directly (it needs
//! read permission on them, not the agent's socket); it asks the agent only
//! where they are, and falls back to the default paths when the agent is not
//! running. Owns filtering, rendering, `--follow` and `audit verify`; the
//! files and the chain rule belong to [`crate::audit`] and
//! [`crate::denylog`].
use std::{
    fs::File,
    io::{self, BufRead, BufReader, Seek, SeekFrom, Write},
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use crate::{
    clock,
    control::{self, Reply, Request, Response},
    duration::parse_ttl,
    identity::Identity,
    termtext,
};

/// Where the audit log is when neither `--file` nor the agent says.
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/portcullis/audit.jsonl";
/// The deny log's file name, beside the audit log unless configured.
pub const DENY_LOG_NAME: &str = "denies.jsonl";
/// How often `--follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(300);

/// `portcullis audit`: query the audit trail, or verify its chain.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    #[command(flatten)]
    pub query: QueryArgs,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the hash chain; names the first broken record. Given the
    /// current log (the default), checks its rotated files too.
    Verify {
        /// An audit log file [default: the agent's audit log].
        file: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Default)]
pub struct QueryArgs {
    /// Only records newer than this: a duration (`1h`, `30m`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only records about this identity (for denies: the cgroup, or a
    /// cgroup below it, the uid/user, gid/group or peer address).
    #[arg(long)]
    pub identity: Option<String>,
    /// Only records about this segment.
    #[arg(long)]
    pub segment: Option<String>,
    /// Only records of this event kind (grant, revoke, expire, ...).
    #[arg(long)]
    pub event: Option<String>,
    /// Keep printing new records as they are written.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print the records as written (JSON lines).
    #[arg(long)]
    pub json: bool,
    /// Read this file instead of the agent's log.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Show the kernel deny log instead of the audit log.
    #[arg(long)]
    pub denies: bool,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis: {msg}");
    ExitCode::from(code)
}

/// Runs `portcullis audit ...`.
pub fn run(args: AuditArgs, socket: &Path) -> ExitCode {
    match args.command {
        Some(AuditCommand::Verify { file }) => {
            let path = file.unwrap_or_else(|| log_paths(socket).0);
            verify(&path)
        }
        None => query(args.query, socket),
    }
}

/// The audit log and deny log paths, as the agent reports them.
fn log_paths(socket: &Path) -> (PathBuf, PathBuf) {
    if let Ok(Response::Ok(Reply::Status(s))) = control::call(socket, &Request::Status {}) {
        if !s.audit_log.is_empty() {
            let audit = PathBuf::from(&s.audit_log);
            let denies = s
                .deny_log
                .map(|d| PathBuf::from(d.path))
                .unwrap_or_else(|| audit.with_file_name(DENY_LOG_NAME));
            return (audit, denies);
        }
    }
    let audit = PathBuf::from(DEFAULT_AUDIT_LOG);
    let denies = audit.with_file_name(DENY_LOG_NAME);
    (audit, denies)
}

fn verify(path: &Path) -> ExitCode {
    match super::verify_chain(path) {
        Err(e) => fail(1, format!("cannot read {}: {e}", path.display())),
        Ok(Err(brk)) => {
            // The broken record's own text is untrusted.
            println!("BROKEN at {}", termtext::escape(&brk.to_string()));
            fail(
                1,
                "the audit chain is broken; records after this point cannot be trusted",
            )
        }
        Ok(Ok(report)) => {
            let records: usize = report.files.iter().map(|f| f.1).sum();
            for (file, n) in &report.files {
                println!("{}: {n} record(s) ok", file.display());
            }
            println!(
                "ok: {records} record(s) in {} file(s) chain intact; last hash {}",
                report.files.len(),
                report.last_hash.as_deref().unwrap_or("(empty log)")
            );
            ExitCode::SUCCESS
        }
    }
}

/// Which records to show.
pub struct Filter {
    since: Option<SystemTime>,
    identity: Option<Identity>,
    segment: Option<String>,
    event: Option<String>,
}

impl Filter {
    pub fn new(q: &QueryArgs) -> Result<Self, String> {
        let since = q
            .since
            .as_deref()
            .map(|s| {
                if let Ok(t) = humantime::parse_rfc3339_weak(s) {
                    return Ok(t);
                }
                parse_ttl(s).map(|d| SystemTime::now() - d).map_err(|e| {
                    format!("--since {s:?}: give a duration like 1h or an RFC 3339 time ({e})")
                })
            })
            .transpose()?;
        let identity = q
            .identity
            .as_deref()
            .map(|i| {
                i.parse::<Identity>()
                    .map_err(|e| format!("--identity {i:?}: {e}"))
            })
            .transpose()?;
        Ok(Self {
            since,
            identity,
            segment: q.segment.clone(),
            event: q.event.clone(),
        })
    }

    pub fn matches(&self, rec: &Map<String, Value>) -> bool {
        let text = |k: &str| rec.get(k).and_then(Value::as_str);
        if let Some(since) = self.since {
            match text("ts").and_then(|t| humantime::parse_rfc3339_weak(t).ok()) {
                Some(t) if t >= since => {}
                _ => return false,
            }
        }
        if let Some(seg) = &self.segment {
            if text("segment") != Some(seg.as_str()) {
                return false;
            }
        }
        if let Some(ev) = &self.event {
            if text("event") != Some(ev.as_str()) {
                return false;
            }
        }
        match &self.identity {
            None => true,
            Some(id) => identity_matches(id, rec),
        }
    }
}

/// Whether a record is about `id`: its `identity` field names it, or (deny
/// records) its cgroup, uid, user, gid, group or peer address falls under it.
fn identity_matches(id: &Identity, rec: &Map<String, Value>) -> bool {
    let text = |k: &str| rec.get(k).and_then(Value::as_str);
    let num = |k: &str| rec.get(k).and_then(Value::as_u64);
    if let Some(recorded) = text("identity") {
        if recorded == id.to_string() {
            return true;
        }
    }
    match id {
        Identity::Cgroup(p) => text("cgroup").is_some_and(|c| {
            c == p || p == "/" || c.starts_with(&format!("{}/", p.trim_end_matches('/')))
        }),
        Identity::Unit(u) => text("cgroup")
            .is_some_and(|c| c.ends_with(&format!("/{u}")) || c.contains(&format!("/{u}/"))),
        Identity::Uid(u) => num("uid") == Some(u64::from(*u)),
        Identity::User(name) => text("user") == Some(name.as_str()),
        Identity::Gid(g) => num("gid") == Some(u64::from(*g)),
        Identity::Group(name) => text("group") == Some(name.as_str()),
        Identity::Peer(cidr) => text("identity")
            .and_then(|i| i.strip_prefix("peer:"))
            .and_then(|a| a.split('/').next()?.parse::<IpAddr>().ok())
            .is_some_and(|ip| cidr.contains(ip)),
    }
}

fn query(q: QueryArgs, socket: &Path) -> ExitCode {
    let filter = match Filter::new(&q) {
        Ok(f) => f,
        Err(e) => return fail(2, e),
    };
    let path = match &q.file {
        Some(p) => p.clone(),
        None => {
            let (audit, denies) = log_paths(socket);
            if q.denies {
                denies
            } else {
                audit
            }
        }
    };
    let mut out = io::stdout().lock();
    // Rotated files first, oldest first, when a time window reaches back.
    let mut files: Vec<PathBuf> = if q.since.is_some() && !q.follow {
        super::chain_files(&path)
    } else {
        vec![path.clone()]
    };
    files.retain(|f| f == &path || f.exists());
    let mut end = 0;
    for f in &files {
        let file = match File::open(f) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && f == &path && q.follow => {
                break;
            }
            Err(e) => return fail(1, format!("cannot read {}: {e}", f.display())),
        };
        match print_lines(BufReader::new(file), &filter, q.json, &mut out) {
            Ok(n) => end = n,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
            Err(e) => return fail(1, format!("reading {}: {e}", f.display())),
        }
    }
    if q.follow {
        if let Err(e) = follow(&path, end, &filter, q.json, &mut out) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                return fail(1, format!("following {}: {e}", path.display()));
            }
        }
    }
    ExitCode::SUCCESS
}

/// Prints the matching records of `reader`; returns the bytes consumed
/// (only whole lines: a line still being written is left for `follow`).
fn print_lines(
    mut reader: impl BufRead,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> io::Result<u64> {
    let mut consumed = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let k = reader.read_line(&mut line)?;
        if k == 0 || !line.ends_with('\n') {
            return Ok(consumed);
        }
        consumed += k as u64;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(rec)) => {
                if filter.matches(&rec) {
                    if json {
                        writeln!(out, "{trimmed}")?;
                    } else {
                        writeln!(out, "{}", render(&rec))?;
                    }
                }
            }
            _ => writeln!(out, "(unreadable line) {}", termtext::escape(trimmed))?,
        }
    }
}

/// Prints lines appended to `path` after `offset`, reopening it when it is
/// rotated or truncated. Runs until interrupted.
fn follow(
    path: &Path,
    mut offset: u64,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut inode = std::fs::metadata(path).map(|m| m.ino()).ok();
    loop {
        out.flush()?;
        std::thread::sleep(FOLLOW_POLL);
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if Some(meta.ino()) != inode || meta.len() < offset {
            // Rotated (a new file) or truncated: read it from the start.
            inode = Some(meta.ino());
            offset = 0;
        }
        if meta.len() == offset {
            continue;
        }
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        offset += print_lines(BufReader::new(file), filter, json, out)?;
    }
}

/// Fields shown in their own column, or not at all.
const SHOWN: [&str; 7] = [
    "ts", "event", "actor", "identity", "segment", "prev", "hash",
];

/// One readable line: time, event, actor, identity → segment, details.
/// Every string of the record (keys too) goes through
/// [`termtext::escape`] first: old records and cgroup names may hold
/// anything.
pub fn render(rec: &Map<String, Value>) -> String {
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
    let subject = match (text("identity"), text("segment")) {
        ("", "") => String::new(),
        (i, "") => i.to_string(),
        ("", s) => format!("on {s}"),
        (i, s) => format!("{i} → {s}"),
    };
    match text("event") {
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
    let cols = [subject, actor, details.join(" ")];
    let mut line = format!("{}  {:<14}", text("ts"), text("event"));
    for c in cols.iter().filter(|c| !c.is_empty()) {
        line.push_str("  ");
        line.push_str(c);
    }
    line.trim_end().to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn filter(args: &[&str]) -> Filter {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            q: QueryArgs,
        }
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        Filter::new(&T::parse_from(argv).q).unwrap()
    }

    #[test]
    fn records_render_on_one_readable_line() {
        let r = rec(json!({
            "ts": "2026-05-09T10:00:00.000Z", "event": "grant", "grant_id": 7,
            "identity": "user:alice", "segment": "db", "ports": ["5432/tcp", "6432/tcp"],
            "ttl_secs": 1800, "reason": "INC-1 lag", "prev": "00", "hash": "11",
            "actor": {"uid": 0, "user": "root", "pid": 42}
        }));
        assert_eq!(
            render(&r),
            "2026-05-09T10:00:00.000Z  grant           user:alice → db  by root(0)/pid 42  grant_id=7 ports=5432/tcp,6432/tcp reason=\"INC-1 lag\" ttl=30m"
        );
    }

    #[test]
    fn denies_render_what_was_refused_and_who() {
        let d = rec(
            json!({"ts": "T", "event": "deny", "identity": "cgroup:/a", "segment": "db",
            "hook": "connect6", "addr": "::1", "port": 5432, "proto": "tcp", "cgroup": "/a",
            "cgroup_id": 9, "uid": 0, "user": "root", "gid": 0, "group": "root", "segment_id": 1}),
        );
        assert_eq!(
            render(&d),
            "T  deny            cgroup:/a → db  connect6 [::1]:5432/tcp, uid 0 (root) gid 0 (root)"
        );
        let p = rec(
            json!({"ts": "T", "event": "deny", "identity": "peer:10.0.0.9", "segment": "db",
            "hook": "xdp", "addr": "10.0.0.1", "port": 5432, "proto": "tcp", "peer": "10.0.0.9:4000"}),
        );
        assert_eq!(
            render(&p),
            "T  deny            peer:10.0.0.9 → db  xdp 10.0.0.1:5432/tcp from 10.0.0.9:4000"
        );
        let w = rec(
            json!({"ts": "T", "event": "would_deny", "identity": "peer:10.0.0.9", "segment": "db",
            "hook": "skb_ingress", "addr": "10.0.0.1", "port": 5432, "proto": "tcp", "peer": "10.0.0.9:4000"}),
        );
        assert_eq!(
            render(&w),
            "T  would_deny      peer:10.0.0.9 → db  skb_ingress 10.0.0.1:5432/tcp from 10.0.0.9:4000"
        );
        let s = rec(
            json!({"ts": "T", "event": "suppressed", "identity": "cgroup:/a", "segment": "db",
            "suppressed": 97, "window_secs": 2.0, "uid": 0, "user": "root", "gid": 0, "group": "root"}),
        );
        assert_eq!(
            render(&s),
            "T  suppressed      cgroup:/a → db  97 more denies in 2.0s, uid 0 (root) gid 0 (root)"
        );
    }

    #[test]
    fn filters_by_time_segment_event_and_identity() {
        let now = clock::rfc3339_millis(SystemTime::now());
        let old = "2000-01-01T00:00:00.000Z";
        let grant =
            rec(json!({"ts": now, "event": "grant", "identity": "user:alice", "segment": "db"}));
        let deny = rec(
            json!({"ts": now, "event": "deny", "identity": "cgroup:/a/b.service",
            "cgroup": "/a/b.service", "uid": 1000, "user": "alice", "gid": 100, "segment": "db"}),
        );
        let peer =
            rec(json!({"ts": old, "event": "deny", "identity": "peer:10.1.2.3", "segment": "web"}));
        assert!(filter(&["--since", "1h"]).matches(&grant));
        assert!(!filter(&["--since", "1h"]).matches(&peer));
        assert!(filter(&["--segment", "web"]).matches(&peer));
        assert!(!filter(&["--segment", "web"]).matches(&grant));
        assert!(filter(&["--event", "grant"]).matches(&grant));
        assert!(filter(&["--identity", "user:alice"]).matches(&grant));
        assert!(filter(&["--identity", "user:alice"]).matches(&deny));
        assert!(!filter(&["--identity", "user:bob"]).matches(&grant));
        assert!(filter(&["--identity", "cgroup:/a"]).matches(&deny));
        assert!(!filter(&["--identity", "cgroup:/ab"]).matches(&deny));
        assert!(filter(&["--identity", "unit:b.service"]).matches(&deny));
        assert!(filter(&["--identity", "uid:1000"]).matches(&deny));
        assert!(filter(&["--identity", "gid:100"]).matches(&deny));
        assert!(filter(&["--identity", "peer:10.0.0.0/8"]).matches(&peer));
        assert!(!filter(&["--identity", "peer:192.168.0.0/16"]).matches(&peer));
    }

    #[test]
    fn partial_lines_are_left_for_later() {
        let data = b"{\"event\":\"a\",\"ts\":\"x\"}\n{\"event\":\"b\"";
        let mut out = Vec::new();
        let n = print_lines(&data[..], &filter(&[]), true, &mut out).unwrap();
        assert_eq!(n, 23);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"event\":\"a\",\"ts\":\"x\"}\n"
        );
    }
}
