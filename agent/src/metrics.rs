//! Prometheus metrics: the agent's counters, and a minimal HTTP/1.1
//! endpoint serving them in the text exposition format (version 0.0.4).
//!
//! Off unless `--metrics-addr` (or `metrics_addr` in the agent config) is
//! set; a bare port listens on localhost only. The endpoint answers
//! `GET /metrics` and nothing else, reads at most [`MAX_REQUEST`] bytes of
//! a request within [`REQUEST_TIMEOUT`], serves a few connections at a time
//! and closes each after one answer: nothing a scraper (or anyone else who
//! can reach it) sends can hold the agent.
//!
//! Owns the counters the agent keeps only for metrics ([`AgentMetrics`]),
//! the exposition format and the endpoint. The numbers themselves come from
//! the agent, the kernel's per-CPU counters and the deny log.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use crate::{
    agent::Agent,
    audit::Rotation,
    cgroupfs::Hierarchy,
    control::Reply,
    denylog::{DenyLogConfig, DenyLogger, DenyStats},
};

/// Largest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;

/// Upper bounds (seconds) of the revocation latency histogram.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative histogram with fixed buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations ≤ each bound (not cumulative; summed when rendered).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// What the agent counts only to report it.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// From a revocation being handled to the kernel map delete returning.
    pub revoke_latency: Histogram,
    /// The deny log's counters, once its reader runs.
    pub denies: Option<Arc<DenyStats>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            reloads_ok: 0,
            reloads_failed: 0,
            revoke_latency: Histogram::new(&LATENCY_BUCKETS),
            denies: None,
        }
    }
}

/// Flags of `portcullis agent` for the audit trail, the deny log and the
/// metrics endpoint.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ObserveArgs {
    /// Rotate the audit log before it grows past this size, e.g. 64M; 0 never rotates [file: audit_max_bytes; default: 64M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit files kept (audit.jsonl.1 .. .N) [file: audit_keep; default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub audit_keep: Option<u32>,
    /// The kernel deny log [file: deny_log; default: denies.jsonl beside the audit log].
    #[arg(long, value_name = "PATH")]
    pub deny_log: Option<PathBuf>,
    /// Denies written per identity × segment per window; the rest are counted [file: deny_burst; default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub deny_burst: Option<u32>,
    /// The deny log's rate-limit window, e.g. 1m [file: deny_window; default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_window)]
    pub deny_window: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics: PORT (on localhost) or HOST:PORT [file: metrics_addr; default: off].
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics_addr: Option<SocketAddr>,
}

/// What the agent is told about its audit trail, deny log and metrics.
#[derive(Clone, Debug)]
pub struct Observe {
    pub audit_rotation: Rotation,
    pub deny_log: DenyLogConfig,
    /// Off when `None`.
    pub metrics_addr: Option<SocketAddr>,
}

impl ObserveArgs {
    /// The options: each flag given, else the configuration file's value
    /// (which holds the default for what it does not set).
    pub fn resolve(self, file: &crate::config::AgentConfig, audit_log: &Path) -> Observe {
        let path = self
            .deny_log
            .or_else(|| file.deny_log.clone())
            .unwrap_or_else(|| audit_log.with_file_name(crate::audit::query::DENY_LOG_NAME));
        let mut deny_log = DenyLogConfig::new(path);
        deny_log.burst = self.deny_burst.unwrap_or(file.deny_burst);
        deny_log.window = self.deny_window.unwrap_or(file.deny_window);
        Observe {
            audit_rotation: Rotation {
                max_bytes: self.audit_max_bytes.unwrap_or(file.audit_max_bytes),
                keep: self.audit_keep.unwrap_or(file.audit_keep) as usize,
            },
            deny_log,
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
        }
    }
}

/// A size in bytes: `4096`, `64K`, `64M`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => {
            return Err(format!(
                "{s:?} is not a size: write bytes, or a number with K, M or G"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size: write bytes, or a number with K, M or G"))
}

/// A rate-limit window: 1s to 1d.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(86_400) => Ok(d),
        Ok(_) => Err(format!("{s:?}: the window is 1s to 1d")),
        Err(e) => Err(format!("{s:?} is not a duration like 60s: {e}")),
    }
}

/// The deny-log reader and the metrics endpoint, started once the agent
/// enforces; [`Observers::stop`] flushes the deny log's open windows.
pub struct Observers {
    deny: Option<DenyLogger>,
    endpoint: Option<tokio::task::JoinHandle<()>>,
}

