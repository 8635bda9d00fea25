//! The one duration grammar every flag, config key, policy key and control
//! request uses: whole numbers each followed by a unit, `s`, `m`, `h` or
//! `d`, largest unit first, each unit at most once, optionally separated by
//! spaces: `90s`, `15m`, `1h30m` (or `1h 30m`), `2d`. Nothing else: no
//! fractions, no signs, no words (`10 minutes`), no sub-second units, no
//! `M` (months in humantime, MiB in the config's sizes), no weeks or years.
//! Every refusal says what was wrong and how to write it.
//!
//! Owns parsing and printing the text; the bounds are `duration.rs`'s.
use std::time::Duration;

/// How to write a duration, for every error's hint.
pub(crate) const HINT: &str =
    "write whole numbers with a unit s, m, h or d, largest first: `90s`, `15m`, `1h30m`, `2d`";

/// The units, largest first, with their length in seconds.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// What is wrong with a duration's text. Quoted text is escaped by the
/// caller's value (`DurationError` escapes what it quotes), and units here
/// are at most a short run of letters from that same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("it is empty")]
    Empty,
    #[error("it is negative")]
    Negative,
    #[error("a sign is not part of a duration")]
    Sign,
    #[error("it has a fraction; use a smaller unit (`90m`, not `1.5h`)")]
    Fraction,
    #[error("`{number}` has no unit (`{number}s`, `{number}m`, `{number}h` or `{number}d`?)")]
    NoUnit { number: String },
    #[error("a number must come before the unit")]
    UnitFirst,
    #[error("`{number}` has a leading zero (write `{trimmed}`)")]
    LeadingZero { number: String, trimmed: String },
    #[error("`M` is not a unit (months? minutes are `{number}m`, days `d`)")]
    Months { number: String },
    #[error("`{unit}` is shorter than a second; the smallest unit is `s`")]
    SubSecond { unit: String },
    #[error("`{unit}` is a word; units are single letters (`{number}{letter}`)")]
    Word {
        unit: String,
        number: String,
        letter: char,
    },
    #[error("`{unit}` is not a unit; the largest is `d` (`{days}d`)")]
    TooBigUnit { unit: String, days: String },
    #[error("`{unit}` is not a unit")]
    UnknownUnit { unit: String },
    #[error("a space between a number and its unit (write `{number}{unit}`)")]
    Spaced { number: String, unit: char },
    #[error("`{unit}` is given twice (write each unit once)")]
    Repeated { unit: char },
    #[error("`{unit}` comes after a smaller unit (largest first: `1h30m`, not `30m1h`)")]
    Order { unit: char },
    #[error("it is too large")]
    Overflow,
}

