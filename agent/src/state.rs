//! A grant as the agent remembers it, and the state file of earlier
//! versions (`state.json`: live grants, the id counter, segment ids and
//! requests, rewritten whole at every change).
//!
//! The file is only read now, once, by `journal::Journal::open`, which
//! imports it and keeps it as `state.json.migrated`. A file that cannot be
//! parsed is moved aside and reported; the kernel maps, which still hold
//! the live entries, keep enforcing meanwhile.
use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{identity::Identity, name::Name};

pub(crate) const STATE_FILE: &str = "state.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("cannot read state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) use crate::actor::{unix_ms, Actor};

/// A lock on an identity (`portcullis lock`): its grants revoked, new
/// grants, requests and approvals for it refused, and with
/// `include_standing` its standing allows suspended, until `unlock` or
/// `expires_unix_ms` (wall clock: a lock outlives reboots).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Lock {
    pub identity: Identity,
    pub reason: String,
    #[serde(default)]
    pub include_standing: bool,
    pub actor: Actor,
    pub created_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
    /// The fleet lock this one enforces here (fleet mode), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
}

/// A just-in-time grant.
///
/// Kept compact, as a million of them may be live: the texts a grant
/// shares with many others (segment, boot id, actor name, reason) are
/// interned [`Name`]s, one pointer each, and the rare fleet origin is
/// boxed (one pointer when absent).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Grant {
    pub id: u64,
    pub segment: Name,
    pub identity: Identity,
    /// Unix milliseconds.
    pub created_unix_ms: u64,
    /// Unix milliseconds; the boot-clock deadline is derived from it after a reboot.
    pub expires_unix_ms: u64,
    /// CLOCK_BOOTTIME deadline, valid for `boot_id`.
    pub expires_boot_ns: u64,
    pub boot_id: Name,
    pub actor: Actor,
    pub reason: Option<Name>,
    /// The access request this grant approved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    /// The fleet grant this one enforces here (fleet mode), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Box<FleetOrigin>>,
}

/// Where a grant made from the fleet store came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct FleetOrigin {
    /// The fleet grant id (the last part of its etcd key).
    pub id: String,
    /// The store revision at which this host applied it.
    pub revision: i64,
    /// The host whose agent wrote it to the store.
    pub origin_host: String,
    /// Works only while this host hears from the store (`[fleet]
    /// strict_after`; `agent/freshness.rs`).
    #[serde(default)]
    pub strict: bool,
}

impl Grant {
    /// The value its kernel entries hold for `deadline`: the deadline, or
    /// for a strict fleet grant the deadline flagged strict
    /// (`agent_common::expiry`), which the kernel ends early once this host
    /// stops hearing from the store.
    pub(crate) fn kernel_value(&self, deadline: u64) -> u64 {
        if self.fleet.as_ref().is_some_and(|f| f.strict) {
            agent_common::expiry::strict(deadline)
        } else {
            deadline
        }
    }

    /// The boot-clock deadline on this boot.
    pub(crate) fn deadline(&self, boot_id: &str) -> u64 {
        if self.boot_id == boot_id {
            self.expires_boot_ns
        } else {
            crate::clock::boot_of(
                UNIX_EPOCH + std::time::Duration::from_millis(self.expires_unix_ms),
            )
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Saved {
    pub format: u32,
    pub next_id: u64,
    pub segment_ids: BTreeMap<String, u32>,
    pub grants: Vec<Grant>,
    /// Access requests, pending and recently decided (absent in files
    /// written before requests existed).
    #[serde(default)]
    pub requests: Vec<crate::requests::AccessRequest>,
}

/// The outcome of reading the state file.
#[derive(Debug)]
pub(crate) enum Loaded {
    Fresh,
    Ok(Saved),
    /// The file was unreadable as state; it was moved to `moved_to`.
    Corrupt {
        why: String,
        moved_to: PathBuf,
    },
}

/// This boot's id (changes at every boot).
pub(crate) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn load(dir: &Path) -> Result<Loaded, StateError> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Fresh),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    match serde_json::from_slice::<Saved>(&text) {
        Ok(saved) if saved.format == FORMAT => Ok(Loaded::Ok(saved)),
        Ok(saved) => set_aside(&path, format!("unknown format {}", saved.format)),
        Err(e) => set_aside(&path, e.to_string()),
    }
}

fn set_aside(path: &Path, why: String) -> Result<Loaded, StateError> {
    let moved_to = path.with_extension(format!("corrupt-{}", unix_ms(SystemTime::now())));
    fs::rename(path, &moved_to).map_err(|source| StateError::Write {
        path: path.into(),
        source,
    })?;
    Ok(Loaded::Corrupt { why, moved_to })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_saved_file_loads() {
        let d = dir("rt");
        let saved = Saved {
            format: FORMAT,
            next_id: 9,
            segment_ids: [("db".to_string(), 1)].into(),
            grants: vec![Grant {
                id: 8,
                segment: "db".into(),
                identity: "user:root".parse().unwrap(),
                created_unix_ms: 1,
                expires_unix_ms: 2,
                expires_boot_ns: 3,
                boot_id: "b".into(),
                actor: Actor {
                    uid: 0,
                    user: Some("root".into()),
                    pid: Some(1),
                },
                reason: Some("why".into()),
                request_id: Some(7),
                fleet: None,
            }],
            requests: vec![],
        };
        fs::write(d.join(STATE_FILE), serde_json::to_vec(&saved).unwrap()).unwrap();
        match load(&d).unwrap() {
            Loaded::Ok(s) => assert_eq!(s, saved),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_from_before_requests_still_load() {
        let d = dir("old");
        fs::write(
            d.join(STATE_FILE),
            br#"{"format":1,"next_id":3,"segment_ids":{"db":1},"grants":[]}"#,
        )
        .unwrap();
        match load(&d).unwrap() {
            Loaded::Ok(s) => {
                assert_eq!(s.next_id, 3);
                assert!(s.requests.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrupt_file_is_set_aside_and_reported() {
        let d = dir("corrupt");
        fs::write(d.join(STATE_FILE), b"{\"format\":1,\"next_id\":").unwrap();
        match load(&d).unwrap() {
            Loaded::Corrupt { why, moved_to } => {
                assert!(why.contains("EOF"), "{why}");
                assert!(moved_to.exists());
                assert!(!d.join(STATE_FILE).exists());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(load(&d).unwrap(), Loaded::Fresh));
    }
}
