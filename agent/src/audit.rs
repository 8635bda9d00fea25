//! The audit trail: one JSON object per line, appended and fsynced before
//! the action it records is reported as done, each line chained to the one
//! before by SHA-256 so that an edit, a deletion or a reordering is found by
//! `verify`.
//!
//! Chain rule: `hash = sha256(prev_hash + "\n" + canonical)`, where
//! `canonical` is the record without its `hash` field, serialized with keys
//! sorted (serde_json's default map). The first record of a log chains to
//! 64 zeros.
//!
//! Rotation: when the next record would take the file past `max_bytes`,
//! `audit.jsonl.{N-1}` becomes `.N` (the oldest beyond `keep` is dropped),
//! the log becomes `.1`, and the new file opens with a `rotate` record whose
//! `prev` is the old file's last hash, so one chain runs through every file.
//!
//! When a record cannot be written (a full disk, an unwritable file), the
//! actions that are only made once recorded ([`AUDIT_FIRST`]: grants and
//! requests) are refused by their callers; every other record (a
//! revocation, an expiry, a denial) describes something that happens anyway,
//! so it is kept in memory, in order, and written with `recorded_late` and
//! its original `happened_at` as soon as the log takes writes again. Nothing
//! is lost silently: past [`MAX_BACKLOG`] queued records, a `records_lost`
//! record says how many were dropped.
//!
//! Owns the file, its rotation and the chain; deciding what to record is the
//! agent's, and reading the log for people is [`query`]'s.
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

mod event;
pub mod query;
pub use event::AuditEvent;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The event name of the record that opens a file after a rotation.
pub const ROTATE: &str = "rotate";

/// Events whose action is made only once its record is written: never
/// queued, the caller refuses the action instead.
pub const AUDIT_FIRST: [&str; 2] = ["grant", "request"];

/// Records kept in memory while the log cannot be written.
pub const MAX_BACKLOG: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write audit log {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// When to start a new file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a record would take the file past this size; 0 = never.
    pub max_bytes: u64,
    /// Rotated files kept (`.1` .. `.keep`); at least 1.
    pub keep: usize,
}

impl Rotation {
    pub const NEVER: Rotation = Rotation {
        max_bytes: 0,
        keep: 1,
    };
}

impl Default for Rotation {
    /// 64 MiB per file, ten old files.
    fn default() -> Self {
        Rotation {
            max_bytes: 64 << 20,
            keep: 10,
        }
    }
}

/// The path of rotated file number `n` (`audit.jsonl.3`).
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// An open, append-only audit log.
pub struct AuditLog {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    /// Bytes in the current file (for rotation).
    size: u64,
    last_hash: String,
    /// The current file must open with a `rotate` record (it is empty while
    /// `.1` exists: a rotation was interrupted before its first record).
    owes_rotate: bool,
    /// The last write error, until a write succeeds again.
    failing: Option<String>,
    write_failures: u64,
    /// Records of things that happened while the log could not be written.
    backlog: VecDeque<(String, Map<String, Value>)>,
    /// Records dropped because the backlog was full.
    lost: u64,
}

