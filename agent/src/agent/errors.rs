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
    requests::RequestError,
};

/// Why the core refuses a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CoreError {
    #[error(
        "unknown segment {name:?}{}; segments in force: {}",
        did_you_mean(name, known),
        in_force(known)
    )]
    UnknownSegment { name: String, known: Vec<String> },
    #[error("segment {segment} has no [segment.{segment}.jit] table, so it takes no grants or requests; add one to its policy")]
    NoJit { segment: String },
    #[error("TTL {} is longer than segment {segment}'s max_ttl of {}", clock::human(*asked), clock::human(*max))]
    TtlTooLong {
        segment: String,
        asked: Duration,
        max: Duration,
    },
    #[error("segment {segment} requires a reason (--reason TEXT)")]
    ReasonRequired { segment: String },
    /// Outside every access window of the segment's jit table.
    #[error(
        "segment {segment} takes requests and grants only inside its windows ({windows}); {next}"
    )]
    OutsideWindows {
        segment: String,
        windows: String,
        next: String,
    },
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
    /// An identity given on the command line that does not parse.
    #[error("identity {text:?}: {why}")]
    BadIdentity { text: String, why: String },
    #[error("no live grant with id {id} (see `portcullis list`)")]
    NoSuchGrant { id: u64 },
    #[error("revoke takes a grant id, or --identity [--segment], or --segment")]
    RevokeWhat,
    #[error("uid {uid} may not revoke grant {grant} on segment {segment}: only root, the segment's approvers and the grantee may")]
    MayNotRevoke {
        uid: u32,
        grant: u64,
        segment: String,
    },
    /// The kernel refused to delete a grant's entries.
    #[error("revoking grant {id} failed: {why}")]
    RevokeFailed { id: u64, why: String },
    /// The request book refused (no such request, decided, duplicate, full).
    #[error(transparent)]
    Book(#[from] RequestError),
    #[error("request refused: the audit log cannot be written ({why})")]
    RequestNotAudited { why: String },
    #[error("a denial needs a reason (--reason TEXT); the requester sees it")]
    DenialWithoutReason,
    #[error("segment {segment} does not allow break-glass; its [segment.{segment}.jit] table needs break_glass = true and break_glass_max_ttl (ask an approver: `portcullis request {segment}`)")]
    NoBreakGlass { segment: String },
    #[error("break-glass needs a reason (--reason TEXT): it opens access without an approver, and the reason is what reviewers read afterwards")]
    BreakGlassWithoutReason,
    #[error("break-glass on segment {segment} opens at most {} (its break_glass_max_ttl); --ttl is {}", clock::human(*max), clock::human(*asked))]
    BreakGlassTooLong {
        segment: String,
        asked: Duration,
        max: Duration,
    },
    #[error(
        "{who} may not break the glass on segment {segment}: its break_glass_by lists {allowed}"
    )]
    NotBreakGlassUser {
        who: String,
        segment: String,
        allowed: String,
    },
    #[error("{who} may not see request {id}: only its requester, the approvers of its segment and root may")]
    MayNotSeeRequest { who: String, id: u64 },
    #[error("explain takes either an identity or a pid")]
    ExplainWhat,
    /// `explain`'s port does not parse (`why` is the whole error chain).
    #[error("{why}")]
    ExplainPort { why: String },
    /// `explain`'s identity or pid names nothing on this host.
    #[error("{why}")]
    ExplainSubject { why: String },
    /// Reading the kernel maps for `explain` failed.
    #[error("{why}")]
    ExplainMaps { why: String },
}

