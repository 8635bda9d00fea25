//! Where the agent's start goes: named phases with their wall time and the
//! process's resident memory after each, logged as one line once the
//! control socket is ready (`start phases`), so a slow or large start can
//! be read from the log without a profiler (`cargo xtask bench --only
//! scale` prints it beside its figures).
//!
//! Off except between [`begin`] and [`finish`] (the agent's own start in
//! `server::run`), so the fast tests, which start many agents in one
//! process, record nothing.
//!
//! Also the one phase that runs beside the others: reading the journal
//! ([`JournalOpening`]) needs nothing from the kernel, and loading the
//! programs and reading the pinned maps need nothing from the journal, so
//! on a machine with two cores or more they overlap.
use std::{
    path::PathBuf,
    sync::Mutex,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::journal::{Journal, JournalError, Opened};

type Opening = Result<(Journal, Opened), JournalError>;

/// The journal being opened (replayed) on a thread of its own, started
/// once the agent holds its state directory's lock; [`JournalOpening::wait`]
/// takes the result. Dropped unwaited (a start that failed elsewhere), it
/// still waits for the thread, so the process never exits in the middle of
/// the journal's own repairs (moving a damaged journal aside, importing an
/// old state file).
pub(crate) struct JournalOpening {
    thread: Option<JoinHandle<(Opening, Duration)>>,
}

impl JournalOpening {
    /// Starts opening the journal in `dir`.
    pub(crate) fn spawn(dir: PathBuf) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new()
            .name("journal-open".into())
            .spawn(move || {
                let started = Instant::now();
                let opened = Journal::open(&dir);
                // What reading freed stays in this thread's own malloc
                // arena, which the main thread's allocations never reuse:
                // handed back now, it does not add to the start's peak.
                release_freed_memory();
                (opened, started.elapsed())
            })?;
        Ok(Self {
            thread: Some(thread),
        })
    }

    /// The opened journal, once the thread is done; its time is recorded
    /// as `journal_replay` (the wait for it is the caller's phase).
    pub(crate) fn wait(mut self) -> Opening {
        let thread = self.thread.take().expect("waited once");
        match thread.join() {
            Ok((opened, took)) => {
                note("journal_replay", took);
                opened
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for JournalOpening {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

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

/// Records `name`, a phase that ran for `took` on another thread beside
/// the main one's phases (its time is not the main thread's: the next
/// [`mark`] still counts from the last one). A no-op unless recording.
pub(crate) fn note(name: &'static str, took: Duration) {
    let mut guard = PHASES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_mut() {
        if p.marks.len() < 64 {
            p.marks.push((name, took, rss_kib()));
        }
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

/// Returns the allocator's free pages (in every arena) to the kernel: a
/// million-grant journal or policy passes through buffers many times the
/// size of what the agent keeps, and the allocator would otherwise hold on
/// to them as resident memory for the agent's whole life.
pub(crate) fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
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
        super::note("beside", std::time::Duration::from_millis(5));
        let line = super::finish();
        assert!(line.contains("one="), "{line}");
        assert!(line.contains(" two="), "{line}");
        assert!(line.contains(" beside=5ms/"), "{line}");
        assert!(!line.contains("before"), "{line}");
        super::mark("after");
        assert_eq!(super::finish(), "");
    }
}
