//! The agent's memory: a durable journal of grants, requests, the id
//! counter and the segment ids, in its state directory.
//!
//! Two files: `journal.snap`, the whole state at one instant (written to a
//! temporary file, fsynced, renamed over the old one, directory fsynced),
//! and `journal.log`, the changes since, appended one checksummed frame per
//! change and fdatasync'ed before the change is made. A grant or a revoke
//! costs one append and one fdatasync, whatever the number of live grants.
//! When the log is much larger than the live set (four times the last
//! snapshot, and at least 1 MiB), the state is written as a new snapshot
//! and the log starts again: compaction, amortized O(1) per change.
//!
//! Why a log of our own and not an embedded database (redb, SQLite): what
//! is stored is a few thousand to a million small records, read whole at
//! start and only appended to afterwards, never queried. A checksummed
//! append-only log does exactly that with one fdatasync per change and
//! about 300 lines with no new dependency beyond `crc32fast`, whose
//! behaviour on a crash (a torn last frame, cut off at start) is simple to
//! state and to test. An embedded B-tree would add a second on-disk format
//! to trust and review for what is, here, a replayed list of changes.
//!
//! Order of writes for a change (see `agent::grants`): journal, then audit
//! record, then kernel, then reply; for an end (revoke, expiry): journal,
//! kernel, audit. A revoke's journal frame is written before the kernel
//! acts and fdatasync'ed right after ([`Journal::stage`], [`Journal::commit`]),
//! before its audit record and the reply: refusing needs no disk, and what
//! a crash can do in between is what it could do before (an agent crash
//! leaves the written frame in the page cache; a host crash empties the
//! kernel's maps too, and nothing was replied). A crash between the journal
//! and the audit record is found at start from the audit chain's head (see
//! `agent::restore`).
//!
//! When the journal cannot be written (a read-only or full file system),
//! [`Journal::append`] fails and its callers refuse what must be
//! remembered (grants, approvals, requests); what happens anyway (revokes,
//! expiries) goes through [`Journal::append_or_queue`] and is written, in
//! order, before anything else once the journal takes writes again.
//!
//! Trust: the directory and files belong to root (or the agent's user) and
//! are writable by nobody else, the files are 0600: whoever can write the
//! journal decides which grants the agent restores at start.
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tracing::{error, info, warn};

mod record;
mod table;
use record::{frame, frames, Stop};
pub(crate) use record::{Memory, Op};

pub(crate) const LOG_FILE: &str = "journal.log";
pub(crate) const SNAP_FILE: &str = "journal.snap";
/// The state file of earlier versions, imported once.
pub(crate) const LEGACY_FILE: &str = "state.json";
/// Snapshot format: 2 is a JSON frame of everything but the grants,
/// then the grants as a binary table in a second frame (`journal/table.rs`);
/// 1 (earlier versions; still read) is one JSON frame of everything.
const FORMAT: u32 = 2;
const FORMAT_JSON: u32 = 1;
/// The log is compacted once it is this many times the snapshot...
const COMPACT_RATIO: u64 = 4;
/// ...and at least this large.
const COMPACT_MIN: u64 = 1 << 20;
/// Changes kept in memory while the journal cannot be written.
pub(crate) const MAX_QUEUED: usize = 100_000;

/// A change written to the log and not yet durable: hand it to
/// [`Journal::commit`] before replying, and write nothing else meanwhile.
#[must_use = "a staged change is durable only once committed"]
pub(crate) struct Staged {
    file: File,
    len: u64,
    op: Op,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error("cannot read the journal {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the journal {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing the journal {path}: {why}; it must belong to root and be writable by nobody else (chown root:root, chmod go-w)")]
    Untrusted { path: PathBuf, why: String },
    #[error("the journal {path} cannot take writes ({why}); changes are queued until it can")]
    Queued { path: PathBuf, why: String },
}

/// The snapshot file's content.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    format: u32,
    memory: Memory,
}

