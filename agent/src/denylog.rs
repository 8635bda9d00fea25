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
//! anything: the kernel already refused; this only reports.
use std::{
    collections::{HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    hash::Hash,
    io::{self, Write},
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use agent_common::{hook, DenyEvent};
use aya::maps::{MapData, RingBuf};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use crate::{cgroupfs::Hierarchy, clock};

/// How the deny log is written and limited.
#[derive(Clone, Debug)]
pub struct DenyLogConfig {
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
pub const DEFAULT_BURST: u32 = 10;
/// The rate-limit window, by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

impl DenyLogConfig {
    /// The defaults, writing to `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            burst: DEFAULT_BURST,
            window: DEFAULT_WINDOW,
            global_burst: 500,
            max_bytes: 16 << 20,
        }
    }
}

/// Most subjects tracked at once; further ones share one overflow window.
const MAX_SUBJECTS: usize = 4096;
/// Most names remembered per cache.
const CACHE_SIZE: usize = 1024;
/// Events handled between two looks at the clock and the stop flag.
const BATCH: usize = 4096;
/// How often windows are closed and the stop flag is checked.
const TICK: Duration = Duration::from_millis(250);

/// Counts since the agent started, shared with `status` and the metrics.
#[derive(Debug, Default)]
pub struct DenyStats {
    pub path: PathBuf,
    pub received: AtomicU64,
    pub logged: AtomicU64,
    pub suppressed: AtomicU64,
    pub write_failures: AtomicU64,
}

/// The deny log, as `status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DenyLogView {
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
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            ..Default::default()
        }
    }

    pub fn view(&self) -> DenyLogView {
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
pub type SegmentNames = Box<dyn Fn() -> HashMap<u32, String> + Send>;

/// The running reader; [`DenyLogger::stop`] flushes pending summaries.
pub struct DenyLogger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DenyLogger {
    /// Starts reading `ring` on a thread of its own.
    pub fn spawn(
        ring: RingBuf<MapData>,
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
    pub fn stop(mut self) {
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
    fn run(&mut self, mut ring: RingBuf<MapData>, stop: &AtomicBool) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let polled = {
                let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
                poll(
                    &mut fds,
                    PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE),
                )
            };
            if let Err(e) = polled {
                if e != nix::errno::Errno::EINTR {
                    warn!(error = %e, fd = ring.as_raw_fd(), "polling the deny-event ring buffer failed; deny log stops");
                    return;
                }
            }
            // Drain in batches so that windows still close during a flood.
            let mut handled = 0;
            while handled < BATCH {
                let Some(item) = ring.next() else { break };
                let event = parse(&item);
                drop(item);
                handled += 1;
                if let Some(ev) = event {
                    self.on_event(ev, Instant::now());
                }
            }
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
                    "denied"
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
        rec.insert("ts".into(), clock::rfc3339_millis(SystemTime::now()).into());
        rec.insert("suppressed".into(), s.suppressed.into());
        rec.insert(
            "window_secs".into(),
            json!((secs * 1000.0).round() / 1000.0),
        );
        self.sink.write(rec);
    }
}

/// Copies an event out of a ring-buffer record; `None` for a short record.
fn parse(bytes: &[u8]) -> Option<DenyEvent> {
    if bytes.len() < std::mem::size_of::<DenyEvent>() {
        return None;
    }
    // SAFETY: the record holds at least size_of::<DenyEvent>() bytes, and
    // DenyEvent is plain old data (aya::Pod): every bit pattern is valid.
    // read_unaligned because ring-buffer records are only 8-byte aligned by
    // convention.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DenyEvent>()) })
}

/// Who was refused where: the rate limit's unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Subject {
    segment: u32,
    cgroup_id: u64,
    uid: u32,
    /// The remote source, for remote peers only.
    peer: [u8; 16],
}

impl Subject {
    fn of(ev: &DenyEvent) -> Self {
        let remote = is_remote(ev);
        Self {
            segment: ev.segment,
            cgroup_id: if remote { 0 } else { ev.cgroup_id },
            uid: if remote { 0 } else { ev.uid },
            peer: if remote { ev.peer_addr } else { [0; 16] },
        }
    }
}

/// Events of remote peers carry no local subject (XDP, or an skb hook
/// without a socket owner).
fn is_remote(ev: &DenyEvent) -> bool {
    ev.hook == hook::XDP || ev.cgroup_id == 0
}

