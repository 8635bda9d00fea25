//! Kernel deny events, for people: reads [`DenyEvent`]s from the ring
//! buffer the programs fill, names their subjects (cgroup id → path, uid →
//! user), and writes them to the deny log (JSON lines, not hash-chained) and
//! to the journal.
//!
//! Rate limited per identity × segment: in each window the first `burst`
//! denies of a subject on a segment are written, the rest are only counted,
//! and when the window closes one `suppressed` line says how many were
//! dropped. A global cap per window bounds the lines of many subjects at
//! once, and the number of subjects tracked is bounded, so a flood cannot
//! fill the disk or the agent's memory. The reader runs on its own thread:
//! a flood costs that thread, never the control socket. The deny log itself
//! is rotated by size (one old file kept).
//!
//! Owns the reader thread, the limiter and the deny log. It does not decide
//! anything: the kernel already refused; this only reports. Split: this
//! file reads (through the dataplane's generic [`Ring`] reader) and runs the
//! thread; [`limiter`] rate-limits, [`names`] names subjects and builds the
//! records, [`sink`] writes and rotates the file.
use std::{
    collections::HashMap,
    io,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use agent_common::{hook, verdict, DenyEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::{cgroupfs::Hierarchy, clock, dataplane::Ring};

mod limiter;
mod names;
mod sink;

use limiter::{Admit, Limiter, Summary};
use names::Names;
use sink::Sink;

/// How the deny log is written and limited.
#[derive(Clone, Debug)]
pub(crate) struct DenyLogConfig {
    pub path: PathBuf,
    /// Denies written per identity × segment per window.
    pub burst: u32,
    pub window: Duration,
    /// Deny lines written per window over all subjects.
    pub global_burst: u32,
    /// Rotate the deny log past this size (one old file, `.1`, is kept); 0 = never.
    pub max_bytes: u64,
}

/// Denies written per identity × segment per window, by default.
pub(crate) const DEFAULT_BURST: u32 = 10;
/// The rate-limit window, by default.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

impl DenyLogConfig {
    /// The defaults, writing to `path`.
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            burst: DEFAULT_BURST,
            window: DEFAULT_WINDOW,
            global_burst: 500,
            max_bytes: 16 << 20,
        }
    }
}

/// Events handled between two looks at the clock and the stop flag.
const BATCH: usize = 4096;
/// How often windows are closed and the stop flag is checked.
const TICK: Duration = Duration::from_millis(250);

/// Counts since the agent started, shared with `status` and the metrics.
#[derive(Debug, Default)]
pub(crate) struct DenyStats {
    pub path: PathBuf,
    pub received: AtomicU64,
    pub logged: AtomicU64,
    pub suppressed: AtomicU64,
    pub write_failures: AtomicU64,
}

/// The deny log, as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct DenyLogView {
    pub path: String,
    /// Deny events read from the kernel.
    pub received: u64,
    /// Written to the deny log.
    pub logged: u64,
    /// Counted but not written (rate limit); reported in `suppressed` lines.
    pub suppressed: u64,
    pub write_failures: u64,
}

impl DenyStats {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            ..Default::default()
        }
    }

    pub(crate) fn view(&self) -> DenyLogView {
        DenyLogView {
            path: self.path.display().to_string(),
            received: self.received.load(Ordering::Relaxed),
            logged: self.logged.load(Ordering::Relaxed),
            suppressed: self.suppressed.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
        }
    }
}

/// Segment id → name, as the agent knows them now.
pub(crate) type SegmentNames = Box<dyn Fn() -> HashMap<u32, String> + Send>;

