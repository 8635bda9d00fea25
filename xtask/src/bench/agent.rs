//! A real `portcullis agent` for one measurement: its policy with N
//! standing `uid:` (and optionally `peer:`) allows, its own directory,
//! socket, bpffs directory and audit log, attached to the bench's
//! `filtered` cgroup (never the root). Stopped, and its pins removed (which
//! detaches its programs), on drop.
use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::host;
use crate::util;

/// The segment every bench policy defines.
pub(super) const SEGMENT: &str = "bench";
/// How long an agent may take to start (1,000,000 allows included).
const START_LIMIT: Duration = Duration::from_secs(480);
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// What the agent enforces.
pub(super) struct Spec {
    pub port: u16,
    /// Standing `uid:N` allows.
    pub uids: Vec<u32>,
    /// Standing `peer:A` (/32) allows.
    pub peers: Vec<Ipv4Addr>,
    /// `--xdp-iface`.
    pub xdp_iface: Option<String>,
    /// `--peer-filter` (auto when `None`).
    pub peer_filter: Option<&'static str>,
    /// Grants the measurement will make (beyond the standing allows).
    pub grants: usize,
    /// The segment's mode and the features a measurement switches off.
    pub knobs: Knobs,
    /// More protected ports of the segment (beside `port`).
    pub extra_ports: Vec<u16>,
    /// More standing allows, as written in a policy (`cgroup:/...`).
    pub extra_allows: Vec<String>,
    /// A journal snapshot (`journal.snap`) to put in the state directory
    /// before the first start: the agent restores its grants.
    pub journal: Option<PathBuf>,
}

/// What the rollout table switches (`bench/rollout.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Knobs {
    /// `mode = "audit"` on the segment.
    pub audit: bool,
    /// No usage counting (`PORTCULLIS_BENCH_NO_USAGE`, bench builds only).
    pub no_usage: bool,
    /// `--no-discovery`.
    pub no_discovery: bool,
}

impl Spec {
    fn policy(&self) -> String {
        let mut p = String::with_capacity(64 + 16 * (self.uids.len() + self.peers.len()));
        let _ = writeln!(p, "[segment.{SEGMENT}]");
        let ports: Vec<String> = std::iter::once(self.port)
            .chain(self.extra_ports.iter().copied())
            .map(|p| format!("\"{p}/tcp\""))
            .collect();
        let _ = writeln!(p, "ports = [{}]", ports.join(", "));
        if self.knobs.audit {
            p.push_str("mode = \"audit\"\n");
        }
        p.push_str("allow = [\n");
        for uid in &self.uids {
            let _ = writeln!(p, "\"uid:{uid}\",");
        }
        for a in &self.peers {
            let _ = writeln!(p, "\"peer:{a}\",");
        }
        for a in &self.extra_allows {
            let _ = writeln!(p, "{a:?},");
        }
        p.push_str("]\n\n");
        let _ = writeln!(p, "[segment.{SEGMENT}.jit]");
        p.push_str("max_ttl = \"2h\"\nrequire_reason = false\n");
        p
    }

    fn capacity(n: usize, default: u32) -> u32 {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        n.saturating_add(n / 10 + 1024).max(default)
    }
}

pub(super) struct Agent {
    child: Option<Child>,
    pub pid: u32,
    dir: PathBuf,
    bpffs: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    /// The agent's arguments and whether usage is off, for [`Agent::restart`].
    args: Vec<std::ffi::OsString>,
    no_usage: bool,
    /// From spawning the process to its control socket existing (which it
    /// binds only once the programs are attached and the maps filled).
    pub start_time: Duration,
}

