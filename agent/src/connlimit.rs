//! Admission control for the control socket: how many connections are
//! served at once, in total and per uid, with room kept for root, and a
//! rate-limited warning when accepting fails for lack of descriptors.
//!
//! A connection is admitted once its peer credentials are known and holds
//! a [`Slot`] until it is closed. Anyone who may reach the socket (it may be
//! mode 0666 so that everyone can `request`) could otherwise open idle
//! connections until the agent runs out of file descriptors and root can
//! no longer `revoke`. Owns the counting only; the accept loop and the
//! refusal sent to the peer live in `server`.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Connections served at once, all uids together.
pub(crate) const MAX_CONNECTIONS: usize = 128;
/// Of [`MAX_CONNECTIONS`], how many only root may use.
pub(crate) const ROOT_RESERVED: usize = 32;
/// Connections one non-root uid may hold at once.
pub(crate) const MAX_PER_UID: usize = 8;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("too many control connections from uid {uid} (at most {limit} at a time); try again")]
    PerUid { uid: u32, limit: usize },
    #[error("the agent is serving {limit} control connections; try again")]
    Full { limit: usize },
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// The live connections, shared by the accept loop and the connection tasks.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    root_reserved: usize,
    per_uid: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(MAX_CONNECTIONS, ROOT_RESERVED, MAX_PER_UID)
    }
}

/// One admitted connection; releases its place when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    counts: Arc<Mutex<Counts>>,
    uid: u32,
}

impl Limits {
    pub(crate) fn new(max_total: usize, root_reserved: usize, per_uid: usize) -> Self {
        Self {
            counts: Arc::default(),
            max_total,
            root_reserved: root_reserved.min(max_total),
            per_uid,
        }
    }

    /// Admits a connection from `uid`, or says why not. Root may use every
    /// place; other uids neither the reserved ones nor more than their share.
    pub(crate) fn admit(&self, uid: u32) -> Result<Slot, Refused> {
        let mut c = self.counts.lock().expect("connection counts");
        if uid != 0 {
            let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= self.per_uid {
                return Err(Refused::PerUid {
                    uid,
                    limit: self.per_uid,
                });
            }
            if c.total >= self.max_total - self.root_reserved {
                return Err(Refused::Full {
                    limit: self.max_total - self.root_reserved,
                });
            }
        } else if c.total >= self.max_total {
            return Err(Refused::Full {
                limit: self.max_total,
            });
        }
        c.total += 1;
        *c.by_uid.entry(uid).or_default() += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            uid,
        })
    }

    /// Connections being served now.
    #[cfg(test)]
    pub(crate) fn active(&self) -> usize {
        self.counts.lock().expect("connection counts").total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("connection counts");
        c.total -= 1;
        if let Some(n) = c.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Says "accepting failed" at most once per `every`, with how many
/// failures were not reported in between: a flood that exhausts the
/// agent's descriptors must not become a flood of log lines too.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a warning is due now (`n` failures were suppressed
    /// since the previous one); `None` to stay quiet.
    pub(crate) fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// How long the accept loop pauses after a failed accept: doubling from
/// 10 ms to 200 ms while failures continue, so that running out of
/// descriptors is neither a busy loop nor a long wait for root once a
/// descriptor is free again.
pub(crate) fn backoff(consecutive_failures: u32) -> Duration {
    Duration::from_millis(10u64 << consecutive_failures.min(5)).min(Duration::from_millis(200))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_cannot_take_more_than_its_share() {
        let l = Limits::new(10, 2, 3);
        let held: Vec<_> = (0..3).map(|_| l.admit(1000).unwrap()).collect();
        assert_eq!(
            l.admit(1000).unwrap_err(),
            Refused::PerUid {
                uid: 1000,
                limit: 3
            }
        );
        // Another uid still gets in.
        let other = l.admit(1001).unwrap();
        drop(held);
        assert_eq!(l.active(), 1);
        let _again = l.admit(1000).unwrap();
        drop(other);
        assert_eq!(l.active(), 1);
    }

    #[test]
    fn root_keeps_its_reserved_places_when_everyone_else_is_full() {
        let l = Limits::new(6, 2, 2);
        let mut held = Vec::new();
        for uid in 1000..1002 {
            held.push(l.admit(uid).unwrap());
            held.push(l.admit(uid).unwrap());
        }
        // 4 of 6 used: the last 2 belong to root.
        assert_eq!(l.admit(1005).unwrap_err(), Refused::Full { limit: 4 });
        held.push(l.admit(0).unwrap());
        held.push(l.admit(0).unwrap());
        assert_eq!(l.admit(0).unwrap_err(), Refused::Full { limit: 6 });
        assert_eq!(l.active(), 6);
        held.clear();
        assert_eq!(l.active(), 0);
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_they_hid() {
        let mut w = WarnLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(w.due(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(w.due(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(w.due(t0 + Duration::from_secs(61)), Some(1000));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(10));
        assert_eq!(backoff(1), Duration::from_millis(20));
        assert_eq!(backoff(5), Duration::from_millis(200));
        assert_eq!(backoff(50), Duration::from_millis(200));
    }
}
