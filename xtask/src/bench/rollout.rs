//! Table 8: what the rollout features of issue 16 cost on the connect
//! path. Usage counting (`PC_USAGE`) and discovery (`PC_DISCOVERY`) run on
//! every allowed connect (usage also on every packet of an admitted local
//! flow), and audit mode changes only the last step of a refusal. The
//! kernel's per-program run-time statistics (as in `progstats.rs`) give
//! nanoseconds per connect, summed over every program of the agent that
//! ran (connect4 and both cgroup_skb programs), for one agent per
//! configuration: usage and discovery each off and on (usage off only in a
//! bench-built agent: `PORTCULLIS_BENCH_NO_USAGE`), and audit beside
//! enforce for an allowed caller and for a stranger (refused, or let
//! through as a would-be refusal). Rounds alternate the configurations so
//! that drift spreads evenly; the table shows medians over rounds.
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{
    agent::{Agent, Knobs, Spec},
    host,
    measure::{allowed_uid, uids, Bench, BASE_UID},
    progstats,
    stats::median,
};
use crate::util;

/// Standing uid allows of the measured segment (the allowed caller is in
/// the middle, as in table 2).
const ALLOWS: u32 = 1_000;

/// One configuration: the segment's mode, the features on, and who connects.
#[derive(Clone, Copy)]
struct Config {
    name: &'static str,
    knobs: Knobs,
    /// A uid no allow names connects (refused, or a would-be refusal).
    stranger: bool,
}

const fn knobs(audit: bool, usage: bool, discovery: bool) -> Knobs {
    Knobs {
        audit,
        no_usage: !usage,
        no_discovery: !discovery,
    }
}

const CONFIGS: [Config; 7] = [
    Config {
        name: "enforce, usage off, discovery off",
        knobs: knobs(false, false, false),
        stranger: false,
    },
    Config {
        name: "enforce, usage on, discovery off",
        knobs: knobs(false, true, false),
        stranger: false,
    },
    Config {
        name: "enforce, usage off, discovery on",
        knobs: knobs(false, false, true),
        stranger: false,
    },
    Config {
        name: "enforce, usage on, discovery on (default)",
        knobs: knobs(false, true, true),
        stranger: false,
    },
    Config {
        name: "audit, usage on, discovery on",
        knobs: knobs(true, true, true),
        stranger: false,
    },
    Config {
        name: "enforce, stranger (refused)",
        knobs: knobs(false, true, true),
        stranger: true,
    },
    Config {
        name: "audit, stranger (would-deny, let through)",
        knobs: knobs(true, true, true),
        stranger: true,
    },
];

/// Per configuration, per round: (connects, ns in every program, runs and
/// ns of connect4).
#[derive(Clone, Default)]
struct Samples {
    per_connect: Vec<f64>,
    connect4_per_run: Vec<f64>,
    connects: Vec<u64>,
}

/// The table: medians per configuration.
pub(super) struct Rollout {
    rows: Vec<(&'static str, Samples)>,
}

impl Bench<'_> {
    pub(super) fn rollout(&self) -> Result<Rollout> {
        let mut samples = vec![Samples::default(); CONFIGS.len()];
        for round in 0..self.plan.runs {
            // Alternate the order between rounds.
            let order: Vec<usize> = if round % 2 == 0 {
                (0..CONFIGS.len()).collect()
            } else {
                (0..CONFIGS.len()).rev().collect()
            };
            for i in order {
                let c = CONFIGS[i];
                self.log(&format!(
                    "rollout cost, round {}/{}: {}",
                    round + 1,
                    self.plan.runs,
                    c.name
                ));
                let (connects, total, c4) = self.rollout_run(c, &format!("rollout-{i}-{round}"))?;
                let s = &mut samples[i];
                s.per_connect.push(total as f64 / connects as f64);
                s.connect4_per_run.push(c4);
                s.connects.push(connects);
            }
        }
        Ok(Rollout {
            rows: CONFIGS.iter().map(|c| c.name).zip(samples).collect(),
        })
    }

    /// One agent in configuration `c`: a warm-up run, then a run with the
    /// statistics on. Returns (connects, ns in every program, connect4 ns
    /// per run).
    fn rollout_run(&self, c: Config, name: &str) -> Result<(u64, u64, f64)> {
        let spec = Spec {
            port: self.server.port,
            uids: uids(ALLOWS),
            peers: Vec::new(),
            xdp_iface: None,
            peer_filter: None,
            grants: 0,
            knobs: c.knobs,
            extra_ports: Vec::new(),
            extra_allows: Vec::new(),
            journal: None,
        };
        let agent = Agent::start(
            &self.portcullis,
            &self.work,
            &self.bpffs,
            name,
            &self.cgroups.filtered,
            &spec,
        )?;
        let uid = if c.stranger {
            BASE_UID + ALLOWS + 7
        } else {
            allowed_uid(ALLOWS)
        };
        self.connects(uid, c.stranger, self.plan.connects / 10 + 1)?;
        let stats = progstats::StatsOn::enable()?;
        let before = progstats::snapshot(agent.bpffs())?;
        let connects = self.connects(uid, c.stranger, self.plan.connects)?;
        let after = progstats::snapshot(agent.bpffs())?;
        drop(stats);
        drop(agent);
        let delta = progstats::delta(&before, &after);
        let total: u64 = delta.values().map(|&(_, ns)| ns).sum();
        let c4 = delta
            .iter()
            .find(|(n, _)| n.contains("connect4"))
            .map(|(_, &(runs, ns))| ns as f64 / runs.max(1) as f64)
            .unwrap_or(f64::NAN);
        Ok((connects, total, c4))
    }

