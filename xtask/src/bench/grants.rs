//! The grant-scale table (issue 14): what one grant costs with 1,000,
//! 100,000 and 1,000,000 live grants in one agent, in the same run.
//!
//! One real agent with no standing allows (its segment's jit table allows
//! 2 h, no reason required) is filled one grant at a time over its control
//! socket, each to a distinct `uid:N`, exactly as `portcullis grant` frames
//! them: one JSON line per connection. At each size the bench then times
//! grants over the socket (connect, request, reply) and `portcullis grant`
//! processes (start to exit), interleaved. At the largest size it runs
//! `portcullis list --json` once, counting the grants in what it prints,
//! and reads the CLI's peak RSS from wait4(2).
//!
//! Owns this measurement and its table; the agent itself is `agent`'s.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{
    agent::{Agent, Knobs, Spec, SEGMENT},
    host,
    measure::Bench,
    report::{met, opt, thousands},
    stats::median,
};
use crate::util;

/// Grants go to `uid:FIRST_UID + i`, away from the other tables' uids.
const FIRST_UID: u32 = 4_000_000;
/// How long one control-socket exchange may take before the bench gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `portcullis list --json` may run.
const LIST_LIMIT: Duration = Duration::from_secs(600);
/// The grant the goal of issue 14 asks to create in under a minute.
const FILL_GOAL_GRANTS: u32 = 100_000;
const FILL_GOAL_SECONDS: f64 = 60.0;
/// Largest per-grant time growth, most grants over fewest.
const FLAT_GOAL: f64 = 1.5;

/// How much of the grant-scale table to measure.
#[derive(Clone, Debug)]
pub(super) struct GrantPlan {
    /// Live grant counts, ascending.
    pub sizes: Vec<u32>,
    /// Grants over the socket, and `portcullis grant` processes, per size.
    pub socket_runs: usize,
    pub process_runs: usize,
    /// The filling stops (and the larger sizes are skipped) after this long.
    pub fill_limit: Duration,
}

/// One size: how it was reached and what a grant cost there.
#[derive(Debug, Default)]
pub(super) struct SizePoint {
    /// The size asked for.
    pub target: u32,
    /// Live grants when the per-grant runs started (below `target` if the
    /// fill hit its time limit).
    pub live: u32,
    /// Grants this step's fill made, and the time it took.
    pub filled: u32,
    pub fill_seconds: f64,
    /// Fill time from an empty agent to this size (the measured grants of
    /// smaller sizes, which are few, not counted).
    pub cumulative_fill_seconds: f64,
    /// The fill hit its time limit.
    pub stopped: bool,
    /// Per grant over the socket, and per `portcullis grant` process (ms).
    pub socket_ms: Vec<f64>,
    pub process_ms: Vec<f64>,
    /// The agent's VmRSS after the runs.
    pub agent_rss_kib: u64,
}

/// `portcullis list --json` at the largest size.
#[derive(Debug, Default)]
pub(super) struct ListRun {
    pub live: u32,
    pub seconds: f64,
    /// ru_maxrss of the CLI process (KiB).
    pub max_rss_kib: u64,
    /// "exit 0", "exit 3", "signal 9", "killed after 600 s".
    pub exit: String,
    pub ok: bool,
    /// Bytes on stdout, and how many grants they hold.
    pub bytes: u64,
    pub grants_out: u64,
    /// The CLI's stderr (its first 2 KiB), escaped.
    pub stderr: String,
}

/// The grant-scale table's samples.
#[derive(Debug, Default)]
pub(super) struct GrantScale {
    pub socket_runs: usize,
    pub process_runs: usize,
    pub fill_limit_seconds: f64,
    pub agent_start_seconds: f64,
    pub points: Vec<SizePoint>,
    pub list: Option<ListRun>,
}