impl Agent {
    /// Starts an agent in `work/NAME` with pins in `bpffs_root/NAME`, and
    /// waits until it serves its control socket.
    pub(super) fn start(
        bin: &Path,
        work: &Path,
        bpffs_root: &Path,
        name: &str,
        cgroup: &Path,
        spec: &Spec,
    ) -> Result<Self> {
        let dir = work.join(name);
        let bpffs = bpffs_root.join(name);
        let policies = dir.join("policies");
        fs::create_dir_all(&policies)?;
        fs::write(policies.join("bench.toml"), spec.policy())?;
        // An empty config file: documented defaults, whatever /etc holds.
        fs::write(dir.join("agent.toml"), "")?;
        let socket = dir.join("control.sock");
        let log = dir.join("agent.log");
        if let Some(snap) = &spec.journal {
            let state = dir.join("state");
            fs::create_dir_all(&state)?;
            fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            fs::copy(snap, state.join("journal.snap"))
                .with_context(|| format!("copying {}", snap.display()))?;
        }
        let mut args: Vec<std::ffi::OsString> = vec!["agent".into()];
        let mut arg = |k: &str, v: &dyn AsRef<std::ffi::OsStr>| {
            args.push(k.into());
            args.push(v.as_ref().to_owned());
        };
        arg("--config", &dir.join("agent.toml"));
        arg("--policies", &policies);
        arg("--bpffs", &bpffs);
        arg("--cgroup", &cgroup);
        arg("--socket", &socket);
        arg("--state-dir", &dir.join("state"));
        arg("--audit-log", &dir.join("audit.jsonl"));
        arg(
            "--max-grants",
            &Spec::capacity(spec.uids.len() + spec.grants, 262_144).to_string(),
        );
        arg(
            "--max-peers",
            &Spec::capacity(spec.peers.len(), 65_536).to_string(),
        );
        if let Some(iface) = &spec.xdp_iface {
            arg("--xdp-iface", iface);
        }
        if let Some(placement) = spec.peer_filter {
            arg("--peer-filter", &placement);
        }
        if spec.knobs.no_discovery {
            args.push("--no-discovery".into());
        }
        let mut me = Self {
            pid: 0,
            child: None,
            dir,
            bpffs,
            socket,
            log,
            bin: bin.to_path_buf(),
            args,
            no_usage: spec.knobs.no_usage,
            start_time: Duration::ZERO,
        };
        me.spawn()?;
        Ok(me)
    }

