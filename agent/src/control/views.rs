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
