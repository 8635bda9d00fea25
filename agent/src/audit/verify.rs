//! `audit verify`: checking a log's hash chain, file by file and across
//! rotated files. Owns the reading side of the chain rule; writing is
//! [`super::AuditLog`]'s.
use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use super::{chain_hash, rotated_path, GENESIS, ROTATE};

/// The first place a chain breaks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Break {
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
pub(crate) enum Start {
    /// The file is the oldest there is: its first record chains to the
    /// genesis hash, or it is a `rotate` record (older files were dropped).
    Oldest,
    /// The file follows a rotation: its first record is a `rotate` record
    /// chaining to this hash.
    After(String),
}

/// A verified file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verified {
    pub records: usize,
    /// The head of the chain after this file (`None` for an empty file).
    pub last_hash: Option<String>,
}

/// Checks every record's hash and its link to the one before.
pub(crate) fn verify_file(path: &Path, start: &Start) -> io::Result<Result<Verified, Break>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut prev: Option<String> = None;
    let mut count = 0;
    let mut bytes = Vec::new();
    for n in 1.. {
        // Bytes, not `lines()`: a byte that is not UTF-8 is a broken record
        // on a line this names, not an I/O error without a place.
        bytes.clear();
        if reader.read_until(b'\n', &mut bytes)? == 0 {
            break;
        }
        let line = match std::str::from_utf8(&bytes) {
            Ok(text) => text.trim_end_matches('\n'),
            Err(e) => {
                return Ok(Err(Break {
                    path: path.into(),
                    line: n,
                    record: None,
                    why: format!(
                        "byte {} of the line is not UTF-8 (the record was altered or damaged)",
                        e.valid_up_to() + 1
                    ),
                }))
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let brk = |record: Option<String>, why: &str| Break {
            path: path.into(),
            line: n,
            record,
            why: why.into(),
        };
        let Ok(Value::Object(mut rec)) = serde_json::from_str::<Value>(line) else {
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
pub(crate) fn chain_files(path: &Path) -> Vec<PathBuf> {
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
pub(crate) struct ChainReport {
    pub files: Vec<(PathBuf, usize)>,
    pub last_hash: Option<String>,
}

/// Verifies the log and its rotated files as one chain.
pub(crate) fn verify_chain(path: &Path) -> io::Result<Result<ChainReport, Break>> {
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
#[cfg(test)]
pub(crate) fn verify(path: &Path) -> io::Result<Result<usize, Break>> {
    Ok(verify_file(path, &Start::Oldest)?.map(|v| v.records))
}
