//! Table 11: fleet mode (issue 19) on one machine. A real etcd on
//! loopback (`fleet/etcd.rs`) and N agents in fleet mode, each attached to
//! its own child cgroup of the bench's cgroup with its own pins, state
//! directory, socket and `[fleet] host`. In each host's cgroup one probe
//! (`cargo xtask bench probe`, as a uid no policy names) connects to the
//! loopback server in a loop, so "the kernel refuses a connect" is seen
//! where a user would see it.
//!
//! Per round: a fleet grant for every host is put straight into etcd
//! (`grants/fleet/ID`, the value format of docs/fleet.md) and each probe
//! reports the first connect that succeeds (grant propagation); then the
//! key is deleted and each probe reports the first connect refused
//! (revocation). Both are timed from the instant the bench sent the
//! write to etcd (CLOCK_MONOTONIC, one clock for every process), so they
//! include the commit; the probes' interval bounds the resolution. Then
//! the agents idle (RSS and CPU per agent), and etcd is killed and
//! restarted: re-convergence is the time from etcd answering `/health`
//! again to a grant put at that instant working on every host.
//!
//! Bounded: every wait has a limit, every loop a count; agents, probes,
//! cgroups, pins and etcd are removed on drop, also on failure.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{
    client::mono_ns,
    host,
    measure::Bench,
    stats::{median, quantile},
};

mod etcd;

/// Goals of issue 19 at N = 50.
const P99_GOAL_MS: f64 = 250.0;
const SLOWEST_GOAL_MS: f64 = 1_000.0;
/// The probes' uid (no policy names it; fleet grants do).
const PROBE_UID: u32 = 2_900_000;
/// The key prefix (the agents' default).
const PREFIX: &str = "/portcullis/v1";
/// How long an agent may take to start, a grant or revoke to reach every host.
const START_LIMIT: Duration = Duration::from_secs(120);
const PROPAGATION_LIMIT_MS: u64 = 20_000;
/// Aggregate connect rate of all probes together while they poll, per
/// second (each probe's interval is N / this).
const PROBE_RATE: u64 = 10_000;

/// What the fleet table runs.
#[derive(Clone)]
pub(super) struct FleetPlan {
    pub sizes: Vec<usize>,
    /// Measured grant/revoke rounds per size (after one warm-up round).
    pub rounds: usize,
    pub idle_seconds: u64,
}

/// One size's samples.
#[derive(Default)]
struct Size {
    hosts: usize,
    probe_interval_us: u64,
    /// Per round and host, ms from the etcd write.
    grant_ms: Vec<f64>,
    revoke_ms: Vec<f64>,
    /// Per round, the slowest host (ms).
    revoke_slowest: Vec<f64>,
    etcd_write_ms: Vec<f64>,
    /// Per host, after the restart.
    reconverge_ms: Vec<f64>,
    etcd_restart_ms: f64,
    rss_kib: Vec<f64>,
    /// Per host, CPU % of one core while idle.
    idle_cpu_pct: Vec<f64>,
}

pub(super) struct Fleet {
    sizes: Vec<Size>,
    idle_seconds: u64,
}

/// One host: its cgroup, agent and probe. Dropped in reverse order of
/// creation: probe, agent (its pins removed), cgroup.
struct Host {
    probe: Probe,
    agent: FleetAgent,
    /// Held for its drop only.
    _cgroup: HostCgroup,
}

struct HostCgroup(PathBuf);

impl Drop for HostCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "bench: warning: could not remove cgroup {}",
            self.0.display()
        );
    }
}

struct FleetAgent {
    child: Option<Child>,
    pid: u32,
    bpffs: PathBuf,
    dir: PathBuf,
}

impl FleetAgent {
    fn start(bench: &Bench<'_>, name: &str, cgroup: &Path, endpoint: &str) -> Result<Self> {
        let dir = bench.work.join(name);
        let policies = dir.join("policies");
        fs::create_dir_all(&policies)?;
        fs::write(
            policies.join("bench.toml"),
            format!(
                "[segment.bench]\nports = [\"{}/tcp\"]\nallow = []\n\n[segment.bench.jit]\nmax_ttl = \"2h\"\nrequire_reason = false\n",
                bench.server.port
            ),
        )?;
        fs::write(
            dir.join("agent.toml"),
            format!(
                "[fleet]\nendpoints = [\"{endpoint}\"]\nhost = \"{name}\"\ngroups = [\"bench\"]\n"
            ),
        )?;
        let bpffs = bench.bpffs.join(name);
        let socket = dir.join("control.sock");
        let log = dir.join("agent.log");
        let mut cmd = Command::new(&bench.portcullis);
        cmd.arg("agent")
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .arg("--policies")
            .arg(&policies)
            .arg("--bpffs")
            .arg(&bpffs)
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--audit-log")
            .arg(dir.join("audit.jsonl"))
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env("PORTCULLIS_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?);
        host::confine(&mut cmd, None, None);
        let mut child = cmd.spawn().context("starting a fleet agent")?;
        let started = Instant::now();
        while !socket.exists() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "fleet agent {name} exited while starting ({status}); see {}",
                    log.display()
                );
            }
            if started.elapsed() > START_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("fleet agent {name} did not start within {START_LIMIT:?}");
            }
            host::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            bpffs,
            dir,
        })
    }

    /// (RSS in KiB, utime + stime in ticks).
    fn usage(&self) -> Result<(u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")?;
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
            + f.get(12).context("no stime")?.parse::<u64>()?;
        Ok((rss, ticks))
    }
}

