//! Table 9: the fast path of issue 15 on real traffic, one agent, one run.
//!
//! - Per packet: a request/response stream over one long TCP connection
//!   (`cargo xtask bench rr`: the echo server and its client in one
//!   process, so both ends are under the attach point) as a uid with a
//!   standing allow (an unmarked flow), as a uid with a one-hour grant (a
//!   marked flow: its allow can end), and from the unfiltered cgroup (no
//!   filter). The kernel's run-time statistics give ns per run of
//!   `pc_skb_egress` and `pc_skb_ingress`, beside an empty cgroup_skb
//!   program linked to the same cgroup (`emptyprog.rs`), which sees the same
//!   packets: the floor any cgroup_skb program costs here.
//! - Connect rate of a client allowed only by a `cgroup:` entry six levels
//!   below the cgroup2 root, against the same client in the unfiltered cgroup.
//! - A deny flood: back-to-back connects of a uid no allow names, each
//!   refused with EPERM; refusals per second and the agent's CPU time.
//! - Reload to cut: a stream as a uid with a standing allow; the bench
//!   rewrites the policy without that allow and sends SIGHUP; the time from
//!   just before the rewrite to the start of the first round trip that did
//!   not complete (one round trip takes a few µs here).
//! - Revoke to cut: a stream as a uid with a one-hour grant (a marked
//!   flow); the bench runs `portcullis revoke ID`; the time from starting
//!   that process to the start of the first round trip that did not
//!   complete.
//!
//! Rounds alternate the order of the stream rows so that drift spreads evenly.
use std::{
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{
    agent::{Agent, Knobs, Spec},
    client::mono_ns,
    emptyprog::EmptySkb,
    goals::{Figures, FLOOD_BEFORE},
    host,
    measure::{allowed_uid, uids, Bench, BASE_UID},
    progstats,
    stats::median,
};
use crate::util;

/// Standing uid allows of the segment (as in table 8).
const ALLOWS: u32 = 1_000;
/// Granted (a one-hour grant: a marked flow), in no standing allow.
const GRANTED_UID: u32 = BASE_UID + ALLOWS + 7;
/// In no allow at all: the deny flood's client.
const STRANGER_UID: u32 = BASE_UID + ALLOWS + 9;
/// Allowed only by the deep `cgroup:` entry.
const DEEP_UID: u32 = BASE_UID + ALLOWS + 11;
/// The cgroups below `filtered` the deep client runs in.
const DEEP: [&str; 4] = ["l3", "l4", "l5", "l6"];
/// Granted, then revoked while its stream runs (in no standing allow).
const CUT_UID: u32 = BASE_UID + ALLOWS + 13;

/// The stream rows.
const FLOWS: [&str; 3] = [
    "no filter",
    "unmarked (standing uid allow)",
    "marked (grant, 1 h TTL)",
];

#[derive(Clone, Default)]
struct Stream {
    per_second: Vec<f64>,
    /// ns per run of pc_skb_egress, pc_skb_ingress, empty egress, empty ingress.
    ns: [Vec<f64>; 4],
}

pub(super) struct FastPath {
    streams: Vec<Stream>,
    deep: Vec<f64>,
    deep_plain: Vec<f64>,
    flood: Vec<f64>,
    flood_cpu_ms_per_s: Vec<f64>,
    cut_ms: Vec<f64>,
    cut_timeouts: usize,
    revoke_cut_ms: Vec<f64>,
    revoke_cut_timeouts: usize,
}

/// A port nothing listens on now (the kernel's pick).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// ns per run of a (runs, ns) pair.
fn per_run((runs, ns): (u64, u64)) -> f64 {
    if runs == 0 {
        f64::NAN
    } else {
        ns as f64 / runs as f64
    }
}

impl Bench<'_> {
    pub(super) fn fastpath(&self) -> Result<FastPath> {
        let rr_port = free_port()?;
        let server = host::Server::start(&[Ipv4Addr::LOCALHOST])?;
        let mut deep = self.cgroups.filtered.clone();
        for d in DEEP {
            deep.push(d);
            std::fs::create_dir(&deep).with_context(|| format!("creating {}", deep.display()))?;
        }
        let deep_entry = format!(
            "cgroup:/{}",
            deep.strip_prefix(host::cgroup2_root()?)?.display()
        );
        let mut spec = Spec {
            port: server.port,
            uids: uids(ALLOWS),
            peers: Vec::new(),
            xdp_iface: None,
            peer_filter: None,
            grants: 1,
            knobs: Knobs::default(),
            extra_ports: vec![rr_port],
            extra_allows: vec![deep_entry],
            journal: None,
        };
        let agent = Agent::start(
            &self.portcullis,
            &self.work,
            &self.bpffs,
            "fastpath",
            &self.cgroups.filtered,
            &spec,
        )?;
        agent.grant(&format!("uid:{GRANTED_UID}"))?;
        let empty = EmptySkb::attach(&self.cgroups.filtered)?;
        let ids = empty.ids();
        let who = |i: usize| -> (&Path, u32) {
            match i {
                0 => (&self.cgroups.plain, allowed_uid(ALLOWS)),
                1 => (&self.cgroups.filtered, allowed_uid(ALLOWS)),
                _ => (&self.cgroups.filtered, GRANTED_UID),
            }
        };
        let messages = self.plan.connects * 3;
        // Warm-up, and a check that each flow is let through.
        for i in 0..FLOWS.len() {
            let (cg, uid) = who(i);
            self.rr(cg, uid, rr_port, messages / 10 + 1)?;
        }
        let mut streams = vec![Stream::default(); FLOWS.len()];
        let (mut deep_rates, mut plain_rates) = (Vec::new(), Vec::new());
        let (mut flood, mut flood_cpu) = (Vec::new(), Vec::new());
        let stats = progstats::StatsOn::enable()?;
        for round in 0..self.plan.runs {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..FLOWS.len()).collect()
            } else {
                (0..FLOWS.len()).rev().collect()
            };
            for i in order {
                self.log(&format!(
                    "fast path, round {}/{}: stream, {}",
                    round + 1,
                    self.plan.runs,
                    FLOWS[i]
                ));
                let (cg, uid) = who(i);
                let before = progstats::snapshot(agent.bpffs())?;
                let e0: Vec<(u64, u64)> = ids
                    .iter()
                    .map(|&(_, id)| progstats::by_id(id))
                    .collect::<Result<_>>()?;
                let rate = self.rr(cg, uid, rr_port, messages)?;
                let after = progstats::snapshot(agent.bpffs())?;
                let e1: Vec<(u64, u64)> = ids
                    .iter()
                    .map(|&(_, id)| progstats::by_id(id))
                    .collect::<Result<_>>()?;
                let d = progstats::delta(&before, &after);
                let s = &mut streams[i];
                s.per_second.push(rate);
                if i > 0 {
                    for (k, name) in ["pc_skb_egress", "pc_skb_ingress"].iter().enumerate() {
                        s.ns[k].push(d.get(*name).copied().map_or(f64::NAN, per_run));
                    }
                    for (k, (dir, _)) in ids.iter().enumerate() {
                        let slot = if *dir == "egress" { 2 } else { 3 };
                        let (t0, c0) = e0[k];
                        let (t1, c1) = e1[k];
                        s.ns[slot].push(per_run((c1 - c0, t1 - t0)));
                    }
                }
            }
            self.log(&format!(
                "fast path, round {}/{}: deep cgroup entry, deny flood",
                round + 1,
                self.plan.runs
            ));
            deep_rates.push(self.connect_rate(&deep, DEEP_UID, false, server.port)?.0);
            plain_rates.push(
                self.connect_rate(&self.cgroups.plain, DEEP_UID, false, server.port)?
                    .0,
            );
            let cpu0 = agent.cpu_ticks()?;
            let (rate, seconds) =
                self.connect_rate(&self.cgroups.filtered, STRANGER_UID, true, server.port)?;
            let cpu1 = agent.cpu_ticks()?;
            flood.push(rate);
            flood_cpu.push((cpu1 - cpu0) as f64 * 1000.0 / super::clk_tck() as f64 / seconds);
        }
        drop(stats);
        drop(empty);
        // Reload to cut: one standing allow fewer each time.
        let (mut cut_ms, mut cut_timeouts) = (Vec::new(), 0);
        for round in 0..self.plan.runs {
            self.log(&format!(
                "fast path, round {}/{}: reload cutting an open flow",
                round + 1,
                self.plan.runs
            ));
            let uid = BASE_UID + round as u32;
            spec.uids.retain(|&u| u != uid);
            let cut = self.cut_open_flow(uid, rr_port, || {
                agent.rewrite_policy(&spec)?;
                agent.reload()
            })?;
            match cut {
                Some(ms) => cut_ms.push(ms),
                None => cut_timeouts += 1,
            }
        }
        // Revoke to cut: a fresh grant each time, revoked under its stream.
        let (mut revoke_cut_ms, mut revoke_cut_timeouts) = (Vec::new(), 0);
        for round in 0..self.plan.runs {
            self.log(&format!(
                "fast path, round {}/{}: `portcullis revoke` cutting an open flow",
                round + 1,
                self.plan.runs
            ));
            let id = agent.grant(&format!("uid:{CUT_UID}"))?;
            let cut = self.cut_open_flow(CUT_UID, rr_port, || {
                let mut revoke = agent.cli();
                revoke.arg("revoke").arg(id.to_string());
                util::output(&mut revoke).map(drop)
            })?;
            match cut {
                Some(ms) => revoke_cut_ms.push(ms),
                None => revoke_cut_timeouts += 1,
            }
        }
        drop(agent);
        Ok(FastPath {
            streams,
            deep: deep_rates,
            deep_plain: plain_rates,
            flood,
            flood_cpu_ms_per_s: flood_cpu,
            cut_ms,
            cut_timeouts,
            revoke_cut_ms,
            revoke_cut_timeouts,
        })
    }

    fn rr_command(&self, cgroup: &Path, uid: u32, port: u16) -> Command {
        let mut cmd = Command::new(&self.xtask);
        host::confine(&mut cmd, Some(cgroup), Some((uid, uid)));
        cmd.args(["bench", "rr", "--port"]).arg(port.to_string());
        cmd
    }

    /// Round trips per second of one stream.
    fn rr(&self, cgroup: &Path, uid: u32, port: u16, messages: u64) -> Result<f64> {
        host::check_interrupted()?;
        let mut cmd = self.rr_command(cgroup, uid, port);
        cmd.arg("--messages")
            .arg(messages.to_string())
            .arg("--seconds")
            .arg(self.plan.run_seconds.to_string());
        let out = util::output(&mut cmd)?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("the bench rr printed {out:?}"))?;
        if let Some(e) = v["error"].as_str() {
            bail!("the stream failed ({e}) as uid {uid}: the set-up is wrong");
        }
        let n = v["messages"].as_u64().unwrap_or(0);
        let ns = v["elapsed_ns"].as_u64().unwrap_or(0);
        if n == 0 || ns == 0 {
            bail!("the stream made no round trip: {out}");
        }
        Ok(n as f64 * 1e9 / ns as f64)
    }

    /// Connects per second (allowed, or refused with `refused_ok`) from
    /// `cgroup` as `uid`, and the seconds the run took.
    fn connect_rate(
        &self,
        cgroup: &Path,
        uid: u32,
        refused_ok: bool,
        port: u16,
    ) -> Result<(f64, f64)> {
        host::check_interrupted()?;
        let mut cmd = Command::new(&self.xtask);
        host::confine(&mut cmd, Some(cgroup), Some((uid, uid)));
        cmd.args(["bench", "client", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--count")
            .arg((self.plan.connects * if refused_ok { 20 } else { 1 }).to_string())
            .arg("--seconds")
            .arg(self.plan.run_seconds.to_string());
        if refused_ok {
            cmd.arg("--refused-ok");
        }
        let out = util::output(&mut cmd)?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("the bench client printed {out:?}"))?;
        if let Some(e) = v["error"].as_str() {
            bail!("the bench client failed ({e}) as uid {uid}: the set-up is wrong");
        }
        let n = if refused_ok {
            v["refused"].as_u64().unwrap_or(0)
        } else {
            v["ok"].as_u64().unwrap_or(0)
        };
        let ns = v["elapsed_ns"].as_u64().unwrap_or(0);
        if n == 0 || ns == 0 {
            bail!("the bench client made no connect of the expected kind: {out}");
        }
        let s = ns as f64 / 1e9;
        Ok((n as f64 / s, s))
    }

    /// Ms from starting `cut` (a policy rewrite and SIGHUP, or a `portcullis
    /// revoke`) to the first round trip of `uid`'s open stream that did not
    /// complete; `None` if the stream was never cut within 10 s.
    fn cut_open_flow(
        &self,
        uid: u32,
        port: u16,
        cut: impl FnOnce() -> Result<()>,
    ) -> Result<Option<f64>> {
        host::check_interrupted()?;
        let mut cmd = self.rr_command(&self.cgroups.filtered, uid, port);
        cmd.args(["--messages", "0", "--seconds", "10", "--until-cut"])
            .stdout(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", util::describe(&cmd)))?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let ready = lines.next().transpose()?.unwrap_or_default();
        if ready != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the stream as uid {uid} did not start: {ready:?}");
        }
        // Let the stream run a little before the cut.
        host::sleep(Duration::from_millis(200))?;
        let t0 = mono_ns();
        if let Err(e) = cut() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let last = lines.next().transpose()?.unwrap_or_default();
        child.wait()?;
        let v: Value = serde_json::from_str(last.trim())
            .with_context(|| format!("the bench rr printed {last:?}"))?;
        Ok(v["cut_at_ns"]
            .as_u64()
            .map(|at| at.saturating_sub(t0) as f64 / 1e6))
    }
}