impl AuditLog {
    /// Opens (or creates) the log, never rotating it.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_with(path, Rotation::NEVER)
    }

    /// Opens (or creates) the log and finds the hash to chain to: the last
    /// record of the log, or of `.1` when the log is empty.
    pub fn open_with(path: &Path, rotation: Rotation) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| AuditError::Open {
                path: path.into(),
                source,
            })?;
        }
        let mut owes_rotate = false;
        let mut last = last_hash(path)?;
        if last.is_none() {
            let older = rotated_path(path, 1);
            last = last_hash(&older)?;
            owes_rotate = last.is_some();
        }
        let open_err = |source| AuditError::Open {
            path: path.into(),
            source,
        };
        let mut file = open_append(path).map_err(open_err)?;
        let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // A torn last line (a crash mid-write) stays a line of its own.
        if size > 0
            && !File::open(path)
                .and_then(|f| ends_with_newline(&f, size))
                .map_err(open_err)?
        {
            file.write_all(b"\n")
                .and_then(|()| file.sync_data())
                .map_err(open_err)?;
            size += 1;
        }
        Ok(Self {
            path: path.into(),
            rotation: Rotation {
                max_bytes: rotation.max_bytes,
                keep: rotation.keep.max(1),
            },
            file: Some(file),
            size,
            last_hash: last.unwrap_or_else(|| GENESIS.into()),
            owes_rotate,
            failing: None,
            write_failures: 0,
            backlog: VecDeque::new(),
            lost: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last write failure, if the log cannot be written right now.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }

    /// Records that could not be written since the agent started.
    pub fn write_failures(&self) -> u64 {
        self.write_failures
    }

    /// The hash of the last record written (the head of the chain).
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// Records waiting in memory for the log to take writes again.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Appends one record, fsyncs, and returns its hash; queued records
    /// are written first. On failure the chain is unchanged, the error is
    /// remembered for `status` and logged, and the record is queued unless
    /// its event is in [`AUDIT_FIRST`]. The one way records are written.
    pub fn record(&mut self, event: AuditEvent) -> Result<String, AuditError> {
        let (kind, fields) = event.into_fields();
        self.record_fields(&kind, fields)
    }

    fn record_fields(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<String, AuditError> {
        let result = self
            .flush_backlog()
            .and_then(|()| self.write_record(event, fields.clone()));
        if result.is_err() && !AUDIT_FIRST.contains(&event) {
            self.enqueue(event, fields);
        }
        self.note(event, result)
    }

    /// Writes the queued records, if any (called on a timer, so they do
    /// not wait for the next event once the disk has room again).
    pub fn retry(&mut self) {
        if !self.backlog.is_empty() || self.lost > 0 {
            let result = self.flush_backlog().map(|()| String::new());
            let _ = self.note("backlog", result);
        }
    }

    /// Updates the failure state and logs its changes.
    fn note(
        &mut self,
        event: &str,
        result: Result<String, AuditError>,
    ) -> Result<String, AuditError> {
        match &result {
            Ok(_) => {
                if let Some(was) = self.failing.take() {
                    info!(path = %self.path.display(), previous_error = %was, "audit log writable again");
                }
            }
            Err(e) => {
                self.write_failures += 1;
                let why = io_cause(e);
                error!(path = %self.path.display(), event, error = %why, queued = self.backlog.len(),
                    "cannot write the audit record; grants and approvals are refused until it can be written");
                self.failing = Some(why);
            }
        }
        result
    }

    fn enqueue(&mut self, event: &str, mut fields: Map<String, Value>) {
        if self.backlog.len() >= MAX_BACKLOG {
            self.lost += 1;
            return;
        }
        fields.insert(
            "happened_at".into(),
            Value::String(crate::clock::rfc3339_millis(SystemTime::now())),
        );
        fields.insert("recorded_late".into(), Value::Bool(true));
        self.backlog.push_back((event.to_string(), fields));
    }

    fn flush_backlog(&mut self) -> Result<(), AuditError> {
        while let Some((event, fields)) = self.backlog.front().cloned() {
            self.write_record(&event, fields)?;
            self.backlog.pop_front();
        }
        if self.lost > 0 {
            let mut m = Map::new();
            m.insert("count".into(), Value::from(self.lost));
            m.insert(
                "why".into(),
                Value::String(format!(
                    "more than {MAX_BACKLOG} records waited for the audit log to take writes again"
                )),
            );
            self.write_record("records_lost", m)?;
            self.lost = 0;
        }
        Ok(())
    }

    fn write_record(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<String, AuditError> {
        if self.owes_rotate {
            self.append_record(ROTATE, self.rotate_fields())?;
            self.owes_rotate = false;
        }
        let (line, hash) = self.line(event, fields.clone());
        if self.rotation.max_bytes > 0
            && self.size > 0
            && self.size + line.len() as u64 > self.rotation.max_bytes
        {
            match self.rotate() {
                Ok(()) => {
                    self.append_record(ROTATE, self.rotate_fields())?;
                    self.owes_rotate = false;
                    // The record now chains to the rotate record.
                    return self.append_record(event, fields);
                }
                // Better a long file than a lost record.
                Err(e) => {
                    warn!(path = %self.path.display(), error = %e, "audit log rotation failed; appending to the current file")
                }
            }
        }
        self.append_line(&line, hash)
    }

    /// The rotate record names the file the chain continues from, as it
    /// was named at the rotation (later rotations shift it to `.2`, `.3`...).
    fn rotate_fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let name = rotated_path(&self.path, 1)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        m.insert("previous_file".into(), Value::String(name));
        m
    }

    /// Serializes a record chained to the current head.
    fn line(&self, event: &str, fields: Map<String, Value>) -> (String, String) {
        let mut rec = fields;
        rec.insert(
            "ts".into(),
            Value::String(crate::clock::rfc3339_millis(SystemTime::now())),
        );
        rec.insert("event".into(), Value::String(event.into()));
        rec.insert("prev".into(), Value::String(self.last_hash.clone()));
        let canonical = Value::Object(rec.clone()).to_string();
        let hash = chain_hash(&self.last_hash, &canonical);
        rec.insert("hash".into(), Value::String(hash.clone()));
        let mut line = Value::Object(rec).to_string();
        line.push('\n');
        (line, hash)
    }

    fn append_record(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<String, AuditError> {
        let (line, hash) = self.line(event, fields);
        self.append_line(&line, hash)
    }

    fn append_line(&mut self, line: &str, hash: String) -> Result<String, AuditError> {
        match self.append(line.as_bytes()) {
            Ok(()) => {
                self.last_hash = hash.clone();
                self.size += line.len() as u64;
                Ok(hash)
            }
            Err(source) => {
                // Reopen next time: the file may have been replaced or fixed.
                // A partial line may have reached the file; cut it off so
                // the next record starts on a line of its own.
                if let Some(f) = self.file.take() {
                    let _ = f.set_len(self.size);
                }
                Err(AuditError::Write {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let f = open_append(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(bytes)?;
        f.sync_data()
    }

    /// Shifts `.N-1` → `.N` … the log → `.1`, and opens a new, empty log.
    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.rotation.keep).rev() {
            let from = rotated_path(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated_path(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, rotated_path(&self.path, 1))?;
        self.file = None;
        self.size = 0;
        // From here on the new file owes its rotate record, even if the
        // agent dies before writing it.
        self.owes_rotate = true;
        let f = open_append(&self.path)?;
        if let Some(dir) = self.path.parent() {
            // The renames are durable only once the directory is synced.
            File::open(dir)?.sync_all()?;
        }
        self.file = Some(f);
        info!(path = %self.path.display(), "audit log rotated");
        Ok(())
    }
}

/// The file and the cause of an audit error, in words (`...: No space left on device`).
fn io_cause(e: &AuditError) -> String {
    match e {
        AuditError::Open { path, source } | AuditError::Write { path, source } => {
            format!("{}: {source}", path.display())
        }
    }
}

/// Opens the log for appending; a new file is 0640 (owner writes, the
/// log directory's group reads), never world-readable.
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

pub fn chain_hash(prev: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// The hash of the last valid record in `path`; `None` for a missing or
/// empty log. A line that is not a record (a write torn by a crash, an edit)
/// does not keep the agent from starting: it is reported, new records chain
/// to the last valid one, and `verify` names the line.
fn last_hash(path: &Path) -> Result<Option<String>, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AuditError::Open {
                path: path.into(),
                source,
            })
        }
    };
    let mut last = None;
    let mut bad = None;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|source| AuditError::Open {
            path: path.into(),
            source,
        })?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let hash = serde_json::from_slice::<Value>(&line)
            .ok()
            .and_then(|v| v.get("hash")?.as_str().map(str::to_string));
        match hash {
            Some(h) => last = Some(h),
            None => {
                bad.get_or_insert(i + 1);
            }
        }
    }
    if let Some(line) = bad {
        error!(path = %path.display(), line,
            "the audit log holds a line that is not a valid record; new records chain to the last valid one, and `portcullis audit verify` reports the break");
    }
    Ok(last)
}

/// Whether a non-empty file's last byte is a newline.
fn ends_with_newline(file: &File, size: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, size - 1)?;
    Ok(last[0] == b'\n')
}

/// The first place a chain breaks.
#[derive(Debug, PartialEq, Eq)]
pub struct Break {
    pub path: PathBuf,
    pub line: usize,
    /// The broken record's event and time, when they can be read.
    pub record: Option<String>,
    pub why: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.path.display(), self.line)?;
        if let Some(r) = &self.record {
            write!(f, "{r}: ")?;
        }
        f.write_str(&self.why)
    }
}

