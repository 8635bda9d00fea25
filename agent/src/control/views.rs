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
