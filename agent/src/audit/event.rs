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
        /// How much the grant was used (absent for suspended grants).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<crate::usage::Record>,
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
        /// Why it ended: `ttl` (its deadline) or `idle` (unused for the
        /// segment's idle timeout).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// How much the grant was used (absent for suspended grants).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<crate::usage::Record>,
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

    /// The event's name as written in the `event` field. Exhaustive: a new
    /// variant does not compile until it is named here (and in [`Self::KINDS`]
    /// and docs/audit.md, which a test checks).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AgentStart { .. } => "agent_start",
            Self::AgentStop { .. } => "agent_stop",
            Self::Grant { .. } => "grant",
            Self::GrantFailed { .. } => "grant_failed",
            Self::Request { .. } => "request",
            Self::Approve { .. } => "approve",
            Self::Deny { .. } => "deny",
            Self::RequestExpire { .. } => "request_expire",
            Self::Revoke { .. } => "revoke",
            Self::Expire { .. } => "expire",
            Self::GrantSuspended { .. } => "grant_suspended",
            Self::GrantResumed { .. } => "grant_resumed",
            Self::GrantRecovered { .. } => "grant_recovered",
            Self::Refused { .. } => "refused",
            Self::PolicyReload { .. } => "policy_reload",
            Self::StateCorrupt { .. } => "state_corrupt",
            Self::EnforcementRepaired { .. } => "enforcement_repaired",
            Self::Uninstall { .. } => "uninstall",
            Self::Rotate { .. } => "rotate",
            Self::RecordsLost { .. } => "records_lost",
            Self::Other => "other",
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Map, Value};

    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn docs_audit_md_lists_every_kind() {
        let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/audit.md"));
        for kind in AuditEvent::KINDS {
            assert!(
                docs.contains(&format!("`{kind}`")),
                "docs/audit.md does not describe the audit event kind `{kind}`"
            );
        }
    }

    #[test]
    fn every_listed_kind_is_a_variant_with_that_name() {
        for kind in AuditEvent::KINDS {
            // Fields are missing, so a known kind fails to read; only an
            // unknown one reads (as `Other`).
            let read = serde_json::from_value::<AuditEvent>(json!({ "event": kind }));
            assert!(
                !matches!(read, Ok(AuditEvent::Other)),
                "{kind} is not a variant"
            );
        }
        let rotate = AuditEvent::Rotate {
            previous_file: "a".into(),
        };
        assert_eq!(rotate.kind(), "rotate");
        assert_eq!(rotate.into_fields().0, "rotate");
    }

    /// The docs' sample `grant` line (from a test run of the old json!()
    /// writer): the typed event writes the same fields, nulls included.
    #[test]
    fn a_grant_writes_the_fields_the_old_records_had() {
        let line = r#"{"actor":{"pid":15351,"uid":0,"user":"root"},"event":"grant","expires_at":"2026-11-22T16:11:56Z","grant_id":1,"hash":"86d7","identity":"uid:40001","ports":["45061/tcp"],"prev":"b577","reason":"e2e test","request_id":null,"segment":"db","ts":"2026-11-22T16:01:56.762Z","ttl_secs":600}"#;
        let mut rec = map(serde_json::from_str(line).unwrap());
        let ev = AuditEvent::from_record(&rec).unwrap();
        let (kind, fields) = ev.into_fields();
        assert_eq!(kind, "grant");
        for k in ["event", "hash", "prev", "ts"] {
            rec.remove(k);
        }
        assert_eq!(fields, rec);
    }

    #[test]
    fn optional_fields_are_absent_or_null_as_before() {
        let (_, f) = AuditEvent::PolicyReload {
            ok: true,
            digest: Some("d".into()),
            errors: None,
            trigger: Some("SIGHUP".into()),
            actor: None,
        }
        .into_fields();
        assert_eq!(
            f,
            map(json!({"ok": true, "digest": "d", "trigger": "SIGHUP"}))
        );
        let actor = Actor {
            uid: 0,
            user: None,
            pid: None,
        };
        let (_, f) = AuditEvent::GrantFailed {
            grant_id: 4,
            segment: "db".into(),
            identity: "uid:1".into(),
            actor,
            request_id: None,
            error: "full".into(),
        }
        .into_fields();
        assert_eq!(f["request_id"], Value::Null);
        assert_eq!(f["actor"], json!({"uid": 0, "user": null, "pid": null}));
    }

    #[test]
    fn records_from_newer_versions_and_late_records_still_read() {
        let newer = map(json!({"event": "quorum_reached", "ts": "x", "votes": 3}));
        assert_eq!(AuditEvent::from_record(&newer), Some(AuditEvent::Other));
        let late = map(
            json!({"event": "agent_stop", "pid": 7, "recorded_late": true,
            "happened_at": "x", "ts": "y", "prev": "0", "hash": "1"}),
        );
        assert_eq!(
            AuditEvent::from_record(&late),
            Some(AuditEvent::AgentStop { pid: 7 })
        );
    }
}
