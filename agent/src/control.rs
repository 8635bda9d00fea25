//! The control socket: the protocol between the CLI and the agent, and both
//! ends of the connection.
//!
//! One request per connection: the client writes one JSON object and a
//! newline, the agent answers with one JSON object and a newline, or, for
//! replies that can be of any size (`list`, `revoke`), with a header line
//! and one line per record (see `stream`). Who is
//! asking comes from the socket's peer credentials (SO_PEERCRED), never from
//! the request. Owns framing, limits and connection errors; the meaning of
//! each request lives in `agent`.
use std::{io, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::duration::Ttl;

/// The `--fleet` replies' views.
pub(crate) mod fleet;
mod views;
pub(crate) use views::{EnforcementView, LockView, RepairView, UsageView};
/// The client's end: connect, send, read a whole or a streamed reply.
mod client;
/// Replies of any size: header, records, end.
mod stream;
pub(crate) use client::{call, open, Answer};
pub(crate) use stream::{Record, Records, StreamOf};

/// Default socket path; `--socket` or `PORTCULLIS_SOCKET` override it.
pub(crate) const DEFAULT_SOCKET: &str = "/run/portcullis/control.sock";
/// Largest request line the agent reads (JSON and newline): far more than
/// any real request needs, and small enough that the most connections
/// the agent serves at once ([`crate::connlimit::MAX_CONNECTIONS`]) hold
/// at most 2 MiB between them.
pub(crate) const MAX_REQUEST: usize = 16 * 1024;
/// How long the agent waits for a whole request once connected: a client
/// that connects and says nothing loses its place after this.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long the agent waits to hand its reply, or one page of a streamed
/// reply, to the client: a client that stops reading loses its reply.
pub(crate) const REPLY_DEADLINE: Duration = Duration::from_secs(5);
/// How long the client waits for the agent.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What a client asks for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
// The variant names are the wire ops (`request`, `show_request`).
#[allow(clippy::enum_variant_names)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    /// Open `segment` to `identity` for `ttl` (humantime text on the wire,
    /// refused when the message is decoded if it is not a valid TTL; the
    /// segment's default when absent).
    Grant {
        segment: String,
        identity: String,
        #[serde(default)]
        ttl: Option<Ttl>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Revoke one grant by id, or every grant of an identity (optionally on one
    /// segment), or every grant on a segment.
    Revoke {
        #[serde(default)]
        id: Option<u64>,
        #[serde(default)]
        identity: Option<String>,
        #[serde(default)]
        segment: Option<String>,
    },
    /// Ask for access to `segment` for oneself (the caller's `user:` identity).
    #[serde(rename = "request")]
    RequestAccess {
        segment: String,
        #[serde(default)]
        ttl: Option<Ttl>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Approve a pending request, optionally for less time than asked.
    Approve {
        id: u64,
        #[serde(default)]
        ttl: Option<Ttl>,
    },
    /// Deny a pending request.
    Deny {
        id: u64,
        reason: String,
    },
    /// Give a live grant `ttl` more from now, in place.
    Extend {
        id: u64,
        ttl: Ttl,
        #[serde(default)]
        reason: Option<String>,
    },
    /// One request, pending or recently decided (what `request --wait` polls).
    ShowRequest {
        id: u64,
    },
    /// Which segment, rule or grant decides for a subject on a port, read
    /// from the kernel maps. Exactly one of `identity` and `pid`.
    Explain {
        #[serde(default)]
        identity: Option<String>,
        #[serde(default)]
        pid: Option<u32>,
        port: String,
    },
    /// Lock an identity (root or `lock_admins`): its grants revoked, new
    /// grants, requests and approvals refused, until `unlock` or `ttl`.
    Lock {
        identity: String,
        reason: String,
        #[serde(default)]
        ttl: Option<Ttl>,
        #[serde(default)]
        include_standing: bool,
    },
    /// Lift the lock on an identity.
    Unlock {
        identity: String,
    },
    // Empty struct variants, not unit variants, so that unknown fields are refused.
    Pending {},
    List {},
    Status {},
    /// Listening sockets and who the kernel saw reach each port; root only.
    Discover {},
    /// Lift enforcement (root only): the agent audits, unpins and stops.
    Uninstall {},
    /// Kernel debug lines on or off, or (absent) just their state; root only.
    Debug {
        #[serde(default)]
        on: Option<bool>,
    },
    /// `grant --fleet`: write a fleet grant for `hosts` (`host:H`,
    /// `group:G`, `all`) through this agent (docs/fleet.md).
    FleetGrant {
        hosts: String,
        segment: String,
        identity: String,
        #[serde(default)]
        ttl: Option<Ttl>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        strict: bool,
    },
    /// `revoke --fleet`: by fleet id, identity and/or segment; waits for
    /// the targeted agents' acknowledgements.
    FleetRevoke {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        identity: Option<String>,
        #[serde(default)]
        segment: Option<String>,
        #[serde(default)]
        hosts: Option<String>,
    },
    /// `lock --fleet`: lock an identity on every host `hosts` names.
    FleetLock {
        hosts: String,
        identity: String,
        reason: String,
        #[serde(default)]
        ttl: Option<Ttl>,
        #[serde(default)]
        include_standing: bool,
    },
    /// `unlock --fleet`: remove the fleet locks of an identity.
    FleetUnlock {
        identity: String,
        #[serde(default)]
        hosts: Option<String>,
    },
    /// `request --fleet`: ask for access on `hosts` for oneself.
    FleetRequest {
        hosts: String,
        segment: String,
        #[serde(default)]
        ttl: Option<Ttl>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// `approve --fleet ID`.
    FleetApprove {
        id: String,
        #[serde(default)]
        ttl: Option<Ttl>,
    },
    /// `deny --fleet ID`.
    FleetDeny {
        id: String,
        reason: String,
    },
    FleetList {},
    FleetStatus {},
}

/// Who is asking, from SO_PEERCRED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The agent's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Response {
    Ok(Reply),
    Error(Refusal),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Reply {
    Granted {
        grant: GrantView,
    },
    Revoked {
        grants: Vec<GrantView>,
    },
    List(ListView),
    Status(Box<StatusView>),
    // Requests are boxed: they are the largest replies by far.
    Requested {
        request: Box<RequestView>,
    },
    Approved {
        request: Box<RequestView>,
        grant: Box<GrantView>,
    },
    Denied {
        request: Box<RequestView>,
    },
    /// A grant given a later expiry (`extend`).
    Extended {
        grant: Box<GrantView>,
    },
    Request {
        request: Box<RequestView>,
    },
    Pending {
        requests: Vec<RequestView>,
    },
    Explained(Box<crate::explain::ExplainView>),
    /// `discover`: listeners and the clients the kernel saw.
    Discovered(Box<crate::discover::DiscoveryView>),
    /// `uninstall` through the agent: what it removed and which ports it opened.
    Uninstalled {
        bpffs: String,
        removed: usize,
        pid: u32,
        ports: Vec<String>,
    },
    /// Kernel debug lines: on or off, and how many the rate limit dropped.
    Debug {
        on: bool,
        dropped: u64,
        lines_per_sec: u32,
    },
    /// `lock`: the lock and the grants it revoked.
    Locked {
        lock: LockView,
        revoked: Vec<GrantView>,
    },
    Unlocked {
        lock: LockView,
    },
    /// The header of a streamed reply: records follow, one per line, then
    /// an end line (see [`Record`]). `list` and `revoke` answer this way.
    Stream {
        of: StreamOf,
    },
    /// `grant --fleet`: the grant as written to the store.
    FleetGranted {
        grant: Box<crate::control::fleet::FleetGrantView>,
    },
    /// `revoke --fleet`: what was revoked and which hosts acknowledged.
    FleetRevoked(Box<crate::control::fleet::FleetRevokeView>),
    /// `list --fleet`: the live fleet grants and locks in the store.
    FleetList {
        grants: Vec<crate::control::fleet::FleetGrantView>,
        #[serde(default)]
        locks: Vec<crate::control::fleet::FleetLockView>,
    },
    /// `lock --fleet`, `unlock --fleet`.
    FleetLocked(Box<crate::control::fleet::FleetLockedView>),
    /// `request`, `approve`, `deny` with `--fleet`: the request as it stands.
    FleetRequest(Box<crate::control::fleet::FleetRequestView>),
    /// `status --fleet`: this agent's link and every host's record.
    FleetStatus(Box<crate::control::fleet::FleetStatusView>),
}

/// Why a request was refused; `code` is stable for scripts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RefusalCode {
    BadRequest,
    NotFound,
    Forbidden,
    Invalid,
    Unavailable,
    Internal,
}

impl Refusal {
    pub(crate) fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct GrantView {
    pub id: u64,
    pub segment: String,
    pub identity: String,
    pub ports: Vec<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub expires_at: String,
    pub remaining_secs: u64,
    /// Who granted it: `user (uid N)`.
    pub actor: String,
    pub reason: Option<String>,
    /// The request this grant approved, if it came from one.
    #[serde(default)]
    pub request_id: Option<u64>,
    /// Set while the grant's segment is not in the policy: the grant opens
    /// nothing and is dropped at this instant (RFC 3339) unless the segment
    /// comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_until: Option<String>,
    /// What the kernel counted for it; set in `list` replies only (boxed:
    /// every grant reply carries a `GrantView`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Box<UsageView>>,
}

/// An access request and what became of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct RequestView {
    pub id: u64,
    pub segment: String,
    pub identity: String,
    pub ports: Vec<String>,
    /// Who asked: `user (uid N)`.
    pub requester: String,
    /// The TTL asked for.
    pub ttl_secs: u64,
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// When the request lapses if nobody decides.
    pub expires_at: String,
    /// Time left to decide (0 once decided or expired).
    pub remaining_secs: u64,
    /// `pending`, `approved`, `denied` or `expired`.
    pub state: String,
    /// The state in words: "approved by root (uid 0) as grant 7".
    pub outcome: String,
    pub grant_id: Option<u64>,
    /// The TTL granted, when approved.
    pub granted_ttl_secs: Option<u64>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    /// The approver's reason for a denial.
    pub decision_reason: Option<String>,
    /// Every approval, oldest first (the last one decided an approved request).
    #[serde(default)]
    pub approvals: Vec<ApprovalView>,
    /// How many distinct approvers the segment requires.
    #[serde(default = "one")]
    pub approvals_required: u32,
}

fn one() -> u32 {
    1
}

/// One approver's yes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct ApprovalView {
    /// `user (uid N)`.
    pub by: String,
    pub uid: u32,
    /// RFC 3339, UTC.
    pub at: String,
    /// The TTL this approver allowed.
    pub ttl_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct AllowView {
    pub segment: String,
    pub identity: String,
    pub ports: Vec<String>,
    /// Set when the identity does not currently resolve on this host.
    pub unresolved: Option<String>,
    /// The segment's mode: "enforce" or "audit".
    #[serde(default)]
    pub mode: String,
    /// What the kernel counted (absent for `peer:` allows, not tracked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct ListView {
    pub standing: Vec<AllowView>,
    pub grants: Vec<GrantView>,
    /// Requests waiting for a decision.
    #[serde(default)]
    pub pending: Vec<RequestView>,
    /// Locked identities.
    #[serde(default)]
    pub locks: Vec<LockView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct SegmentStatus {
    pub name: String,
    pub id: u32,
    pub ports: Vec<String>,
    pub allowed: u64,
    pub denied: u64,
    /// Refusals audit mode let through.
    #[serde(default)]
    pub would_deny: u64,
    /// "enforce" or "audit".
    #[serde(default)]
    pub mode: String,
    /// The policy's `description`.
    #[serde(default)]
    pub description: Option<String>,
    /// How many identities the policy allows standing.
    #[serde(default)]
    pub standing: usize,
    /// Live (not suspended) grants on the segment.
    #[serde(default)]
    pub grants: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct StatusView {
    pub version: String,
    pub cgroup: String,
    pub pin_dir: String,
    pub programs: Vec<String>,
    pub policy_digest: String,
    pub policy_files: Vec<String>,
    pub segments: Vec<SegmentStatus>,
    pub grants: usize,
    pub grant_entries: usize,
    pub grant_capacity: u32,
    pub peer_capacity: u32,
    pub local_addresses: usize,
    pub last_reload: Option<ReloadView>,
    /// Locked identities.
    #[serde(default)]
    pub locks: Vec<LockView>,
    /// The audit log's path.
    #[serde(default)]
    pub audit_log: String,
    /// Why the audit log cannot be written, while it cannot (grants are refused meanwhile).
    #[serde(default)]
    pub audit_failing: Option<String>,
    /// The journal's path (the agent's memory of grants and requests).
    #[serde(default)]
    pub journal: String,
    /// Why the journal cannot be written, while it cannot (grants are refused meanwhile).
    #[serde(default)]
    pub journal_failing: Option<String>,
    /// The kernel deny log and its counters, once its reader runs.
    #[serde(default)]
    pub deny_log: Option<crate::denylog::DenyLogView>,
    /// Enforcement as the kernel has it (checked when `status` asks).
    #[serde(default)]
    pub enforcement: Option<EnforcementView>,
    /// What a reader should know about the coverage (a partial attach
    /// point, the metrics endpoint on a protected port).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The peer filter per interface (`--xdp-iface`) and its mode:
    /// `xdp-native`, `tcx` or `tc-clsact`.
    #[serde(default)]
    pub peer_filters: Vec<PeerFilterView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct PeerFilterView {
    pub iface: String,
    pub mode: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct ReloadView {
    pub at: String,
    pub ok: bool,
    pub errors: Vec<String>,
}

/// Why the client could not talk to the agent, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("the agent's socket {0} does not exist: is the agent running? (`systemctl status portcullis`, or pass --socket / PORTCULLIS_SOCKET)")]
    SocketMissing(PathBuf),
    #[error("the agent is not running: nothing listens on {0} (a stale socket)")]
    NotRunning(PathBuf),
    #[error("permission denied on {}: run as root or as a member of {}", path.display(), group_hint(group.as_deref()))]
    PermissionDenied {
        path: PathBuf,
        /// The socket's group, by name (escaped), when it can be read.
        group: Option<String>,
    },
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the agent on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent sent a reply this client does not understand: {0}")]
    BadReply(String),
    #[error("the agent's reply was cut short after {0} record(s) (the agent stops a reply that is not read within its deadline)")]
    CutShort(u64),
}

/// Names the group a user must join to reach the socket.
fn group_hint(group: Option<&str>) -> String {
    match group {
        Some(g) => format!(
            "the group {g} (`usermod -aG {g} $USER`, then log in again so the membership applies)"
        ),
        None => "the socket's group".into(),
    }
}

/// Parses a request line, turning every problem into a refusal that says
/// what was wrong. Text fields with control characters or bidirectional
/// overrides are refused here, before the agent stores or echoes them.
pub(crate) fn parse_request(line: &str) -> Result<Request, Refusal> {
    let request: Request = serde_json::from_str(line.trim_end())
        .map_err(|e| Refusal::new(RefusalCode::BadRequest, format!("malformed request: {e}")))?;
    check_text(&request)
        .map_err(|e| Refusal::new(RefusalCode::BadRequest, format!("refused: {e}")))?;
    Ok(request)
}

/// Every text field of `request`, named as on the wire, checked with
/// [`crate::termtext::check`].
pub(crate) fn check_text(request: &Request) -> Result<(), crate::termtext::UnsafeText> {
    let fields: Vec<(&str, Option<&str>)> = match request {
        Request::Grant {
            segment,
            identity,
            reason,
            ..
        } => vec![
            ("segment", Some(segment)),
            ("identity", Some(identity)),
            ("reason", reason.as_deref()),
        ],
        Request::Revoke {
            identity, segment, ..
        } => vec![
            ("identity", identity.as_deref()),
            ("segment", segment.as_deref()),
        ],
        Request::RequestAccess {
            segment, reason, ..
        } => vec![("segment", Some(segment)), ("reason", reason.as_deref())],
        Request::Deny { reason, .. } => vec![("reason", Some(reason))],
        Request::Lock {
            identity, reason, ..
        } => vec![("identity", Some(identity)), ("reason", Some(reason))],
        Request::Unlock { identity } => vec![("identity", Some(identity))],
        Request::Extend { reason, .. } => vec![("reason", reason.as_deref())],
        Request::FleetGrant {
            hosts,
            segment,
            identity,
            reason,
            ..
        } => vec![
            ("hosts", Some(hosts)),
            ("segment", Some(segment)),
            ("identity", Some(identity)),
            ("reason", reason.as_deref()),
        ],
        Request::FleetRevoke {
            id,
            identity,
            segment,
            hosts,
        } => vec![
            ("id", id.as_deref()),
            ("identity", identity.as_deref()),
            ("segment", segment.as_deref()),
            ("hosts", hosts.as_deref()),
        ],
        Request::FleetLock {
            hosts,
            identity,
            reason,
            ..
        } => vec![
            ("hosts", Some(hosts)),
            ("identity", Some(identity)),
            ("reason", Some(reason)),
        ],
        Request::FleetUnlock { identity, hosts } => {
            vec![("identity", Some(identity)), ("hosts", hosts.as_deref())]
        }
        Request::FleetRequest {
            hosts,
            segment,
            reason,
            ..
        } => vec![
            ("hosts", Some(hosts)),
            ("segment", Some(segment)),
            ("reason", reason.as_deref()),
        ],
        Request::FleetApprove { id, .. } => vec![("id", Some(id))],
        Request::FleetDeny { id, reason } => vec![("id", Some(id)), ("reason", Some(reason))],
        Request::Explain { identity, port, .. } => {
            vec![("identity", identity.as_deref()), ("port", Some(port))]
        }
        // A TTL was checked when the request was decoded.
        Request::ShowRequest { .. }
        | Request::Approve { .. }
        | Request::Pending {}
        | Request::List {}
        | Request::Status {}
        | Request::Discover {}
        | Request::Uninstall {}
        | Request::FleetList {}
        | Request::FleetStatus {}
        | Request::Debug { .. } => {
            vec![]
        }
    };
    fields
        .into_iter()
        .filter_map(|(name, text)| text.map(|t| (name, t)))
        .try_for_each(|(name, text)| crate::termtext::check(name, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Grant {
            segment: "db".into(),
            identity: "user:alice".into(),
            ttl: Some("30m".parse().unwrap()),
            reason: Some("INC-1".into()),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"op":"grant","segment":"db","identity":"user:alice","ttl":"30m","reason":"INC-1"}"#
        );
        assert_eq!(parse_request(&text).unwrap(), r);
        assert_eq!(parse_request(r#"{"op":"list"}"#).unwrap(), Request::List {});
    }

    #[test]
    fn a_bad_ttl_is_refused_when_the_request_is_decoded() {
        for (ttl, needle) in [
            ("0s", "TTL must be greater than zero"),
            ("367d", "longer than the maximum of 366 days"),
            ("soon", "`soon` is not a duration"),
            ("5m\\u001b[2J", "is not a duration"),
        ] {
            let line = format!(r#"{{"op":"approve","id":4,"ttl":"{ttl}"}}"#);
            let e = parse_request(&line).unwrap_err();
            assert_eq!(e.code, RefusalCode::BadRequest, "{ttl}: {}", e.message);
            assert!(e.message.contains(needle), "{ttl}: {}", e.message);
            assert!(!e.message.contains('\u{1b}'), "quoted raw: {:?}", e.message);
        }
        let r = parse_request(r#"{"op":"approve","id":4,"ttl":"90m"}"#).unwrap();
        assert_eq!(
            r,
            Request::Approve {
                id: 4,
                ttl: Some("1h 30m".parse().unwrap())
            }
        );
    }

    #[test]
    fn jit_requests_have_stable_op_names() {
        let r =
            parse_request(r#"{"op":"request","segment":"db","ttl":"5m","reason":"x"}"#).unwrap();
        assert_eq!(
            r,
            Request::RequestAccess {
                segment: "db".into(),
                ttl: Some("5m".parse().unwrap()),
                reason: Some("x".into())
            }
        );
        assert_eq!(
            parse_request(r#"{"op":"approve","id":4}"#).unwrap(),
            Request::Approve { id: 4, ttl: None }
        );
        let e = parse_request(r#"{"op":"deny","id":4}"#).unwrap_err();
        assert!(
            e.message.contains("missing field `reason`"),
            "{}",
            e.message
        );
        let e = parse_request(r#"{"op":"approve","id":4,"identity":"user:me"}"#).unwrap_err();
        assert!(
            e.message.contains("unknown field `identity`"),
            "{}",
            e.message
        );
        assert_eq!(
            parse_request(r#"{"op":"explain","pid":42,"port":"5432/tcp"}"#).unwrap(),
            Request::Explain {
                identity: None,
                pid: Some(42),
                port: "5432/tcp".into()
            }
        );
        assert_eq!(
            parse_request(r#"{"op":"pending"}"#).unwrap(),
            Request::Pending {}
        );
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let e = parse_request(r#"{"op":"grant","segment":"db"}"#).unwrap_err();
        assert_eq!(e.code, RefusalCode::BadRequest);
        assert!(
            e.message.contains("missing field `identity`"),
            "{}",
            e.message
        );
        let e = parse_request(r#"{"op":"list","extra":1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `extra`"), "{}", e.message);
        let e = parse_request("not json").unwrap_err();
        assert!(e.message.starts_with("malformed request"), "{}", e.message);
        let e = parse_request(r#"{"op":"launch_missiles"}"#).unwrap_err();
        assert!(
            e.message.contains("unknown variant `launch_missiles`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn text_with_controls_is_refused_naming_field_and_position() {
        let e =
            parse_request(r#"{"op":"request","segment":"db","reason":"ok\nforged"}"#).unwrap_err();
        assert_eq!(e.code, RefusalCode::BadRequest);
        assert!(
            e.message
                .contains("reason: control character U+000A at character 3"),
            "{}",
            e.message
        );
        let e = parse_request(r#"{"op":"deny","id":1,"reason":"\u202eoops"}"#).unwrap_err();
        assert!(
            e.message
                .contains("reason: bidirectional control U+202E at character 1"),
            "{}",
            e.message
        );
        let e =
            parse_request(r#"{"op":"grant","segment":"d\u001bb","identity":"uid:1"}"#).unwrap_err();
        assert!(
            e.message.contains("segment: control character U+001B"),
            "{}",
            e.message
        );
        assert!(parse_request(r#"{"op":"deny","id":1,"reason":"use the replica"}"#).is_ok());
    }

    #[test]
    fn missing_socket_is_reported_in_plain_words() {
        let err = call(
            std::path::Path::new("/nonexistent/portcullis.sock"),
            &Request::List {},
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::SocketMissing(_)));
        assert!(err.to_string().contains("is the agent running?"));
    }
}
