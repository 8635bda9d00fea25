//! The audit trail: one JSON object per line, appended and fsynced before
//! the action it records is reported as done, each line chained to the one
//! before by SHA-256 so that an edit, a deletion or a reordering is found by
//! `verify`.
//!
//! Chain rule: `hash = sha256(prev_hash + "\n" + canonical)`, where
//! `canonical` is the record without its `hash` field, serialized with keys
//! sorted (serde_json's default map). The first record of a log chains to
//! 64 zeros. Owns the file and the chain; deciding what to record is the
//! agent's.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write audit log {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("audit log {path} line {line} is not a valid record: {why}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

/// An open, append-only audit log.
pub struct AuditLog {
    path: PathBuf,
    file: Option<File>,
    last_hash: String,
    /// The last write error, until a write succeeds again.
    failing: Option<String>,
}

impl AuditLog {
    /// Opens (or creates) the log and finds the hash to chain to.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| AuditError::Open {
                path: path.into(),
                source,
            })?;
        }
        let last_hash = last_hash(path)?;
        let file = open_append(path)?;
        Ok(Self {
            path: path.into(),
            file: Some(file),
            last_hash,
            failing: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last write failure, if the log cannot be written right now.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }

    /// Appends one record (`event` plus the given fields), fsyncs, and
    /// returns its hash. On failure the chain is unchanged and the error is
    /// remembered for `status`.
    pub fn record(
        &mut self,
        event: &str,
        fields: Map<String, Value>,
    ) -> Result<String, AuditError> {
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
        match self.append(line.as_bytes()) {
            Ok(()) => {
                self.last_hash = hash.clone();
                self.failing = None;
                Ok(hash)
            }
            Err(source) => {
                self.failing = Some(source.to_string());
                // Reopen next time: the file may have been replaced or fixed.
                self.file = None;
                Err(AuditError::Write {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(open_append(&self.path).map_err(|e| match e {
                AuditError::Open { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })?);
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(bytes)?;
        f.sync_data()
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.into(),
            source,
        })
}

pub fn chain_hash(prev: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// The hash of the last record in `path`, or the genesis hash for a missing or empty log.
fn last_hash(path: &Path) -> Result<String, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(GENESIS.into()),
        Err(source) => {
            return Err(AuditError::Open {
                path: path.into(),
                source,
            })
        }
    };
    let mut last = None;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| AuditError::Open {
            path: path.into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| AuditError::Corrupt {
            path: path.into(),
            line: i + 1,
            why: e.to_string(),
        })?;
        last = v.get("hash").and_then(Value::as_str).map(str::to_string);
    }
    Ok(last.unwrap_or_else(|| GENESIS.into()))
}

/// The first place a log's chain breaks.
#[derive(Debug, PartialEq, Eq)]
pub struct Break {
    pub line: usize,
    pub why: String,
}

/// Checks every record's hash and its link to the one before. `start` is the
/// hash the first record must chain to (the genesis hash, or the last hash
/// of the previous file after a rotation). Returns the number of records.
pub fn verify(path: &Path, start: Option<&str>) -> Result<Result<usize, Break>, io::Error> {
    let reader = BufReader::new(File::open(path)?);
    let mut prev: Option<String> = start.map(str::to_string);
    let mut count = 0;
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(Value::Object(mut rec)) = serde_json::from_str::<Value>(&line) else {
            return Ok(Err(Break {
                line: n,
                why: "not a JSON object".into(),
            }));
        };
        let Some(Value::String(hash)) = rec.remove("hash") else {
            return Ok(Err(Break {
                line: n,
                why: "no hash field".into(),
            }));
        };
        let Some(claimed_prev) = rec.get("prev").and_then(Value::as_str).map(str::to_string) else {
            return Ok(Err(Break {
                line: n,
                why: "no prev field".into(),
            }));
        };
        let expected_prev = prev.clone().unwrap_or_else(|| claimed_prev.clone());
        if claimed_prev != expected_prev {
            return Ok(Err(Break {
                line: n,
                why: "does not follow the record before it (a record was removed, inserted or reordered)".into(),
            }));
        }
        let canonical = Value::Object(rec).to_string();
        if chain_hash(&claimed_prev, &canonical) != hash {
            return Ok(Err(Break {
                line: n,
                why: "content does not match its hash (the record was modified)".into(),
            }));
        }
        prev = Some(hash);
        count += 1;
    }
    Ok(Ok(count))
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
        log.record("grant", fields(json!({"grant_id": 1}))).unwrap();
        drop(log);
        let mut log = AuditLog::open(&p).unwrap();
        log.record("revoke", fields(json!({"grant_id": 1})))
            .unwrap();
        assert_eq!(verify(&p, Some(GENESIS)).unwrap(), Ok(2));
    }

    #[test]
    fn tampering_is_found_at_the_right_line() {
        let p = tmp("tamper");
        let mut log = AuditLog::open(&p).unwrap();
        for i in 0..4 {
            log.record("grant", fields(json!({"grant_id": i}))).unwrap();
        }
        let text = fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        // A changed byte.
        let edited = text.replacen("\"grant_id\":2", "\"grant_id\":9", 1);
        fs::write(&p, edited).unwrap();
        assert_eq!(verify(&p, Some(GENESIS)).unwrap().unwrap_err().line, 3);

        // A deleted line.
        let deleted = [lines[0], lines[1], lines[3]].join("\n");
        fs::write(&p, deleted).unwrap();
        assert_eq!(verify(&p, Some(GENESIS)).unwrap().unwrap_err().line, 3);

        // Two lines swapped.
        let swapped = [lines[0], lines[2], lines[1], lines[3]].join("\n");
        fs::write(&p, swapped).unwrap();
        assert_eq!(verify(&p, Some(GENESIS)).unwrap().unwrap_err().line, 2);
    }
}