impl Drop for FleetAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) of our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = host::remove_pins(&self.bpffs) {
            eprintln!("bench: warning: removing {}: {e}", self.bpffs.display());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `cargo xtask bench probe` in a host's cgroup, as [`PROBE_UID`].
struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    fn start(xtask: &Path, cgroup: &Path, addr: std::net::SocketAddrV4) -> Result<Self> {
        let mut cmd = Command::new(xtask);
        cmd.args(["bench", "probe", "--addr"])
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        host::confine(&mut cmd, Some(cgroup), Some((PROBE_UID, PROBE_UID)));
        let mut child = cmd.spawn().context("starting a probe")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(self.stdin.flush()?)
    }

    /// The CLOCK_MONOTONIC instant of the answer's event (`open T ...`,
    /// `refused T ...`), or an error for a timeout.
    fn instant(&mut self) -> Result<u64> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["open" | "refused", t, ..] => Ok(t.parse()?),
            _ => bail!("probe answered {:?}", line.trim()),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fleet grant's key and value for every host (docs/fleet.md's format).
fn grant(id: &str) -> (String, String) {
    let now = unix_ms();
    let value = json!({
        "format": 1, "segment": "bench", "identity": format!("uid:{PROBE_UID}"),
        "created_unix_ms": now, "deadline_unix_ms": now + 3_600_000,
        "actor_uid": 0, "actor_user": "root", "origin_host": "pcbench",
        "reason": null, "strict": false,
    });
    (format!("{PREFIX}/grants/fleet/{id}"), value.to_string())
}

/// Asks every probe, then returns each host's ms from `t0` (taken by `write`).
fn timed(
    hosts: &mut [Host],
    command: &str,
    write: impl FnOnce() -> Result<u64>,
) -> Result<(Vec<f64>, f64)> {
    for h in hosts.iter_mut() {
        h.probe.send(command)?;
    }
    let t0 = mono_ns();
    write()?;
    let wrote = (mono_ns() - t0) as f64 / 1e6;
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts.iter_mut() {
        let at = h.probe.instant()?;
        out.push(at.saturating_sub(t0) as f64 / 1e6);
    }
    Ok((out, wrote))
}

impl Bench<'_> {
    pub(super) fn fleet(&self, plan: &FleetPlan) -> Result<Fleet> {
        let mut sizes = Vec::new();
        for &n in &plan.sizes {
            sizes.push(self.fleet_size(n, plan)?);
        }
        Ok(Fleet {
            sizes,
            idle_seconds: plan.idle_seconds,
        })
    }

    fn fleet_size(&self, n: usize, plan: &FleetPlan) -> Result<Size> {
        let mut etcd = etcd::Etcd::start(&self.work)?;
        let interval_us = (n as u64 * 1_000_000 / PROBE_RATE).max(100);
        let poll = |verb: &str| format!("{verb} {PROPAGATION_LIMIT_MS} {interval_us}");
        let addr = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, self.server.port);
        let mut hosts = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("{}-f{n}-h{i}", host::PREFIX);
            self.log(&format!("fleet N={n}: starting agent {}/{n}", i + 1));
            let cgroup = HostCgroup(self.cgroups.root.join(&name));
            fs::create_dir(&cgroup.0)
                .with_context(|| format!("creating {}", cgroup.0.display()))?;
            let agent = FleetAgent::start(self, &name, &cgroup.0, &etcd.endpoint())?;
            let probe = Probe::start(&self.xtask, &cgroup.0, addr)?;
            hosts.push(Host {
                probe,
                agent,
                _cgroup: cgroup,
            });
        }
        let mut size = Size {
            hosts: n,
            probe_interval_us: interval_us,
            ..Size::default()
        };
        // Round 0 warms up (agents' first watch events); not counted.
        for round in 0..=plan.rounds {
            self.log(&format!(
                "fleet N={n}: grant and revoke, round {round}/{}",
                plan.rounds
            ));
            let id = format!("pcbench-{}-{round}", unix_ms());
            let (key, value) = grant(&id);
            let (granted, wrote_g) = timed(&mut hosts, &poll("open"), || etcd.put(&key, &value))?;
            let (revoked, wrote_r) = timed(&mut hosts, &poll("cut"), || etcd.delete(&key))?;
            if round == 0 {
                continue;
            }
            size.revoke_slowest
                .push(revoked.iter().copied().fold(0.0, f64::max));
            size.grant_ms.extend(granted);
            size.revoke_ms.extend(revoked);
            size.etcd_write_ms.extend([wrote_g, wrote_r]);
        }
        // Idle in fleet mode: memory and CPU per agent.
        self.log(&format!("fleet N={n}: idle for {} s", plan.idle_seconds));
        let before: Vec<(u64, u64)> = hosts
            .iter()
            .map(|h| h.agent.usage())
            .collect::<Result<_>>()?;
        let t = Instant::now();
        host::sleep(Duration::from_secs(plan.idle_seconds))?;
        let secs = t.elapsed().as_secs_f64();
        let tck = super::clk_tck() as f64;
        for (h, (_, t0)) in hosts.iter().zip(&before) {
            let (rss, t1) = h.agent.usage()?;
            size.rss_kib.push(rss as f64);
            size.idle_cpu_pct
                .push(100.0 * (t1 - t0) as f64 / tck / secs);
        }
        // etcd killed and restarted: a grant put the moment it is back.
        self.log(&format!("fleet N={n}: etcd killed and restarted"));
        etcd.kill();
        host::sleep(Duration::from_secs(2))?;
        size.etcd_restart_ms = etcd.spawn()?.as_secs_f64() * 1e3;
        let (key, value) = grant(&format!("pcbench-{}-restart", unix_ms()));
        let (back, _) = timed(&mut hosts, &poll("open"), || etcd.put(&key, &value))?;
        size.reconverge_ms = back;
        let _ = etcd.delete(&key);
        self.log(&format!("fleet N={n}: stopping {n} agents"));
        drop(hosts);
        drop(etcd);
        Ok(size)
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

