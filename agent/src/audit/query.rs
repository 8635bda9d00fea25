//! `portcullis audit`: reading the audit log and the deny log for people.
//!
//! The CLI runs on the agent's host and reads the files directly (it needs
//! read permission on them, not the agent's socket); it asks the agent only
//! where they are, and falls back to the default paths when the agent is not
//! running. Owns filtering, rendering, `--follow` and `audit verify`; the
//! files and the chain rule belong to [`crate::audit`] and
//! [`crate::denylog`].
//!
//! An audit line is read as a [`Record`]: its envelope (`ts`) and its typed
//! [`AuditEvent`]. A line this version cannot read as one of its kinds (a
//! newer kind, an old shape, and the deny log's `deny` and `suppressed`
//! records, which are not audit events) is [`AuditEvent::Other`] and is
//! shown from its own fields, escaped, like any other.
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

use super::AuditEvent;
use crate::{
    control::{self, Reply, Request, Response},
    duration::parse_ttl,
    identity::Identity,
    termtext,
};

/// Where the audit log is when neither `--file` nor the agent says.
pub(crate) const DEFAULT_AUDIT_LOG: &str = "/var/log/portcullis/audit.jsonl";
/// The deny log's file name, beside the audit log unless configured.
pub(crate) const DENY_LOG_NAME: &str = "denies.jsonl";
/// How often `--follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(300);

/// `portcullis audit`: query the audit trail, or verify its chain.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    #[command(flatten)]
    pub query: QueryArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check the hash chain; names the first broken record. Given the
    /// current log (the default), checks its rotated files too.
    #[command(after_help = VERIFY_EXAMPLES)]
    Verify {
        /// An audit log file [default: the agent's audit log].
        file: Option<PathBuf>,
    },
}

/// `audit verify --help`'s examples (the other subcommands' are in
/// `cli/examples.rs`, which this module cannot import: `cli` imports it).
const VERIFY_EXAMPLES: &str = "\
Examples:
  portcullis audit verify                                   # the agent's log and its rotated files
  portcullis audit verify /var/log/portcullis/audit.jsonl.3";

