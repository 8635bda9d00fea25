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

/// `portcullis report break-glass`: break-glass records joined with their grants' ends.
pub(crate) mod breakglass;
mod event;
/// One request's records, read back for `request show`.
pub(crate) mod history;
pub(crate) mod query;
mod verify;
pub(crate) use event::AuditEvent;
pub(crate) use verify::{chain_files, verify_chain};

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The event name of the record that opens a file after a rotation.
pub(crate) const ROTATE: &str = "rotate";

/// Events whose action is made only once its record is written: never
/// queued, the caller refuses the action instead.
pub(crate) const AUDIT_FIRST: [&str; 2] = ["grant", "request"];

/// Records kept in memory while the log cannot be written.
pub(crate) const MAX_BACKLOG: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditError {
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
pub(crate) struct Rotation {
    /// Rotate before a record would take the file past this size; 0 = never.
    pub max_bytes: u64,
    /// Rotated files kept (`.1` .. `.keep`); at least 1.
    pub keep: usize,
}

impl Rotation {
    pub(crate) const NEVER: Rotation = Rotation {
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
pub(crate) fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// An open, append-only audit log.
pub(crate) struct AuditLog {
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
    /// Where written records go out as notifications (`[notify]`).
    notifier: Option<crate::notifications::Notifier>,
}

impl AuditLog {
    /// Opens (or creates) the log, never rotating it.
    pub(crate) fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_with(path, Rotation::NEVER)
    }

    /// Opens (or creates) the log and finds the hash to chain to: the last
    /// record of the log, or of `.1` when the log is empty.
    pub(crate) fn open_with(path: &Path, rotation: Rotation) -> Result<Self, AuditError> {
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
            notifier: None,
        })
    }

    /// From now on, every record a sink wants is offered to `notifier`
    /// once it is written (fsynced).
    pub(crate) fn set_notifier(&mut self, notifier: crate::notifications::Notifier) {
        self.notifier = Some(notifier);
    }

    /// The notifications' counters; `None` without `[notify]` sinks.
    pub(crate) fn notify_stats(&self) -> Option<crate::notifications::NotifyStats> {
        self.notifier.as_ref().map(|n| n.stats())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The last write failure, if the log cannot be written right now.
    pub(crate) fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }

    /// Records that could not be written since the agent started.
    pub(crate) fn write_failures(&self) -> u64 {
        self.write_failures
    }

    /// The hash of the last record written (the head of the chain).
    pub(crate) fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// Records waiting in memory for the log to take writes again.
    pub(crate) fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Appends one record, fsyncs, and returns its hash; queued records
    /// are written first. On failure the chain is unchanged, the error is
    /// remembered for `status` and logged, and the record is queued unless
    /// its event is in [`AUDIT_FIRST`]. The one way records are written.
    pub(crate) fn record(&mut self, event: AuditEvent) -> Result<String, AuditError> {
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
    /// Also audits the notifications' failures, once per burst.
    pub(crate) fn retry(&mut self) {
        if !self.backlog.is_empty() || self.lost > 0 {
            let result = self.flush_backlog().map(|()| String::new());
            let _ = self.note("backlog", result);
        }
        let failures = self
            .notifier
            .as_ref()
            .and_then(|n| n.take_failures(std::time::Instant::now()));
        if let Some(f) = failures {
            let _ = self.record(AuditEvent::NotifyFailed {
                failed: f.failed,
                dropped: f.dropped,
                sinks: f.sinks,
                last_error: f.last_error,
            });
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

    /// Writes one record and, once it is durable, offers it to the
    /// notifier (records from the backlog included: they go out late).
    fn write_record(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<String, AuditError> {
        let copy = self
            .notifier
            .as_ref()
            .filter(|n| n.wants(event))
            .map(|_| fields.clone());
        let hash = self.write_chained(event, fields)?;
        if let (Some(n), Some(fields)) = (&self.notifier, copy) {
            n.offer(event, &fields);
        }
        Ok(hash)
    }

    fn write_chained(
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

pub(crate) fn chain_hash(prev: &str, canonical: &str) -> String {
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

#[cfg(test)]
mod tests;
