//! Bounded durations: one type for every duration a user writes (a grant's
//! `--ttl`, on the command line and on the control socket; the policy's
//! `default_ttl`/`max_ttl`; the agent's `request_expiry`, `grant_grace`,
//! `identity_rescan` and `deny_window`).
//!
//! A [`Bounded`] value is parsed once, where it enters (a clap flag, a
//! config key, a JSON field of a request), and is within its bounds from
//! then on: nothing downstream re-parses text or re-checks a range. It
//! displays and serialises in the one grammar (`duration/grammar.rs`:
//! `90s`, `15m`, `1h30m`, `2d`) with spaces between parts (`1h 30m`),
//! which reads back. Owns the parsing and the range check, not what each
//! duration means (that is the module using it).
use std::{fmt, marker::PhantomData, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod grammar;
pub(crate) use grammar::{format, HINT};

/// Longest TTL a grant or policy may ask for. A year and a day lets "yearly"
/// access exist while catching typos such as `100000h`.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The range one kind of duration must fall in, and how to name it in
/// errors.
pub trait Bounds {
    /// Shortest accepted; `Duration::ZERO` means "more than zero".
    const MIN: Duration;
    /// Longest accepted.
    const MAX: Duration;
    /// What the value is, as errors name it ("TTL", "window").
    const WHAT: &'static str;
    /// [`Self::MAX`] as people write it ("366 days").
    const MAX_TEXT: &'static str;
    /// [`Self::MIN`] as people write it (unused when `MIN` is zero).
    const MIN_TEXT: &'static str;
}

/// A grant's or request's TTL, a policy's `default_ttl`/`max_ttl`, the
/// agent's `request_expiry` and `grant_grace`: more than zero, at most
/// [`MAX_TTL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TtlBounds;

impl Bounds for TtlBounds {
    const MIN: Duration = Duration::ZERO;
    const MAX: Duration = MAX_TTL;
    const WHAT: &'static str = "TTL";
    const MAX_TEXT: &'static str = "366 days";
    const MIN_TEXT: &'static str = "";
}

/// A periodic interval (`identity_rescan`, `deny_window`): 1s to 1d.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IntervalBounds;

impl Bounds for IntervalBounds {
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(86_400);
    const WHAT: &'static str = "interval";
    const MAX_TEXT: &'static str = "1d";
    const MIN_TEXT: &'static str = "1s";
}

/// Bounds of a segment's `idle_timeout`: at least a second (the agent
/// checks use every heartbeat), at most the longest TTL.
pub(crate) struct IdleBounds;

impl Bounds for IdleBounds {
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = MAX_TTL;
    const WHAT: &'static str = "idle timeout";
    const MAX_TEXT: &'static str = "366 days";
    const MIN_TEXT: &'static str = "1s";
}

/// A duration within `B`'s bounds.
pub struct Bounded<B>(Duration, PhantomData<B>);

/// See [`TtlBounds`].
pub(crate) type Ttl = Bounded<TtlBounds>;
/// See [`IntervalBounds`].
pub(crate) type Interval = Bounded<IntervalBounds>;
/// See [`IdleBounds`].
pub(crate) type IdleTimeout = Bounded<IdleBounds>;

/// Why a duration was refused. Displayed with the hint on how to write
/// one (clap and control refusals show only this text); [`Self::message`]
/// and [`Self::help`] are the two halves for diagnostics that show help
/// on its own line.
#[derive(Debug, Clone, PartialEq)]
pub enum DurationError {
    Parse {
        value: String,
        source: grammar::GrammarError,
    },
    Zero {
        value: String,
        what: &'static str,
    },
    TooShort {
        value: String,
        what: &'static str,
        min: &'static str,
    },
    TooLong {
        value: String,
        what: &'static str,
        max: &'static str,
    },
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.message(), self.help())
    }
}

impl std::error::Error for DurationError {}

impl DurationError {
    /// What is wrong, with the value, without the hint.
    pub fn message(&self) -> String {
        match self {
            DurationError::Parse { value, source } => {
                format!("`{value}` is not a duration: {source}")
            }
            DurationError::Zero { what, .. } => format!("{what} must be greater than zero"),
            DurationError::TooShort {
                value, what, min, ..
            } => format!("{what} `{value}` is shorter than the minimum of {min}"),
            DurationError::TooLong {
                value, what, max, ..
            } => format!("{what} `{value}` is longer than the maximum of {max}"),
        }
    }

    /// How to fix it, for diagnostics.
    pub fn help(&self) -> String {
        match self {
            DurationError::Parse { .. } | DurationError::Zero { .. } => HINT.to_owned(),
            DurationError::TooShort { min, .. } => format!("use at least `{min}`"),
            DurationError::TooLong { what: "TTL", .. } => {
                "grants are meant to expire; use at most `366d`, or a standing allow".to_owned()
            }
            DurationError::TooLong { max, .. } => format!("use at most `{max}`"),
        }
    }

    /// What is wrong, without the value (for messages that name the key
    /// and value first: `identity_rescan "soon" is not a duration: ...`).
    pub fn reason(&self) -> String {
        match self {
            DurationError::Parse { source, .. } => format!("is not a duration: {source}"),
            DurationError::Zero { .. } => "is zero; it must be greater than zero".into(),
            DurationError::TooShort { min, .. } => format!("is out of range: at least {min}"),
            DurationError::TooLong { max, .. } => format!("is out of range: at most {max}"),
        }
    }
}

impl<B: Bounds> Bounded<B> {
    /// `d` if it is within the bounds.
    pub fn new(d: Duration) -> Result<Self, DurationError> {
        Self::check(d, || format(d, ""))
    }

    fn check(d: Duration, value: impl FnOnce() -> String) -> Result<Self, DurationError> {
        if d.is_zero() && B::MIN.is_zero() {
            Err(DurationError::Zero {
                value: value(),
                what: B::WHAT,
            })
        } else if d < B::MIN {
            Err(DurationError::TooShort {
                value: value(),
                what: B::WHAT,
                min: B::MIN_TEXT,
            })
        } else if d > B::MAX {
            Err(DurationError::TooLong {
                value: value(),
                what: B::WHAT,
                max: B::MAX_TEXT,
            })
        } else {
            Ok(Bounded(d, PhantomData))
        }
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl<B: Bounds> FromStr for Bounded<B> {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The text may come from a peer on the control socket: what an
        // error quotes of it is escaped, since errors reach logs and terminals.
        let value = || crate::termtext::escape(s).into_owned();
        let d = grammar::parse(s).map_err(|source| DurationError::Parse {
            value: value(),
            source,
        })?;
        Self::check(d, value)
    }
}

impl<B> fmt::Display for Bounded<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0, " "))
    }
}

// By hand rather than derived: a derive would require `B` itself to be
// `Clone`, `PartialEq`... although only the duration is compared.
impl<B> Clone for Bounded<B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Bounded<B> {}
impl<B> PartialEq for Bounded<B> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<B> Eq for Bounded<B> {}
impl<B> fmt::Debug for Bounded<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<B> From<Bounded<B>> for Duration {
    fn from(b: Bounded<B>) -> Duration {
        b.0
    }
}

impl<B> Serialize for Bounded<B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de, B: Bounds> Deserialize<'de> for Bounded<B> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A TTL argument as text, for the places that take one from a string
/// (policy files, `audit --since`).
pub(crate) fn parse_ttl(s: &str) -> Result<Duration, DurationError> {
    s.parse::<Ttl>().map(Ttl::get)
}

#[cfg(test)]
mod tests;
