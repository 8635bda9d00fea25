//! Every kind of audit record, as one type.
//!
//! Owns [`AuditEvent`]: the agent (and `portcullis uninstall` without an
//! agent) builds one of these and hands it to [`super::AuditLog::record`],
//! the only writer; `portcullis audit` reads records back as the same type.
//! The serialized field names and shapes are the on-disk format the hash
//! chain covers (see docs/audit.md): a field that some records of a kind
//! carry and others do not is `skip_serializing_if = "Option::is_none"`;
//! one that is always written, even as `null`, is a plain `Option`.
//! Records from a newer version read back as [`AuditEvent::Other`].
use serde::{Deserialize, Serialize};

use crate::{control::RefusalCode, state::Actor};

/// One audit record's event and fields (without `ts`, `prev`, `hash`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    AgentStart {
        version: String,
        cgroup: String,
        policy_digest: String,
        pid: u32,
    },
    AgentStop {
        pid: u32,
    },
    /// Access opened (written before the kernel map is touched).
    Grant {
        grant_id: u64,
        segment: String,
        identity: String,
        ports: Vec<String>,
        ttl_secs: u64,
        expires_at: String,
        reason: Option<String>,
        actor: Actor,
        request_id: Option<u64>,
    },
    /// A recorded grant the kernel then refused; undone.
    GrantFailed {
        grant_id: u64,
        segment: String,
        identity: String,
        actor: Actor,
        request_id: Option<u64>,
        error: String,
    },
    Request {
        request_id: u64,
        segment: String,
        identity: String,
        ports: Vec<String>,
        ttl_secs: u64,
        reason: Option<String>,
        expires_at: String,
        actor: Actor,
    },
    Approve {
        request_id: u64,
        grant_id: u64,
        segment: String,
        identity: String,
        ttl_secs: u64,
        requested_ttl_secs: u64,
        requested_by: Actor,
        actor: Actor,
    },
    Deny {
        request_id: u64,
        segment: String,
        identity: String,
        reason: String,
        requested_by: Actor,
        actor: Actor,
    },
    RequestExpire {
        request_id: u64,
        segment: String,
        identity: String,
        requested_by: Actor,
        expired_at: String,
    },
    /// Access closed: by `revoke`, or a suspended grant at the end of its grace.
    Revoke {
        grant_id: u64,
        segment: String,
        identity: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ports: Option<Vec<String>>,
        actor: Actor,
        expires_at: String,
        request_id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        suspended: Option<bool>,
    },
    /// A grant reached its end (or a suspended one did, during its grace).
    Expire {
        grant_id: u64,
        segment: String,
        identity: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ports: Option<Vec<String>>,
        actor: Actor,
        request_id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expired_at: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cleaned_at: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    GrantSuspended {
        grant_id: u64,
        segment: String,
        identity: String,
        why: String,
        grace_secs: u64,
        until: String,
        expires_at: String,
        actor: Actor,
    },
    GrantResumed {
        grant_id: u64,
        segment: String,
        identity: String,
        ports: Vec<String>,
        expires_at: String,
        actor: Actor,
    },
    GrantRecovered {
        grant_id: u64,
        segment: String,
        identity: String,
        ports: Vec<String>,
        actor: Actor,
        expires_at: String,
        reason: String,
    },
    /// A control command the agent refused.
    Refused {
        op: String,
        segment: String,
        actor: Actor,
        why: String,
        code: RefusalCode,
    },
    PolicyReload {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        errors: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trigger: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<Actor>,
    },
    StateCorrupt {
        why: String,
        moved_to: String,
    },
    EnforcementRepaired {
        missing: Vec<String>,
        ok: bool,
        still_missing: Vec<String>,
        cgroup: String,
        actor: Actor,
    },
    /// Enforcement lifted, through the agent (`via: agent`) or without one (`cli`).
    Uninstall {
        actor: Actor,
        bpffs: String,
        via: String,
        ports: Vec<String>,
    },
    /// Opens a file started by a rotation; `prev` chains to the file before.
    Rotate {
        previous_file: String,
    },
    /// Queued records dropped while the log could not be written.
    RecordsLost {
        count: u64,
        why: String,
    },
    /// A record of a kind this version does not know (written by a newer one).
    #[serde(other)]
    Other,
}

impl AuditEvent {
    /// Every kind this version writes, as named on disk (for the docs test).
    pub const KINDS: [&'static str; 20] = [
        "agent_start",
        "agent_stop",
        "grant",
        "grant_failed",
        "request",
        "approve",
        "deny",
        "request_expire",
        "revoke",
        "expire",
        "grant_suspended",
        "grant_resumed",
        "grant_recovered",
        "refused",
        "policy_reload",
        "state_corrupt",
        "enforcement_repaired",
        "uninstall",
        "rotate",
        "records_lost",
    ];

    /// The event's name as written in the `event` field.
    pub fn kind(&self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m
                .get("event")
                .and_then(|v| v.as_str())
                .unwrap_or("other")
                .to_string(),
            _ => "other".to_string(),
        }
    }

    /// The event's name and its fields, as the log writes them.
    pub(super) fn into_fields(self) -> (String, serde_json::Map<String, serde_json::Value>) {
        let mut m = match serde_json::to_value(&self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let kind = match m.remove("event") {
            Some(serde_json::Value::String(s)) => s,
            _ => "other".to_string(),
        };
        (kind, m)
    }

    /// Reads one record (a log line's object) back; unknown kinds are `Other`.
    pub fn from_record(rec: &serde_json::Map<String, serde_json::Value>) -> Option<Self> {
        serde_json::from_value(serde_json::Value::Object(rec.clone())).ok()
    }
}
