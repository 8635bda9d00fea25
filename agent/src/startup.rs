//! Where the agent's start goes: named phases with their wall time and the
//! process's resident memory after each, logged as one line once the
//! control socket is ready (`start phases`), so a slow or large start can
//! be read from the log without a profiler (`cargo xtask bench --only
//! scale` prints it beside its figures).
//!
//! Off except between [`begin`] and [`finish`] (the agent's own start in
//! `server::run`), so the fast tests, which start many agents in one
//! process, record nothing.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

struct Phases {
    last: Instant,
    marks: Vec<(&'static str, Duration, u64)>,
}

static PHASES: Mutex<Option<Phases>> = Mutex::new(None);

/// Starts recording.
pub(crate) fn begin() {
    *PHASES.lock().unwrap_or_else(|e| e.into_inner()) = Some(Phases {
        last: Instant::now(),
        marks: Vec::new(),
    });
}

/// Ends the phase `name` (a no-op unless recording).
pub(crate) fn mark(name: &'static str) {
    let mut guard = PHASES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_mut() {
        let now = Instant::now();
        // Bounded: the start has a fixed list of phases.
        if p.marks.len() < 64 {
            p.marks.push((name, now - p.last, rss_kib()));
        }
        p.last = Instant::now();
    }
}

/// Stops recording and returns `name=ms/MiB ...` for the log.
pub(crate) fn finish() -> String {
    let taken = PHASES.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(p) = taken else {
        return String::new();
    };
    p.marks
        .iter()
        .map(|(n, d, kib)| {
            format!(
                "{n}={:.0}ms/{:.0}MiB",
                d.as_secs_f64() * 1e3,
                *kib as f64 / 1024.0
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// This process's VmRSS in KiB (0 if /proc cannot tell).
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn records_only_between_begin_and_finish() {
        super::mark("before");
        super::begin();
        super::mark("one");
        super::mark("two");
        let line = super::finish();
        assert!(line.contains("one="), "{line}");
        assert!(line.contains(" two="), "{line}");
        assert!(!line.contains("before"), "{line}");
        super::mark("after");
        assert_eq!(super::finish(), "");
    }
}