/// Parses `text` in the grammar above.
pub(crate) fn parse(text: &str) -> Result<Duration, GrammarError> {
    if text.trim().is_empty() {
        return Err(GrammarError::Empty);
    }
    let mut rest = text;
    let mut total: u64 = 0;
    // Index in UNITS of the last unit seen: the next must be smaller.
    let mut last: Option<usize> = None;
    loop {
        if last.is_some() {
            rest = rest.trim_start_matches(' ');
            if rest.is_empty() {
                return Ok(Duration::from_secs(total));
            }
        }
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, after) = rest.split_at(digits);
        if number.is_empty() {
            return Err(match after.chars().next() {
                Some('-') => GrammarError::Negative,
                Some('+') => GrammarError::Sign,
                Some('.') => GrammarError::Fraction,
                _ => GrammarError::UnitFirst,
            });
        }
        if after.starts_with(['.', ',']) {
            return Err(GrammarError::Fraction);
        }
        if number.len() > 1 && number.starts_with('0') {
            let trimmed = number.trim_start_matches('0');
            let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
            let unit: String = after.chars().take_while(|c| c.is_alphabetic()).collect();
            return Err(GrammarError::LeadingZero {
                number: format!("{number}{unit}"),
                trimmed: format!("{trimmed}{unit}"),
            });
        }
        let after_space = after.trim_start_matches(' ');
        let letters = after_space.len()
            - after_space
                .trim_start_matches(|c: char| c.is_alphabetic())
                .len();
        let (unit, tail) = after_space.split_at(letters);
        if unit.is_empty() {
            return Err(GrammarError::NoUnit {
                number: number.into(),
            });
        }
        // "10 m" is a word-separated unit: refused like "10 minutes", so
        // that spaces only ever separate whole parts.
        let index = unit_index(unit, number)?;
        if after.len() != after_space.len() {
            return Err(GrammarError::Spaced {
                number: number.into(),
                unit: UNITS[index].0,
            });
        }
        match last {
            Some(l) if l == index => {
                return Err(GrammarError::Repeated {
                    unit: UNITS[index].0,
                })
            }
            Some(l) if l > index => {
                return Err(GrammarError::Order {
                    unit: UNITS[index].0,
                })
            }
            _ => {}
        }
        let n: u64 = number.parse().map_err(|_| GrammarError::Overflow)?;
        total = n
            .checked_mul(UNITS[index].1)
            .and_then(|s| total.checked_add(s))
            .ok_or(GrammarError::Overflow)?;
        last = Some(index);
        rest = tail;
        if rest.is_empty() {
            return Ok(Duration::from_secs(total));
        }
        if !rest.starts_with(' ') && !rest.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(GrammarError::UnknownUnit {
                unit: esc(&rest.chars().take(8).collect::<String>()),
            });
        }
    }
}

/// Which of [`UNITS`] `unit` is, or why it is none of them.
fn unit_index(unit: &str, number: &str) -> Result<usize, GrammarError> {
    if let Some(i) = UNITS
        .iter()
        .position(|(c, _)| unit.len() == 1 && unit.starts_with(*c))
    {
        return Ok(i);
    }
    let word = |letter| GrammarError::Word {
        unit: esc(unit),
        number: number.into(),
        letter,
    };
    let lower = unit.to_lowercase();
    Err(match (unit, lower.as_str()) {
        ("M", _) => GrammarError::Months {
            number: number.into(),
        },
        (_, "ms" | "us" | "µs" | "ns" | "msec" | "usec" | "nsec") => {
            GrammarError::SubSecond { unit: esc(unit) }
        }
        (_, "sec" | "secs" | "second" | "seconds") => word('s'),
        (_, "min" | "mins" | "minute" | "minutes") => word('m'),
        (_, "hr" | "hrs" | "hour" | "hours") => word('h'),
        (_, "day" | "days") => word('d'),
        (_, "w" | "week" | "weeks" | "wk" | "y" | "year" | "years" | "month" | "months" | "mo") => {
            let per = match lower.chars().next() {
                Some('w') => 7,
                Some('y') => 365,
                _ => 30,
            };
            GrammarError::TooBigUnit {
                unit: esc(unit),
                days: number
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| n.checked_mul(per))
                    .map_or_else(|| "N".into(), |d| d.to_string()),
            }
        }
        // Upper-case forms of the four units: one letter, lower case.
        (_, "s" | "h" | "d") => word(lower.chars().next().unwrap_or('s')),
        _ => GrammarError::UnknownUnit { unit: esc(unit) },
    })
}

/// Text from the input, escaped: errors reach terminals and logs.
fn esc(text: &str) -> String {
    crate::termtext::escape(text).into_owned()
}

/// `d` in the grammar, whole seconds (anything below a second is dropped),
/// parts separated by `sep` (`""`: `1h30m`; `" "`: `1h 30m`). Zero is `0s`.
pub(crate) fn format(d: Duration, sep: &str) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in UNITS {
        let n = secs / len;
        if n > 0 {
            if !out.is_empty() {
                out.push_str(sep);
            }
            out.push_str(&n.to_string());
            out.push(unit);
        }
        secs %= len;
    }
    out
}