/// What the limiter says about one event.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Log,
    Suppress,
}

/// A closed window that dropped events.
#[derive(Debug, PartialEq)]
struct Summary<E> {
    /// The window's first event (names the subject).
    first: E,
    /// The overflow window: other subjects' events are counted in it too.
    mixed: bool,
    suppressed: u64,
    elapsed: Duration,
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
struct Limiter<K> {
    burst: u32,
    global_burst: u32,
    window: Duration,
    keys: HashMap<K, Window<DenyEvent>>,
    overflow: Option<K>,
    global_start: Option<Instant>,
    global_logged: u32,
}

impl<K: Clone + Eq + Hash> Limiter<K> {
    fn new(burst: u32, global_burst: u32, window: Duration) -> Self {
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

    fn admit(&mut self, key: K, ev: DenyEvent, now: Instant) -> Admit {
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
    fn close_windows(&mut self, now: Instant, all: bool) -> Vec<Summary<DenyEvent>> {
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

/// A small map that forgets its oldest entries past `cap`.
struct Cache<K, V> {
    cap: usize,
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Clone + Eq + Hash, V: Clone> Cache<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get_or(&mut self, key: &K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.map.get(key) {
            return v.clone();
        }
        let v = make();
        if self.map.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.map.insert(key.clone(), v.clone());
        self.order.push_back(key.clone());
        v
    }
}

/// Names for the ids in events.
struct Names {
    hierarchy: Hierarchy,
    segment_source: SegmentNames,
    segments: HashMap<u32, String>,
    cgroups: Cache<u64, Option<String>>,
    users: Cache<u32, Option<String>>,
    groups: Cache<u32, Option<String>>,
}

impl Names {
    fn new(hierarchy: Hierarchy, segment_source: SegmentNames) -> Self {
        let segments = segment_source();
        Self {
            hierarchy,
            segment_source,
            segments,
            cgroups: Cache::new(CACHE_SIZE),
            users: Cache::new(CACHE_SIZE),
            groups: Cache::new(CACHE_SIZE),
        }
    }

    fn refresh_segments(&mut self) {
        self.segments = (self.segment_source)();
    }

    fn segment(&self, id: u32) -> String {
        self.segments
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// The fields naming who was refused on which segment.
    fn subject_fields(&mut self, ev: &DenyEvent) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("segment".into(), self.segment(ev.segment).into());
        m.insert("segment_id".into(), ev.segment.into());
        if is_remote(ev) {
            let peer = ip_of(ev.peer_addr);
            m.insert("identity".into(), format!("peer:{peer}").into());
            return m;
        }
        let hierarchy = &self.hierarchy;
        let cgroup = self
            .cgroups
            .get_or(&ev.cgroup_id, || hierarchy.path_of_id(ev.cgroup_id));
        let user = self.users.get_or(&ev.uid, || {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(ev.uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        });
        let group = self.groups.get_or(&ev.gid, || {
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(ev.gid))
                .ok()
                .flatten()
                .map(|g| g.name)
        });
        let identity = match &cgroup {
            Some(p) => format!("cgroup:{p}"),
            None => format!("cgroup-id:{}", ev.cgroup_id),
        };
        m.insert("identity".into(), identity.into());
        m.insert("cgroup".into(), cgroup.into());
        m.insert("cgroup_id".into(), ev.cgroup_id.into());
        m.insert("uid".into(), ev.uid.into());
        m.insert("user".into(), user.into());
        m.insert("gid".into(), ev.gid.into());
        m.insert("group".into(), group.into());
        m
    }

    /// The deny log record of one event.
    fn record(&mut self, ev: &DenyEvent) -> Map<String, Value> {
        let mut m = self.subject_fields(ev);
        m.insert("event".into(), "deny".into());
        m.insert(
            "ts".into(),
            clock::rfc3339_millis(clock::wall_of(ev.boot_ns)).into(),
        );
        m.insert("hook".into(), hook_name(ev.hook).into());
        m.insert("proto".into(), proto_name(ev.proto).into());
        m.insert("port".into(), ev.port.into());
        m.insert("addr".into(), ip_of(ev.addr).to_string().into());
        if ev.peer_addr != [0; 16] || ev.peer_port != 0 {
            let peer = ip_of(ev.peer_addr);
            let text = match peer {
                IpAddr::V6(_) => format!("[{peer}]:{}", ev.peer_port),
                IpAddr::V4(_) => format!("{peer}:{}", ev.peer_port),
            };
            m.insert("peer".into(), text.into());
        }
        m
    }
}

/// The address in an event: v4-mapped IPv6 shows as IPv4.
fn ip_of(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

pub fn hook_name(h: u8) -> &'static str {
    match h {
        hook::CONNECT4 => "connect4",
        hook::CONNECT6 => "connect6",
        hook::SENDMSG4 => "sendmsg4",
        hook::SENDMSG6 => "sendmsg6",
        hook::SKB_EGRESS => "skb_egress",
        hook::SKB_INGRESS => "skb_ingress",
        hook::XDP => "xdp",
        _ => "unknown",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        n => format!("ip{n}"),
    }
}

/// The deny log file: buffered appends, rotated by size.
struct Sink {
    path: PathBuf,
    max_bytes: u64,
    file: Option<io::BufWriter<File>>,
    size: u64,
    stats: Arc<DenyStats>,
    failing: bool,
}

impl Sink {
    fn new(path: PathBuf, max_bytes: u64, stats: Arc<DenyStats>) -> Self {
        Self {
            path,
            max_bytes,
            file: None,
            size: 0,
            stats,
            failing: false,
        }
    }

    fn open(&mut self) -> io::Result<&mut io::BufWriter<File>> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            // A new deny log is 0640, like the audit log: it names users,
            // cgroups and peers.
            use std::os::unix::fs::OpenOptionsExt;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(io::BufWriter::new(f));
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn write(&mut self, rec: Map<String, Value>) {
        let mut line = Value::Object(rec).to_string();
        line.push('\n');
        if self.max_bytes > 0 && self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate();
        }
        let result = self.open().and_then(|f| f.write_all(line.as_bytes()));
        match result {
            Ok(()) => {
                self.size += line.len() as u64;
                if self.failing {
                    self.failing = false;
                    info!(path = %self.path.display(), "deny log writable again");
                }
            }
            Err(e) => self.failed(e),
        }
    }

    fn flush(&mut self) {
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.flush() {
                self.failed(e);
            }
        }
    }

    fn failed(&mut self, e: io::Error) {
        self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
        // A buffered writer that failed may hold half a line: start over.
        self.file = None;
        if !self.failing {
            self.failing = true;
            warn!(path = %self.path.display(), error = %e, "cannot write the deny log; denies still reach the journal");
        }
    }

    fn rotate(&mut self) {
        self.flush();
        self.file = None;
        let old = rotated(&self.path);
        if let Err(e) = fs::rename(&self.path, &old) {
            warn!(path = %self.path.display(), error = %e, "deny log rotation failed");
        }
        self.size = 0;
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            _pad: [0; 6],
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

    #[test]
    fn events_parse_from_ring_records() {
        let e = ev(42);
        // SAFETY: DenyEvent is repr(C) plain data; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const DenyEvent).cast::<u8>(),
                std::mem::size_of::<DenyEvent>(),
            )
        };
        assert_eq!(parse(bytes), Some(e));
        assert_eq!(parse(&bytes[..10]), None);
    }

    #[test]
    fn caches_are_bounded() {
        let mut c: Cache<u32, u32> = Cache::new(2);
        for i in 0..10 {
            assert_eq!(c.get_or(&i, || i * 2), i * 2);
        }
        assert_eq!(c.map.len(), 2);
        let mut calls = 0;
        c.get_or(&9, || {
            calls += 1;
            0
        });
        assert_eq!(calls, 0, "recent entries stay cached");
    }

    #[test]
    fn remote_events_name_the_peer() {
        let mut e = ev(0);
        e.hook = hook::XDP;
        e.cgroup_id = 0;
        e.peer_addr = agent_common::v4_mapped([10, 1, 2, 3]);
        e.peer_port = 40000;
        let mut names = Names::new(
            Hierarchy {
                mount: PathBuf::from("/nonexistent"),
            },
            Box::new(|| HashMap::from([(1, "db".to_string())])),
        );
        let rec = names.record(&e);
        assert_eq!(rec["identity"], "peer:10.1.2.3");
        assert_eq!(rec["segment"], "db");
        assert_eq!(rec["hook"], "xdp");
        assert_eq!(rec["peer"], "10.1.2.3:40000");
        assert_eq!(rec["addr"], "127.0.0.1");
    }
}
