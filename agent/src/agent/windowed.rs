//! Windowed standing allows: `allow = [{ identity = "group:oncall",
//! windows = ["Mon-Fri 08:00-18:00"] }]`.
//!
//! Owns where each windowed allow stands (open until when, or closed and
//! when it next opens, or why it stays closed), the audit of each change
//! (`window_open`, `window_close`) and the next instant one changes, which
//! the main loop's expiry timer sleeps until. `apply_policy` writes an open
//! allow's keys with the window's *end* as the kernel expiry, so the kernel
//! closes it on time even with the agent down; at the end the agent takes
//! the entries out, and at the next start it writes them again. A reload
//! or a restart inside a window opens it at once, until that window's end.
use std::collections::BTreeMap;

use jiff::Timestamp;

use super::*;
use crate::{
    control::WindowView,
    explain::{Lookup, Resolved},
    policy::{windows::Standing, WindowedAllow},
};

/// Where a windowed allow stands, as last applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum WindowState {
    /// Open: the kernel entries expire at `until` (`expiry`, boot clock).
    Open { until: Timestamp, expiry: u64 },
    /// Closed: opens next at `next` (`None`: not within a week). `why`:
    /// kept closed for another reason (a lock, an unreadable zone).
    Closed {
        next: Option<Timestamp>,
        why: Option<String>,
    },
}

/// (segment, identity text): one windowed allow.
pub(super) type WindowKey = (String, String);

/// The boot-clock instant of a wall-clock one, taken from one reading of
/// both clocks (`now`, `boot_now`), below [`NEVER`].
fn boot_at(t: Timestamp, now: Timestamp, boot_now: u64) -> u64 {
    let ahead = t.as_nanosecond().saturating_sub(now.as_nanosecond());
    let ahead = u64::try_from(ahead.max(0)).unwrap_or(u64::MAX);
    boot_now.saturating_add(ahead).min(NEVER - 1)
}

fn rfc3339(t: Timestamp) -> String {
    clock::rfc3339(SystemTime::from(t))
}

/// `t` in the windows' zone, for people: "2026-12-07 08:00:00 CET".
fn local(w: &WindowedAllow, t: Timestamp) -> String {
    match w.windows.zone() {
        Ok(z) => t.to_zoned(z).strftime("%Y-%m-%d %H:%M:%S %Z").to_string(),
        Err(_) => rfc3339(t),
    }
}

/// Whether a kernel key of an allow is one the subject's lookups find.
fn key_matches(key: &EntryKey, lookup: &Lookup) -> bool {
    match (key, lookup) {
        (EntryKey::Local(k), Lookup::Local { kind, id }) => k.kind == *kind && k.id == *id,
        (EntryKey::Peer { addr, prefix, .. }, Lookup::Peer(probe)) => {
            let bits = u32::from(*prefix).min(128);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from_be_bytes(*addr) & mask == u128::from_be_bytes(*probe) & mask
        }
        _ => false,
    }
}

impl Agent {
    /// Where `w` stands at `now`, before locks. A zone that cannot be read
    /// keeps it closed (fails closed), with why.
    pub(super) fn window_at(w: &WindowedAllow, now: Timestamp, boot_now: u64) -> WindowState {
        match w.windows.at(now) {
            Ok(Standing::OpenUntil(until)) => WindowState::Open {
                until,
                expiry: boot_at(until, now, boot_now),
            },
            Ok(Standing::ClosedUntil(next)) => WindowState::Closed { next, why: None },
            Err(e) => WindowState::Closed {
                next: None,
                why: Some(format!("its time zone cannot be read ({e})")),
            },
        }
    }

    /// Records where each windowed allow stands after a policy was applied,
    /// audits what changed, and sets the next instant one changes.
    /// `now`, `boot_now`: the one reading of both clocks the states were
    /// computed from (so a deadline is exactly the expiry written).
    pub(super) fn commit_windows(
        &mut self,
        states: BTreeMap<WindowKey, WindowState>,
        (now, boot_now): (Timestamp, u64),
    ) {
        for ((segment, identity), state) in &states {
            let before = self.windows_state.get(&(segment.clone(), identity.clone()));
            let Some(w) = self.windowed_allow(segment, identity).cloned() else {
                continue;
            };
            let event = match (before, state) {
                (Some(WindowState::Open { until: u0, .. }), WindowState::Open { until, .. })
                    if u0 == until =>
                {
                    None
                }
                (_, WindowState::Open { until, .. }) => {
                    info!(%segment, %identity, until = %rfc3339(*until), "windowed allow opened");
                    Some(AuditEvent::WindowOpen {
                        segment: segment.clone(),
                        identity: identity.clone(),
                        until: rfc3339(*until),
                        until_local: local(&w, *until),
                        windows: w.windows.describe(),
                        actor: Actor::agent(),
                    })
                }
                (Some(WindowState::Closed { why: w0, .. }), WindowState::Closed { why, .. })
                    if w0 == why =>
                {
                    None
                }
                // First seen closed, for no other reason than the time: nothing happened.
                (None, WindowState::Closed { why: None, .. }) => None,
                (_, WindowState::Closed { next, why }) => {
                    info!(%segment, %identity, why = ?why, "windowed allow closed");
                    Some(AuditEvent::WindowClose {
                        segment: segment.clone(),
                        identity: identity.clone(),
                        next_open: next.map(rfc3339),
                        next_open_local: next.map(|n| local(&w, n)),
                        windows: w.windows.describe(),
                        why: why.clone(),
                        actor: Actor::agent(),
                    })
                }
            };
            if let Some(event) = event {
                if let Err(e) = self.audit.record(event) {
                    warn!(error = %e, "the audit record of a window change could not be written yet");
                }
            }
        }
        self.window_deadline = states
            .values()
            .filter_map(|s| match s {
                WindowState::Open { expiry, .. } => Some(*expiry),
                WindowState::Closed { next, .. } => next.map(|t| boot_at(t, now, boot_now)),
            })
            .min();
        self.windows_state = states;
    }

