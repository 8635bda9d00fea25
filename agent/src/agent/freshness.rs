//! Strict fleet grants: how long this host still counts as having heard
//! from the fleet store ("fresh until", the kernel's `PC_FRESH`).
//!
//! Owns the value the agent writes there and when it writes it: each time
//! the fleet client hears from the store (a watch event or progress
//! notice, a successful lease keepalive) it calls
//! [`Agent::heard_from_store`], which moves "fresh until" to now +
//! `strict_after`. It never moves it back while running. It does not own
//! the check: the kernel refuses a strict entry (`agent_common::expiry`)
//! once the boot-time clock passes "fresh until" (`agent-ebpf/src/decide.rs`),
//! with no help from here.
//!
//! Why a hung agent cannot keep a strict grant alive: the only thing that
//! extends a strict entry's life is a write to `PC_FRESH`, and the agent
//! makes that write only on the way back from hearing the store. An agent
//! that is stopped, deadlocked, starved or killed makes no write, so
//! "fresh until" stays where the last word from the store put it, and the
//! kernel's own clock passes it: connects are refused, and marked flows
//! (every flow a strict entry admits is marked: its expiry is finite)
//! drop their next packet, since their cached expiry is at most "fresh
//! until". An agent cut off from the store but running is the same case:
//! it hears nothing, so it writes nothing. What the agent adds when it
//! runs is only the courtesy: noticing that it went stale
//! ([`Agent::check_freshness`]) it asks for a sweep, so idle flows are
//! destroyed at once rather than at their next packet.
use std::time::Duration;

use tracing::{info, warn};

use super::Agent;
use crate::{clock, dataplane::DataplaneError};

/// The agent's side of "fresh until".
#[derive(Debug, Default)]
pub(crate) struct Freshness {
    /// How long after the last word from the store strict entries keep
    /// working; `None` outside fleet mode (nothing is written).
    limit: Option<Duration>,
    /// "Fresh until" as last written (or found pinned at start).
    until: u64,
    /// Whether going stale was noticed (and its sweep asked for).
    stale: bool,
}

impl Freshness {
    /// Starts from the value a previous run left pinned.
    pub(crate) fn new(inherited: u64, now: u64) -> Self {
        Self {
            limit: None,
            until: inherited,
            stale: inherited <= now,
        }
    }

    pub(crate) fn set_limit(&mut self, limit: Option<Duration>) {
        self.limit = limit;
    }

    /// The value to write when the store was heard at `now`: now + the
    /// limit, when that is later than what the kernel holds.
    pub(crate) fn heard(&mut self, now: u64) -> Option<u64> {
        let limit = self.limit?;
        let until = now.saturating_add(u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX));
        // Never NEVER-like: a strict entry's deadline still bounds it.
        if until <= self.until {
            return None;
        }
        Some(until)
    }

    /// Records a write of `until`.
    pub(crate) fn written(&mut self, until: u64) -> bool {
        self.until = until;
        std::mem::replace(&mut self.stale, false)
    }

    /// At a turn of the main loop: true once, when the host has just
    /// gone stale (strict entries stopped working; a sweep is due).
    pub(crate) fn turn(&mut self, now: u64) -> bool {
        if self.limit.is_none() || self.stale || now < self.until {
            return false;
        }
        self.stale = true;
        true
    }

    /// When the main loop should look again: "fresh until", while fresh.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        (self.limit.is_some() && !self.stale).then_some(self.until)
    }
}

impl Agent {
    /// Sets `[fleet] strict_after` (`None`: not in fleet mode).
    pub(crate) fn set_strict_after(&mut self, limit: Option<Duration>) {
        self.freshness.set_limit(limit);
    }

    /// The fleet store was heard from just now: strict entries work for
    /// `strict_after` more.
    pub(crate) fn heard_from_store(&mut self) -> Result<(), DataplaneError> {
        let Some(until) = self.freshness.heard(clock::boot_ns()) else {
            return Ok(());
        };
        self.kernel.set_fresh_until(until)?;
        if self.freshness.written(until) {
            info!("heard from the fleet store again: strict grants work again");
        }
        Ok(())
    }

    /// True when the host has just gone stale: the caller asks for a
    /// sweep, so idle flows that strict entries admitted are cut now.
    pub(crate) fn check_freshness(&mut self) -> bool {
        let stale = self.freshness.turn(clock::boot_ns());
        if stale {
            warn!("no word from the fleet store within strict_after: strict fleet grants stopped working on this host");
        }
        stale
    }

    /// When "fresh until" passes (for the main loop's sleep).
    pub(crate) fn freshness_deadline(&self) -> Option<u64> {
        self.freshness.next_deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn outside_fleet_mode_nothing_is_written_or_noticed() {
        let mut f = Freshness::new(0, 10 * S);
        assert_eq!(f.heard(10 * S), None);
        assert!(!f.turn(100 * S));
        assert_eq!(f.next_deadline(), None);
    }

    #[test]
    fn hearing_moves_fresh_until_forward_only() {
        let mut f = Freshness::new(0, 10 * S);
        f.set_limit(Some(Duration::from_secs(30)));
        assert_eq!(f.heard(10 * S), Some(40 * S));
        f.written(40 * S);
        assert_eq!(f.heard(5 * S), None, "never back");
        assert_eq!(f.heard(11 * S), Some(41 * S));
    }

    #[test]
    fn going_stale_is_noticed_once_and_cleared_by_hearing_again() {
        let mut f = Freshness::new(0, 10 * S);
        f.set_limit(Some(Duration::from_secs(30)));
        f.written(40 * S);
        assert_eq!(f.next_deadline(), Some(40 * S));
        assert!(!f.turn(39 * S));
        assert!(f.turn(40 * S), "stale at fresh_until, as the kernel");
        assert!(!f.turn(41 * S), "noticed once");
        assert_eq!(f.next_deadline(), None);
        let again = f.heard(50 * S).unwrap();
        assert!(f.written(again), "was stale");
        assert!(!f.turn(51 * S));
    }

    #[test]
    fn an_inherited_value_in_the_past_starts_stale() {
        let mut f = Freshness::new(5 * S, 10 * S);
        f.set_limit(Some(Duration::from_secs(30)));
        assert!(
            !f.turn(10 * S),
            "already stale at start: nothing new to notice"
        );
        let fresh = Freshness::new(20 * S, 10 * S);
        assert!(!fresh.stale);
    }
}
