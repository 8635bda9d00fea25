//! What the values in etcd say, and how much of it the agent believes.
//!
//! A grant's value carries its ABSOLUTE deadline (Unix milliseconds): the
//! kernel expiry on each host is computed from it, never from an etcd
//! lease, whose TTL a leader change can reset. Every value read from the
//! store is untrusted text: bounded in size, JSON with no unknown fields,
//! no control characters (it ends up in logs, audit records and
//! terminals), a known identity syntax, and a deadline that is neither
//! past nor absurdly far.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// The largest value the agent reads: a grant is a few hundred bytes.
pub(crate) const MAX_VALUE: usize = 4096;
/// The longest a fleet grant may still run when a host applies it (the
/// longest TTL any segment may allow; the segment's own max_ttl applies too).
pub(crate) const MAX_REMAINING: Duration = Duration::from_secs(366 * 24 * 3600);
/// Value format.
pub(crate) const FORMAT: u32 = 1;

/// A fleet grant, as stored at `grants/{target}/ID`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantValue {
    pub format: u32,
    pub segment: String,
    pub identity: String,
    pub created_unix_ms: u64,
    /// When the grant ends on every host (Unix milliseconds).
    pub deadline_unix_ms: u64,
    /// Who made it, on which host.
    pub actor_uid: u32,
    #[serde(default)]
    pub actor_user: Option<String>,
    pub origin_host: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Stop working on a host that has not heard from the store for a
    /// while (the kernel side is the `strict` helper's; default off).
    #[serde(default)]
    pub strict: bool,
}

/// Why a value is not applied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ValueError {
    #[error("value of {len} bytes is over the {MAX_VALUE}-byte cap")]
    TooLarge { len: usize },
    #[error("value is not a grant: {0}")]
    Malformed(String),
    #[error("value format {0} is not known to this agent")]
    Format(u32),
    #[error("{field} holds control characters or direction overrides")]
    UnsafeText { field: &'static str },
    #[error("identity: {0}")]
    Identity(String),
    #[error("the deadline has passed")]
    Expired,
    #[error("the deadline is {0} s away, more than a year")]
    TooFar(u64),
}

fn text_ok(field: &'static str, text: &str, max: usize) -> Result<(), ValueError> {
    if text.len() > max || crate::termtext::check(field, text).is_err() {
        return Err(ValueError::UnsafeText { field });
    }
    Ok(())
}

impl GrantValue {
    /// Reads and checks a stored value (not yet its deadline: see
    /// [`remaining`]).
    pub(crate) fn parse(bytes: &[u8]) -> Result<(Self, Identity), ValueError> {
        if bytes.len() > MAX_VALUE {
            return Err(ValueError::TooLarge { len: bytes.len() });
        }
        let v: GrantValue =
            serde_json::from_slice(bytes).map_err(|e| ValueError::Malformed(e.to_string()))?;
        if v.format != FORMAT {
            return Err(ValueError::Format(v.format));
        }
        text_ok("segment", &v.segment, 255)?;
        text_ok("identity", &v.identity, 1024)?;
        text_ok("origin_host", &v.origin_host, 63)?;
        if let Some(u) = &v.actor_user {
            text_ok("actor_user", u, 255)?;
        }
        if let Some(r) = &v.reason {
            text_ok("reason", r, 1024)?;
        }
        let identity: Identity = v
            .identity
            .parse()
            .map_err(|e| ValueError::Identity(format!("{e}")))?;
        Ok((v, identity))
    }
}

/// How long a grant with deadline `deadline_ms` still runs at `now_ms`;
/// refused when past or more than [`MAX_REMAINING`] away.
pub(crate) fn remaining(deadline_ms: u64, now_ms: u64) -> Result<Duration, ValueError> {
    if deadline_ms <= now_ms {
        return Err(ValueError::Expired);
    }
    let left = Duration::from_millis(deadline_ms - now_ms);
    if left > MAX_REMAINING {
        return Err(ValueError::TooFar(left.as_secs()));
    }
    Ok(left)
}

/// A fleet lock, as stored at `locks/{target}/ID`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LockValue {
    pub format: u32,
    pub identity: String,
    pub reason: String,
    #[serde(default)]
    pub include_standing: bool,
    pub created_unix_ms: u64,
    /// When the lock lifts by itself (Unix ms); never when absent.
    #[serde(default)]
    pub expires_unix_ms: Option<u64>,
    pub actor_uid: u32,
    #[serde(default)]
    pub actor_user: Option<String>,
    pub origin_host: String,
}