impl Observers {
    pub async fn start(
        shared: &Arc<std::sync::Mutex<Agent>>,
        ring: Option<crate::dataplane::Ring<agent_common::DenyEvent>>,
        hierarchy: Hierarchy,
        opts: &Observe,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut deny = None;
        if let Some(ring) = ring {
            let stats = Arc::new(DenyStats::new(opts.deny_log.path.clone()));
            let agent = shared.clone();
            let names =
                Box::new(move || agent.lock().map(|a| a.segment_names()).unwrap_or_default());
            deny = Some(
                DenyLogger::spawn(ring, opts.deny_log.clone(), hierarchy, names, stats.clone())
                    .context("starting the deny-log reader thread")?,
            );
            if let Ok(mut a) = shared.lock() {
                a.set_deny_stats(stats);
            }
        }
        let mut endpoint = None;
        if let Some(addr) = opts.metrics_addr {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            info!(addr = %bound, "metrics endpoint listening on http://{bound}/metrics");
            let agent = shared.clone();
            let page: Arc<dyn Fn() -> String + Send + Sync> =
                Arc::new(move || agent.lock().map(|a| render(&a)).unwrap_or_default());
            endpoint = Some(tokio::spawn(serve(listener, page)));
        }
        Ok(Self { deny, endpoint })
    }

    /// Stops both. Call without holding the agent lock: the deny-log reader
    /// takes it to name segments.
    pub fn stop(self) {
        if let Some(e) = self.endpoint {
            e.abort();
        }
        if let Some(d) = self.deny {
            d.stop();
        }
    }
}

/// `PORT`, `HOST:PORT` or `[V6]:PORT`; a bare port means localhost.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not a metrics address: use PORT (localhost), HOST:PORT or [IPV6]:PORT, e.g. 127.0.0.1:9464")
    })
}

/// Text exposition builder: HELP and TYPE before each family's samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<f64>) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", float(value.into()));
    }

    /// One family with a single unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Into<f64>) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cumulative = 0u64;
        for (bound, n) in h.bounds.iter().zip(&h.counts) {
            cumulative += n;
            self.sample(
                &format!("{name}_bucket"),
                &[("le", &float(*bound))],
                cumulative as f64,
            );
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

/// Counters are u64; f64 holds them exactly up to 2^53, which per-CPU
/// packet counters do not reach in practice.
fn n(v: impl TryInto<u64>) -> f64 {
    v.try_into().unwrap_or(u64::MAX) as f64
}

/// The metrics page for the agent as it is now.
pub fn render(agent: &Agent) -> String {
    let mut e = Exposition::default();
    let (segments, grants, grant_capacity, peer_capacity) = match agent.status() {
        Reply::Status(s) => (s.segments, s.grants, s.grant_capacity, s.peer_capacity),
        _ => (Vec::new(), 0, 0, 0),
    };
    let pending = match agent.list() {
        Reply::List(l) => l.pending.len(),
        _ => 0,
    };
    e.family(
        "portcullis_segment_allowed_total",
        "counter",
        "Connections and packets to the segment's ports that the kernel let through.",
    );
    for s in &segments {
        e.sample(
            "portcullis_segment_allowed_total",
            &[("segment", &s.name)],
            n(s.allowed),
        );
    }
    e.family(
        "portcullis_segment_denied_total",
        "counter",
        "Connections and packets to the segment's ports that the kernel refused.",
    );
    for s in &segments {
        e.sample(
            "portcullis_segment_denied_total",
            &[("segment", &s.name)],
            n(s.denied),
        );
    }
    e.single(
        "portcullis_grants_live",
        "gauge",
        "Just-in-time grants in force.",
        n(grants),
    );
    e.single(
        "portcullis_requests_pending",
        "gauge",
        "Access requests waiting for an approver.",
        n(pending),
    );
    let (local, peers) = agent.map_entries();
    e.family(
        "portcullis_map_entries",
        "gauge",
        "Entries in a kernel map (grants: local identities; peers: remote prefixes).",
    );
    if let Ok(l) = &local {
        e.sample("portcullis_map_entries", &[("map", "grants")], n(*l));
    }
    if let Ok(p) = &peers {
        e.sample("portcullis_map_entries", &[("map", "peers")], n(*p));
    }
    e.family(
        "portcullis_map_capacity",
        "gauge",
        "Capacity of a kernel map; inserts fail once entries reach it.",
    );
    e.sample(
        "portcullis_map_capacity",
        &[("map", "grants")],
        n(grant_capacity),
    );
    e.sample(
        "portcullis_map_capacity",
        &[("map", "peers")],
        n(peer_capacity),
    );
    e.family(
        "portcullis_policy_reloads_total",
        "counter",
        "Policy reloads by result.",
    );
    e.sample(
        "portcullis_policy_reloads_total",
        &[("result", "success")],
        n(agent.metrics().reloads_ok),
    );
    e.sample(
        "portcullis_policy_reloads_total",
        &[("result", "failure")],
        n(agent.metrics().reloads_failed),
    );
    e.single(
        "portcullis_enforcement_repairs_total",
        "counter",
        "Times the heartbeat found a program, link or pin missing in the kernel and put it back.",
        n(agent.enforcement().repairs),
    );
    e.single(
        "portcullis_enforcement_repair_failures_total",
        "counter",
        "Heartbeats that found enforcement missing and could not repair it.",
        n(agent.enforcement().repair_failures),
    );
    e.single(
        "portcullis_enforcement_ok",
        "gauge",
        "1 while the kernel has every program attached and every pin in place, 0 otherwise.",
        if agent.enforcing() { 1.0 } else { 0.0 },
    );
    e.single(
        "portcullis_audit_write_failures_total",
        "counter",
        "Audit records that could not be written (grants are refused meanwhile).",
        n(agent.audit_health().0),
    );
    e.single(
        "portcullis_audit_log_writable",
        "gauge",
        "1 when the last audit write succeeded, 0 while the log cannot be written.",
        if agent.audit_health().1.is_some() {
            0.0
        } else {
            1.0
        },
    );
    e.single(
        "portcullis_audit_records_queued",
        "gauge",
        "Records of revocations, expiries and other events waiting in memory for the audit log to take writes again.",
        n(agent.audit_health().2),
    );
    if let Some(d) = &agent.metrics().denies {
        let v = d.view();
        e.family(
            "portcullis_deny_events_total",
            "counter",
            "Kernel deny events read by the agent, by what became of them (logged, or suppressed by the rate limit).",
        );
        e.sample(
            "portcullis_deny_events_total",
            &[("outcome", "logged")],
            n(v.logged),
        );
        e.sample(
            "portcullis_deny_events_total",
            &[("outcome", "suppressed")],
            n(v.suppressed),
        );
        e.single(
            "portcullis_deny_log_write_failures_total",
            "counter",
            "Deny log lines that could not be written.",
            n(v.write_failures),
        );
    }
    e.histogram(
        "portcullis_revocation_enforcement_seconds",
        "Time from the agent handling a revocation to the kernel map delete returning (enforced from then on).",
        &agent.metrics().revoke_latency,
    );
    e.out
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, page: Arc<dyn Fn() -> String + Send + Sync>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let page = page.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, page).await {
                debug!(%peer, error = %e, "metrics connection");
            }
            drop(permit);
        });
    }
}