/// The running reader; [`DenyLogger::stop`] flushes pending summaries.
pub(crate) struct DenyLogger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DenyLogger {
    /// Starts reading `ring` on a thread of its own.
    pub(crate) fn spawn(
        ring: Ring<DenyEvent>,
        cfg: DenyLogConfig,
        hierarchy: Hierarchy,
        names: SegmentNames,
        stats: Arc<DenyStats>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut reader = Reader {
            limiter: Limiter::new(cfg.burst, cfg.global_burst, cfg.window),
            sink: Sink::new(cfg.path.clone(), cfg.max_bytes, stats.clone()),
            names: Names::new(hierarchy, names),
            stats,
        };
        let thread = std::thread::Builder::new()
            .name("deny-log".into())
            .spawn(move || reader.run(ring, &flag))?;
        info!(path = %cfg.path.display(), burst = cfg.burst, window_secs = cfg.window.as_secs_f64(), "deny log ready");
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the reader and writes the summaries of open windows.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DenyLogger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Reader {
    limiter: Limiter<Subject>,
    sink: Sink,
    names: Names,
    stats: Arc<DenyStats>,
}

impl Reader {
    fn run(&mut self, mut ring: Ring<DenyEvent>, stop: &AtomicBool) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            if let Err(e) = ring.wait(TICK) {
                warn!(error = %e, "polling the deny-event ring buffer failed; deny log stops");
                return;
            }
            // Drain in batches so that windows still close during a flood.
            ring.drain(BATCH, |ev| self.on_event(ev, Instant::now()));
            self.sink.flush();
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.names.refresh_segments();
                for s in self.limiter.close_windows(now, false) {
                    self.summary(s);
                }
                self.sink.flush();
            }
            if stop.load(Ordering::Relaxed) {
                for s in self.limiter.close_windows(Instant::now(), true) {
                    self.summary(s);
                }
                self.sink.flush();
                return;
            }
        }
    }

    fn on_event(&mut self, ev: DenyEvent, now: Instant) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        match self.limiter.admit(Subject::of(&ev), ev, now) {
            Admit::Log => {
                let rec = self.names.record(&ev);
                let text = |k: &str| rec.get(k).and_then(Value::as_str).unwrap_or("");
                let who = match rec.get("uid") {
                    Some(uid) => format!("{} uid {uid} ({})", text("identity"), text("user")),
                    None => text("identity").to_string(),
                };
                warn!(
                    hook = text("hook"),
                    segment = text("segment"),
                    %who,
                    port = ev.port,
                    proto = text("proto"),
                    "{}",
                    if ev.verdict == verdict::WOULD_DENY {
                        "would deny (audit mode: let through)"
                    } else {
                        "denied"
                    }
                );
                self.sink.write(rec);
                self.stats.logged.fetch_add(1, Ordering::Relaxed);
            }
            Admit::Suppress => {
                self.stats.suppressed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn summary(&mut self, s: Summary<DenyEvent>) {
        let mut rec = self.names.subject_fields(&s.first);
        if s.mixed {
            // Too many subjects at once: this count covers all the ones
            // that did not get a window of their own.
            rec.insert("identity".into(), "(several)".into());
        }
        let secs = s.elapsed.as_secs_f64().max(0.001);
        warn!(
            "suppressed {} denies of {} on {} in the last {:.0} s",
            s.suppressed,
            rec["identity"].as_str().unwrap_or("?"),
            rec["segment"].as_str().unwrap_or("?"),
            secs.ceil()
        );
        rec.insert("event".into(), "suppressed".into());
        if s.first.verdict == verdict::WOULD_DENY {
            rec.insert("would_deny".into(), true.into());
        }
        rec.insert("ts".into(), clock::rfc3339_millis(SystemTime::now()).into());
        rec.insert("suppressed".into(), s.suppressed.into());
        rec.insert(
            "window_secs".into(),
            json!((secs * 1000.0).round() / 1000.0),
        );
        self.sink.write(rec);
    }
}

/// The deny log's `event` of a kernel event: `deny`, or `would_deny` for
/// a refusal a segment in audit mode let through.
pub(crate) fn event_name(ev: &DenyEvent) -> &'static str {
    if ev.verdict == verdict::WOULD_DENY {
        "would_deny"
    } else {
        "deny"
    }
}

/// Who was refused where: the rate limit's unit. Would-be refusals are
/// limited apart from real ones, so neither hides the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Subject {
    segment: u32,
    would: bool,
    cgroup_id: u64,
    uid: u32,
    /// The remote source, for remote peers only.
    peer: [u8; 16],
}

impl Subject {
    pub(crate) fn of(ev: &DenyEvent) -> Self {
        let remote = is_remote(ev);
        Self {
            segment: ev.segment,
            would: ev.verdict == verdict::WOULD_DENY,
            cgroup_id: if remote { 0 } else { ev.cgroup_id },
            uid: if remote { 0 } else { ev.uid },
            peer: if remote { ev.peer_addr } else { [0; 16] },
        }
    }
}

/// Events of remote peers carry no local subject (XDP, tc, or an skb hook
/// without a socket owner).
fn is_remote(ev: &DenyEvent) -> bool {
    ev.hook == hook::XDP || ev.hook == hook::TC || ev.cgroup_id == 0
}
