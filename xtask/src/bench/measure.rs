//! The measurements, one function per table of the report. Each returns
//! raw samples; `report` turns them into medians, ratios and goals.
//!
//! Connection rates are measured in blocks that alternate baseline and
//! filtered runs (B F F B B F ...), so that both see the same machine: the
//! baseline of a Portcullis block is the bench's `plain` cgroup while the
//! agent guards `filtered`; over veth it is the second namespace, whose
//! link has no filter; for nftables and iptables it is the same client with
//! the ruleset removed between runs.
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{
    agent::{Agent, Knobs, Spec},
    client::mono_ns,
    firewall::{self, IptablesChain, NftTable},
    host::{self, Cgroups, Netns, Server},
    progstats,
    report::{Bulk, Footprint, ProgramCost, RateBlock, Revocation, ScalePoint},
};
use crate::util;

/// The uids of N standing allows are BASE_UID..BASE_UID+N; the allowed
/// client is the one in the middle.
pub(super) const BASE_UID: u32 = 2_000_000;
/// The revocation probe's uid: in no standing allow, only ever granted.
const PROBE_UID: u32 = 3_000_000;
/// The probe connects this often while waiting for the cut (µs).
pub(super) const PROBE_INTERVAL_US: u64 = 100;

/// The address of the loopback server in the `plain` cgroup (the one in
/// `filtered` has 127.0.0.1; same port, same `lo`).
pub(super) const PLAIN_LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// How much to measure.
#[derive(Clone, Debug)]
pub(super) struct Plan {
    /// Filtered runs per connection-rate block (as many baseline runs).
    pub runs: usize,
    /// Connects per run, and the time bound of a run.
    pub connects: u64,
    pub run_seconds: f64,
    pub revocations: usize,
    pub idle_seconds: u64,
    /// Grant counts for the per-packet table and the scale rows.
    pub sizes: Vec<u32>,
    /// The grant count of the comparisons (connection rate, revocation, bulk).
    pub compare_at: u32,
    pub iptables_rules: Vec<u32>,
    pub test_run_repeat: u32,
    pub test_run_runs: u32,
    pub bulk_starts: usize,
    /// The grant-scale table.
    pub grants: super::grants::GrantPlan,
    /// Table 10: journaled grants, and rounds.
    pub scale_grants: u32,
    pub scale_rounds: usize,
}

/// Everything a measurement needs from the set-up.
pub(super) struct Bench<'a> {
    pub plan: Plan,
    /// The agent binary.
    pub portcullis: PathBuf,
    /// A copy of xtask any uid may run (the client and the probe).
    pub xtask: PathBuf,
    /// Scratch directory (agents' directories, rule files).
    pub work: PathBuf,
    /// The bench's bpffs directory.
    pub bpffs: PathBuf,
    pub cgroups: &'a Cgroups,
    /// The namespace whose link is filtered (XDP, nft ingress), and the
    /// one whose link never is (the veth baseline).
    pub filtered_ns: &'a Netns,
    pub plain_ns: &'a Netns,
    pub server: &'a Server,
    /// For the progress lines.
    pub started: Instant,
}

/// What the peers' measurements give.
pub(super) struct PeerResults {
    pub rates: Vec<RateBlock>,
    /// `nft -f` of the uid set, one per filtered run (s).
    pub nft_loads: Vec<f64>,
    /// `iptables-restore` per rule count (s).
    pub iptables_loads: Vec<(u32, Vec<f64>)>,
    pub revocation: Revocation,
}

/// What Portcullis' measurements give.
pub(super) struct OurResults {
    pub rates: Vec<RateBlock>,
    pub scale: Vec<ScalePoint>,
    pub footprint: Footprint,
    pub revocation: Revocation,
    /// One `portcullis grant` process each (ms).
    pub grant_ms: Vec<f64>,
    pub xdp_mode: Option<String>,
    /// Program run times on the allowed path, loopback and veth.
    pub costs: Vec<ProgramCost>,
}

