//! The deny log's rate limiter: fixed windows per subject (identity ×
//! segment), a global cap per window, and a bound on the subjects tracked,
//! so a flood can fill neither the disk nor the agent's memory. Pure logic:
//! no I/O, no clock of its own (the reader passes `now`).
use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use agent_common::DenyEvent;

/// Most subjects tracked at once; further ones share one overflow window.
pub(super) const MAX_SUBJECTS: usize = 4096;

/// What the limiter says about one event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    Log,
    Suppress,
}

/// A closed window that dropped events.
#[derive(Debug, PartialEq)]
pub(super) struct Summary<E> {
    /// The window's first event (names the subject).
    pub(super) first: E,
    /// The overflow window: other subjects' events are counted in it too.
    pub(super) mixed: bool,
    pub(super) suppressed: u64,
    pub(super) elapsed: Duration,
}

struct Window<E> {
    start: Instant,
    mixed: bool,
    logged: u32,
    suppressed: u64,
    first: E,
}

/// Fixed windows per key, plus a global cap per window; keys are bounded
/// (extra keys share the window of the first key that did not fit).
pub(super) struct Limiter<K> {
    burst: u32,
    global_burst: u32,
    window: Duration,
    keys: HashMap<K, Window<DenyEvent>>,
    overflow: Option<K>,
    global_start: Option<Instant>,
    global_logged: u32,
}

impl<K: Clone + Eq + Hash> Limiter<K> {
    pub(super) fn new(burst: u32, global_burst: u32, window: Duration) -> Self {
        Self {
            burst,
            global_burst,
            window,
            keys: HashMap::new(),
            overflow: None,
            global_start: None,
            global_logged: 0,
        }
    }

    pub(super) fn admit(&mut self, key: K, ev: DenyEvent, now: Instant) -> Admit {
        if self
            .global_start
            .is_none_or(|s| now.duration_since(s) >= self.window)
        {
            self.global_start = Some(now);
            self.global_logged = 0;
        }
        let (key, mixed) = if self.keys.contains_key(&key) || self.keys.len() < MAX_SUBJECTS {
            (key, false)
        } else {
            let shared = self.overflow.get_or_insert(key.clone()).clone();
            let mixed = shared != key;
            (shared, mixed)
        };
        let w = self.keys.entry(key).or_insert(Window {
            start: now,
            mixed: false,
            logged: 0,
            suppressed: 0,
            first: ev,
        });
        w.mixed |= mixed;
        if w.logged < self.burst && self.global_logged < self.global_burst {
            w.logged += 1;
            self.global_logged += 1;
            Admit::Log
        } else {
            w.suppressed += 1;
            Admit::Suppress
        }
    }

    /// Ends the windows that are over (all of them when `all`), returning
    /// a summary for each that dropped events.
    pub(super) fn close_windows(&mut self, now: Instant, all: bool) -> Vec<Summary<DenyEvent>> {
        let window = self.window;
        let mut out = Vec::new();
        self.keys.retain(|_, w| {
            let elapsed = now.duration_since(w.start);
            if !all && elapsed < window {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Summary {
                    first: w.first,
                    mixed: w.mixed,
                    suppressed: w.suppressed,
                    elapsed: elapsed.min(window),
                });
            }
            false
        });
        if self.keys.is_empty() {
            self.overflow = None;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denylog::Subject;
    use agent_common::hook;

    fn ev(uid: u32) -> DenyEvent {
        DenyEvent {
            boot_ns: 1,
            cgroup_id: 7,
            segment: 1,
            uid,
            gid: 0,
            port: 5432,
            peer_port: 0,
            proto: 6,
            hook: hook::CONNECT4,
            verdict: agent_common::verdict::DENIED,
            _pad: [0; 5],
            addr: agent_common::v4_mapped([127, 0, 0, 1]),
            peer_addr: [0; 16],
        }
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_then_summarised() {
        let mut l = Limiter::new(3, 100, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted: Vec<Admit> = (0..1000)
            .map(|_| l.admit(Subject::of(&ev(1)), ev(1), t0))
            .collect();
        assert_eq!(admitted.iter().filter(|a| **a == Admit::Log).count(), 3);
        // Another subject has its own budget.
        assert_eq!(l.admit(Subject::of(&ev(2)), ev(2), t0), Admit::Log);
        // Nothing closes before the window ends.
        assert!(l
            .close_windows(t0 + Duration::from_secs(5), false)
            .is_empty());
        let closed = l.close_windows(t0 + Duration::from_secs(10), false);
        assert_eq!(closed.len(), 1, "only the flooding subject dropped events");
        assert_eq!(closed[0].suppressed, 997);
        assert_eq!(closed[0].first.uid, 1);
        // A new window starts with a fresh budget.
        assert_eq!(
            l.admit(Subject::of(&ev(1)), ev(1), t0 + Duration::from_secs(11)),
            Admit::Log
        );
    }

    #[test]
    fn the_global_cap_and_the_subject_bound_hold() {
        let mut l = Limiter::new(5, 50, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut logged = 0;
        for uid in 0..(MAX_SUBJECTS as u32 * 2) {
            if l.admit(Subject::of(&ev(uid)), ev(uid), t0) == Admit::Log {
                logged += 1;
            }
        }
        assert_eq!(logged, 50);
        // The subjects that fit, plus the one overflow window.
        assert_eq!(l.keys.len(), MAX_SUBJECTS + 1);
        let closed = l.close_windows(t0, true);
        assert_eq!(closed.iter().filter(|s| s.mixed).count(), 1);
        let suppressed: u64 = closed.iter().map(|s| s.suppressed).sum();
        assert_eq!(suppressed, MAX_SUBJECTS as u64 * 2 - 50);
    }
}