/// What opening found, besides the state.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    pub memory: Memory,
    /// The last change in the log, if it owes an audit record.
    pub last: Option<Op>,
    /// Nothing was there: no journal and no earlier state file.
    pub fresh: bool,
    /// A state file of an earlier version was imported (and moved here).
    pub migrated: Option<PathBuf>,
    /// Damage found (and set aside to the named file): what was lost may
    /// still be live in the kernel maps.
    pub damaged: Option<(String, PathBuf)>,
}

pub(crate) struct Journal {
    dir: PathBuf,
    log_path: PathBuf,
    /// Bytes of the log known to be written and good.
    log_len: u64,
    snap_len: u64,
    /// Changes waiting for the journal to take writes again.
    queue: VecDeque<Op>,
    /// Changes dropped because the queue was full.
    dropped: u64,
    failing: Option<String>,
    write_failures: u64,
}

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Refuses a journal directory or file that someone else owns or may write.
fn check_trust(path: &Path, meta: &fs::Metadata) -> Result<(), JournalError> {
    let why = if !trusted_owner(meta.uid()) {
        format!("it belongs to uid {}", meta.uid())
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "it is writable by others (mode {:04o})",
            meta.mode() & 0o7777
        )
    } else if meta.is_file() && !meta.file_type().is_file() {
        "it is not a regular file".into()
    } else {
        return Ok(());
    };
    Err(JournalError::Untrusted {
        path: path.into(),
        why,
    })
}

/// Checks a file that must be a regular one, if it exists (not following a symlink).
fn check_file(path: &Path) -> Result<(), JournalError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => Err(JournalError::Untrusted {
            path: path.into(),
            why: "it is not a regular file".into(),
        }),
        Ok(meta) => check_trust(path, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JournalError::Read {
            path: path.into(),
            source,
        }),
    }
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, JournalError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JournalError::Read {
            path: path.into(),
            source,
        }),
    }
}

/// Writes `bytes` as `path`, atomically and durably, mode 0600.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{}.tmp", name.unwrap_or_default()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

fn now_ms() -> u64 {
    crate::actor::unix_ms(std::time::SystemTime::now())
}