    /// The policy's windowed allow of `identity` in `segment`.
    pub(super) fn windowed_allow(&self, segment: &str, identity: &str) -> Option<&WindowedAllow> {
        self.policy
            .segments
            .get(segment)?
            .windowed
            .iter()
            .find(|w| w.identity.to_string() == identity)
    }

    /// The boot-clock instant the next windowed allow opens or closes.
    pub(super) fn next_window_deadline(&self) -> Option<u64> {
        self.window_deadline
    }

    /// On the expiry timer: when a windowed allow is due to open or close,
    /// applies the policy again (which opens and closes them). Returns
    /// whether one closed (its open flows are then to be swept).
    pub(crate) fn turn_windows(&mut self) -> bool {
        if self.window_deadline.is_none_or(|d| d > clock::boot_ns()) {
            return false;
        }
        let open_before = self.open_windows();
        if let Err(e) = self.apply_policy(self.policy.clone()) {
            warn!(error = %format!("{e:#}"), "opening or closing windowed allows failed; retried in 1 s");
            self.window_deadline = Some(clock::deadline_after(Duration::from_secs(1)));
            return false;
        }
        let open_after = self.open_windows();
        open_before.iter().any(|k| !open_after.contains(k))
    }

    fn open_windows(&self) -> Vec<WindowKey> {
        self.windows_state
            .iter()
            .filter(|(_, s)| matches!(s, WindowState::Open { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The expiry of an open windowed allow (`None`: closed or not one).
    pub(super) fn window_expiry(&self, segment: &str, identity: &str) -> Option<u64> {
        match self
            .windows_state
            .get(&(segment.to_owned(), identity.to_owned()))?
        {
            WindowState::Open { expiry, .. } => Some(*expiry),
            WindowState::Closed { .. } => None,
        }
    }

    /// What `list` shows of a windowed allow.
    pub(super) fn window_view(&self, segment: &str, w: &WindowedAllow) -> WindowView {
        let state = self
            .windows_state
            .get(&(segment.to_owned(), w.identity.to_string()));
        let (open, closes_at, opens_at, why) = match state {
            Some(WindowState::Open { until, .. }) => (true, Some(local(w, *until)), None, None),
            Some(WindowState::Closed { next, why }) => {
                (false, None, next.map(|n| local(w, n)), why.clone())
            }
            None => (false, None, None, Some("not applied yet".into())),
        };
        WindowView {
            windows: w.windows.windows.iter().map(ToString::to_string).collect(),
            timezone: w.windows.timezone.clone(),
            open,
            closes_at,
            opens_at,
            why,
        }
    }

    /// `explain`'s words about a windowed allow source: since when and
    /// until when it is open.
    pub(super) fn describe_window(&self, segment: &str, identity: &str) -> Option<String> {
        let w = self.windowed_allow(segment, identity)?;
        let state = self
            .windows_state
            .get(&(segment.to_owned(), identity.to_owned()));
        Some(match state {
            Some(WindowState::Open { until, .. }) => format!(
                "windowed ({}), open until {}",
                w.windows.describe(),
                local(w, *until)
            ),
            _ => format!("windowed ({}), closed", w.windows.describe()),
        })
    }

    /// `explain`'s notes on a refusal: each closed windowed allow of the
    /// port's segment that would let the subject in, and when it opens.
    pub(super) fn closed_window_notes(&self, segment: &str, resolved: &Resolved) -> Vec<String> {
        let (Some(seg), Some(&id)) = (
            self.policy.segments.get(segment),
            self.segment_ids.get(segment),
        ) else {
            return Vec::new();
        };
        let mut notes = Vec::new();
        for w in &seg.windowed {
            let Ok(keys) = self.resolver.keys(&w.identity, id) else {
                continue;
            };
            let matches = keys
                .iter()
                .any(|k| resolved.probes.iter().any(|p| key_matches(k, &p.lookup)));
            if !matches {
                continue;
            }
            let state = self
                .windows_state
                .get(&(segment.to_owned(), w.identity.to_string()));
            let what = format!(
                "the windowed allow {} of segment {segment} ({}) matches",
                w.identity,
                w.windows.describe()
            );
            notes.push(match state {
                Some(WindowState::Closed {
                    next: Some(next),
                    why: None,
                }) => format!(
                    "{what}, but is closed now: it opens next at {} ({})",
                    local(w, *next),
                    rfc3339(*next)
                ),
                Some(WindowState::Closed { why: Some(why), .. }) => {
                    format!("{what}, but is kept closed: {why}")
                }
                Some(WindowState::Closed {
                    next: None,
                    why: None,
                }) => format!("{what}, but is closed and does not open in the coming week"),
                Some(WindowState::Open { until, .. }) => format!(
                    "{what} and is open until {}, yet the kernel holds no live entry for it (suspended by a lock, or not resolved)",
                    local(w, *until)
                ),
                None => format!("{what}, but was not applied yet"),
            });
        }
        notes
    }
}
