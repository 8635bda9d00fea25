//! What the journal holds: the changes ([`Op`]), the state they build
//! ([`Memory`]), and the on-disk frame of each record.
//!
//! A frame is `length: u32 LE | crc32: u32 LE | payload`, the payload one
//! JSON value. A frame whose length runs past the end of the file is a
//! write torn by a crash; one whose checksum or JSON does not match is
//! damage. Pure: no files here, so the rules are tested without a disk.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    audit::AuditEvent,
    requests::{AccessRequest, Approval, RequestState},
    state::{Grant, Lock},
};

/// Bytes of a frame header.
pub(crate) const HEADER: usize = 8;
/// The largest payload a frame may claim: far above any real record (a
/// grant is under 2 KiB, a snapshot of a million grants under 1 GiB), and a
/// bound on what a damaged length can make the reader allocate.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

/// One change to what the agent remembers.
///
/// `audit_prev` is the head of the audit chain when the change was
/// journaled, for the changes that owe an audit record written right
/// after: at start, the last record of the journal is the only one whose
/// audit record can be missing, and the audit log's head tells whether it
/// is (see `agent::restore`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Op {
    /// A grant is live from this record on (its id is used up for good).
    Grant {
        grant: Grant,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit_prev: Option<String>,
    },
    /// A grant is over (revoked, expired, dropped or failed).
    End {
        grant_id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit_prev: Option<String>,
        /// The end record owed to the audit log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<Box<AuditEvent>>,
    },
    /// A request, new or in a new state.
    Request {
        request: AccessRequest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit_prev: Option<String>,
    },
    /// One approval of a pending request that needs more than one.
    Approval {
        request_id: u64,
        approval: Approval,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit_prev: Option<String>,
    },
    /// A live grant's new expiry (`portcullis extend`), with the one it
    /// replaces (put back at start if the `extend` record is missing).
    Extend {
        grant_id: u64,
        expires_unix_ms: u64,
        expires_boot_ns: u64,
        previous_unix_ms: u64,
        previous_boot_ns: u64,
        boot_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audit_prev: Option<String>,
    },
    /// A decided request old enough to be forgotten.
    ForgetRequest { request_id: u64 },
    /// The whole segment-name → id map (at most `MAX_SEGMENTS` entries).
    Segments { ids: BTreeMap<String, u32> },
    /// An identity is locked from this record on (replacing an earlier lock).
    Lock { lock: Lock },
    /// The lock on an identity (its text form) is lifted.
    Unlock { identity: String },
}

impl Op {
    /// The audit head this change was journaled at, if it owes a record.
    pub(crate) fn audit_prev(&self) -> Option<&str> {
        match self {
            Op::Grant { audit_prev, .. }
            | Op::End { audit_prev, .. }
            | Op::Request { audit_prev, .. }
            | Op::Approval { audit_prev, .. }
            | Op::Extend { audit_prev, .. } => audit_prev.as_deref(),
            _ => None,
        }
    }
}

/// Everything the agent remembers, as the journal's records build it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Memory {
    /// The next id for a grant or a request; every id below it is used.
    pub next_id: u64,
    pub segment_ids: BTreeMap<String, u32>,
    /// Live grants (suspended ones too), by id.
    pub grants: BTreeMap<u64, Grant>,
    /// Pending and recently decided requests, by id.
    pub requests: BTreeMap<u64, AccessRequest>,
    /// Locked identities, by their text form.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locks: BTreeMap<String, Lock>,
}

impl Memory {
    /// Applies one change. Idempotent, so replaying a log over a snapshot
    /// that already holds part of it (a crash during compaction) is safe.
    pub(crate) fn apply(&mut self, op: &Op) {
        match op {
            Op::Grant { grant, .. } => {
                self.next_id = self.next_id.max(grant.id + 1);
                if let Some(rid) = grant.request_id {
                    self.approve(rid, grant);
                }
                self.grants.insert(grant.id, grant.clone());
            }
            Op::End { grant_id, .. } => {
                self.next_id = self.next_id.max(grant_id + 1);
                self.grants.remove(grant_id);
            }
            Op::Request { request, .. } => {
                self.next_id = self.next_id.max(request.id + 1);
                self.requests.insert(request.id, request.clone());
            }
            Op::Approval {
                request_id,
                approval,
                ..
            } => {
                if let Some(r) = self.requests.get_mut(request_id) {
                    if r.is_pending() && !r.approved_by(approval.by.uid) {
                        r.approvals.push(approval.clone());
                    }
                }
            }
            Op::Extend {
                grant_id,
                expires_unix_ms,
                expires_boot_ns,
                boot_id,
                ..
            } => {
                if let Some(g) = self.grants.get_mut(grant_id) {
                    g.expires_unix_ms = *expires_unix_ms;
                    g.expires_boot_ns = *expires_boot_ns;
                    g.boot_id = crate::name::Name::from(boot_id.clone());
                }
            }
            Op::ForgetRequest { request_id } => {
                self.requests.remove(request_id);
            }
            Op::Segments { ids } => self.segment_ids = ids.clone(),
            Op::Lock { lock } => {
                self.locks.insert(lock.identity.to_string(), lock.clone());
            }
            Op::Unlock { identity } => {
                self.locks.remove(identity);
            }
        }
    }

