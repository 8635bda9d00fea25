//! Every kind of audit record, as one type.
//!
//! Owns [`AuditEvent`]: the agent (and `portcullis uninstall` without an
//! agent) builds one of these and hands it to [`super::AuditLog::record`],
//! the only writer; `portcullis audit` reads records back as the same type.
//! The serialized field names and shapes are the on-disk format the hash
//! chain covers (see docs/audit.md): a field that some records of a kind
//! carry and others do not is `skip_serializing_if = "Option::is_none"`;
//! one that is always written, even as `null`, is a plain `Option`.
//! A record this version cannot read as one of its kinds (a kind from a
//! newer version, or a known kind in another shape) reads back, whole, as
//! [`AuditEvent::Other`]: it is still shown, never dropped or fatal.
use serde::{Deserialize, Serialize};

use crate::{control::RefusalCode, state::Actor};

/// One audit record's event and fields (without `ts`, `prev`, `hash`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum AuditEvent {
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
        /// The fleet grant this one enforces (fleet mode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fleet: Option<String>,
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
    /// One approval of a request that needs more than one
    /// (`approvals_required`), short of the last: the last is the `approve`.
    Approval {
        request_id: u64,
        segment: String,
        identity: String,
        /// Approvals given so far, this one included.
        approvals: u32,
        /// How many the segment requires.
        required: u32,
        ttl_secs: u64,
        requested_by: Actor,
        actor: Actor,
    },
    /// A live grant given a later expiry (`portcullis extend`), in place.
    Extend {
        grant_id: u64,
        segment: String,
        identity: String,
        /// How long it lasts from the extension on.
        ttl_secs: u64,
        expires_at: String,
        previous_expires_at: String,
        reason: Option<String>,
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
    /// A pending request ended because its segment left the policy.
    RequestDropped {
        request_id: u64,
        segment: String,
        identity: String,
        requested_by: Actor,
        why: String,
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
        /// Ended while the agent was down; found and recorded at its start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        while_down: Option<bool>,
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
        /// Expired while the agent was down; found and recorded at its start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        while_down: Option<bool>,
        /// Why it ended: `ttl` (its deadline) or `idle` (unused for the
        /// segment's idle timeout).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// How much the grant was used (absent for suspended grants).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<crate::usage::Record>,
    },
    /// Access that came through a group ended because a uid left the
    /// group (`reason` is always `membership`): the kernel entry is gone
    /// and the member's open flows are swept. `grant_id` names the grant
    /// the group held; without it, the segment's standing allow.
    MembershipRevoke {
        segment: String,
        /// `group:NAME`, as the policy or the grant wrote it.
        identity: String,
        uid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant_id: Option<u64>,
        reason: String,
        actor: Actor,
    },
    /// A uid joined a group that a standing allow or a grant names: it is
    /// let in from now on, without a reload.
    MembershipAdd {
        segment: String,
        identity: String,
        uid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant_id: Option<u64>,
        actor: Actor,
    },
    /// An identity locked: its grants are revoked (each with a `revoke`
    /// record whose `why` starts with `locked:`), and grants, requests and
    /// approvals for it are refused until the `unlock`.
    Lock {
        identity: String,
        reason: String,
        include_standing: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
        actor: Actor,
    },
    /// A lock lifted: by a person, or by the agent at its TTL (`why: ttl`).
    Unlock {
        identity: String,
        actor: Actor,
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
    /// A record this version cannot read as one of the kinds above: a kind
    /// written by a newer version, or a known kind whose fields have another
    /// shape (an older or hand-edited record). Kept whole, `event` included,
    /// so it is shown as written and serializes back unchanged.
    #[serde(untagged)]
    Other(serde_json::Map<String, serde_json::Value>),
}

impl AuditEvent {
    /// Every kind this version writes, as named on disk (the docs test,
    /// and `audit --event`'s check).
    pub(crate) const KINDS: [&'static str; 27] = [
        "agent_start",
        "agent_stop",
        "grant",
        "grant_failed",
        "request",
        "approve",
        "approval",
        "extend",
        "deny",
        "request_expire",
        "request_dropped",
        "revoke",
        "expire",
        "membership_revoke",
        "membership_add",
        "lock",
        "unlock",
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
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::AgentStart { .. } => "agent_start",
            Self::AgentStop { .. } => "agent_stop",
            Self::Grant { .. } => "grant",
            Self::GrantFailed { .. } => "grant_failed",
            Self::Request { .. } => "request",
            Self::Approve { .. } => "approve",
            Self::Approval { .. } => "approval",
            Self::Extend { .. } => "extend",
            Self::Deny { .. } => "deny",
            Self::RequestExpire { .. } => "request_expire",
            Self::RequestDropped { .. } => "request_dropped",
            Self::Revoke { .. } => "revoke",
            Self::Expire { .. } => "expire",
            Self::MembershipRevoke { .. } => "membership_revoke",
            Self::MembershipAdd { .. } => "membership_add",
            Self::Lock { .. } => "lock",
            Self::Unlock { .. } => "unlock",
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
            Self::Other(_) => "other",
        }
    }

    /// The event's name as recorded: [`Self::kind`], or for [`Self::Other`]
    /// its own `event` field ("" when it has none, or not as text).
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Other(fields) => fields
                .get("event")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(""),
            known => known.kind(),
        }
    }

    /// The segment the event is about, if it names one.
    pub(crate) fn segment(&self) -> Option<&str> {
        match self {
            Self::Grant { segment, .. }
            | Self::GrantFailed { segment, .. }
            | Self::Request { segment, .. }
            | Self::Approve { segment, .. }
            | Self::Approval { segment, .. }
            | Self::Extend { segment, .. }
            | Self::Deny { segment, .. }
            | Self::RequestExpire { segment, .. }
            | Self::RequestDropped { segment, .. }
            | Self::Revoke { segment, .. }
            | Self::Expire { segment, .. }
            | Self::MembershipRevoke { segment, .. }
            | Self::MembershipAdd { segment, .. }
            | Self::GrantSuspended { segment, .. }
            | Self::GrantResumed { segment, .. }
            | Self::GrantRecovered { segment, .. }
            | Self::Refused { segment, .. } => Some(segment),
            Self::Other(fields) => fields.get("segment").and_then(serde_json::Value::as_str),
            Self::AgentStart { .. }
            | Self::AgentStop { .. }
            | Self::Lock { .. }
            | Self::Unlock { .. }
            | Self::PolicyReload { .. }
            | Self::StateCorrupt { .. }
            | Self::EnforcementRepaired { .. }
            | Self::Uninstall { .. }
            | Self::Rotate { .. }
            | Self::RecordsLost { .. } => None,
        }
    }

    /// The identity the event is about, as written (`user:alice`), if any.
    pub(crate) fn identity(&self) -> Option<&str> {
        match self {
            Self::Grant { identity, .. }
            | Self::GrantFailed { identity, .. }
            | Self::Request { identity, .. }
            | Self::Approve { identity, .. }
            | Self::Approval { identity, .. }
            | Self::Extend { identity, .. }
            | Self::Deny { identity, .. }
            | Self::RequestExpire { identity, .. }
            | Self::RequestDropped { identity, .. }
            | Self::Revoke { identity, .. }
            | Self::Expire { identity, .. }
            | Self::MembershipRevoke { identity, .. }
            | Self::MembershipAdd { identity, .. }
            | Self::Lock { identity, .. }
            | Self::Unlock { identity, .. }
            | Self::GrantSuspended { identity, .. }
            | Self::GrantResumed { identity, .. }
            | Self::GrantRecovered { identity, .. } => Some(identity),
            Self::Other(fields) => fields.get("identity").and_then(serde_json::Value::as_str),
            Self::AgentStart { .. }
            | Self::AgentStop { .. }
            | Self::Refused { .. }
            | Self::PolicyReload { .. }
            | Self::StateCorrupt { .. }
            | Self::EnforcementRepaired { .. }
            | Self::Uninstall { .. }
            | Self::Rotate { .. }
            | Self::RecordsLost { .. } => None,
        }
    }

    /// Who did it, for the kinds that record an actor. [`Self::Other`] has
    /// none here: its `actor` field, if any, is shown as written.
    pub(crate) fn actor(&self) -> Option<&Actor> {
        match self {
            Self::Grant { actor, .. }
            | Self::GrantFailed { actor, .. }
            | Self::Request { actor, .. }
            | Self::Approve { actor, .. }
            | Self::Approval { actor, .. }
            | Self::Extend { actor, .. }
            | Self::Deny { actor, .. }
            | Self::Revoke { actor, .. }
            | Self::Expire { actor, .. }
            | Self::MembershipRevoke { actor, .. }
            | Self::MembershipAdd { actor, .. }
            | Self::Lock { actor, .. }
            | Self::Unlock { actor, .. }
            | Self::GrantSuspended { actor, .. }
            | Self::GrantResumed { actor, .. }
            | Self::GrantRecovered { actor, .. }
            | Self::Refused { actor, .. }
            | Self::EnforcementRepaired { actor, .. }
            | Self::Uninstall { actor, .. } => Some(actor),
            Self::PolicyReload { actor, .. } => actor.as_ref(),
            Self::AgentStart { .. }
            | Self::AgentStop { .. }
            | Self::RequestExpire { .. }
            | Self::RequestDropped { .. }
            | Self::StateCorrupt { .. }
            | Self::Rotate { .. }
            | Self::RecordsLost { .. }
            | Self::Other(_) => None,
        }
    }

    /// The cgroup the event names (the attach point of `agent_start` and
    /// `enforcement_repaired`), which `--identity cgroup:` also matches.
    pub(crate) fn cgroup(&self) -> Option<&str> {
        match self {
            Self::AgentStart { cgroup, .. } | Self::EnforcementRepaired { cgroup, .. } => {
                Some(cgroup)
            }
            Self::Other(fields) => fields.get("cgroup").and_then(serde_json::Value::as_str),
            _ => None,
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

    /// Reads one record (a log line's object) back. Never fails: what this
    /// version cannot read as one of its kinds is [`Self::Other`], whole.
    /// Fields beyond a known kind's own (`ts`, `hash`, `recorded_late`, ...)
    /// are not part of the event.
    pub(crate) fn from_record(rec: &serde_json::Map<String, serde_json::Value>) -> Self {
        // `Other` is untagged: a record no tagged variant reads lands there,
        // so deserializing an object cannot fail.
        Self::deserialize(&serde_json::Value::Object(rec.clone()))
            .unwrap_or_else(|_| Self::Other(rec.clone()))
    }
}

#[cfg(test)]
mod tests;