/// What a file's chain must start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The file is the oldest there is: its first record chains to the
    /// genesis hash, or it is a `rotate` record (older files were dropped).
    Oldest,
    /// The file follows a rotation: its first record is a `rotate` record
    /// chaining to this hash.
    After(String),
}

/// A verified file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: usize,
    /// The head of the chain after this file (`None` for an empty file).
    pub last_hash: Option<String>,
}

/// Checks every record's hash and its link to the one before.
pub fn verify_file(path: &Path, start: &Start) -> io::Result<Result<Verified, Break>> {
    let reader = BufReader::new(File::open(path)?);
    let mut prev: Option<String> = None;
    let mut count = 0;
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let brk = |record: Option<String>, why: &str| Break {
            path: path.into(),
            line: n,
            record,
            why: why.into(),
        };
        let Ok(Value::Object(mut rec)) = serde_json::from_str::<Value>(&line) else {
            return Ok(Err(brk(None, "not a JSON object")));
        };
        let label = describe(&rec);
        let Some(Value::String(hash)) = rec.remove("hash") else {
            return Ok(Err(brk(label, "no hash field")));
        };
        let Some(claimed_prev) = rec.get("prev").and_then(Value::as_str).map(str::to_string) else {
            return Ok(Err(brk(label, "no prev field")));
        };
        let is_rotate = rec.get("event").and_then(Value::as_str) == Some(ROTATE);
        match (&prev, start) {
            (Some(p), _) if *p != claimed_prev => {
                return Ok(Err(brk(
                    label,
                    "does not follow the record before it (a record was removed, inserted or reordered)",
                )))
            }
            (Some(_), _) => {}
            (None, Start::Oldest) => {
                if !is_rotate && claimed_prev != GENESIS {
                    return Ok(Err(brk(
                        label,
                        "the log's first record does not start the chain (records before it were removed)",
                    )));
                }
            }
            (None, Start::After(expected)) => {
                if !is_rotate {
                    return Ok(Err(brk(
                        label,
                        "a rotated-to file must open with a rotate record (records were removed)",
                    )));
                }
                if claimed_prev != *expected {
                    return Ok(Err(brk(
                        label,
                        "does not follow the last record of the previous file (records or a file were removed)",
                    )));
                }
            }
        }
        let canonical = Value::Object(rec).to_string();
        if chain_hash(&claimed_prev, &canonical) != hash {
            return Ok(Err(brk(
                label,
                "content does not match its hash (the record was modified)",
            )));
        }
        prev = Some(hash);
        count += 1;
    }
    Ok(Ok(Verified {
        records: count,
        last_hash: prev,
    }))
}