impl Fleet {
    pub(super) fn markdown(&self) -> String {
        let mut md = String::from(
            "\n### 11. Fleet mode through etcd (issue 19)\n\n\
             One etcd on loopback, N agents on this machine, each attached to its own cgroup \
             with its own pins, state and socket; a probe per host connects as a uid only the \
             fleet grant names. Times in ms from the bench's write to etcd (commit included) to \
             the probe's first connect that succeeds (grant) or is refused (revoke); \
             percentiles over hosts × rounds; resolution: the probes' interval.\n\n\
             | N | probe interval | grant median | grant p99 | revoke median | revoke p99 | slowest host | etcd write | re-converge median / slowest | RSS per agent | idle CPU per agent |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in &self.sizes {
            md.push_str(&format!(
                "| {} | {:.1} ms | {} | {} | {} | {} | {} | {} | {} / {} (etcd up in {:.0}) | {:.1} MiB | {:.2} % |\n",
                s.hosts,
                s.probe_interval_us as f64 / 1e3,
                ms(median(&s.grant_ms)),
                ms(quantile(&s.grant_ms, 0.99)),
                ms(median(&s.revoke_ms)),
                ms(quantile(&s.revoke_ms, 0.99)),
                ms(s.revoke_slowest.iter().copied().reduce(f64::max)),
                ms(median(&s.etcd_write_ms)),
                ms(median(&s.reconverge_ms)),
                ms(s.reconverge_ms.iter().copied().reduce(f64::max)),
                s.etcd_restart_ms,
                median(&s.rss_kib).unwrap_or(0.0) / 1024.0,
                median(&s.idle_cpu_pct).unwrap_or(0.0),
            ));
        }
        if let Some(s) = self.sizes.iter().find(|s| s.hosts == 50) {
            let p99 = quantile(&s.revoke_ms, 0.99).unwrap_or(f64::INFINITY);
            let slowest = s.revoke_slowest.iter().copied().fold(0.0, f64::max);
            let verdict = |v: f64, goal: f64| if v < goal { "met" } else { "MISSED" };
            md.push_str(&format!(
                "\nGoal at N = 50: revoke p99 < {P99_GOAL_MS} ms ({}), slowest host < {SLOWEST_GOAL_MS} ms ({}).\n",
                verdict(p99, P99_GOAL_MS),
                verdict(slowest, SLOWEST_GOAL_MS)
            ));
        }
        md.push_str(&format!(
            "Idle: {} s with no change in the store, RSS and CPU (utime + stime) per agent, medians over agents.\n",
            self.idle_seconds
        ));
        md
    }

    pub(super) fn json(&self) -> Value {
        Value::Array(
            self.sizes
                .iter()
                .map(|s| {
                    json!({
                        "hosts": s.hosts, "probe_interval_us": s.probe_interval_us,
                        "grant_ms": s.grant_ms, "revoke_ms": s.revoke_ms,
                        "revoke_slowest_ms": s.revoke_slowest, "etcd_write_ms": s.etcd_write_ms,
                        "reconverge_ms": s.reconverge_ms, "etcd_restart_ms": s.etcd_restart_ms,
                        "rss_kib": s.rss_kib, "idle_cpu_pct": s.idle_cpu_pct,
                    })
                })
                .collect(),
        )
    }
}