/// What to answer to a request head.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

async fn answer(
    mut stream: TcpStream,
    page: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let k = stream.read(&mut chunk).await?;
            if k == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let route = match read {
        Ok(Ok(())) if buf.windows(4).any(|w| w == b"\r\n\r\n") => {
            route(&String::from_utf8_lossy(&buf))
        }
        Ok(Err(e)) => return Err(e),
        // Too long, cut short or too slow.
        _ => Route::BadRequest,
    };
    let (status, content_type, body, head_only) = match route {
        Route::Metrics { head_only } => {
            // Reading the kernel maps takes the agent lock and a few
            // syscalls: keep it off the async workers.
            let page = page.clone();
            let body = tokio::task::spawn_blocking(move || page())
                .await
                .unwrap_or_default();
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body,
                head_only,
            )
        }
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
            false,
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics\n".to_string(),
            false,
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_count() {
        let mut h = Histogram::new(&LATENCY_BUCKETS);
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let mut e = Exposition::default();
        e.histogram("x_seconds", "help", &h);
        let text = e.out;
        assert!(
            text.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{le=\"0.001\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"2.5\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"), "{text}");
        assert!(text.starts_with("# HELP x_seconds help\n# TYPE x_seconds histogram\n"));
    }

    #[test]
    fn labels_and_help_are_escaped() {
        let mut e = Exposition::default();
        e.family("m", "gauge", "a \\ b\nc");
        e.sample("m", &[("segment", "we\"ird\\na\nme")], 1.0);
        assert_eq!(
            e.out,
            "# HELP m a \\\\ b\\nc\n# TYPE m gauge\nm{segment=\"we\\\"ird\\\\na\\nme\"} 1\n"
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route("garbage\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn flags_win_over_the_file_and_the_deny_log_sits_beside_the_audit_log() {
        let audit = Path::new("/var/log/pc/audit.jsonl");
        let mut file = crate::config::AgentConfig::default();
        let o = ObserveArgs::default().resolve(&file, audit);
        assert_eq!(o.audit_rotation, Rotation::default());
        assert_eq!(o.deny_log.path, PathBuf::from("/var/log/pc/denies.jsonl"));
        assert_eq!(o.metrics_addr, None);
        file.audit_keep = 3;
        file.deny_burst = 7;
        file.metrics_addr = Some("127.0.0.1:1".parse().unwrap());
        let flags = ObserveArgs {
            deny_burst: Some(9),
            deny_log: Some("/d.jsonl".into()),
            ..Default::default()
        };
        let o = flags.resolve(&file, audit);
        assert_eq!(o.audit_rotation.keep, 3);
        assert_eq!(o.deny_log.burst, 9);
        assert_eq!(o.deny_log.path, PathBuf::from("/d.jsonl"));
        assert_eq!(o.metrics_addr, file.metrics_addr);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn addresses_default_to_localhost() {
        assert_eq!(
            parse_addr("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr("localhost:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            parse_addr("[::1]:9464").unwrap(),
            "[::1]:9464".parse().unwrap()
        );
        assert!(parse_addr("nowhere").unwrap_err().contains("9464"));
    }
}