impl Journal {
    /// Opens the journal in `dir` (created 0700 if missing) and replays it.
    /// A state file of an earlier version is imported once and kept as
    /// `state.json.migrated`. A torn last record is cut off; damage is set
    /// aside and reported, and the journal goes on from the last good record.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Opened), JournalError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Write { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(werr(dir))?;
        let meta = fs::metadata(dir).map_err(|source| JournalError::Read {
            path: dir.into(),
            source,
        })?;
        check_trust(dir, &meta)?;
        let log_path = dir.join(LOG_FILE);
        let snap_path = dir.join(SNAP_FILE);
        check_file(&log_path)?;
        check_file(&snap_path)?;
        let mut journal = Journal {
            dir: dir.into(),
            log_path: log_path.clone(),
            log_len: 0,
            snap_len: 0,
            queue: VecDeque::new(),
            dropped: 0,
            failing: None,
            write_failures: 0,
        };
        let mut opened = Opened::default();
        let snap = read_opt(&snap_path)?;
        let log = read_opt(&log_path)?;
        match &snap {
            Some(bytes) => {
                journal.snap_len = bytes.len() as u64;
                match Self::read_snapshot(bytes) {
                    Ok(m) => opened.memory = m,
                    Err(why) => {
                        let aside = journal.set_aside(&snap_path, bytes)?;
                        opened.damaged = Some((format!("{}: {why}", snap_path.display()), aside));
                    }
                }
            }
            None if log.is_none() => {
                let legacy = dir.join(LEGACY_FILE);
                check_file(&legacy)?;
                match crate::state::load(dir).map_err(|e| JournalError::Read {
                    path: legacy.clone(),
                    source: io::Error::other(e.to_string()),
                })? {
                    crate::state::Loaded::Fresh => opened.fresh = true,
                    crate::state::Loaded::Ok(saved) => {
                        opened.memory = Memory {
                            next_id: saved.next_id.max(1),
                            segment_ids: saved.segment_ids,
                            grants: saved.grants.into_iter().map(|g| (g.id, g)).collect(),
                            requests: saved.requests.into_iter().map(|r| (r.id, r)).collect(),
                            locks: std::collections::BTreeMap::new(),
                        };
                        // The import is durable before the old file moves.
                        journal.compact(&opened.memory)?;
                        let kept = dir.join(format!("{LEGACY_FILE}.migrated"));
                        fs::rename(&legacy, &kept).map_err(werr(&legacy))?;
                        File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(werr(dir))?;
                        info!(from = %legacy.display(), kept = %kept.display(), "imported the state file of an earlier version into the journal");
                        opened.migrated = Some(kept);
                    }
                    crate::state::Loaded::Corrupt { why, moved_to } => {
                        opened.damaged = Some((format!("{}: {why}", legacy.display()), moved_to));
                    }
                }
            }
            None => {}
        }
        if let Some(bytes) = &log {
            let f = frames(bytes);
            let mut good = f.good_len;
            let mut last = None;
            let mut bad = None;
            for (i, payload) in f.payloads.iter().enumerate() {
                match serde_json::from_slice::<Op>(payload) {
                    Ok(op) => {
                        opened.memory.apply(&op);
                        last = Some(op);
                    }
                    Err(e) => {
                        // A good checksum over a record this version cannot
                        // read: stop there, like damage.
                        good = f.payloads[..i].iter().map(|p| p.len() + 8).sum();
                        bad = Some(format!("record {} cannot be read: {e}", i + 1));
                        break;
                    }
                }
            }
            if let (None, Some(Stop::Damaged { at })) = (&bad, &f.stop) {
                bad = Some(format!("checksum mismatch at byte {at}"));
            }
            if let Some(why) = bad {
                let aside = journal.set_aside(&log_path, bytes)?;
                opened.damaged = Some((format!("{}: {why}", log_path.display()), aside));
            } else if f.stop == Some(Stop::Torn) {
                warn!(path = %log_path.display(), cut = bytes.len() - good, "the journal's last record was cut short by a crash; dropped (it was never acted on)");
            }
            if good < bytes.len() {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&log_path)
                    .map_err(werr(&log_path))?;
                file.set_len(good as u64).map_err(werr(&log_path))?;
                file.sync_all().map_err(werr(&log_path))?;
            }
            journal.log_len = good as u64;
            opened.last = last.filter(|op| op.audit_prev().is_some());
        }
        opened.memory.next_id = opened.memory.next_id.max(1);
        Ok((journal, opened))
    }

    fn read_snapshot(bytes: &[u8]) -> Result<Memory, String> {
        let f = frames(bytes);
        let (header, table) = match (f.payloads.as_slice(), f.stop) {
            ([header], None) => (header, None),
            ([header, table], None) => (header, Some(table)),
            _ => return Err("not one or two whole checksummed records".into()),
        };
        let snap: Snapshot = serde_json::from_slice(header).map_err(|e| e.to_string())?;
        match (snap.format, table) {
            (FORMAT_JSON, None) => Ok(snap.memory),
            (FORMAT, Some(table)) => {
                let mut memory = snap.memory;
                if !memory.grants.is_empty() {
                    return Err("grants both in the header and in the table".into());
                }
                let mut grants = Vec::new();
                table::decode(table, |g| grants.push(g))?;
                // Written in id order: the map is built in one go.
                memory.grants = grants.into_iter().map(|g| (g.id, g)).collect();
                Ok(memory)
            }
            (FORMAT_JSON | FORMAT, _) => Err(format!(
                "format {} with {} records",
                snap.format,
                1 + usize::from(table.is_some())
            )),
            (other, _) => Err(format!("unknown format {other}")),
        }
    }

    /// Keeps a copy of a damaged file beside it, for people to look at.
    fn set_aside(&self, path: &Path, bytes: &[u8]) -> Result<PathBuf, JournalError> {
        let aside = path.with_extension(format!("corrupt-{}", now_ms()));
        write_atomic(&self.dir, &aside, bytes).map_err(|source| JournalError::Write {
            path: aside.clone(),
            source,
        })?;
        if path.ends_with(SNAP_FILE) {
            let _ = fs::remove_file(path);
        }
        error!(path = %path.display(), copy = %aside.display(), "the journal is damaged; a copy is kept, going on from the last good record");
        Ok(aside)
    }

    /// Why the journal cannot be written right now, if it cannot.
    pub(crate) fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }

    /// Changes waiting to be written.
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.log_path
    }

    /// Appends `op` durably (after anything queued). On failure nothing of
    /// it stays in the file, and the caller must not act on it.
    pub(crate) fn append(&mut self, op: &Op) -> Result<(), JournalError> {
        let result = self.flush_queue().and_then(|()| self.write(op));
        self.note(result)
    }

    /// Appends `op`, or queues it when the journal cannot take writes: for
    /// changes that happen anyway (ends of grants, decided requests).
    pub(crate) fn append_or_queue(&mut self, op: Op) -> Result<(), JournalError> {
        match self.append(&op) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.enqueue(op, &e)),
        }
    }

    /// Keeps `op`, which could not be written (`e`), for [`Journal::retry`].
    fn enqueue(&mut self, op: Op, e: &JournalError) -> JournalError {
        if self.queue.len() < MAX_QUEUED {
            self.queue.push_back(op);
        } else {
            self.dropped += 1;
        }
        JournalError::Queued {
            path: self.log_path.clone(),
            why: e.to_string(),
        }
    }

    /// Writes `op` (after anything queued) without waiting for the disk:
    /// for an end (a revoke) that the kernel then enforces at once; the
    /// caller makes it durable with [`Journal::commit`] before it replies.
    /// A crash of the agent leaves the frame in the page cache, so the end
    /// survives it as if fdatasync'ed; a crash of the host in between also
    /// empties the kernel's maps, and nothing was replied. When it cannot be
    /// written, it is queued as by [`Journal::append_or_queue`] (and the
    /// error says so); nothing is left to commit then.
    pub(crate) fn stage(&mut self, op: Op) -> Result<Staged, JournalError> {
        let written = self.flush_queue().and_then(|()| self.write_unsynced(&op));
        match written {
            Ok((file, len)) => Ok(Staged { file, len, op }),
            Err(e) => {
                let e = self.note(Err(e)).expect_err("a failed write");
                Err(self.enqueue(op, &e))
            }
        }
    }

    /// Makes a staged change durable (fdatasync); if that fails, it is cut
    /// off the file and queued, to be written again before anything else.
    pub(crate) fn commit(&mut self, staged: Staged) -> Result<(), JournalError> {
        let Staged { file, len, op } = staged;
        let result = self.sync_written(&file, len);
        match self.note(result) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.enqueue(op, &e)),
        }
    }

    /// Writes queued changes, if any (called on a timer).
    pub(crate) fn retry(&mut self) {
        if !self.queue.is_empty() {
            let result = self.flush_queue();
            let _ = self.note(result);
        }
    }

    fn note(&mut self, result: Result<(), JournalError>) -> Result<(), JournalError> {
        match &result {
            Ok(()) => {
                if let Some(was) = self.failing.take() {
                    info!(path = %self.log_path.display(), previous_error = %was, "journal writable again");
                }
            }
            Err(e) => {
                self.write_failures += 1;
                if self.failing.is_none() {
                    error!(path = %self.log_path.display(), error = %e, "cannot write the journal; new grants, requests and approvals are refused until it can");
                }
                self.failing = Some(e.to_string());
            }
        }
        result
    }

    fn flush_queue(&mut self) -> Result<(), JournalError> {
        while let Some(op) = self.queue.front().cloned() {
            self.write(&op)?;
            self.queue.pop_front();
        }
        if self.dropped > 0 {
            warn!(count = self.dropped, "journal changes were dropped while it could not be written; the kernel maps keep enforcing, start-up reconciles");
            self.dropped = 0;
        }
        Ok(())
    }

    /// One frame, appended and fdatasync'ed. The file is opened for each
    /// write, so a directory made read-only is seen at once.
    fn write(&mut self, op: &Op) -> Result<(), JournalError> {
        let (file, len) = self.write_unsynced(op)?;
        self.sync_written(&file, len)
    }

    /// One frame appended, not yet fdatasync'ed: the file and its length.
    fn write_unsynced(&mut self, op: &Op) -> Result<(File, u64), JournalError> {
        let err = |source| JournalError::Write {
            path: self.log_path.clone(),
            source,
        };
        let bytes = frame(&serde_json::to_vec(op).expect("journal records serialize"));
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log_path)
            .map_err(err)?;
        let size = f.metadata().map_err(err)?.len();
        if size < self.log_len {
            return Err(err(io::Error::other(format!(
                "the file is {size} bytes, shorter than the {} written: it was changed under the agent",
                self.log_len
            ))));
        }
        if size > self.log_len {
            // What a failed write left behind is cut off first.
            f.set_len(self.log_len).map_err(err)?;
        }
        if let Err(source) = f.write_all(&bytes) {
            let _ = f.set_len(self.log_len);
            return Err(err(source));
        }
        Ok((f, bytes.len() as u64))
    }

    /// fdatasync of a frame of `len` bytes that `write_unsynced` appended;
    /// on failure the frame is cut off again.
    fn sync_written(&mut self, f: &File, len: u64) -> Result<(), JournalError> {
        let err = |source| JournalError::Write {
            path: self.log_path.clone(),
            source,
        };
        if let Err(source) = f.sync_data() {
            let _ = f.set_len(self.log_len);
            return Err(err(source));
        }
        if self.log_len == 0 {
            // A new log file is durable only once its directory entry is.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        self.log_len += len;
        Ok(())
    }

    /// Whether the log is large enough, next to the live set, to compact.
    pub(crate) fn wants_compaction(&self) -> bool {
        self.queue.is_empty()
            && self.log_len > COMPACT_MIN.max(self.snap_len.saturating_mul(COMPACT_RATIO))
    }

    /// Writes `memory` as the snapshot and starts the log again. A crash in
    /// between leaves the new snapshot and the old log, whose replay over
    /// it changes nothing ([`Memory::apply`] is idempotent).
    pub(crate) fn compact(&mut self, memory: &Memory) -> Result<(), JournalError> {
        let snap_path = self.dir.join(SNAP_FILE);
        let header = serde_json::to_vec(&Snapshot {
            format: FORMAT,
            memory: Memory {
                next_id: memory.next_id,
                segment_ids: memory.segment_ids.clone(),
                grants: Default::default(),
                requests: memory.requests.clone(),
                locks: memory.locks.clone(),
            },
        })
        .expect("snapshots serialize");
        let mut bytes = frame(&header);
        bytes.extend(frame(&table::encode(memory.grants.values())));
        let result = write_atomic(&self.dir, &snap_path, &bytes)
            .map_err(|source| JournalError::Write {
                path: snap_path.clone(),
                source,
            })
            .and_then(|()| {
                let f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&self.log_path)
                    .and_then(|f| f.set_len(0).and_then(|()| f.sync_all()));
                f.map_err(|source| JournalError::Write {
                    path: self.log_path.clone(),
                    source,
                })
            });
        if result.is_ok() {
            self.snap_len = bytes.len() as u64;
            self.log_len = 0;
            // The snapshot holds what was queued.
            self.queue.clear();
        }
        self.note(result)
    }
}

#[cfg(test)]
mod tests;