fn med(v: &[f64]) -> f64 {
    median(v).unwrap_or(f64::NAN)
}

impl FastPath {
    pub(super) fn markdown(&self) -> String {
        let mut md = String::from(
            "\n### 9. The fast path (issue 15)\n\n\
             Request/response over one long TCP connection (4-byte messages, both ends \
             under the attach point, 1,000 uid allows); ns per run from the kernel's BPF \
             run-time statistics, beside an empty cgroup_skb program linked to the same \
             cgroup (same packets, same run); medians over rounds.\n\n\
             | Flow | round trips/s | vs no filter | pc_skb_egress ns/run | pc_skb_ingress ns/run | empty egress ns/run | empty ingress ns/run |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        let none = med(&self.streams[0].per_second);
        for (name, s) in FLOWS.iter().zip(&self.streams) {
            let rate = med(&s.per_second);
            let cell = |k: usize| {
                if s.ns[k].is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.1}", med(&s.ns[k]))
                }
            };
            md.push_str(&format!(
                "| {name} | {rate:.0} | {:.1} % | {} | {} | {} | {} |\n",
                100.0 * rate / none,
                cell(0),
                cell(1),
                cell(2),
                cell(3)
            ));
        }
        let (eg, ing) = self.marked_ratios();
        md.push_str(&format!(
            "\nMarked flow vs the empty program (agent ns/run over empty ns/run): egress \
             {eg:.2}×, ingress {ing:.2}×.\n"
        ));
        let deep = med(&self.deep);
        let plain = med(&self.deep_plain);
        let flood = med(&self.flood);
        md.push_str(&format!(
            "\n| Row | Portcullis | Baseline | Ratio |\n|---|---:|---:|---:|\n\
             | Connects/s, client allowed by a `cgroup:` entry 6 levels deep (vs no filter) | {deep:.0} | {plain:.0} | {:.1} % |\n\
             | Denied connects/s, deny flood (vs before the fast path, docs) | {flood:.0} | {FLOOD_BEFORE:.0} | {:.2}× |\n\
             | Agent CPU during the flood, ms per second | {:.1} | | |\n\
             | Reload removing a standing allow → first failed round trip, ms (median; max) | {:.1}; {:.1} | | |\n\
             | `portcullis revoke` of a grant → first failed round trip of its open flow, ms (median; max) | {:.1}; {:.1} | | |\n",
            100.0 * deep / plain,
            flood / FLOOD_BEFORE,
            med(&self.flood_cpu_ms_per_s),
            med(&self.cut_ms),
            self.cut_ms.iter().copied().fold(f64::NAN, f64::max),
            med(&self.revoke_cut_ms),
            self.revoke_cut_ms.iter().copied().fold(f64::NAN, f64::max),
        ));
        for (n, what) in [
            (self.cut_timeouts, "reload(s)"),
            (self.revoke_cut_timeouts, "revoke(s)"),
        ] {
            if n > 0 {
                md.push_str(&format!(
                    "\n{n} {what} did not cut the open flow within 10 s.\n"
                ));
            }
        }
        md
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "streams": FLOWS.iter().zip(&self.streams).map(|(name, s)| json!({
                "flow": name,
                "round_trips_per_second": s.per_second,
                "pc_skb_egress_ns": s.ns[0],
                "pc_skb_ingress_ns": s.ns[1],
                "empty_egress_ns": s.ns[2],
                "empty_ingress_ns": s.ns[3],
            })).collect::<Vec<_>>(),
            "deep_cgroup_connects_per_second": self.deep,
            "no_filter_connects_per_second": self.deep_plain,
            "denied_connects_per_second": self.flood,
            "flood_agent_cpu_ms_per_second": self.flood_cpu_ms_per_s,
            "reload_cut_ms": self.cut_ms,
            "reload_cut_timeouts": self.cut_timeouts,
            "revoke_cut_ms": self.revoke_cut_ms,
            "revoke_cut_timeouts": self.revoke_cut_timeouts,
        })
    }

    /// A marked flow's agent program ns/run over the empty program's: egress, ingress.
    fn marked_ratios(&self) -> (f64, f64) {
        let m = &self.streams[2];
        (med(&m.ns[0]) / med(&m.ns[2]), med(&m.ns[1]) / med(&m.ns[3]))
    }

    /// This table's figures for the goals table.
    pub(super) fn figures(&self, f: &mut Figures) {
        let (eg, ing) = self.marked_ratios();
        f.marked_egress = Some(eg);
        f.marked_ingress = Some(ing);
        f.flood_per_s = Some(med(&self.flood));
        f.reload_cut_ms = Some(med(&self.cut_ms));
        f.revoke_cut_ms = Some(med(&self.revoke_cut_ms));
    }
}