#[derive(Args, Debug, Default)]
pub(crate) struct QueryArgs {
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
    /// Only records of this event kind (grant, revoke, expire, ...; with
    /// --denies: deny, would_deny, suppressed). Another name is an error
    /// listing the kinds.
    #[arg(long)]
    pub event: Option<String>,
    /// Keep printing new records as they are written.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N matching records (then, with --follow, new ones).
    #[arg(long = "lines", short = 'n', value_name = "N")]
    pub lines: Option<usize>,
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
pub(crate) fn run(args: AuditArgs, socket: &Path) -> ExitCode {
    match args.command {
        Some(AuditCommand::Verify { file }) => {
            let path = file.unwrap_or_else(|| log_paths(socket).0);
            verify(&path)
        }
        None => query(args.query, socket),
    }
}

/// The audit log and deny log paths, as the agent reports them.
pub(crate) fn log_paths(socket: &Path) -> (PathBuf, PathBuf) {
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
pub(crate) struct Filter {
    since: Option<SystemTime>,
    identity: Option<Identity>,
    segment: Option<String>,
    event: Option<String>,
}

impl Filter {
    pub(crate) fn new(q: &QueryArgs) -> Result<Self, String> {
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
        if let Some(ev) = &q.event {
            if let Some(note) = check_event(ev, q.denies)? {
                eprintln!("portcullis: note: {note}");
            }
        }
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

    pub(crate) fn matches(&self, rec: &Record) -> bool {
        if let Some(since) = self.since {
            match rec.ts().and_then(|t| humantime::parse_rfc3339_weak(t).ok()) {
                Some(t) if t >= since => {}
                _ => return false,
            }
        }
        if let Some(seg) = &self.segment {
            if rec.event.segment() != Some(seg.as_str()) {
                return false;
            }
        }
        if let Some(ev) = &self.event {
            if rec.event.name() != ev.as_str() {
                return false;
            }
        }
        match &self.identity {
            None => true,
            Some(id) => identity_matches(id, rec),
        }
    }
}

/// One line of a log, read back: its envelope and its event.
#[derive(Debug, PartialEq)]
pub(crate) struct Record {
    /// When it was written (`ts`), as written.
    ts: Option<String>,
    pub event: AuditEvent,
    /// Fields of the line that are neither the envelope nor the event's own:
    /// `recorded_late` and `happened_at`, or a field a newer version added
    /// to a known kind. Shown with the event's, never dropped.
    extra: Map<String, Value>,
}

impl Record {
    /// Reads a line's object. Never fails (see [`AuditEvent::from_record`]).
    pub(crate) fn read(mut rec: Map<String, Value>) -> Self {
        let event = AuditEvent::from_record(&rec);
        let ts = rec.get("ts").and_then(Value::as_str).map(str::to_string);
        let extra = match &event {
            // `Other` keeps the whole line already.
            AuditEvent::Other(_) => Map::new(),
            known => {
                let (_, own) = known.clone().into_fields();
                for k in SHOWN.iter().copied().chain(own.keys().map(String::as_str)) {
                    rec.remove(k);
                }
                rec
            }
        };
        Self { ts, event, extra }
    }

    fn ts(&self) -> Option<&str> {
        self.ts.as_deref()
    }

    /// A top-level text field of a record this version does not type (the
    /// deny log's `cgroup`, `user`, `group`); known kinds have none of them.
    fn other_text(&self, k: &str) -> Option<&str> {
        match &self.event {
            AuditEvent::Other(f) => f.get(k).and_then(Value::as_str),
            _ => None,
        }
    }

    fn other_num(&self, k: &str) -> Option<u64> {
        match &self.event {
            AuditEvent::Other(f) => f.get(k).and_then(Value::as_u64),
            _ => None,
        }
    }
}

/// Whether a record is about `id`: its `identity` field names it, or (deny
/// records) its cgroup, uid, user, gid, group or peer address falls under it.
fn identity_matches(id: &Identity, rec: &Record) -> bool {
    let identity = rec.event.identity();
    if let Some(recorded) = identity {
        if recorded == id.to_string() {
            return true;
        }
    }
    let cgroup = rec.event.cgroup();
    match id {
        Identity::Cgroup(p) => cgroup.is_some_and(|c| {
            c == p || p == "/" || c.starts_with(&format!("{}/", p.trim_end_matches('/')))
        }),
        Identity::Unit(u) => {
            cgroup.is_some_and(|c| c.ends_with(&format!("/{u}")) || c.contains(&format!("/{u}/")))
        }
        Identity::Uid(u) => rec.other_num("uid") == Some(u64::from(*u)),
        Identity::User(name) => rec.other_text("user") == Some(name.as_str()),
        Identity::Gid(g) => rec.other_num("gid") == Some(u64::from(*g)),
        Identity::Group(name) => rec.other_text("group") == Some(name.as_str()),
        Identity::Peer(cidr) => identity
            .and_then(|i| i.strip_prefix("peer:"))
            .and_then(|a| a.split('/').next()?.parse::<IpAddr>().ok())
            .is_some_and(|ip| cidr.contains(ip)),
    }
}

/// The kinds of the deny log's lines (`--denies`).
const DENY_KINDS: [&str; 3] = ["deny", "would_deny", "suppressed"];

/// `--event KIND` must name a kind of the log it reads: a typo (within
/// two edits of a kind) would otherwise show nothing and exit 0, as if
/// nothing had happened, so it is an error. A name far from every kind
/// may be a newer version's kind in the log: a note, and the query runs.
fn check_event(ev: &str, denies: bool) -> Result<Option<String>, String> {
    let (log, kinds): (&str, &[&str]) = if denies {
        ("deny log", &DENY_KINDS)
    } else {
        ("audit log", &AuditEvent::KINDS)
    };
    if kinds.contains(&ev) {
        return Ok(None);
    }
    let guess = kinds
        .iter()
        .map(|k| (strsim::levenshtein(ev, k), *k))
        .filter(|&(d, _)| d <= 2)
        .min();
    let ev = termtext::escape(ev);
    match guess {
        Some((_, k)) => Err(format!(
            "--event {ev:?} is not a kind of the {log}; did you mean {k:?}?; kinds: {}",
            kinds.join(", ")
        )),
        None => Ok(Some(format!(
            "--event {ev:?} is not a kind this version writes (a newer agent's?); kinds: {}",
            kinds.join(", ")
        ))),
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
    // With -n, matching lines go through a window of the last N first.
    let mut last = q.lines.map(LastLines::new);
    for f in &files {
        let file = match File::open(f) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && f == &path && q.follow => {
                break;
            }
            Err(e) => return fail(1, format!("cannot read {}: {e}", f.display())),
        };
        let printed = match &mut last {
            Some(window) => print_lines(BufReader::new(file), &filter, q.json, window),
            None => print_lines(BufReader::new(file), &filter, q.json, &mut out),
        };
        match printed {
            Ok(n) => end = n,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
            Err(e) => return fail(1, format!("reading {}: {e}", f.display())),
        }
    }
    if let Some(window) = last {
        for line in window.lines {
            if let Err(e) = out.write_all(&line) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
                return fail(1, format!("writing: {e}"));
            }
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

/// The last `n` lines written to it (`audit -n N`), each with its newline.
pub(crate) struct LastLines {
    n: usize,
    lines: std::collections::VecDeque<Vec<u8>>,
    partial: Vec<u8>,
}

impl LastLines {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            n,
            lines: std::collections::VecDeque::new(),
            partial: Vec::new(),
        }
    }
}

impl Write for LastLines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.partial.push(b);
            if b == b'\n' {
                self.lines.push_back(std::mem::take(&mut self.partial));
                if self.lines.len() > self.n {
                    self.lines.pop_front();
                }
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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
                let rec = Record::read(rec);
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

mod render;
#[cfg(test)]
mod tests;
use render::render;
use render::SHOWN;
