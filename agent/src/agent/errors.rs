//! The core's refusals as typed domain errors.
//!
//! Owns [`CoreError`]: what the core refuses and why, with the facts that
//! matter as fields (`TtlTooLong { asked, max }`), and its message. The
//! mapping to the control protocol's `Refusal` and its stable code is
//! [`From<CoreError> for Refusal`], applied only where a use case returns
//! to the edge (`?` in the public `Agent` methods).
use std::time::Duration;

use crate::{
    clock,
    control::{Refusal, RefusalCode},
};

/// Why the core refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("unknown segment {name:?}; segments in force: {}", in_force(known))]
    UnknownSegment { name: String, known: Vec<String> },
    #[error("segment {segment} has no [segment.{segment}.jit] table, so it takes no grants or requests; add one to its policy")]
    NoJit { segment: String },
    #[error("TTL {text:?}: {why}")]
    BadTtl { text: String, why: String },
    #[error("TTL {} is longer than segment {segment}'s max_ttl of {}", clock::human(*asked), clock::human(*max))]
    TtlTooLong {
        segment: String,
        asked: Duration,
        max: Duration,
    },
    #[error("segment {segment} requires a reason (--reason TEXT)")]
    ReasonRequired { segment: String },
    #[error("approve may shorten a request, never lengthen it: request {id} asks for {}, --ttl is {}", clock::human(*requested), clock::human(*asked))]
    LongerThanRequested {
        id: u64,
        requested: Duration,
        asked: Duration,
    },
    /// `action` says what was tried: "grant", "approve request 7".
    #[error(
        "{who} may not {action} on segment {segment}: only root and the segment's approvers may"
    )]
    NotApprover {
        who: String,
        action: String,
        segment: String,
    },
    #[error("request {id} is your own (made by {requester}): nobody approves their own request, root included; ask another approver")]
    SelfApproval { id: u64, requester: String },
}

fn in_force(known: &[String]) -> String {
    if known.is_empty() {
        "none".into()
    } else {
        known.join(", ")
    }
}

impl CoreError {
    /// The stable refusal code the edge reports.
    pub fn code(&self) -> RefusalCode {
        match self {
            Self::UnknownSegment { .. } => RefusalCode::NotFound,
            Self::NoJit { .. }
            | Self::BadTtl { .. }
            | Self::TtlTooLong { .. }
            | Self::ReasonRequired { .. }
            | Self::LongerThanRequested { .. } => RefusalCode::Invalid,
            Self::NotApprover { .. } | Self::SelfApproval { .. } => RefusalCode::Forbidden,
        }
    }
}

impl From<CoreError> for Refusal {
    fn from(e: CoreError) -> Self {
        Refusal::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_codes_and_words() {
        let r = Refusal::from(CoreError::TtlTooLong {
            segment: "db".into(),
            asked: Duration::from_secs(7200),
            max: Duration::from_secs(3600),
        });
        assert_eq!(r.code, RefusalCode::Invalid);
        assert_eq!(
            r.message,
            "TTL 2h is longer than segment db's max_ttl of 1h"
        );
        let r = Refusal::from(CoreError::UnknownSegment {
            name: "x".into(),
            known: vec![],
        });
        assert_eq!(r.code, RefusalCode::NotFound);
        assert_eq!(r.message, "unknown segment \"x\"; segments in force: none");
        let r = Refusal::from(CoreError::SelfApproval {
            id: 3,
            requester: "alice (uid 1000)".into(),
        });
        assert_eq!(r.code, RefusalCode::Forbidden);
    }
}
