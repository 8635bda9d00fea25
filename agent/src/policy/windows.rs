//! Time windows: `windows = ["Mon-Fri 08:00-18:00"]` with a `timezone`,
//! in a segment's jit table. Access is requested and granted only inside
//! a window, and a grant closes at the end of the window it was made in.
//!
//! Owns the text form (days, then `HH:MM-HH:MM`, or `HH:MM:SS` for a
//! window that starts or ends within a minute; a window whose end is not
//! after its start runs past midnight into the next day) and the
//! arithmetic: whether an instant is inside a window (and until when),
//! and when the next one opens. Local times are turned into instants in
//! the segment's time zone by `jiff`, which follows the zone's
//! daylight-saving rules: a local time in a skipped hour is read with the
//! offset before the change (02:30 on the spring-forward night is 03:30
//! summer time), one in a repeated hour is its first occurrence; a window
//! spanning a change is an hour shorter or longer in real time.
use std::{fmt, str::FromStr};

use jiff::{civil, tz::TimeZone, Timestamp};

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// At most this many windows per segment.
pub const MAX_WINDOWS: usize = 64;

/// Seconds in a day: `24:00`, the end of the day.
const DAY: u32 = 24 * 3600;

/// One recurring window: on these weekdays (Monday = 0), from `start` to
/// `end` (seconds after midnight, local time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub days: [bool; 7],
    pub start: u32,
    pub end: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window {text:?}: {why}")]
pub struct WindowError {
    pub text: String,
    pub why: String,
}

fn day(text: &str) -> Option<usize> {
    DAYS.iter().position(|d| d.eq_ignore_ascii_case(text))
}

/// `HH:MM` or `HH:MM:SS` as seconds after midnight; `24:00` is the end
/// of the day.
fn seconds(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let n: Vec<u32> = parts
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (h, m, s) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    let total = h * 3600 + m * 60 + s;
    ((h < 24 && m < 60 && s < 60) || total == DAY).then_some(total)
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| WindowError {
            text: text.to_string(),
            why: why.to_string(),
        };
        let (days_text, times) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| err("write DAYS HH:MM-HH:MM, e.g. \"Mon-Fri 08:00-18:00\""))?;
        let mut days = [false; 7];
        for part in days_text.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (
                        day(a).ok_or_else(|| err("days are Mon, Tue, Wed, Thu, Fri, Sat, Sun"))?,
                        day(b).ok_or_else(|| err("days are Mon, Tue, Wed, Thu, Fri, Sat, Sun"))?,
                    );
                    // A range may wrap past Sunday (Fri-Mon).
                    let mut d = a;
                    for _ in 0..7 {
                        days[d] = true;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => {
                    days[day(part)
                        .ok_or_else(|| err("days are Mon, Tue, Wed, Thu, Fri, Sat, Sun"))?] = true
                }
            }
        }
        let (s, e) = times
            .trim()
            .split_once('-')
            .ok_or_else(|| err("the times are HH:MM-HH:MM, e.g. 08:00-18:00"))?;
        let time_rule = "a time is HH:MM or HH:MM:SS, 00:00 to 24:00";
        let start = seconds(s).ok_or_else(|| err(time_rule))?;
        let end = seconds(e).ok_or_else(|| err(time_rule))?;
        if start == end {
            return Err(err("a window that ends when it starts is empty"));
        }
        if start == DAY {
            return Err(err("a window starts at 23:59:59 at the latest"));
        }
        if !days.contains(&true) {
            return Err(err("a window needs at least one day"));
        }
        Ok(Window { days, start, end })
    }
}

/// `HH:MM`, or `HH:MM:SS` when the seconds are not zero.
fn clock_text(secs: u32) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = (0..7).filter(|&d| self.days[d]).map(|d| DAYS[d]).collect();
        write!(
            f,
            "{} {}-{}",
            days.join(","),
            clock_text(self.start),
            clock_text(self.end)
        )
    }
}

/// A segment's windows in its time zone (the zone's name, resolved when
/// the policy is checked and again at each use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    pub windows: Vec<Window>,
    /// IANA name (`Europe/Berlin`); `None`: the host's zone.
    pub timezone: Option<String>,
}

/// Where an instant stands in a segment's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Inside a window that closes at this instant.
    OpenUntil(Timestamp),
    /// Outside every window; the next opens at this instant (`None`: never).
    ClosedUntil(Option<Timestamp>),
}

impl Windows {
    pub fn zone(&self) -> Result<TimeZone, jiff::Error> {
        match &self.timezone {
            Some(name) => TimeZone::get(name),
            None => Ok(TimeZone::system()),
        }
    }

