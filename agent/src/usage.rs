//! How much an allow or grant was used, from the kernel's usage map
//! (`PC_USAGE`, see `agent-ebpf/src/usage.rs`): the pure arithmetic of
//! summing per-CPU values and several entries into one figure, and the
//! question asked of it — has a grant been idle too long — and the record
//! a grant's end carries.
//!
//! Owns no state and touches no map: the dataplane reads the values, the
//! core (`agent/usage.rs`) asks these questions.
use std::time::Duration;

use agent_common::Usage;
use serde::{Deserialize, Serialize};

/// Use of one or more kernel entries, summed. Times are CLOCK_BOOTTIME
/// nanoseconds; `None` when never used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub connections: u64,
    pub first_boot_ns: Option<u64>,
    pub last_boot_ns: Option<u64>,
}

impl Totals {
    /// Sums one entry's per-CPU values (or several entries' totals):
    /// connections add up, the earliest first use and latest last use win.
    pub(crate) fn add_cpu(self, u: &Usage) -> Self {
        let nz = |v: u64| (v != 0).then_some(v);
        Self {
            connections: self.connections.saturating_add(u.connections),
            first_boot_ns: min_some(self.first_boot_ns, nz(u.first_boot_ns)),
            last_boot_ns: self.last_boot_ns.max(nz(u.last_boot_ns)),
        }
    }

    pub(crate) fn merge(self, o: Totals) -> Self {
        Self {
            connections: self.connections.saturating_add(o.connections),
            first_boot_ns: min_some(self.first_boot_ns, o.first_boot_ns),
            last_boot_ns: self.last_boot_ns.max(o.last_boot_ns),
        }
    }

    pub(crate) fn of(per_cpu: impl IntoIterator<Item = Usage>) -> Self {
        per_cpu
            .into_iter()
            .fold(Self::default(), |acc, u| acc.add_cpu(&u))
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The instant (boot ns) at which a grant made at `granted_boot_ns` and
/// last used as `usage` says becomes idle under `timeout`: its last use,
/// or its start if it was never used (or only before it started, through
/// an entry it shares with an allow), plus the timeout.
pub(crate) fn idle_deadline(granted_boot_ns: u64, usage: &Totals, timeout: Duration) -> u64 {
    let active = usage.last_boot_ns.unwrap_or(0).max(granted_boot_ns);
    let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    active.saturating_add(ns)
}

/// What the audit record of a grant's end says about its use, with times
/// as wall-clock RFC 3339 (`wall` converts a boot-clock instant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub connections: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_use: Option<String>,
}

impl Record {
    pub(crate) fn new(t: &Totals, wall: impl Fn(u64) -> String) -> Self {
        Self {
            connections: t.connections,
            first_use: t.first_boot_ns.map(&wall),
            last_use: t.last_boot_ns.map(&wall),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(connections: u64, first: u64, last: u64) -> Usage {
        Usage {
            connections,
            first_boot_ns: first,
            last_boot_ns: last,
        }
    }

    #[test]
    fn per_cpu_values_sum_and_zero_slots_are_never() {
        let t = Totals::of([u(0, 0, 0), u(3, 50, 90), u(2, 40, 70), u(0, 0, 0)]);
        assert_eq!(
            t,
            Totals {
                connections: 5,
                first_boot_ns: Some(40),
                last_boot_ns: Some(90)
            }
        );
        assert_eq!(Totals::of([u(0, 0, 0)]), Totals::default());
    }

    #[test]
    fn merging_entries_keeps_the_extremes() {
        let a = Totals::of([u(1, 10, 20)]);
        let b = Totals::of([u(4, 5, 15)]);
        let m = a.merge(b);
        assert_eq!(
            (m.connections, m.first_boot_ns, m.last_boot_ns),
            (5, Some(5), Some(20))
        );
        assert_eq!(Totals::default().merge(a), a);
    }

    #[test]
    fn idle_counts_from_last_use_or_from_the_grant() {
        let t = Duration::from_nanos(100);
        // Never used: idle from its start.
        assert_eq!(idle_deadline(1_000, &Totals::default(), t), 1_100);
        // Used after its start: from the last use.
        assert_eq!(
            idle_deadline(1_000, &Totals::of([u(1, 1_050, 1_500)]), t),
            1_600
        );
        // Used only before it started (a shared entry): from its start.
        assert_eq!(idle_deadline(1_000, &Totals::of([u(1, 10, 20)]), t), 1_100);
        // Saturates instead of wrapping.
        assert_eq!(
            idle_deadline(u64::MAX - 1, &Totals::default(), Duration::from_secs(1)),
            u64::MAX
        );
    }

    #[test]
    fn record_converts_times_and_omits_never() {
        let r = Record::new(&Totals::of([u(2, 5, 9)]), |ns| format!("t{ns}"));
        assert_eq!(r.first_use.as_deref(), Some("t5"));
        assert_eq!(r.last_use.as_deref(), Some("t9"));
        let never = Record::new(&Totals::default(), |ns| format!("t{ns}"));
        assert_eq!(
            serde_json::to_value(&never).unwrap(),
            serde_json::json!({"connections": 0})
        );
    }
}
