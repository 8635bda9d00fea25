//! The kernel's tick length, for the programs' cheap clock: marked flows
//! with a finite expiry compare `jiffies` (an inlined load) instead of
//! reading the precise boot-time clock at every packet, which needs an
//! upper bound on the tick (`PC_TICK_NS`, see `agent-ebpf/src/decide.rs`,
//! `fast_window`). User space cannot read HZ directly: this reads the
//! `jiffies` counter and the monotonic clock that `/proc/timer_list`
//! prints, twice, and bounds the tick from above. When the file is
//! missing or the figures make no sense the bound is 0 ("unknown"), and the
//! programs read the precise clock at every packet, as before.
use std::{io::BufRead, sync::Mutex, thread::JoinHandle, time::Duration};

/// How long apart the two readings are.
const GAP: Duration = Duration::from_millis(50);

/// One reading: (monotonic ns, jiffies) from the head of `/proc/timer_list`.
fn reading() -> Option<(u64, u64)> {
    let f = std::fs::File::open("/proc/timer_list").ok()?;
    parse(std::io::BufReader::new(f).lines().map_while(Result::ok))
}

/// "now at N nsecs" comes first, then each CPU's section; the first
/// "jiffies: N" line is enough (the file is long on big machines: stop there).
fn parse(lines: impl Iterator<Item = String>) -> Option<(u64, u64)> {
    let mut now = None;
    for line in lines {
        if let Some(rest) = line.strip_prefix("now at ") {
            now = rest.strip_suffix(" nsecs")?.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("jiffies: ") {
            return Some((now?, rest.trim().parse().ok()?));
        }
    }
    None
}

/// An upper bound on the tick from two readings: `dj` ticks were counted in
/// `dt` ns, so HZ >= (dj - 1) / dt (one tick of rounding at each end);
/// one tick fewer still covers the few µs between the two lines of one
/// reading. 0 when too few ticks passed to tell.
fn bound(first: (u64, u64), second: (u64, u64)) -> u64 {
    let dt = second.0.saturating_sub(first.0);
    let dj = second.1.saturating_sub(first.1);
    if dj < 4 || dt == 0 {
        return 0;
    }
    dt.div_ceil(dj - 2)
}

/// A measurement started by [`prefetch`], not yet taken.
static PREFETCHED: Mutex<Option<JoinHandle<u64>>> = Mutex::new(None);

/// Starts measuring the tick on a thread of its own, so that [`GAP`]
/// passes while the agent parses its policy and takes its locks instead of
/// in front of the programs' load; [`tick_ns`] takes the result. If the
/// thread cannot be started, [`tick_ns`] measures as before.
pub(crate) fn prefetch() {
    let thread = std::thread::Builder::new()
        .name("tick-measure".into())
        .spawn(measure);
    if let Ok(thread) = thread {
        *PREFETCHED.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    }
}

/// The tick bound the programs get (0: unknown): the one [`prefetch`]
/// measured, else measured now (costs [`GAP`]).
pub(super) fn tick_ns() -> u64 {
    let prefetched = PREFETCHED.lock().unwrap_or_else(|e| e.into_inner()).take();
    match prefetched.map(JoinHandle::join) {
        Some(Ok(t)) => t,
        _ => measure(),
    }
}

/// Two readings [`GAP`] apart, bounded: see the module's text.
fn measure() -> u64 {
    let Some(first) = reading() else {
        return 0;
    };
    std::thread::sleep(GAP);
    let Some(second) = reading() else {
        return 0;
    };
    let t = bound(first, second);
    // A tick between 0.5 ms (HZ 2000) and 100 ms (HZ 10) or nothing.
    if (500_000..=100_000_000).contains(&t) {
        t
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_now_and_the_first_jiffies() {
        let text = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\n\
                    now at 1239286006203 nsecs\n\ncpu: 0\n  .idle_jiffies   : 4295043214\n\
                    jiffies: 4295202059\njiffies: 1\n";
        assert_eq!(
            parse(text.lines().map(String::from)),
            Some((1_239_286_006_203, 4_295_202_059))
        );
        assert_eq!(parse("jiffies: 5\n".lines().map(String::from)), None);
    }

    #[test]
    fn the_bound_is_never_below_the_tick() {
        // HZ 250 (4 ms), 50 ms apart: 12 or 13 ticks counted.
        for (dj, dt) in [(12, 50_000_000), (13, 50_000_000), (12, 49_000_000)] {
            let t = bound((0, 100), (dt, 100 + dj));
            assert!(t >= 4_000_000, "{dj} ticks in {dt} ns gave {t}");
            assert!(t <= 5_000_000, "{dj} ticks in {dt} ns gave {t}");
        }
        // HZ 1000 and HZ 100.
        assert!(bound((0, 0), (50_000_000, 49)) >= 1_000_000);
        assert!(bound((0, 0), (50_000_000, 6)) >= 10_000_000);
        // Too few ticks, or a clock that went nowhere: unknown.
        assert_eq!(bound((0, 0), (50_000_000, 3)), 0);
        assert_eq!(bound((5, 0), (5, 50)), 0);
    }
}