fn describe(rec: &Map<String, Value>) -> Option<String> {
    let event = rec.get("event")?.as_str()?;
    match rec.get("ts").and_then(Value::as_str) {
        Some(ts) => Some(format!("{event} at {ts}")),
        None => Some(event.to_string()),
    }
}

/// The files of a log, oldest first: `.N` … `.1`, then the log itself.
/// Only the log when it is itself a rotated file (`audit.jsonl.3`).
pub fn chain_files(path: &Path) -> Vec<PathBuf> {
    let is_rotated = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    if is_rotated {
        return vec![path.into()];
    }
    let mut older = Vec::new();
    // Gaps end the walk: `.1` .. `.k` are consecutive by construction.
    for n in 1.. {
        let p = rotated_path(path, n);
        if !p.exists() || n > 100_000 {
            break;
        }
        older.push(p);
    }
    older.reverse();
    older.push(path.into());
    older
}

/// A verified chain across files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    pub files: Vec<(PathBuf, usize)>,
    pub last_hash: Option<String>,
}

/// Verifies the log and its rotated files as one chain.
pub fn verify_chain(path: &Path) -> io::Result<Result<ChainReport, Break>> {
    let mut start = Start::Oldest;
    let mut report = ChainReport {
        files: Vec::new(),
        last_hash: None,
    };
    for file in chain_files(path) {
        let v = match verify_file(&file, &start)? {
            Ok(v) => v,
            Err(b) => return Ok(Err(b)),
        };
        report.files.push((file, v.records));
        if let Some(h) = v.last_hash {
            report.last_hash = Some(h.clone());
            start = Start::After(h);
        }
    }
    Ok(Ok(report))
}

