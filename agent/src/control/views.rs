//! Views of the agent's enforcement that `status` carries on the wire.
use serde::{Deserialize, Serialize};

/// Enforcement as the kernel has it, for `status` and the metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct EnforcementView {
    /// Every program is attached where it belongs and every pin is this agent's.
    pub ok: bool,
    /// What the kernel lacks right now (empty when `ok`).
    #[serde(default)]
    pub missing: Vec<String>,
    /// Repairs made since the agent started.
    #[serde(default)]
    pub repairs: u64,
    /// The last repair: when, and what was missing.
    #[serde(default)]
    pub last_repair: Option<RepairView>,
    /// When the attach cgroup was last found removed and recreated (the
    /// programs were attached to the new one).
    #[serde(default)]
    pub cgroup_recreated_at: Option<String>,
    /// Set once `uninstall` went through this agent: nothing is enforced.
    #[serde(default)]
    pub uninstalled: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct RepairView {
    pub at: String,
    pub missing: Vec<String>,
    /// Whether the kernel had everything again afterwards.
    pub ok: bool,
}

/// How much an allow or grant was used, from the kernel's usage map.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct UsageView {
    /// Connections (and unconnected datagrams) admitted.
    pub connections: u64,
    /// RFC 3339, UTC; absent when never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_use: Option<String>,
    /// Seconds since the last use; absent when never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<u64>,
}

/// A locked identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct LockView {
    pub identity: String,
    pub reason: String,
    pub include_standing: bool,
    /// Who locked it: `user (uid N)`.
    pub actor: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// When the lock lifts by itself; `None`: at `unlock` only.
    pub expires_at: Option<String>,
}

/// `request show`: one request and everything that happened to it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct RequestHistoryView {
    /// The request as the agent holds it, or (decided longer ago than the
    /// agent keeps decided requests) as its audit records tell it.
    pub request: super::RequestView,
    /// Where the request came from: `agent` (its live book) or `audit log`.
    pub source: String,
    /// Every record about the request and its grant, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The grant it produced, while live, with the kernel's usage count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<super::GrantView>,
    /// How that grant ended, once it has (with the usage in its end record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_end: Option<GrantEndView>,
    /// Set when the audit log could not be read: the history is partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_error: Option<String>,
}

/// One audit record in a request's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct HistoryEntry {
    /// RFC 3339, UTC (the record's `ts`).
    pub at: String,
    /// The audit kind: request, approval, approve, deny, grant, extend, ...
    pub event: String,
    /// Who did it, when someone did: `user (uid N)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// What it says, in words.
    pub detail: String,
}

/// The end of a request's grant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct GrantEndView {
    /// `revoke`, `expire`, `grant_failed`, or another end kind.
    pub event: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
}
