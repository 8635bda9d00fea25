//! The wire views of the `--fleet` replies (`control.rs` carries them as
//! variants of `Reply`; `crate::fleet` fills them, `cli/fleet.rs` prints
//! them). Here, not in `fleet`, so that `control` depends on nothing that
//! depends on the agent.
use serde::{Deserialize, Serialize};

/// One fleet grant as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct FleetGrantView {
    pub id: String,
    /// `host:H`, `group:G` or `all`.
    pub hosts: String,
    pub segment: String,
    pub identity: String,
    /// RFC 3339 and Unix ms.
    pub expires_at: String,
    pub deadline_unix_ms: u64,
    pub actor: String,
    pub origin_host: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub strict: bool,
    /// The store revision that wrote it.
    pub revision: i64,
}

/// Where one targeted host stands after a revoke.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct HostAck {
    pub host: String,
    /// `applied`, `behind` (live, applied revision lower) or `unreachable`
    /// (no live record: agent down or cut off from the store).
    pub state: String,
    pub applied_revision: i64,
    /// Seconds since the host last heard from the store, when known.
    #[serde(default)]
    pub heard_secs_ago: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct FleetRevokeView {
    pub revoked: Vec<FleetGrantView>,
    /// The store revision of the deletion.
    pub revision: i64,
    /// Every targeted host known to the store.
    pub hosts: Vec<HostAck>,
    pub acknowledged: usize,
    /// Whether the wait ended at `ack_timeout` with hosts not yet there.
    pub timed_out: bool,
}

/// One host as the store sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct FleetHostView {
    pub host: String,
    pub groups: Vec<String>,
    /// Whether its leased `agents/H` record exists (it keeps its lease).
    pub live: bool,
    pub applied_revision: i64,
    #[serde(default)]
    pub heard_secs_ago: Option<u64>,
    pub enforced: u32,
    pub refused: u32,
    pub policy_digest: String,
    pub audit_head: String,
    pub boot_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct FleetStatusView {
    pub host: String,
    pub groups: Vec<String>,
    pub connected: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The store's revision now (0 when unreachable).
    pub store_revision: i64,
    /// Up to which revision this agent applied every grant change.
    pub applied_revision: i64,
    #[serde(default)]
    pub heard_secs_ago: Option<u64>,
    /// Fleet grants this host refused to apply: id and why.
    pub refused: Vec<(String, String)>,
    pub hosts: Vec<FleetHostView>,
}

/// One fleet lock as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct FleetLockView {
    pub id: String,
    pub hosts: String,
    pub identity: String,
    pub reason: String,
    pub include_standing: bool,
    #[serde(default)]
    pub expires_at: Option<String>,
    pub actor: String,
    pub origin_host: String,
    pub revision: i64,
}

/// `lock --fleet` / `unlock --fleet`: the locks written or removed and
/// which targeted hosts have applied that revision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct FleetLockedView {
    /// `lock` or `unlock`.
    pub action: String,
    pub locks: Vec<FleetLockView>,
    pub revision: i64,
    pub hosts: Vec<HostAck>,
    pub acknowledged: usize,
    pub timed_out: bool,
}

/// A fleet access request and where it stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct FleetRequestView {
    pub id: String,
    pub hosts: String,
    pub segment: String,
    pub identity: String,
    pub ttl_secs: u64,
    #[serde(default)]
    pub reason: Option<String>,
    /// `user@host` who asked.
    pub requester: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    #[serde(default)]
    pub decided_by: Option<String>,
    /// The fleet grant an approval wrote.
    #[serde(default)]
    pub grant: Option<String>,
}