/// Checks one file on its own, as the oldest of its chain. Returns the
/// number of records.
pub fn verify(path: &Path) -> io::Result<Result<usize, Break>> {
    Ok(verify_file(path, &Start::Oldest)?.map(|v| v.records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pc-audit-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("audit.jsonl")
    }

    #[test]
    fn chain_verifies_and_survives_reopen() {
        let p = tmp("reopen");
        let mut log = AuditLog::open(&p).unwrap();
        log.record_fields("grant", fields(json!({"grant_id": 1})))
            .unwrap();
        drop(log);
        let mut log = AuditLog::open(&p).unwrap();
        log.record_fields("revoke", fields(json!({"grant_id": 1})))
            .unwrap();
        assert_eq!(verify(&p).unwrap(), Ok(2));
    }

    #[test]
    fn tampering_is_found_at_the_right_line() {
        let p = tmp("tamper");
        let mut log = AuditLog::open(&p).unwrap();
        for i in 0..4 {
            log.record_fields("grant", fields(json!({"grant_id": i})))
                .unwrap();
        }
        let text = fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        // A changed byte.
        let edited = text.replacen("\"grant_id\":2", "\"grant_id\":9", 1);
        fs::write(&p, edited).unwrap();
        let b = verify(&p).unwrap().unwrap_err();
        assert_eq!(b.line, 3);
        assert!(b.why.contains("modified"), "{b}");

        // A deleted line.
        let deleted = [lines[0], lines[1], lines[3]].join("\n");
        fs::write(&p, deleted).unwrap();
        assert_eq!(verify(&p).unwrap().unwrap_err().line, 3);

        // Two lines swapped.
        let swapped = [lines[0], lines[2], lines[1], lines[3]].join("\n");
        fs::write(&p, swapped).unwrap();
        assert_eq!(verify(&p).unwrap().unwrap_err().line, 2);

        // The first line deleted: the chain no longer starts at genesis.
        let headless = lines[1..].join("\n");
        fs::write(&p, headless).unwrap();
        let b = verify(&p).unwrap().unwrap_err();
        assert_eq!(b.line, 1);
        assert!(b.to_string().contains("grant at "), "{b}");
    }

    fn rotating(p: &Path, max_bytes: u64, keep: usize) -> AuditLog {
        AuditLog::open_with(p, Rotation { max_bytes, keep }).unwrap()
    }

    #[test]
    fn rotation_keeps_one_chain_across_files() {
        let p = tmp("rotate");
        let mut log = rotating(&p, 600, 3);
        for i in 0..12 {
            log.record_fields(
                "grant",
                fields(json!({"grant_id": i, "pad": "x".repeat(100)})),
            )
            .unwrap();
        }
        assert!(rotated_path(&p, 3).exists());
        assert!(!rotated_path(&p, 4).exists(), "keep = 3");
        for f in chain_files(&p) {
            assert!(fs::metadata(&f).unwrap().len() <= 600, "{}", f.display());
        }
        // Each newer file opens with a rotate record chained to the older file.
        let first: Value =
            serde_json::from_str(fs::read_to_string(&p).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["event"], ROTATE);
        let older = fs::read_to_string(rotated_path(&p, 1)).unwrap();
        let older_last: Value = serde_json::from_str(older.lines().last().unwrap()).unwrap();
        assert_eq!(first["prev"], older_last["hash"]);

        let report = verify_chain(&p).unwrap().unwrap();
        assert_eq!(report.files.len(), 4);
        assert_eq!(report.last_hash.as_deref(), Some(log.last_hash()));

        // Reopening continues the chain.
        drop(log);
        let mut log = rotating(&p, 600, 3);
        log.record_fields("revoke", fields(json!({"grant_id": 1})))
            .unwrap();
        assert!(verify_chain(&p).unwrap().is_ok());

        // A rotated file removed from the middle breaks the chain at the
        // first record of the file after the gap.
        fs::remove_file(rotated_path(&p, 2)).unwrap();
        fs::rename(rotated_path(&p, 3), rotated_path(&p, 2)).unwrap();
        let b = verify_chain(&p).unwrap().unwrap_err();
        assert_eq!((b.path.clone(), b.line), (rotated_path(&p, 1), 1), "{b}");
    }

    #[test]
    fn an_interrupted_rotation_is_completed_on_open() {
        let p = tmp("interrupted");
        let mut log = AuditLog::open(&p).unwrap();
        log.record_fields("grant", fields(json!({"grant_id": 1})))
            .unwrap();
        drop(log);
        // The agent died between the rename and the rotate record.
        fs::rename(&p, rotated_path(&p, 1)).unwrap();
        let mut log = rotating(&p, 1 << 20, 2);
        log.record_fields("revoke", fields(json!({"grant_id": 1})))
            .unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text
            .lines()
            .next()
            .unwrap()
            .contains("\"event\":\"rotate\""));
        let report = verify_chain(&p).unwrap().unwrap();
        assert_eq!(report.files.iter().map(|f| f.1).sum::<usize>(), 3);
    }

    #[test]
    fn records_that_cannot_wait_are_refused_and_the_rest_written_late() {
        let p = tmp("backlog");
        let mut log = AuditLog::open(&p).unwrap();
        log.record_fields("grant", fields(json!({"grant_id": 1})))
            .unwrap();
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
        log.file = None;
        assert!(log
            .record_fields("revoke", fields(json!({"grant_id": 1})))
            .is_err());
        assert!(log
            .record_fields("grant", fields(json!({"grant_id": 2})))
            .is_err());
        assert_eq!(log.backlog(), 1, "the grant is refused, not queued");
        fs::remove_dir(&p).unwrap();
        // The original file is gone (a new one chains on): write into it and
        // check the order and the marks.
        log.retry();
        assert_eq!(log.backlog(), 0);
        assert!(log.failing().is_none());
        log.record_fields("grant", fields(json!({"grant_id": 3})))
            .unwrap();
        let recs: Vec<Value> = fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["event"], "revoke");
        assert_eq!(recs[0]["recorded_late"], true);
        assert!(recs[0]["happened_at"].is_string());
        assert_eq!(recs[1]["grant_id"], 3);
        assert_eq!(recs[1]["prev"], recs[0]["hash"]);
    }

    #[test]
    fn a_torn_last_line_does_not_stop_the_log_and_is_reported() {
        let p = tmp("torn");
        let mut log = AuditLog::open(&p).unwrap();
        log.record_fields("grant", fields(json!({"grant_id": 1})))
            .unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"event\":\"rev").unwrap();
        let mut log = AuditLog::open(&p).unwrap();
        log.record_fields("revoke", fields(json!({"grant_id": 1})))
            .unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let b = verify(&p).unwrap().unwrap_err();
        assert_eq!((b.line, b.why.as_str()), (2, "not a JSON object"));
    }

    #[test]
    fn a_failed_write_leaves_the_chain_and_remembers_why() {
        let p = tmp("fail");
        let mut log = AuditLog::open(&p).unwrap();
        log.record_fields("grant", fields(json!({"grant_id": 1})))
            .unwrap();
        // A directory where the file should be: every reopen fails.
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
        log.file = None;
        let head = log.last_hash().to_string();
        assert!(log
            .record_fields("grant", fields(json!({"grant_id": 2})))
            .is_err());
        assert_eq!(log.last_hash(), head);
        assert_eq!(log.write_failures(), 1);
        assert!(
            log.failing().unwrap().contains("audit.jsonl"),
            "{:?}",
            log.failing()
        );
        fs::remove_dir(&p).unwrap();
        log.record_fields("grant", fields(json!({"grant_id": 3})))
            .unwrap();
        assert!(log.failing().is_none());
    }
}