impl LockValue {
    /// Reads and checks a stored lock (the same limits as a grant's).
    pub(crate) fn parse(bytes: &[u8]) -> Result<(Self, Identity), ValueError> {
        if bytes.len() > MAX_VALUE {
            return Err(ValueError::TooLarge { len: bytes.len() });
        }
        let v: LockValue =
            serde_json::from_slice(bytes).map_err(|e| ValueError::Malformed(e.to_string()))?;
        if v.format != FORMAT {
            return Err(ValueError::Format(v.format));
        }
        text_ok("identity", &v.identity, 1024)?;
        text_ok("reason", &v.reason, 1024)?;
        text_ok("origin_host", &v.origin_host, 63)?;
        if let Some(u) = &v.actor_user {
            text_ok("actor_user", u, 255)?;
        }
        let identity: Identity = v
            .identity
            .parse()
            .map_err(|e| ValueError::Identity(format!("{e}")))?;
        Ok((v, identity))
    }
}

/// `agents/H` (leased) and `seen/H` (kept): what one agent has applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AgentRecord {
    pub host: String,
    pub groups: Vec<String>,
    /// The store revision up to which this agent has applied every grant
    /// change.
    pub applied_revision: i64,
    pub policy_digest: String,
    /// The hash of the last record in this host's audit chain.
    pub audit_head: String,
    pub boot_id: String,
    /// When this agent last heard from the store (Unix milliseconds).
    pub heard_unix_ms: u64,
    /// Fleet grants this host enforces now.
    pub enforced: u32,
    /// Fleet grants this host refused to apply (unknown segment, ...).
    pub refused: u32,
}

impl AgentRecord {
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_VALUE {
            return None;
        }
        let r: AgentRecord = serde_json::from_slice(bytes).ok()?;
        let ok = super::config::valid_name(&r.host)
            && r.groups.iter().all(|g| super::config::valid_name(g))
            && [&r.policy_digest, &r.audit_head, &r.boot_id]
                .iter()
                .all(|t| t.len() <= 128 && crate::termtext::check("record", t).is_ok());
        ok.then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value() -> GrantValue {
        GrantValue {
            format: FORMAT,
            segment: "db".into(),
            identity: "uid:1000".into(),
            created_unix_ms: 1_000,
            deadline_unix_ms: 61_000,
            actor_uid: 0,
            actor_user: Some("root".into()),
            origin_host: "h1".into(),
            reason: Some("incident 7".into()),
            strict: false,
        }
    }

    #[test]
    fn a_grant_value_round_trips() {
        let bytes = serde_json::to_vec(&value()).unwrap();
        let (v, identity) = GrantValue::parse(&bytes).unwrap();
        assert_eq!(v, value());
        assert_eq!(identity.to_string(), "uid:1000");
    }

    #[test]
    fn hostile_values_are_refused() {
        let mut v = value();
        v.reason = Some("ok\u{1b}[2J".into());
        let e = GrantValue::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e, ValueError::UnsafeText { field: "reason" });
        let mut v = value();
        v.identity = "nobody-knows:x".into();
        assert!(matches!(
            GrantValue::parse(&serde_json::to_vec(&v).unwrap()),
            Err(ValueError::Identity(_))
        ));
        let big = vec![b' '; MAX_VALUE + 1];
        assert_eq!(
            GrantValue::parse(&big),
            Err(ValueError::TooLarge { len: MAX_VALUE + 1 })
        );
        assert!(matches!(
            GrantValue::parse(br#"{"format":1,"extra":true}"#),
            Err(ValueError::Malformed(_))
        ));
        let mut v = value();
        v.format = 2;
        assert_eq!(
            GrantValue::parse(&serde_json::to_vec(&v).unwrap()),
            Err(ValueError::Format(2))
        );
    }

    #[test]
    fn the_kernel_expiry_comes_from_the_absolute_deadline() {
        assert_eq!(remaining(61_000, 1_000), Ok(Duration::from_secs(60)));
        assert_eq!(remaining(1_000, 1_000), Err(ValueError::Expired));
        assert_eq!(remaining(0, 1_000), Err(ValueError::Expired));
        let far = MAX_REMAINING.as_millis() as u64 + 2_000;
        assert!(matches!(remaining(far, 1_000), Err(ValueError::TooFar(_))));
        assert_eq!(
            remaining(u64::MAX, u64::MAX - 1),
            Ok(Duration::from_millis(1))
        );
    }

    #[test]
    fn agent_records_with_hostile_text_are_dropped() {
        let r = AgentRecord {
            host: "h1".into(),
            ..Default::default()
        };
        assert!(AgentRecord::parse(&serde_json::to_vec(&r).unwrap()).is_some());
        let bad = AgentRecord {
            host: "h\u{7}1".into(),
            ..Default::default()
        };
        assert!(AgentRecord::parse(&serde_json::to_vec(&bad).unwrap()).is_none());
    }
}