/// Where a client runs.
#[derive(Clone, Copy)]
pub(super) enum From<'a> {
    Cgroup(&'a Path, u32),
    Netns(&'a Netns),
}

pub(super) fn uids(n: u32) -> Vec<u32> {
    (BASE_UID..BASE_UID + n).collect()
}

pub(super) fn allowed_uid(n: u32) -> u32 {
    BASE_UID + n / 2
}

/// N addresses centred on `around` (which is among them), so that looking
/// it up walks as deep a trie or hash chain as N entries make.
pub(super) fn peers_around(around: Ipv4Addr, n: u32) -> Vec<Ipv4Addr> {
    let first = u32::from(around).wrapping_sub(n / 2);
    (0..n)
        .map(|i| Ipv4Addr::from(first.wrapping_add(i)))
        .collect()
}

impl Bench<'_> {
    pub(super) fn log(&self, msg: &str) {
        eprintln!("bench: [{}] {msg}", util::human(self.started.elapsed()));
    }

    /// The loopback server a client in `cgroup` connects to: the one in
    /// the same cgroup (127.0.0.1 in `filtered`, [`PLAIN_LOOPBACK`] in `plain`).
    fn loopback(&self, cgroup: &Path) -> SocketAddrV4 {
        let ip = if cgroup == self.cgroups.plain.as_path() {
            PLAIN_LOOPBACK
        } else {
            Ipv4Addr::LOCALHOST
        };
        SocketAddrV4::new(ip, self.server.port)
    }

    /// One client run: connects per second.
    pub(super) fn rate(&self, from: From) -> Result<f64> {
        let (ok, secs) = self.client_run(from)?;
        Ok(ok as f64 / secs)
    }

    /// One client run: connects made, and seconds taken.
    pub(super) fn client_run(&self, from: From) -> Result<(u64, f64)> {
        host::check_interrupted()?;
        let (mut cmd, addr) = match from {
            From::Cgroup(cg, uid) => {
                let mut c = Command::new(&self.xtask);
                host::confine(&mut c, Some(cg), Some((uid, uid)));
                (c, self.loopback(cg))
            }
            From::Netns(ns) => {
                let mut c = ns.command(&self.xtask);
                host::confine(&mut c, None, None);
                (c, SocketAddrV4::new(ns.host_addr, self.server.port))
            }
        };
        cmd.args(["bench", "client", "--addr"])
            .arg(addr.to_string())
            .arg("--count")
            .arg(self.plan.connects.to_string())
            .arg("--seconds")
            .arg(self.plan.run_seconds.to_string());
        let out = util::output(&mut cmd)?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("the bench client printed {out:?}"))?;
        if let Some(e) = v["error"].as_str() {
            bail!("an allowed client was refused ({e}) connecting to {addr}: the set-up is wrong");
        }
        let ok = v["ok"].as_u64().unwrap_or(0);
        let secs = v["elapsed_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
        if ok == 0 || secs <= 0.0 {
            bail!("the bench client made no connection: {out}");
        }
        Ok((ok, secs))
    }

    /// One extra filtered run with the kernel's BPF run-time statistics on:
    /// what each of the agent's programs cost per connection. Not part of
    /// the rates (the statistics themselves cost two clock reads per run).
    fn program_cost(
        &self,
        agent: &Agent,
        from: From,
        path: &str,
        baseline: &[f64],
    ) -> Result<ProgramCost> {
        let stats = progstats::StatsOn::enable()?;
        let before = progstats::snapshot(agent.bpffs())?;
        let (connects, _) = self.client_run(from)?;
        let after = progstats::snapshot(agent.bpffs())?;
        drop(stats);
        Ok(ProgramCost {
            path: path.into(),
            connects,
            programs: progstats::delta(&before, &after)
                .into_iter()
                .map(|(n, (r, t))| (n, r, t))
                .collect(),
            baseline_per_s: crate::bench::stats::median(baseline).unwrap_or(f64::NAN),
        })
    }

    /// A warm-up pair, then `runs` baseline and `runs` filtered runs in the
    /// order B F F B B F ...
    pub(super) fn alternate(
        &self,
        mut baseline: impl FnMut() -> Result<f64>,
        mut filtered: impl FnMut() -> Result<f64>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        baseline()?;
        filtered()?;
        let (mut b, mut f) = (Vec::new(), Vec::new());
        for i in 0..self.plan.runs {
            if i % 2 == 0 {
                b.push(baseline()?);
                f.push(filtered()?);
            } else {
                f.push(filtered()?);
                b.push(baseline()?);
            }
        }
        Ok((b, f))
    }

    /// `portcullis bench-dataplane`: the per-packet table, as its JSON.
    pub(super) fn per_packet(&self) -> Result<Value> {
        self.log("per-packet cost (BPF_PROG_TEST_RUN)");
        let sizes: Vec<String> = self.plan.sizes.iter().map(u32::to_string).collect();
        let mut cmd = Command::new(&self.portcullis);
        cmd.arg("bench-dataplane")
            .arg("--bpffs")
            .arg(self.bpffs.join("dataplane"))
            .arg("--grants")
            .arg(sizes.join(","))
            .arg("--repeat")
            .arg(self.plan.test_run_repeat.to_string())
            .arg("--runs")
            .arg(self.plan.test_run_runs.to_string())
            .arg("--port")
            .arg(self.server.port.to_string());
        host::confine(&mut cmd, None, None);
        host::pin_to_last_cpu(&mut cmd);
        let out = util::output(&mut cmd)?;
        serde_json::from_str(&out).context("bench-dataplane printed invalid JSON")
    }

    /// nftables and iptables on loopback, and nftables on veth; with the
    /// nft batch loads (bulk table) and nft's revocation latency.
    pub(super) fn peers(&self) -> Result<PeerResults> {
        let n = self.plan.compare_at;
        let uid = allowed_uid(n);
        let plain = From::Cgroup(&self.cgroups.plain, uid);
        let mut blocks = Vec::new();

        self.log(&format!("nftables on loopback, uid set with {n} elements"));
        let batch = self.work.join("uids.nft");
        let elements: Vec<String> = uids(n).iter().map(u32::to_string).collect();
        firewall::write_batch(&batch, firewall::LOOPBACK_SET, &elements)?;
        let mut loads = Vec::new();
        let (b, f) = self.alternate(
            || self.rate(plain),
            || {
                let table = NftTable::loopback(self.server.port)?;
                loads.push(firewall::nft_file(&batch)?.as_secs_f64());
                let r = self.rate(plain);
                drop(table);
                r
            },
        )?;
        // The warm-up load is not a sample.
        loads.remove(0);
        blocks.push(RateBlock::new(
            "loopback",
            "nftables (output hook, uid set with timeouts)",
            n,
            b,
            f,
        ));

        let mut ipt_loads = Vec::new();
        for &rules in &self.plan.iptables_rules {
            self.log(&format!("iptables on loopback, {rules} owner rules"));
            let list: Vec<u32> = (0..rules).map(|i| allowed_uid(n) - rules / 2 + i).collect();
            let mut samples = Vec::new();
            let (b, f) = self.alternate(
                || self.rate(plain),
                || {
                    let (chain, took) = IptablesChain::load(self.server.port, &list, &self.work)?;
                    samples.push(took.as_secs_f64());
                    let r = self.rate(plain);
                    drop(chain);
                    r
                },
            )?;
            samples.remove(0);
            ipt_loads.push((rules, samples));
            blocks.push(RateBlock::new(
                "loopback",
                &format!("iptables ({rules} rules, one per grant)"),
                rules,
                b,
                f,
            ));
        }

        self.log(&format!(
            "nftables on veth ingress, address set with {n} elements"
        ));
        {
            let _table = NftTable::veth(&self.filtered_ns.host_if, self.server.port)?;
            let batch = self.work.join("peers.nft");
            let elements: Vec<String> = peers_around(self.filtered_ns.peer_addr, n)
                .into_iter()
                .map(firewall::addr_element)
                .collect();
            firewall::write_batch(&batch, firewall::VETH_SET, &elements)?;
            firewall::nft_file(&batch)?;
            let (b, f) = self.alternate(
                || self.rate(From::Netns(self.plain_ns)),
                || self.rate(From::Netns(self.filtered_ns)),
            )?;
            blocks.push(RateBlock::new(
                "veth",
                "nftables (netdev ingress, address set with timeouts)",
                n,
                b,
                f,
            ));
        }

        self.log(&format!(
            "nftables revocation latency ({} runs)",
            self.plan.revocations
        ));
        let revocation = {
            let table = NftTable::loopback(self.server.port)?;
            firewall::nft_file(&batch)?;
            let probe = Probe::start(self, &self.cgroups.plain)?;
            let element = PROBE_UID.to_string();
            self.revocations(
                "nftables (`nft delete element`)",
                &probe,
                || util::output(&mut table.add_command(&element)).map(drop),
                || table.delete_command(&element),
            )?
        };
        Ok(PeerResults {
            rates: blocks,
            nft_loads: loads,
            iptables_loads: ipt_loads,
            revocation,
        })
    }

    /// Portcullis at each grant count: start time, memory, connection rate;
    /// at the comparison count also over veth with XDP, and the revocation
    /// latency; at the smallest, idle CPU.
    pub(super) fn portcullis(&self) -> Result<OurResults> {
        let mut blocks = Vec::new();
        let mut scale = Vec::new();
        let mut footprint = Footprint::default();
        let mut revocation = None;
        let mut grant_ms = Vec::new();
        let mut xdp_mode = None;
        let mut costs = Vec::new();
        for &n in &self.plan.sizes {
            let compare = n == self.plan.compare_at;
            let mut spec = Spec {
                port: self.server.port,
                uids: uids(n),
                peers: Vec::new(),
                xdp_iface: None,
                peer_filter: None,
                grants: 0,
                knobs: Knobs::default(),
                extra_ports: Vec::new(),
                extra_allows: Vec::new(),
                journal: None,
            };
            if compare {
                spec.peers = peers_around(self.filtered_ns.peer_addr, n);
                spec.xdp_iface = Some(self.filtered_ns.host_if.clone());
            }
            self.log(&format!(
                "Portcullis with {n} uid allows{}",
                if compare {
                    format!(" and {n} peer allows, XDP on {}", self.filtered_ns.host_if)
                } else {
                    String::new()
                }
            ));
            let agent = Agent::start(
                &self.portcullis,
                &self.work,
                &self.bpffs,
                &format!("agent-{n}"),
                &self.cgroups.filtered,
                &spec,
            )?;
            host::sleep(std::time::Duration::from_secs(1))?;
            let rss = agent.status_kib("VmRSS")?;
            if n == self.plan.sizes[0] {
                let ticks = agent.cpu_ticks()?;
                self.log(&format!("idle CPU over {} s", self.plan.idle_seconds));
                host::sleep(std::time::Duration::from_secs(self.plan.idle_seconds))?;
                footprint.idle_ticks = agent.cpu_ticks()? - ticks;
                footprint.idle_seconds = self.plan.idle_seconds;
                footprint.idle_grants = n;
                footprint.idle_rss_kib = agent.status_kib("VmRSS")?;
            }
            if n == *self.plan.sizes.last().expect("sizes") {
                footprint.big_grants = n;
                footprint.big_rss_kib = rss;
                footprint.big_hwm_kib = agent.status_kib("VmHWM")?;
            }
            let uid = allowed_uid(n);
            let (b, f) = self.alternate(
                || self.rate(From::Cgroup(&self.cgroups.plain, uid)),
                || self.rate(From::Cgroup(&self.cgroups.filtered, uid)),
            )?;
            let label = "Portcullis (connect4 + cgroup_skb, uid allows)";
            let block = RateBlock::new("loopback", label, n, b, f);
            scale.push(ScalePoint {
                grants: n,
                start_seconds: agent.start_time.as_secs_f64(),
                rss_kib: rss,
                ratio: block.ratio(),
                peers: spec.peers.len() as u32,
            });
            if compare {
                self.log("Portcullis program run times on loopback (BPF statistics)");
                costs.push(self.program_cost(
                    &agent,
                    From::Cgroup(&self.cgroups.filtered, uid),
                    "loopback",
                    &block.baseline,
                )?);
                blocks.push(block);
                xdp_mode = agent.xdp_mode();
                self.log("Portcullis XDP on veth");
                let (b, f) = self.alternate(
                    || self.rate(From::Netns(self.plain_ns)),
                    || self.rate(From::Netns(self.filtered_ns)),
                )?;
                costs.push(self.program_cost(&agent, From::Netns(self.filtered_ns), "veth", &b)?);
                blocks.push(RateBlock::new(
                    "veth",
                    "Portcullis (peer filter at tcx ingress, peer allows)",
                    n,
                    b,
                    f,
                ));

                self.log(&format!(
                    "Portcullis revocation latency ({} runs)",
                    self.plan.revocations
                ));
                let probe = Probe::start(self, &self.cgroups.filtered)?;
                let identity = format!("uid:{PROBE_UID}");
                let id = std::cell::Cell::new(0);
                revocation = Some(self.revocations(
                    "Portcullis (`portcullis revoke ID`)",
                    &probe,
                    || {
                        let started = Instant::now();
                        id.set(agent.grant(&identity)?);
                        grant_ms.push(started.elapsed().as_secs_f64() * 1e3);
                        Ok(())
                    },
                    || {
                        let mut c = agent.cli();
                        c.arg("revoke").arg(id.get().to_string());
                        c
                    },
                )?);
            } else {
                blocks.push(block);
            }
        }
        let revocation = revocation.context("the comparison grant count is not among the sizes")?;
        // After the loop: the tcx agent of the comparison count is gone.
        blocks.push(self.native_xdp_on_veth(self.plan.compare_at)?);
        Ok(OurResults {
            rates: blocks,
            scale,
            footprint,
            revocation,
            grant_ms,
            xdp_mode,
            costs,
        })
    }

    /// The veth rate with the peer filter forced into native XDP, the
    /// reference for the tcx row: an agent of its own with the same allows
    /// (the tcx agent is stopped by then, so only one filter is on the path).
    fn native_xdp_on_veth(&self, n: u32) -> Result<RateBlock> {
        let spec = Spec {
            port: self.server.port,
            uids: uids(n),
            peers: peers_around(self.filtered_ns.peer_addr, n),
            xdp_iface: Some(self.filtered_ns.host_if.clone()),
            peer_filter: Some("xdp"),
            grants: 0,
            knobs: Knobs::default(),
            extra_ports: Vec::new(),
            extra_allows: Vec::new(),
            journal: None,
        };
        self.log(&format!(
            "Portcullis native XDP on veth ({n} peer allows), for reference"
        ));
        let agent = Agent::start(
            &self.portcullis,
            &self.work,
            &self.bpffs,
            &format!("agent-{n}-xdp"),
            &self.cgroups.filtered,
            &spec,
        )?;
        host::sleep(std::time::Duration::from_secs(1))?;
        let (b, f) = self.alternate(
            || self.rate(From::Netns(self.plain_ns)),
            || self.rate(From::Netns(self.filtered_ns)),
        )?;
        drop(agent);
        Ok(RateBlock::new(
            "veth",
            "Portcullis (native XDP, peer allows; reference)",
            n,
            b,
            f,
        ))
    }

    /// Time to start an agent with 1 and with N standing allows (policy
    /// load: parse, validate, write the maps), alternating.
    pub(super) fn bulk(&self, peers: &PeerResults, ours: &OurResults) -> Result<Bulk> {
        let n = self.plan.compare_at;
        self.log(&format!(
            "bulk load: agent start with 1 and with {n} allows"
        ));
        let (mut small, mut big) = (Vec::new(), Vec::new());
        for i in 0..self.plan.bulk_starts {
            for (count, into) in [(1, &mut small), (n, &mut big)] {
                let spec = Spec {
                    port: self.server.port,
                    uids: uids(count),
                    peers: Vec::new(),
                    xdp_iface: None,
                    peer_filter: None,
                    grants: 0,
                    knobs: Knobs::default(),
                    extra_ports: Vec::new(),
                    extra_allows: Vec::new(),
                    journal: None,
                };
                let agent = Agent::start(
                    &self.portcullis,
                    &self.work,
                    &self.bpffs,
                    &format!("bulk-{count}-{i}"),
                    &self.cgroups.filtered,
                    &spec,
                )?;
                into.push(agent.start_time.as_secs_f64());
            }
        }
        Ok(Bulk {
            grants: n,
            start_one: small,
            start_n: big,
            nft_batch: peers.nft_loads.clone(),
            iptables: peers.iptables_loads.clone(),
            grant_cli_ms: ours.grant_ms.clone(),
        })
    }

    /// `rounds` × (open, check it is open, start the revoking process, wait
    /// for the probe's first refused connect).
    fn revocations(
        &self,
        tool: &str,
        probe: &Probe,
        mut open: impl FnMut() -> Result<()>,
        mut revoke: impl FnMut() -> Command,
    ) -> Result<Revocation> {
        let mut out = Revocation {
            tool: tool.to_string(),
            ..Default::default()
        };
        // Any of these is the refusal: the tool's own error (EPERM from
        // Portcullis' connect hook, ECONNREFUSED from nft's reset), a reset
        // when the revocation lands between a connect's SYN and its ACK, or
        // an abort when Portcullis destroys the half-open socket, or the
        // probe's 2 s connect timeout (EINPROGRESS) when the revocation
        // landed mid-handshake and the handshake's packets were dropped
        // from then on: counted, at the instant the probe gave up, and
        // shown in the table's last column. Anything else (an unreachable
        // network) means a broken set-up.
        let refusals: Vec<String> = [
            libc::EPERM,
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::ECONNABORTED,
            libc::EINPROGRESS,
        ]
        .iter()
        .map(|&e| std::io::Error::from_raw_os_error(e).to_string())
        .collect();
        for _ in 0..self.plan.revocations {
            host::check_interrupted()?;
            open()?;
            let answer = probe.ask("allowed 2000")?;
            if answer != "ok" {
                bail!("{tool}: the probe is not let in after the grant: {answer}");
            }
            probe.send(&format!("cut 3000 {PROBE_INTERVAL_US}"))?;
            let mut cmd = revoke();
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            let t0 = mono_ns();
            let status = cmd
                .status()
                .with_context(|| format!("running `{}`", util::describe(&cmd)))?;
            let exited = mono_ns();
            let answer = probe.read()?;
            if !status.success() {
                bail!("`{}` failed ({status})", util::describe(&cmd));
            }
            let words: Vec<&str> = answer.splitn(4, ' ').collect();
            let ["refused", at, attempts, error] = words.as_slice() else {
                bail!("{tool}: no refused connect within 3 s of the revocation: {answer}");
            };
            if !refusals.iter().any(|r| r == error) {
                bail!("{tool}: the probe was refused with {error:?}, expected one of {refusals:?}");
            }
            *out.errors.entry(error.to_string()).or_default() += 1;
            let at: u64 = at.parse()?;
            out.latency_ms.push(at.saturating_sub(t0) as f64 / 1e6);
            out.process_ms.push((exited - t0) as f64 / 1e6);
            out.attempts.push(attempts.parse()?);
        }
        Ok(out)
    }
}