    /// A grant approving a request that the journal still has pending (a
    /// crash between the grant and the request's own record): the request
    /// is decided by the grant, so it cannot be approved twice.
    fn approve(&mut self, rid: u64, grant: &Grant) {
        if let Some(r) = self.requests.get_mut(&rid) {
            if r.is_pending() {
                r.state = RequestState::Approved {
                    grant_id: grant.id,
                    by: grant.actor.clone(),
                    at_unix_ms: grant.created_unix_ms,
                    ttl_secs: grant.expires_unix_ms.saturating_sub(grant.created_unix_ms) / 1000,
                };
            }
        }
    }
}

/// One frame around `payload`.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// What reading frames found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Frames<'a> {
    pub payloads: Vec<&'a [u8]>,
    /// Bytes up to the end of the last good frame.
    pub good_len: usize,
    /// Why the rest could not be read, if anything is left.
    pub stop: Option<Stop>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Stop {
    /// The last frame is cut short: a write torn by a crash.
    Torn,
    /// A complete frame whose checksum does not match (or a length past the cap).
    Damaged { at: usize },
}

/// Splits `bytes` into frames, stopping at the first that is torn or damaged.
pub(crate) fn frames(bytes: &[u8]) -> Frames<'_> {
    let mut out = Frames::default();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            out.stop = Some(Stop::Torn);
            break;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            out.stop = Some(Stop::Damaged { at });
            break;
        }
        if rest.len() < HEADER + len {
            out.stop = Some(Stop::Torn);
            break;
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32fast::hash(payload) != crc {
            out.stop = Some(Stop::Damaged { at });
            break;
        }
        out.payloads.push(payload);
        at += HEADER + len;
        out.good_len = at;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::Actor;

    pub(crate) fn grant(id: u64, request_id: Option<u64>) -> Grant {
        Grant {
            id,
            segment: "db".into(),
            identity: "user:nobody".parse().unwrap(),
            created_unix_ms: 1_000,
            expires_unix_ms: 61_000,
            expires_boot_ns: 5,
            boot_id: "b".into(),
            actor: Actor {
                uid: 0,
                user: Some("root".into()),
                pid: Some(1),
            },
            reason: Some("why".into()),
            request_id,
            fleet: None,
        }
    }

    #[test]
    fn frames_round_trip_and_stop_at_a_torn_tail() {
        let mut bytes = frame(b"{\"a\":1}");
        bytes.extend(frame(b"{\"b\":2}"));
        let whole = bytes.len();
        let f = frames(&bytes);
        assert_eq!(f.payloads, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(f.good_len, whole);
        assert_eq!(f.stop, None);
        // Every cut inside the second frame is a torn write.
        let first = HEADER + 7;
        for cut in first + 1..whole {
            let f = frames(&bytes[..cut]);
            assert_eq!(f.payloads.len(), 1, "cut at {cut}");
            assert_eq!(f.good_len, first);
            assert_eq!(f.stop, Some(Stop::Torn), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_is_damage_not_a_record() {
        let mut bytes = frame(b"{\"a\":1}");
        bytes.extend(frame(b"{\"b\":2}"));
        let n = bytes.len();
        bytes[n - 2] ^= 0x01;
        let f = frames(&bytes);
        assert_eq!(f.payloads.len(), 1);
        assert_eq!(f.stop, Some(Stop::Damaged { at: HEADER + 7 }));
        // A length past the cap is damage too, not an allocation.
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend([0u8; 12]);
        assert_eq!(frames(&huge).stop, Some(Stop::Damaged { at: 0 }));
    }

    #[test]
    fn replay_keeps_ids_used_and_is_idempotent() {
        let ops = vec![
            Op::Segments {
                ids: [("db".to_string(), 1)].into(),
            },
            Op::Grant {
                grant: grant(4, None),
                audit_prev: Some("h".into()),
            },
            Op::Grant {
                grant: grant(5, None),
                audit_prev: None,
            },
            Op::End {
                grant_id: 5,
                audit_prev: None,
                event: None,
            },
            // A failed attempt: its id is used even though nothing is live.
            Op::End {
                grant_id: 9,
                audit_prev: None,
                event: None,
            },
        ];
        let mut m = Memory::default();
        for op in &ops {
            m.apply(op);
        }
        assert_eq!(m.next_id, 10);
        assert_eq!(m.grants.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(m.grants[&4].identity.to_string(), "user:nobody");
        let once = m.clone();
        for op in &ops {
            m.apply(op);
        }
        assert_eq!(m, once, "replaying the log again changes nothing");
    }

    #[test]
    fn ops_serialize_with_their_names() {
        let op = Op::End {
            grant_id: 3,
            audit_prev: None,
            event: None,
        };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(text, r#"{"op":"end","grant_id":3}"#);
        assert_eq!(serde_json::from_str::<Op>(&text).unwrap(), op);
    }
}