    /// The windows and their zone, for people:
    /// `Mon,Tue,Wed,Thu,Fri 08:00-18:00; Sat 10:00-12:00, Europe/Berlin`.
    pub fn describe(&self) -> String {
        let list: Vec<String> = self.windows.iter().map(ToString::to_string).collect();
        let zone = self.timezone.as_deref().unwrap_or("the host's time zone");
        format!("{}, {zone}", list.join("; "))
    }

    /// The occurrences of every window that start from a week before
    /// `date` to a week after it, as instants.
    fn occurrences(&self, tz: &TimeZone, date: civil::Date) -> Vec<(Timestamp, Timestamp)> {
        let mut out = Vec::new();
        for offset in -8i64..=8 {
            let Ok(d) = date.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            let weekday = d.weekday().to_monday_zero_offset() as usize;
            for w in &self.windows {
                if !w.days[weekday] {
                    continue;
                }
                let at = |day: civil::Date, secs: u32| -> Option<Timestamp> {
                    let (day, secs) = if secs == DAY {
                        (day.tomorrow().ok()?, 0)
                    } else {
                        (day, secs)
                    };
                    let time = civil::Time::new(
                        (secs / 3600) as i8,
                        (secs % 3600 / 60) as i8,
                        (secs % 60) as i8,
                        0,
                    )
                    .ok()?;
                    // `compatible`: a skipped local time moves forward past
                    // the gap, a repeated one is its first occurrence.
                    tz.to_ambiguous_zoned(day.to_datetime(time))
                        .compatible()
                        .ok()
                        .map(|z| z.timestamp())
                };
                let end_day = if w.end <= w.start {
                    match d.tomorrow() {
                        Ok(t) => t,
                        Err(_) => continue,
                    }
                } else {
                    d
                };
                if let (Some(s), Some(e)) = (at(d, w.start), at(end_day, w.end)) {
                    if s < e {
                        out.push((s, e));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Where `now` stands. Touching or overlapping windows count as one
    /// (a window open until 18:00 followed by one from 18:00 is open until
    /// the second's end).
    pub fn at(&self, now: Timestamp) -> Result<Standing, jiff::Error> {
        let tz = self.zone()?;
        let date = now.to_zoned(tz.clone()).date();
        let occ = self.occurrences(&tz, date);
        let mut open_until: Option<Timestamp> = None;
        for &(s, e) in &occ {
            match open_until {
                None if s <= now && now < e => open_until = Some(e),
                Some(until) if s <= until && e > until => open_until = Some(e),
                _ => {}
            }
        }
        Ok(match open_until {
            Some(e) => Standing::OpenUntil(e),
            None => Standing::ClosedUntil(occ.iter().map(|&(s, _)| s).find(|&s| s > now)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(list: &[&str], tz: &str) -> Windows {
        Windows {
            windows: list.iter().map(|w| w.parse().unwrap()).collect(),
            timezone: Some(tz.into()),
        }
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn parses_days_ranges_and_times_and_refuses_nonsense() {
        let w: Window = "Mon-Fri 08:00-18:00".parse().unwrap();
        assert_eq!(w.days, [true, true, true, true, true, false, false]);
        assert_eq!((w.start, w.end), (8 * 3600, 18 * 3600));
        assert_eq!(w.to_string(), "Mon,Tue,Wed,Thu,Fri 08:00-18:00");
        let w: Window = "Fri-Mon 22:00-06:00".parse().unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        let w: Window = "sat,Sun 00:00-24:00".parse().unwrap();
        assert_eq!(w.days, [false, false, false, false, false, true, true]);
        let w: Window = "Mon 08:00:30-08:01:15".parse().unwrap();
        assert_eq!((w.start, w.end), (8 * 3600 + 30, 8 * 3600 + 75));
        assert_eq!(w.to_string(), "Mon 08:00:30-08:01:15");
        for bad in [
            "Mon-Fri",
            "Mon-Fry 08:00-18:00",
            "Mon 8:00-18:00",
            "Mon 08:00-08:00",
            "Mon 25:00-26:00",
            "Mon 08:00",
            "Mon 08:00:60-09:00",
            "Mon 08:00:5-09:00",
            "Mon 24:00:01-09:00",
            "Mon 24:00-09:00",
            ", 08:00-09:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn inside_a_window_it_is_open_until_its_end_outside_closed_until_the_next() {
        let w = windows(&["Mon-Fri 08:00-18:00"], "Europe/Berlin");
        // Wednesday 2026-12-02 10:00 CET = 09:00Z.
        assert_eq!(
            w.at(ts("2026-12-02T09:00:00Z")).unwrap(),
            Standing::OpenUntil(ts("2026-12-02T17:00:00Z"))
        );
        // Friday 19:00 CET: next Monday 08:00 CET.
        assert_eq!(
            w.at(ts("2026-12-04T18:00:00Z")).unwrap(),
            Standing::ClosedUntil(Some(ts("2026-12-07T07:00:00Z")))
        );
        // The end itself is outside.
        assert!(matches!(
            w.at(ts("2026-12-02T17:00:00Z")).unwrap(),
            Standing::ClosedUntil(_)
        ));
    }

    #[test]
    fn overnight_windows_run_into_the_next_day() {
        let w = windows(&["Sun 22:00-06:00"], "UTC");
        // Monday 2026-12-07 03:00Z is inside Sunday's window.
        assert_eq!(
            w.at(ts("2026-12-07T03:00:00Z")).unwrap(),
            Standing::OpenUntil(ts("2026-12-07T06:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_moves_the_instants_not_the_local_times() {
        let w = windows(&["Sun 01:00-05:00", "Mon-Sun 09:00-10:00"], "Europe/Berlin");
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST. The window 01:00-05:00
        // local is 00:00Z to 03:00Z: three hours, not four.
        assert_eq!(
            w.at(ts("2026-03-29T00:30:00Z")).unwrap(),
            Standing::OpenUntil(ts("2026-03-29T03:00:00Z"))
        );
        // 09:00 local is 08:00Z the day before the change, 07:00Z after.
        assert_eq!(
            w.at(ts("2026-03-28T12:00:00Z")).unwrap(),
            Standing::ClosedUntil(Some(ts("2026-03-29T00:00:00Z")))
        );
        assert_eq!(
            w.at(ts("2026-03-29T05:00:00Z")).unwrap(),
            Standing::ClosedUntil(Some(ts("2026-03-29T07:00:00Z")))
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 01:00-05:00 local
        // is 23:00Z (Saturday) to 04:00Z: five hours.
        assert_eq!(
            w.at(ts("2026-10-24T23:30:00Z")).unwrap(),
            Standing::OpenUntil(ts("2026-10-25T04:00:00Z"))
        );
    }

    #[test]
    fn a_window_in_a_skipped_or_repeated_hour_and_one_spanning_the_change() {
        use Standing::*;
        // Spring forward, 2026-03-29 in Berlin: 02:00-03:00 local does not
        // exist. A window from 02:30 starts at 02:30 read in the offset
        // before the gap: 01:30Z, which is 03:30 CEST; it ends at 04:00
        // CEST (02:00Z).
        let w = windows(&["Sun 02:30-04:00"], "Europe/Berlin");
        assert_eq!(
            w.at(ts("2026-03-29T00:00:00Z")).unwrap(),
            ClosedUntil(Some(ts("2026-03-29T01:30:00Z")))
        );
        assert_eq!(
            w.at(ts("2026-03-29T01:45:00Z")).unwrap(),
            OpenUntil(ts("2026-03-29T02:00:00Z"))
        );
        // Fall back, 2026-10-25: 02:00-03:00 local happens twice. A window
        // from 02:30 opens at the first (CEST, 00:30Z) and ends at 03:30
        // CET (02:30Z): two hours, and open through the second 02:30.
        let w = windows(&["Sun 02:30-03:30"], "Europe/Berlin");
        assert_eq!(
            w.at(ts("2026-10-25T00:00:00Z")).unwrap(),
            ClosedUntil(Some(ts("2026-10-25T00:30:00Z")))
        );
        for inside in ["2026-10-25T00:45:00Z", "2026-10-25T01:40:00Z"] {
            assert_eq!(
                w.at(ts(inside)).unwrap(),
                OpenUntil(ts("2026-10-25T02:30:00Z")),
                "{inside}"
            );
        }
        // An overnight window across the fall back: Saturday 22:00 CEST
        // (20:00Z) to Sunday 06:00 CET (05:00Z), nine hours; a week later
        // the same local times are 21:00Z to 05:00Z, eight.
        let w = windows(&["Sat 22:00-06:00"], "Europe/Berlin");
        assert_eq!(
            w.at(ts("2026-10-24T21:00:00Z")).unwrap(),
            OpenUntil(ts("2026-10-25T05:00:00Z"))
        );
        assert_eq!(
            w.at(ts("2026-10-24T19:30:00Z")).unwrap(),
            ClosedUntil(Some(ts("2026-10-24T20:00:00Z")))
        );
        assert_eq!(
            w.at(ts("2026-10-31T20:30:00Z")).unwrap(),
            ClosedUntil(Some(ts("2026-10-31T21:00:00Z")))
        );
        // Across the spring forward: Saturday 22:00 CET (21:00Z) to Sunday
        // 06:00 CEST (04:00Z), seven hours.
        assert_eq!(
            w.at(ts("2026-03-28T23:00:00Z")).unwrap(),
            OpenUntil(ts("2026-03-29T04:00:00Z"))
        );
    }
}