/// A running `cargo xtask bench probe`.
struct Probe {
    child: Child,
    stdin: std::cell::RefCell<ChildStdin>,
    stdout: std::cell::RefCell<BufReader<ChildStdout>>,
}

impl Probe {
    fn start(bench: &Bench, cgroup: &Path) -> Result<Self> {
        let mut cmd = Command::new(&bench.xtask);
        cmd.args(["bench", "probe", "--addr"])
            .arg(bench.loopback(cgroup).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        host::confine(&mut cmd, Some(cgroup), Some((PROBE_UID, PROBE_UID)));
        let mut child = cmd.spawn().context("starting the revocation probe")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Self {
            child,
            stdin: stdin.into(),
            stdout: stdout.into(),
        })
    }

    fn send(&self, line: &str) -> Result<()> {
        let mut stdin = self.stdin.borrow_mut();
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    fn read(&self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.borrow_mut().read_line(&mut line)? == 0 {
            bail!("the revocation probe exited");
        }
        Ok(line.trim().to_string())
    }

    fn ask(&self, line: &str) -> Result<String> {
        self.send(line)?;
        self.read()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_centred_on_the_client() {
        let a = Ipv4Addr::new(203, 0, 113, 2);
        let p = peers_around(a, 100_000);
        assert_eq!(p.len(), 100_000);
        assert_eq!(p[50_000], a);
        assert_eq!(peers_around(a, 1), vec![a]);
        assert_eq!(allowed_uid(1), BASE_UID);
        assert!(uids(100_000).contains(&allowed_uid(100_000)));
    }
}