    /// Spawns the agent and waits until it serves its control socket.
    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args);
        if self.no_usage {
            cmd.env("PORTCULLIS_BENCH_NO_USAGE", "1");
        }
        // Logs to a file, not to a journal the bench's environment may name.
        cmd.env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env("PORTCULLIS_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&self.log)?);
        host::confine(&mut cmd, None, None);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", util::describe(&cmd)))?;
        self.pid = child.id();
        self.child = Some(child);
        let me = self;
        while !me.socket.exists() {
            if let Some(status) = me.child.as_mut().expect("running").try_wait()? {
                bail!(
                    "the agent exited while starting ({status}); its log:\n{}",
                    me.log_tail()
                );
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "the agent did not open its control socket within {START_LIMIT:?}; its log:\n{}",
                    me.log_tail()
                );
            }
            host::check_interrupted()?;
            std::thread::sleep(Duration::from_micros(500));
        }
        me.start_time = started.elapsed();
        Ok(())
    }

    /// Stops the agent (SIGTERM: its pins, maps and journal stay, as on a
    /// service restart) and starts it again; `start_time` is the new start's.
    pub(super) fn restart(&mut self) -> Result<()> {
        self.terminate();
        if self.child.is_some() {
            bail!("the agent did not exit within {STOP_LIMIT:?} of SIGTERM");
        }
        self.spawn()
    }

    /// The agent's `start phases` log line (phase=ms/MiB ...), if it wrote one.
    pub(super) fn start_phases(&self) -> Option<String> {
        let text = fs::read_to_string(&self.log).ok()?;
        let line = util::strip_ansi(text.lines().find(|l| l.contains("start phases"))?);
        let phases = line.split("phases=").nth(1)?;
        Some(phases.trim().trim_matches('"').to_string())
    }

    /// Replaces the agent's policy with `spec`'s (the agent reloads on
    /// SIGHUP, see `reload`).
    pub(super) fn rewrite_policy(&self, spec: &Spec) -> Result<()> {
        let path = self.dir.join("policies").join("bench.toml");
        let tmp = self.dir.join("bench.toml.new");
        fs::write(&tmp, spec.policy())?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// Asks the agent to reload its policies (SIGHUP).
    pub(super) fn reload(&self) -> Result<()> {
        // SAFETY: kill(2) of our own child, which has not been reaped.
        if unsafe { libc::kill(self.pid as i32, libc::SIGHUP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SIGHUP to the agent");
        }
        Ok(())
    }

    /// The agent's bpffs directory (its pins).
    pub(super) fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// How the peer filter was attached ("xdp-native", "tcx", "tc-clsact"),
    /// from the agent's log.
    pub(super) fn xdp_mode(&self) -> Option<String> {
        let text = fs::read_to_string(&self.log).ok()?;
        let line = util::strip_ansi(text.lines().find(|l| l.contains("peer filter attached"))?);
        let mode = line.split("mode=").nth(1)?;
        Some(
            mode.split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string(),
        )
    }

    /// `field` of /proc/PID/status in kB (VmRSS, VmHWM).
    pub(super) fn status_kib(&self, field: &str) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))
    }

    /// utime + stime of the agent (all its threads), in clock ticks.
    pub(super) fn cpu_ticks(&self) -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): utime is field 14, stime 15.
        let utime: u64 = f.get(11).context("no utime")?.parse()?;
        let stime: u64 = f.get(12).context("no stime")?.parse()?;
        Ok(utime + stime)
    }

    /// `portcullis --socket S ARGS...`
    pub(super) fn cli(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--socket").arg(&self.socket);
        c
    }

    /// Grants `identity` on the bench segment for an hour; returns its id.
    pub(super) fn grant(&self, identity: &str) -> Result<u64> {
        let out = util::output(self.cli().args([
            "grant", SEGMENT, identity, "--ttl", "1h", "--reason", "bench", "--json",
        ]))?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("`portcullis grant --json` printed {out:?}"))?;
        v["ok"]["grant"]["id"]
            .as_u64()
            .with_context(|| format!("no grant id in {out}"))
    }

    /// SIGTERM, and waits up to [`STOP_LIMIT`] for the exit; the child
    /// stays (not reaped) if it did not exit.
    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) of our own child, which has not been reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let started = Instant::now();
            while started.elapsed() < STOP_LIMIT {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.child = Some(child);
        }
    }

    fn stop_now(&mut self) {
        self.terminate();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Unpinning the links detaches the programs: the cgroup is open again.
        if let Err(e) = host::remove_pins(&self.bpffs) {
            eprintln!("bench: warning: removing {}: {e}", self.bpffs.display());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_lists_every_allow_and_a_jit_table() {
        let spec = Spec {
            port: 15432,
            uids: vec![7, 8],
            peers: vec![Ipv4Addr::new(203, 0, 113, 2)],
            xdp_iface: None,
            peer_filter: None,
            grants: 0,
            knobs: Knobs::default(),
            extra_ports: Vec::new(),
            extra_allows: Vec::new(),
            journal: None,
        };
        let p = spec.policy();
        assert!(p.contains("ports = [\"15432/tcp\"]"));
        assert!(p.contains("\"uid:7\",\n\"uid:8\",\n\"peer:203.0.113.2\",\n]"));
        assert!(p.contains("[segment.bench.jit]"));
        assert_eq!(Spec::capacity(1_000_000, 262_144), 1_101_024);
        assert_eq!(Spec::capacity(5, 262_144), 262_144);
    }

    #[test]
    fn policy_lists_extra_ports_and_allows() {
        let spec = Spec {
            port: 15432,
            uids: vec![7],
            peers: Vec::new(),
            xdp_iface: None,
            peer_filter: None,
            grants: 0,
            knobs: Knobs::default(),
            extra_ports: vec![15433],
            extra_allows: vec!["cgroup:/pcbench-1/filtered/l3".into()],
            journal: None,
        };
        let p = spec.policy();
        assert!(p.contains("ports = [\"15432/tcp\", \"15433/tcp\"]"), "{p}");
        assert!(
            p.contains("\"uid:7\",\n\"cgroup:/pcbench-1/filtered/l3\",\n]"),
            "{p}"
        );
    }

    #[test]
    fn reads_the_xdp_mode_through_colours() {
        let line = "\u{1b}[32m INFO\u{1b}[0m peer filter attached \u{1b}[3miface\u{1b}[0m\u{1b}[2m=\u{1b}[0mpcbx1 \u{1b}[3mmode\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"tcx\"";
        assert_eq!(
            util::strip_ansi(line),
            " INFO peer filter attached iface=pcbx1 mode=\"tcx\""
        );
    }
}
