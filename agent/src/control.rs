//! The control socket: the protocol between the CLI and the agent, and both
//! ends of the connection.
//!
//! One request per connection: the client writes one JSON object and a
//! newline, the agent answers with one JSON object and a newline. Who is
//! asking comes from the socket's peer credentials (SO_PEERCRED), never from
//! the request. Owns framing, limits and connection errors; the meaning of
//! each request lives in `agent`.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::duration::Ttl;

/// Default socket path; `--socket` or `PORTCULLIS_SOCKET` override it.
pub const DEFAULT_SOCKET: &str = "/run/portcullis/control.sock";
/// Largest request line the agent reads (JSON and newline): far more than
/// any real request needs, and small enough that the most connections
/// the agent serves at once ([`crate::connlimit::MAX_CONNECTIONS`]) hold
/// at most 2 MiB between them.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Largest reply line the client reads (a `list` of many grants is large).
pub const MAX_REPLY: usize = 1 << 20;
/// How long the agent waits for a whole request once connected: a client
/// that connects and says nothing loses its place after this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long the agent waits to hand its reply to the client.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(5);
/// How long the client waits for the agent.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// What a client asks for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
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
    // Empty struct variants, not unit variants, so that unknown fields are refused.
    Pending {},
    List {},
    Status {},
    /// Lift enforcement (root only): the agent audits, unpins and stops.
    Uninstall {},
    /// Kernel debug lines on or off, or (absent) just their state; root only.
    Debug {
        #[serde(default)]
        on: Option<bool>,
    },
}

/// Who is asking, from SO_PEERCRED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The agent's answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(Refusal),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
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
        grant: GrantView,
    },
    Denied {
        request: Box<RequestView>,
    },
    Request {
        request: Box<RequestView>,
    },
    Pending {
        requests: Vec<RequestView>,
    },
    Explained(Box<crate::explain::ExplainView>),
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
}

/// Why a request was refused; `code` is stable for scripts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    BadRequest,
    NotFound,
    Forbidden,
    Invalid,
    Unavailable,
    Internal,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GrantView {
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
}

/// An access request and what became of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RequestView {
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
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllowView {
    pub segment: String,
    pub identity: String,
    pub ports: Vec<String>,
    /// Set when the identity does not currently resolve on this host.
    pub unresolved: Option<String>,
    /// What the kernel counted (absent for `peer:` allows, not tracked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
}

/// How much an allow or grant was used, from the kernel's usage map.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageView {
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ListView {
    pub standing: Vec<AllowView>,
    pub grants: Vec<GrantView>,
    /// Requests waiting for a decision.
    #[serde(default)]
    pub pending: Vec<RequestView>,
    /// What the kernel counted for each grant, by grant id (kept apart
    /// from `GrantView`, which every grant reply carries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_usage: Vec<GrantUsageView>,
}

/// One grant's use, in [`ListView::grant_usage`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantUsageView {
    pub grant_id: u64,
    pub usage: UsageView,
}

impl ListView {
    /// The use of grant `id`, if listed.
    pub fn usage_of_grant(&self, id: u64) -> Option<&UsageView> {
        self.grant_usage
            .iter()
            .find(|g| g.grant_id == id)
            .map(|g| &g.usage)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SegmentStatus {
    pub name: String,
    pub id: u32,
    pub ports: Vec<String>,
    pub allowed: u64,
    pub denied: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
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
    /// The audit log's path.
    #[serde(default)]
    pub audit_log: String,
    /// Why the audit log cannot be written, while it cannot (grants are refused meanwhile).
    #[serde(default)]
    pub audit_failing: Option<String>,
    /// The kernel deny log and its counters, once its reader runs.
    #[serde(default)]
    pub deny_log: Option<crate::denylog::DenyLogView>,
    /// Enforcement as the kernel has it (checked when `status` asks).
    #[serde(default)]
    pub enforcement: Option<crate::agent::EnforcementView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReloadView {
    pub at: String,
    pub ok: bool,
    pub errors: Vec<String>,
}

/// Why the client could not talk to the agent, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the agent's socket {0} does not exist: is the agent running? (`systemctl status portcullis`, or pass --socket / PORTCULLIS_SOCKET)")]
    SocketMissing(PathBuf),
    #[error("the agent is not running: nothing listens on {0} (a stale socket)")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of the socket's group")]
    PermissionDenied(PathBuf),
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
}

/// Sends one request and waits for the answer.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let stream = StdUnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ClientError::SocketMissing(socket.into()),
        io::ErrorKind::ConnectionRefused => ClientError::NotRunning(socket.into()),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket.into()),
        _ => ClientError::Connect {
            path: socket.into(),
            source: e,
        },
    })?;
    let io_err = |source| ClientError::Io {
        path: socket.into(),
        source,
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    // The agent answers a request it will not read in full (too long) and
    // closes: the write then fails, but its refusal is there to read.
    let written = (&stream).write_all(&line);
    let mut reader = BufReader::new((&stream).take(MAX_REPLY as u64));
    let mut reply = String::new();
    let read = reader.read_line(&mut reply);
    match (written, read) {
        (Err(e), _) if reply.is_empty() => return Err(io_err(e)),
        (_, Err(e)) if reply.is_empty() => return Err(io_err(e)),
        _ => {}
    }
    if reply.is_empty() {
        return Err(ClientError::BadReply(
            "the agent closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))
}

/// Parses a request line, turning every problem into a refusal that says
/// what was wrong. Text fields with control characters or bidirectional
/// overrides are refused here, before the agent stores or echoes them.
pub fn parse_request(line: &str) -> Result<Request, Refusal> {
    let request: Request = serde_json::from_str(line.trim_end())
        .map_err(|e| Refusal::new(RefusalCode::BadRequest, format!("malformed request: {e}")))?;
    check_text(&request)
        .map_err(|e| Refusal::new(RefusalCode::BadRequest, format!("refused: {e}")))?;
    Ok(request)
}

/// Every text field of `request`, named as on the wire, checked with
/// [`crate::termtext::check`].
pub fn check_text(request: &Request) -> Result<(), crate::termtext::UnsafeText> {
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
        Request::Explain { identity, port, .. } => {
            vec![("identity", identity.as_deref()), ("port", Some(port))]
        }
        // A TTL was checked when the request was decoded.
        Request::ShowRequest { .. }
        | Request::Approve { .. }
        | Request::Pending {}
        | Request::List {}
        | Request::Status {}
        | Request::Uninstall {}
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
        let err = call(Path::new("/nonexistent/portcullis.sock"), &Request::List {}).unwrap_err();
        assert!(matches!(err, ClientError::SocketMissing(_)));
        assert!(err.to_string().contains("is the agent running?"));
    }
}