/// `; did you mean "payments-db"?` when one segment in force is within two
/// edits of what was typed (or differs only in case), else nothing.
fn did_you_mean(name: &str, known: &[String]) -> String {
    let lower = name.to_lowercase();
    known
        .iter()
        .map(|k| (strsim::levenshtein(&lower, &k.to_lowercase()), k))
        .filter(|&(distance, _)| distance <= 2)
        .min()
        .map_or_else(String::new, |(_, k)| format!("; did you mean {k:?}?"))
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
    pub(crate) fn code(&self) -> RefusalCode {
        match self {
            Self::UnknownSegment { .. } => RefusalCode::NotFound,
            Self::NoJit { .. }
            | Self::TtlTooLong { .. }
            | Self::ReasonRequired { .. }
            | Self::OutsideWindows { .. }
            | Self::LongerThanRequested { .. }
            | Self::NoBreakGlass { .. }
            | Self::BreakGlassWithoutReason
            | Self::BreakGlassTooLong { .. } => RefusalCode::Invalid,
            Self::NotBreakGlassUser { .. } | Self::MayNotSeeRequest { .. } => {
                RefusalCode::Forbidden
            }
            Self::NotApprover { .. } | Self::SelfApproval { .. } | Self::MayNotRevoke { .. } => {
                RefusalCode::Forbidden
            }
            Self::BadIdentity { .. } | Self::DenialWithoutReason | Self::ExplainPort { .. } => {
                RefusalCode::Invalid
            }
            Self::NoSuchGrant { .. } | Self::ExplainSubject { .. } => RefusalCode::NotFound,
            Self::RevokeWhat | Self::ExplainWhat => RefusalCode::BadRequest,
            Self::RevokeFailed { .. } | Self::ExplainMaps { .. } => RefusalCode::Internal,
            Self::RequestNotAudited { .. } => RefusalCode::Unavailable,
            Self::Book(e) => match e {
                RequestError::NotFound(_) => RefusalCode::NotFound,
                RequestError::Full => RefusalCode::Unavailable,
                RequestError::Decided { .. }
                | RequestError::Expired { .. }
                | RequestError::Duplicate { .. }
                | RequestError::AlreadyApproved { .. } => RefusalCode::Invalid,
            },
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
        let r = Refusal::from(CoreError::UnknownSegment {
            name: "payments-bd".into(),
            known: vec!["payments-db".into(), "sessions-cache".into()],
        });
        assert_eq!(
            r.message,
            "unknown segment \"payments-bd\"; did you mean \"payments-db\"?; \
             segments in force: payments-db, sessions-cache"
        );
        let r = Refusal::from(CoreError::UnknownSegment {
            name: "billing".into(),
            known: vec!["payments-db".into()],
        });
        assert_eq!(
            r.message,
            "unknown segment \"billing\"; segments in force: payments-db"
        );
        let r = Refusal::from(CoreError::SelfApproval {
            id: 3,
            requester: "alice (uid 1000)".into(),
        });
        assert_eq!(r.code, RefusalCode::Forbidden);
    }

    /// The refusals revoke, the request book and explain used to build as
    /// strings: same words, same codes.
    #[test]
    fn revoke_book_and_explain_refusals_keep_their_words_and_codes() {
        let cases = [
            (
                CoreError::NoSuchGrant { id: 9 },
                RefusalCode::NotFound,
                "no live grant with id 9 (see `portcullis list`)",
            ),
            (
                CoreError::RevokeWhat,
                RefusalCode::BadRequest,
                "revoke takes a grant id, or --identity [--segment], or --segment",
            ),
            (
                CoreError::MayNotRevoke { uid: 1000, grant: 3, segment: "db".into() },
                RefusalCode::Forbidden,
                "uid 1000 may not revoke grant 3 on segment db: only root, the segment's approvers and the grantee may",
            ),
            (
                CoreError::BadIdentity { text: "x".into(), why: "bad".into() },
                RefusalCode::Invalid,
                "identity \"x\": bad",
            ),
            (
                CoreError::Book(RequestError::NotFound(4)),
                RefusalCode::NotFound,
                "no request with id 4 (see `portcullis list --pending`)",
            ),
            (
                CoreError::Book(RequestError::Full),
                RefusalCode::Unavailable,
                "1024 requests are already pending; ask an approver to decide some first",
            ),
            (
                CoreError::Book(RequestError::Expired { id: 2 }),
                RefusalCode::Invalid,
                "request 2 expired without a decision; the requester must ask again",
            ),
            (
                CoreError::RequestNotAudited { why: "disk full".into() },
                RefusalCode::Unavailable,
                "request refused: the audit log cannot be written (disk full)",
            ),
            (
                CoreError::DenialWithoutReason,
                RefusalCode::Invalid,
                "a denial needs a reason (--reason TEXT); the requester sees it",
            ),
            (
                CoreError::ExplainWhat,
                RefusalCode::BadRequest,
                "explain takes either an identity or a pid",
            ),
            (CoreError::ExplainPort { why: "p".into() }, RefusalCode::Invalid, "p"),
            (CoreError::ExplainSubject { why: "s".into() }, RefusalCode::NotFound, "s"),
            (CoreError::ExplainMaps { why: "m".into() }, RefusalCode::Internal, "m"),
        ];
        for (e, code, message) in cases {
            let r = Refusal::from(e);
            assert_eq!((r.code, r.message.as_str()), (code, message));
        }
    }
}