impl Bench<'_> {
    /// Fills one agent to each size in turn and measures there.
    pub(super) fn grant_scale(&self) -> Result<GrantScale> {
        let plan = &self.plan.grants;
        let largest = plan.sizes.last().copied().unwrap_or(0) as usize;
        let extra = plan.sizes.len() * (plan.socket_runs + plan.process_runs);
        let spec = Spec {
            port: self.server.port,
            uids: Vec::new(),
            peers: Vec::new(),
            xdp_iface: None,
            peer_filter: None,
            grants: largest + extra,
            knobs: Knobs::default(),
            extra_ports: Vec::new(),
            extra_allows: Vec::new(),
            journal: None,
        };
        self.log(&format!(
            "grant scale: one agent filled to {} grants",
            plan.sizes
                .iter()
                .map(|s| thousands((*s).into()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let agent = Agent::start(
            &self.portcullis,
            &self.work,
            &self.bpffs,
            "grants",
            &self.cgroups.filtered,
            &spec,
        )?;
        let mut out = GrantScale {
            socket_runs: plan.socket_runs,
            process_runs: plan.process_runs,
            fill_limit_seconds: plan.fill_limit.as_secs_f64(),
            agent_start_seconds: agent.start_time.as_secs_f64(),
            ..Default::default()
        };
        let mut next_uid = FIRST_UID;
        let mut live = 0u32;
        let mut cumulative = 0.0;
        let fill_started = Instant::now();
        for &target in &plan.sizes {
            let want = target.saturating_sub(live);
            let deadline = plan.fill_limit.saturating_sub(fill_started.elapsed());
            self.log(&format!(
                "grant scale: filling {} → {} grants over the socket",
                thousands(live.into()),
                thousands(target.into())
            ));
            let t0 = Instant::now();
            let mut filled = 0u32;
            let mut stopped = false;
            while filled < want {
                if filled.is_multiple_of(1000) {
                    host::check_interrupted()?;
                    if t0.elapsed() > deadline {
                        stopped = true;
                        break;
                    }
                }
                socket_grant(&agent.socket, &format!("uid:{next_uid}"))?;
                next_uid += 1;
                filled += 1;
            }
            let fill_seconds = t0.elapsed().as_secs_f64();
            cumulative += fill_seconds;
            live += filled;
            self.log(&format!(
                "grant scale: {} grants in {fill_seconds:.1} s{}; timing {} socket grants and {} processes",
                thousands(filled.into()),
                if stopped { " (time limit: stopped)" } else { "" },
                plan.socket_runs,
                plan.process_runs
            ));
            let mut point = SizePoint {
                target,
                live,
                filled,
                fill_seconds,
                cumulative_fill_seconds: cumulative,
                stopped,
                ..Default::default()
            };
            // Interleaved, so that both kinds see the same agent and machine.
            for i in 0..plan.socket_runs.max(plan.process_runs) {
                host::check_interrupted()?;
                if i < plan.socket_runs {
                    let took = socket_grant(&agent.socket, &format!("uid:{next_uid}"))?;
                    point.socket_ms.push(took.as_secs_f64() * 1e3);
                    next_uid += 1;
                }
                if i < plan.process_runs {
                    let took = process_grant(&agent, &format!("uid:{next_uid}"))?;
                    point.process_ms.push(took.as_secs_f64() * 1e3);
                    next_uid += 1;
                }
            }
            live += (plan.socket_runs + plan.process_runs) as u32;
            point.agent_rss_kib = agent.status_kib("VmRSS")?;
            out.points.push(point);
            if stopped {
                self.log("grant scale: fill time limit reached, larger sizes skipped");
                break;
            }
        }
        self.log(&format!(
            "grant scale: `portcullis list --json` of {} grants",
            thousands(live.into())
        ));
        let mut list = list_json(&agent)?;
        list.live = live;
        out.list = Some(list);
        Ok(out)
    }
}

/// One grant over the control socket, as the CLI frames it; the time from
/// connecting to the whole reply.
fn socket_grant(socket: &Path, identity: &str) -> Result<Duration> {
    let request = json!({"op": "grant", "segment": SEGMENT, "identity": identity, "ttl": "1h"});
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    let t0 = Instant::now();
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    (&stream).write_all(&line)?;
    let mut reply = String::new();
    BufReader::new((&stream).take(1 << 20))
        .read_line(&mut reply)
        .with_context(|| format!("reading the agent's reply to granting {identity}"))?;
    let took = t0.elapsed();
    let v: Value = serde_json::from_str(&reply)
        .with_context(|| format!("the agent replied {:?}", reply.escape_debug().to_string()))?;
    if v["ok"]["kind"] != "granted" {
        bail!(
            "the agent did not grant {identity}: {}",
            reply.trim().escape_debug()
        );
    }
    Ok(took)
}

/// `portcullis --socket S grant bench IDENTITY --ttl 1h`, start to exit.
fn process_grant(agent: &Agent, identity: &str) -> Result<Duration> {
    let mut cmd = agent.cli();
    cmd.args(["grant", SEGMENT, identity, "--ttl", "1h"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    host::confine(&mut cmd, None, None);
    let t0 = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("running `{}`", util::describe(&cmd)))?;
    let took = t0.elapsed();
    if !status.success() {
        bail!("`{}` failed ({status})", util::describe(&cmd));
    }
    Ok(took)
}

/// `portcullis list --json` once: wall time, peak RSS, exit, and how many
/// grants it printed. A failure is a result here, not an error.
fn list_json(agent: &Agent) -> Result<ListRun> {
    let mut cmd = agent.cli();
    cmd.args(["list", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    host::confine(&mut cmd, None, None);
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", util::describe(&cmd)))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let counter = std::thread::spawn(move || count_grants(stdout));
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.take(2048).read_to_end(&mut text);
        String::from_utf8_lossy(&text)
            .trim()
            .escape_debug()
            .to_string()
    });
    let pid = child.id() as libc::pid_t;
    let (status, rusage, killed) = wait_bounded(pid, LIST_LIMIT)?;
    let seconds = t0.elapsed().as_secs_f64();
    let (bytes, grants_out) = counter.join().unwrap_or((0, 0));
    let stderr = errors.join().unwrap_or_default();
    let exit = if killed {
        format!("killed after {} s", LIST_LIMIT.as_secs())
    } else if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    };
    Ok(ListRun {
        live: 0,
        seconds,
        // ru_maxrss is in KiB on Linux.
        max_rss_kib: u64::try_from(rusage.ru_maxrss).unwrap_or(0),
        ok: exit == "exit 0",
        exit,
        bytes,
        grants_out,
        stderr,
    })
}

/// Waits for `pid` with wait4(2) (for its rusage), killing it after `limit`.
fn wait_bounded(pid: libc::pid_t, limit: Duration) -> Result<(i32, libc::rusage, bool)> {
    let started = Instant::now();
    let mut killed = false;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if killed { 0 } else { libc::WNOHANG };
        // SAFETY: wait4 on our own unreaped child, with valid out pointers.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut rusage) };
        if r == pid {
            return Ok((status, rusage, killed));
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("wait4 on `portcullis list`");
        }
        if started.elapsed() > limit || host::check_interrupted().is_err() {
            // SAFETY: kill(2) of our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Bytes read and grants in them: each grant has one `"expires_at"` key
/// (and nothing else in a list of grants with no pending request does).
fn count_grants(mut from: impl Read) -> (u64, u64) {
    let mut counter = Occurrences::new(b"\"expires_at\"");
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes += n as u64;
                counter.feed(&buf[..n]);
            }
        }
    }
    (bytes, counter.count)
}

/// Counts a needle in a stream read in chunks, across chunk boundaries.
struct Occurrences {
    needle: &'static [u8],
    /// The last needle.len() - 1 bytes seen: a match may start there.
    tail: Vec<u8>,
    count: u64,
}

impl Occurrences {
    fn new(needle: &'static [u8]) -> Self {
        Self {
            needle,
            tail: Vec::new(),
            count: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        self.count += window
            .windows(self.needle.len())
            .filter(|w| *w == self.needle)
            .count() as u64;
        // Shorter than the needle, so no match counted here is counted again.
        let keep = window.len().min(self.needle.len() - 1);
        self.tail = window[window.len() - keep..].to_vec();
    }
}

impl SizePoint {
    fn socket_median(&self) -> Option<f64> {
        median(&self.socket_ms)
    }

    fn process_median(&self) -> Option<f64> {
        median(&self.process_ms)
    }
}

/// Largest-size median over smallest-size median.
fn growth(points: &[SizePoint], m: impl Fn(&SizePoint) -> Option<f64>) -> Option<f64> {
    let (lo, hi) = (m(points.first()?)?, m(points.last()?)?);
    (lo > 0.0).then(|| hi / lo)
}

impl GrantScale {
    /// (goal, target, measured, verdict) rows.
    pub(super) fn goals(&self) -> Vec<[String; 4]> {
        let mut rows = Vec::new();
        let (first, last) = (self.points.first(), self.points.last());
        let span = match (first, last) {
            (Some(a), Some(b)) => format!(
                "{} vs {} grants",
                thousands(b.live.into()),
                thousands(a.live.into())
            ),
            _ => "n/a".into(),
        };
        for (what, m) in [
            (
                "over the socket",
                SizePoint::socket_median as fn(&SizePoint) -> Option<f64>,
            ),
            ("process start to exit", SizePoint::process_median),
        ] {
            let g = growth(&self.points, m);
            rows.push([
                format!("Time per grant, {what}, {span}"),
                format!("≤ {FLAT_GOAL}×"),
                match (first.and_then(m), last.and_then(m), g) {
                    (Some(a), Some(b), Some(g)) => format!("{a:.2} ms → {b:.2} ms ({g:.2}×)"),
                    _ => "n/a".into(),
                },
                opt(g, |g| {
                    if g <= FLAT_GOAL {
                        met(true).into()
                    } else {
                        format!("{} ({:.2}× over)", met(false), g / FLAT_GOAL)
                    }
                }),
            ]);
        }
        let at_goal = self
            .points
            .iter()
            .find(|p| p.target == FILL_GOAL_GRANTS && !p.stopped);
        rows.push([
            format!(
                "Creating {} grants one by one",
                thousands(FILL_GOAL_GRANTS.into())
            ),
            format!("< {FILL_GOAL_SECONDS:.0} s"),
            match (at_goal, last) {
                (Some(p), _) => format!("{:.1} s", p.cumulative_fill_seconds),
                (None, Some(p)) => format!(
                    "not measured ({} grants in {:.1} s{})",
                    thousands(p.live.into()),
                    p.cumulative_fill_seconds,
                    if p.stopped {
                        ", stopped at the time limit"
                    } else {
                        ""
                    }
                ),
                (None, None) => "n/a".into(),
            },
            match at_goal {
                Some(p) if p.cumulative_fill_seconds < FILL_GOAL_SECONDS => met(true).into(),
                Some(p) => format!(
                    "{} ({:.1}× too slow)",
                    met(false),
                    p.cumulative_fill_seconds / FILL_GOAL_SECONDS
                ),
                None => "n/a".into(),
            },
        ]);
        if let Some(l) = &self.list {
            let complete = l.ok && l.grants_out == u64::from(l.live);
            rows.push([
                format!(
                    "`portcullis list --json` of {} grants",
                    thousands(l.live.into())
                ),
                "works".into(),
                format!(
                    "{}, {} grants printed, {:.2} s, CLI peak RSS {:.1} MiB",
                    l.exit,
                    thousands(l.grants_out),
                    l.seconds,
                    l.max_rss_kib as f64 / 1024.0
                ),
                met(complete).into(),
            ]);
        }
        rows
    }

    pub(super) fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "\n#### 7. Grant scale (one agent filled one grant at a time; median of {} grants over the socket and {} `portcullis grant` processes at each size)\n",
            self.socket_runs, self.process_runs);
        let _ = writeln!(
            o,
            "| Goal | Target | Measured | Verdict |\n|---|---|---|---|"
        );
        for [a, b, c, d] in self.goals() {
            let _ = writeln!(o, "| {a} | {b} | {c} | {d} |");
        }
        let _ = writeln!(o, "\n| Live grants | Fill (this step) | Fill rate | Fill from empty | Per grant, socket (median / p90) | Per grant, process (median / p90) | Agent RSS |\n|---:|---:|---:|---:|---:|---:|---:|");
        for p in &self.points {
            let rate = f64::from(p.filled) / p.fill_seconds.max(1e-9);
            let q = |s: &[f64]| match (median(s), super::stats::quantile(s, 0.9)) {
                (Some(m), Some(q)) => format!("{m:.2} / {q:.2} ms"),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                o,
                "| {}{} | {} in {:.1} s | {}/s | {:.1} s | {} | {} | {:.1} MiB |",
                thousands(p.live.into()),
                if p.stopped {
                    format!(" (of {}; fill time limit)", thousands(p.target.into()))
                } else {
                    String::new()
                },
                thousands(p.filled.into()),
                p.fill_seconds,
                thousands(rate as u64),
                p.cumulative_fill_seconds,
                q(&p.socket_ms),
                q(&p.process_ms),
                p.agent_rss_kib as f64 / 1024.0
            );
        }
        if let Some(l) = &self.list {
            let _ = writeln!(
                o,
                "\n`portcullis list --json` with {} live grants: {}, {:.2} s, {} bytes holding {} grants, CLI peak RSS {:.1} MiB{}.",
                thousands(l.live.into()),
                l.exit,
                l.seconds,
                thousands(l.bytes),
                thousands(l.grants_out),
                l.max_rss_kib as f64 / 1024.0,
                if l.stderr.is_empty() {
                    String::new()
                } else {
                    format!("; it said: `{}`", l.stderr.trim().replace('`', "'"))
                }
            );
        }
        let _ = writeln!(o, "\nThe agent (started in {:.2} s) has no standing allows; every grant is `uid:N` on the bench segment for 1 h, each N distinct, one newline-terminated JSON request per connection, made one after another. \"Live grants\" counts the grants made before that size's timed ones; the timed grants stay, so the next size starts that many higher. A grant over the socket is timed from connect to the whole reply; a process from spawn to exit. The fill stops after {:.0} s in all (larger sizes are then skipped).",
            self.agent_start_seconds, self.fill_limit_seconds);
        o
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "socket_runs": self.socket_runs,
            "process_runs": self.process_runs,
            "fill_limit_seconds": self.fill_limit_seconds,
            "agent_start_seconds": self.agent_start_seconds,
            "goals": self.goals().iter().map(|[a, b, c, d]| json!({"goal": a, "target": b, "measured": c, "verdict": d.replace("**", "")})).collect::<Vec<_>>(),
            "sizes": self.points.iter().map(|p| json!({
                "target": p.target, "live": p.live, "filled": p.filled, "fill_seconds": p.fill_seconds,
                "cumulative_fill_seconds": p.cumulative_fill_seconds, "stopped": p.stopped,
                "socket_ms": p.socket_ms, "process_ms": p.process_ms,
                "socket_median_ms": p.socket_median(), "process_median_ms": p.process_median(),
                "agent_rss_kib": p.agent_rss_kib})).collect::<Vec<_>>(),
            "socket_growth": growth(&self.points, SizePoint::socket_median),
            "process_growth": growth(&self.points, SizePoint::process_median),
            "list_json": self.list.as_ref().map(|l| json!({"live": l.live, "seconds": l.seconds,
                "max_rss_kib": l.max_rss_kib, "exit": l.exit, "ok": l.ok, "bytes": l.bytes,
                "grants_out": l.grants_out, "stderr": l.stderr})),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_needle_split_across_chunks() {
        let text = br#"[{"id":1,"expires_at":"x"},{"id":2,"expires_at":"y"},{"expires_at":""}]"#;
        for size in 1..text.len() {
            let mut c = Occurrences::new(b"\"expires_at\"");
            for chunk in text.chunks(size) {
                c.feed(chunk);
            }
            assert_eq!(c.count, 3, "chunks of {size}");
        }
        assert_eq!(count_grants(&text[..]), (text.len() as u64, 3));
    }

    fn point(live: u32, socket: &[f64], process: &[f64]) -> SizePoint {
        SizePoint {
            target: live,
            live,
            socket_ms: socket.to_vec(),
            process_ms: process.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn growth_is_largest_median_over_smallest() {
        let scale = GrantScale {
            points: vec![
                point(1_000, &[1.0, 2.0, 3.0], &[4.0]),
                point(10_000, &[9.0], &[5.0]),
                point(100_000, &[3.0, 4.0, 5.0], &[8.0, 9.0]),
            ],
            ..Default::default()
        };
        assert_eq!(growth(&scale.points, SizePoint::socket_median), Some(2.0));
        assert_eq!(
            growth(&scale.points, SizePoint::process_median),
            Some(2.125)
        );
        let goals = scale.goals();
        assert!(goals[0][2].contains("(2.00×)"), "{:?}", goals[0]);
        assert!(goals[0][3].contains("not met"), "{:?}", goals[0]);
        assert!(goals[2][2].starts_with("0.0 s"), "{:?}", goals[2]);
        assert_eq!(growth(&[], SizePoint::socket_median), None);
    }
}
