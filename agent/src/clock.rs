//! Time as the kernel programs see it.
//!
//! Expiries in the maps are CLOCK_BOOTTIME nanoseconds (what
//! `bpf_ktime_get_boot_ns` returns): the clock keeps counting across suspend
//! and is never set back, so neither an NTP step nor a suspended laptop can
//! stretch a grant. Wall-clock times are only for people: they are derived
//! from the boot clock at display time.
use std::time::{Duration, SystemTime};

use nix::time::{clock_gettime, ClockId};

/// Nanoseconds of CLOCK_BOOTTIME now.
pub(crate) fn boot_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The boot-clock instant `ttl` from now, saturating below [`agent_common::NEVER`].
pub(crate) fn deadline_after(ttl: Duration) -> u64 {
    let ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
    boot_ns().saturating_add(ns).min(agent_common::NEVER - 1)
}

/// Time left until a boot-clock instant (zero once it has passed).
pub(crate) fn remaining(at_boot_ns: u64) -> Duration {
    Duration::from_nanos(at_boot_ns.saturating_sub(boot_ns()))
}

/// The wall-clock time of a boot-clock instant, for display.
pub(crate) fn wall_of(at_boot_ns: u64) -> SystemTime {
    let now_boot = boot_ns();
    let now = SystemTime::now();
    if at_boot_ns >= now_boot {
        now + Duration::from_nanos(at_boot_ns - now_boot)
    } else {
        now - Duration::from_nanos(now_boot - at_boot_ns)
    }
}

/// The boot-clock instant of a wall-clock time (for grants saved to disk,
/// which must survive a reboot: the boot clock restarts at zero).
pub(crate) fn boot_of(wall: SystemTime) -> u64 {
    let now_boot = boot_ns();
    match wall.duration_since(SystemTime::now()) {
        Ok(ahead) => now_boot.saturating_add(ahead.as_nanos() as u64),
        Err(behind) => now_boot.saturating_sub(behind.duration().as_nanos() as u64),
    }
}

/// "12m 30s" style, rounded down to the second, for tables: the duration
/// grammar (`duration.rs`) with spaces, so what is shown can be typed back.
pub(crate) fn human(d: Duration) -> String {
    crate::duration::format(d, " ")
}

/// RFC 3339, UTC, millisecond precision (audit records).
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339, UTC, second precision.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_in_the_future_and_bounded() {
        let before = boot_ns();
        let d = deadline_after(Duration::from_secs(60));
        assert!(d >= before + 60_000_000_000);
        assert_eq!(deadline_after(Duration::MAX), agent_common::NEVER - 1);
    }

    #[test]
    fn remaining_saturates_at_zero() {
        assert_eq!(remaining(0), Duration::ZERO);
        let left = remaining(deadline_after(Duration::from_secs(10)));
        assert!(left <= Duration::from_secs(10) && left > Duration::from_secs(9));
    }

    #[test]
    fn wall_and_boot_round_trip_within_a_millisecond() {
        let at = deadline_after(Duration::from_secs(3600));
        let back = boot_of(wall_of(at));
        assert!(back.abs_diff(at) < 1_000_000, "{back} vs {at}");
    }

    #[test]
    fn human_rounds_to_seconds() {
        assert_eq!(human(Duration::from_millis(90_500)), "1m 30s");
    }
}