    /// `count` connects from the filtered cgroup as `uid` (bounded by the
    /// plan's run time): all allowed, or with `refused_ok` each either
    /// allowed or refused with EPERM. Returns how many were made.
    fn connects(&self, uid: u32, refused_ok: bool, count: u64) -> Result<u64> {
        host::check_interrupted()?;
        let mut cmd = Command::new(&self.xtask);
        host::confine(&mut cmd, Some(&self.cgroups.filtered), Some((uid, uid)));
        cmd.args(["bench", "client", "--addr"])
            .arg(format!("127.0.0.1:{}", self.server.port))
            .arg("--count")
            .arg(count.to_string())
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
        let n = v["ok"].as_u64().unwrap_or(0) + v["refused"].as_u64().unwrap_or(0);
        if n == 0 {
            bail!("the bench client made no connect: {out}");
        }
        Ok(n)
    }
}

/// Goal: usage and discovery together within this many ns per allowed connect.
const GOAL_NS: f64 = 20.0;

impl Rollout {
    fn median_of(&self, name: &str) -> (f64, f64) {
        self.rows
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| {
                (
                    median(&s.per_connect).unwrap_or(f64::NAN),
                    median(&s.connect4_per_run).unwrap_or(f64::NAN),
                )
            })
            .unwrap_or((f64::NAN, f64::NAN))
    }

    /// (usage, discovery, both, audit − enforce allowed, audit − enforce
    /// for a stranger's connect4) in ns.
    fn deltas(&self) -> [f64; 5] {
        let base = self.median_of(CONFIGS[0].name).0;
        let usage = self.median_of(CONFIGS[1].name).0 - base;
        let discovery = self.median_of(CONFIGS[2].name).0 - base;
        let both = self.median_of(CONFIGS[3].name).0 - base;
        let audit = self.median_of(CONFIGS[4].name).0 - self.median_of(CONFIGS[3].name).0;
        let stranger = self.median_of(CONFIGS[6].name).1 - self.median_of(CONFIGS[5].name).1;
        [usage, discovery, both, audit, stranger]
    }

    pub(super) fn markdown(&self) -> String {
        let mut md = String::from(
            "\n### 8. Rollout features on the connect path (issue 16)\n\n\
             Kernel BPF run-time statistics, one agent per configuration, \
             1,000 uid allows, loopback TCP connects from the filtered cgroup; \
             ns per connect summed over every program that ran (connect4 and \
             cgroup_skb egress/ingress of the flow), medians over rounds.\n\n\
             | Configuration | ns per connect (all programs) | connect4 ns per call | connects per round |\n\
             |---|---:|---:|---:|\n",
        );
        for (name, s) in &self.rows {
            md.push_str(&format!(
                "| {name} | {:.1} | {:.1} | {:.0} |\n",
                median(&s.per_connect).unwrap_or(f64::NAN),
                median(&s.connect4_per_run).unwrap_or(f64::NAN),
                median(&s.connects.iter().map(|&c| c as f64).collect::<Vec<_>>())
                    .unwrap_or(f64::NAN),
            ));
        }
        let [usage, discovery, both, audit, stranger] = self.deltas();
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        md.push_str(&format!(
            "\nUsage tracking adds {usage:+.1} ns per allowed connect, discovery {discovery:+.1} ns, \
             both {both:+.1} ns (goal ≤ {GOAL_NS:.0} ns: {}{}).\n\
             Audit mode minus enforce mode: {audit:+.1} ns per allowed connect; \
             {stranger:+.1} ns in connect4 for a stranger (would-deny vs refused) \
             (goal: audit ≤ enforce: {}).\n",
            verdict(both <= GOAL_NS),
            if both > GOAL_NS {
                format!(", by {:.1} ns", both - GOAL_NS)
            } else {
                String::new()
            },
            verdict(audit <= 0.0 && stranger <= 0.0),
        ));
        md
    }

    pub(super) fn json(&self) -> Value {
        let [usage, discovery, both, audit, stranger] = self.deltas();
        json!({
            "configurations": self.rows.iter().map(|(name, s)| json!({
                "name": name,
                "ns_per_connect": s.per_connect,
                "connect4_ns_per_call": s.connect4_per_run,
                "connects": s.connects,
            })).collect::<Vec<_>>(),
            "usage_ns": usage,
            "discovery_ns": discovery,
            "usage_and_discovery_ns": both,
            "audit_minus_enforce_allowed_ns": audit,
            "audit_minus_enforce_stranger_connect4_ns": stranger,
        })
    }
}
