//! The bench's results: raw samples in, Markdown tables and a JSON
//! document out (the goals table of every part is `goals.rs`). Every figure is a median (or a p99) of repeated runs, and
//! every comparison is a ratio of figures measured in the same run.
use std::{fmt::Write as _, time::Duration};

use serde_json::{json, Value};

use super::{
    floor::{LOOPBACK_FLOOR, VETH_FLOOR},
    goals::Figures,
    measure::{Plan, PROBE_INTERVAL_US},
    stats::{median, median_u64, quantile},
};

/// One connection-rate block: baseline and filtered runs, interleaved.
pub(super) struct RateBlock {
    /// "loopback" or "veth".
    pub path: String,
    pub filter: String,
    /// Grants (set elements, rules) loaded.
    pub grants: u32,
    /// Connects per second of each run.
    pub baseline: Vec<f64>,
    pub filtered: Vec<f64>,
}

impl RateBlock {
    pub(super) fn new(
        path: &str,
        filter: &str,
        grants: u32,
        baseline: Vec<f64>,
        filtered: Vec<f64>,
    ) -> Self {
        Self {
            path: path.into(),
            filter: filter.into(),
            grants,
            baseline,
            filtered,
        }
    }

    /// Median filtered rate over median baseline rate.
    pub(super) fn ratio(&self) -> f64 {
        match (median(&self.filtered), median(&self.baseline)) {
            (Some(f), Some(b)) if b > 0.0 => f / b,
            _ => f64::NAN,
        }
    }

    fn json(&self) -> Value {
        json!({"path": self.path, "filter": self.filter, "grants": self.grants,
            "baseline_per_s": self.baseline, "filtered_per_s": self.filtered,
            "baseline_median": median(&self.baseline), "filtered_median": median(&self.filtered),
            "ratio": self.ratio()})
    }
}

/// What the agent's programs cost on the allowed path, from the kernel's
/// run-time statistics over one run.
pub(super) struct ProgramCost {
    pub path: String,
    pub connects: u64,
    /// (program, runs, nanoseconds)
    pub programs: Vec<(String, u64, u64)>,
    /// The no-filter rate of the same path, for the share of a connection.
    pub baseline_per_s: f64,
}

impl ProgramCost {
    fn per_connection_ns(&self) -> f64 {
        self.programs.iter().map(|p| p.2 as f64).sum::<f64>() / self.connects.max(1) as f64
    }

    fn json(&self) -> Value {
        json!({"path": self.path, "connects": self.connects, "baseline_per_s": self.baseline_per_s,
            "programs": self.programs.iter().map(|(n, r, t)| json!({"program": n, "runs": r, "ns": t})).collect::<Vec<_>>(),
            "ns_per_connection": self.per_connection_ns()})
    }
}

/// Portcullis at one grant count.
pub(super) struct ScalePoint {
    pub grants: u32,
    /// `peer:` allows loaded besides the uid allows.
    pub peers: u32,
    pub start_seconds: f64,
    pub rss_kib: u64,
    /// Loopback connection rate over its baseline.
    pub ratio: f64,
}

#[derive(Default)]
pub(super) struct Footprint {
    pub idle_grants: u32,
    pub idle_rss_kib: u64,
    pub idle_ticks: u64,
    pub idle_seconds: u64,
    pub big_grants: u32,
    pub big_rss_kib: u64,
    pub big_hwm_kib: u64,
}

#[derive(Default)]
pub(super) struct Revocation {
    pub tool: String,
    /// From starting the revoking process to the first refused connect.
    pub latency_ms: Vec<f64>,
    /// From starting the revoking process to its exit.
    pub process_ms: Vec<f64>,
    /// Connect attempts the probe made until refused.
    pub attempts: Vec<f64>,
    /// How the first refused connect failed, and how often.
    pub errors: std::collections::BTreeMap<String, usize>,
}

pub(super) struct Bulk {
    pub grants: u32,
    /// Agent start times (s) with 1 and with `grants` standing allows.
    pub start_one: Vec<f64>,
    pub start_n: Vec<f64>,
    /// `nft -f` of `grants` elements in one batch (s).
    pub nft_batch: Vec<f64>,
    /// `iptables-restore` of N rules (s).
    pub iptables: Vec<(u32, Vec<f64>)>,
    /// One `portcullis grant` process, start to exit (ms).
    pub grant_cli_ms: Vec<f64>,
}

impl Bulk {
    /// Time the `grants` allows add to a start, and grants per second;
    /// `None` when the start with `grants` allows was not slower than with
    /// one (the difference is below the run's noise: no rate to give).
    fn portcullis(&self) -> Option<(f64, f64)> {
        let t = median(&self.start_n)? - median(&self.start_one)?;
        (t > 0.0).then(|| (t, self.grants as f64 / t))
    }

    fn nft(&self) -> Option<(f64, f64)> {
        let t = median(&self.nft_batch)?;
        Some((t, self.grants as f64 / t.max(1e-9)))
    }
}

/// A path's gap to no filter, split (fractions of the no-filter rate).
#[derive(Debug, PartialEq)]
struct GapSplit {
    /// 1 − Portcullis' ratio.
    gap: f64,
    /// 1 − the empty programs' ratio.
    floor: f64,
    /// Portcullis' programs' ns per connection minus the empty ones'.
    extra_ns: f64,
    /// That time as a share of a connection at the no-filter rate.
    programs: f64,
    /// What neither explains.
    rest: f64,
}

impl GapSplit {
    fn new(ours: f64, floor: f64, extra_ns: f64, baseline_per_s: f64) -> Self {
        let gap = 1.0 - ours;
        let floor = 1.0 - floor;
        let programs = extra_ns * baseline_per_s / 1e9;
        Self {
            gap,
            floor,
            extra_ns,
            programs,
            rest: gap - floor - programs,
        }
    }
}

pub(super) struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub nft: String,
    pub iptables: String,
}

impl Machine {
    pub(super) fn json(&self) -> Value {
        json!({"nproc": self.nproc, "cpu": self.cpu, "kernel": self.kernel,
            "nft": self.nft, "iptables": self.iptables})
    }

    pub(super) fn probe(nft: String, iptables: String) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            nft,
            iptables,
        }
    }
}

/// The line that opens every report: the machine, how long the run took,
/// and whether the host's ruleset came out unchanged.
pub(super) fn machine_line(m: &Machine, took: Duration, host_rules_unchanged: bool) -> String {
    format!("Machine: {} × {} (`nproc` {}), Linux {}; {}; {}. The run took {}; the host's ruleset was {} afterwards.\n\n",
        m.nproc, m.cpu, m.nproc, m.kernel, m.nft, m.iptables, crate::util::human(took),
        if host_rules_unchanged { "unchanged" } else { "**changed** (see the warning above)" })
}

pub(super) struct Report {
    pub machine: Machine,
    pub plan: Plan,
    pub per_packet: Value,
    pub rates: Vec<RateBlock>,
    pub scale: Vec<ScalePoint>,
    pub footprint: Footprint,
    pub revocations: Vec<Revocation>,
    pub bulk: Bulk,
    pub xdp_mode: Option<String>,
    pub costs: Vec<ProgramCost>,
    pub host_rules_unchanged: bool,
    pub took: Duration,
    pub clk_tck: u64,
}

/// 12,345
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let first = match digits.len() % 3 {
        0 => 3,
        r => r,
    };
    let mut out = digits[..first].to_string();
    for group in digits.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(group).expect("ASCII digits"));
    }
    out
}

pub(super) fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.filter(|x| x.is_finite()).map_or_else(|| "n/a".into(), f)
}

/// "met" / "not met" for the goals of older tables (table 7).
pub(super) fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// The per-packet cases, in table order: (JSON key, label).
const PACKET_CASES: [(&str, &str); 18] = [
    ("xdp_empty", "XDP, empty program (floor)¹"),
    ("xdp_non_ip", "XDP, non-IP frame (ARP)"),
    ("xdp_unprotected", "XDP, TCP SYN to an unprotected port"),
    ("xdp_allowed", "XDP, protected port, allowed peer"),
    ("xdp_denied", "XDP, protected port, denied peer²"),
    (
        "xdp_allowed_standing",
        "XDP, protected port, peer with a standing allow",
    ),
    ("tc_empty", "tc, empty program (floor)¹"),
    ("tc_unprotected", "tc, TCP SYN to an unprotected port"),
    ("tc_allowed", "tc, protected port, allowed peer"),
    (
        "tc_allowed_standing",
        "tc, protected port, peer with a standing allow",
    ),
    ("tc_denied", "tc, protected port, denied peer²"),
    ("skb_unmarked", "cgroup_skb egress, unmarked socket³"),
    (
        "skb_ingress_unprotected",
        "cgroup_skb ingress, SYN to an unprotected port⁴",
    ),
    (
        "skb_ingress_allowed",
        "cgroup_skb ingress, protected port, allowed peer⁴",
    ),
    (
        "skb_ingress_denied",
        "cgroup_skb ingress, protected port, denied peer²⁴",
    ),
    (
        "xdp_allowed_debug_on",
        "XDP, protected port, allowed peer, kernel debug on⁵",
    ),
    (
        "xdp_denied_debug_on",
        "XDP, protected port, denied peer, kernel debug on²⁵",
    ),
    (
        "skb_ingress_denied_debug_on",
        "cgroup_skb ingress, denied peer, kernel debug on²⁴⁵",
    ),
];

impl Report {
    fn packet_median(&self, grants: u64, case: &str) -> Option<f64> {
        let size = self.per_packet["sizes"]
            .as_array()?
            .iter()
            .find(|s| s["grants"].as_u64() == Some(grants))?;
        let runs: Vec<u64> = size[case]
            .as_array()?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        median_u64(&runs)
    }

    fn packet_sizes(&self) -> Vec<u64> {
        self.per_packet["sizes"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["grants"].as_u64()).collect())
            .unwrap_or_default()
    }

    fn block(&self, path: &str, filter_starts: &str, grants: u32) -> Option<&RateBlock> {
        self.rates
            .iter()
            .find(|b| b.path == path && b.filter.starts_with(filter_starts) && b.grants == grants)
    }

    fn revocation(&self, tool_starts: &str) -> Option<&Revocation> {
        self.revocations
            .iter()
            .find(|r| r.tool.starts_with(tool_starts))
    }

    /// This table's figures for the goals table.
    pub(super) fn figures(&self, f: &mut Figures) {
        let n = self.plan.compare_at;
        let ratio = |path: &str, filter: &str, grants: u32| {
            self.block(path, filter, grants).map(RateBlock::ratio)
        };
        f.compare_at = n;
        f.loop_ours = ratio("loopback", "Portcullis", n);
        f.loop_nft = ratio("loopback", "nftables", n);
        f.loop_floor = ratio("loopback", LOOPBACK_FLOOR, 0);
        f.veth_tcx = ratio("veth", "Portcullis (peer filter at tcx", n);
        f.veth_xdp = ratio("veth", "Portcullis (native XDP", n);
        f.veth_nft = ratio("veth", "nftables", n);
        f.veth_floor = ratio("veth", VETH_FLOOR, 0);
        let p = self.revocation("Portcullis");
        f.revoke_median_ms = p.and_then(|r| median(&r.latency_ms));
        f.revoke_p99_ms = p.and_then(|r| quantile(&r.latency_ms, 0.99));
    }

    /// Where the gap to no filter goes, per path: the attach points alone
    /// (floor row), the programs' own extra run time (BPF statistics,
    /// Portcullis minus the empty programs, as a share of a connection at
    /// the no-filter rate), and the rest. In points of the no-filter rate;
    /// negative where the run's noise exceeded the cost.
    fn gap_split(&self, o: &mut String) {
        let n = self.plan.compare_at;
        let mut rows = Vec::new();
        for (path, ours, floor, empty) in [
            (
                "loopback",
                "Portcullis",
                LOOPBACK_FLOOR,
                "loopback, empty programs",
            ),
            (
                "veth",
                "Portcullis (peer filter at tcx",
                VETH_FLOOR,
                "veth, empty program",
            ),
        ] {
            let (Some(p), Some(fl)) = (self.block(path, ours, n), self.block(path, floor, 0))
            else {
                continue;
            };
            let find = |name: &str| self.costs.iter().find(|c| c.path == name);
            let (Some(pc), Some(ec)) = (find(path), find(empty)) else {
                continue;
            };
            let split = GapSplit::new(
                p.ratio(),
                fl.ratio(),
                pc.per_connection_ns() - ec.per_connection_ns(),
                median(&p.baseline).unwrap_or(f64::NAN),
            );
            rows.push(format!(
                "| {path} | {:.1} | {:.1} | {:.0} ns = {:.1} | {:.1} |",
                split.gap * 100.0,
                split.floor * 100.0,
                split.extra_ns,
                split.programs * 100.0,
                split.rest * 100.0
            ));
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(o, "\nWhere the gap to no filter goes, in points of the no-filter rate (negative where the run's noise was larger than the cost):\n");
        let _ = writeln!(o, "| Path | Portcullis' gap | Empty programs' gap (attach points) | Programs' extra run time per connection (Portcullis − empty) | Rest (outside the programs' run time: helpers' side effects, noise) |\n|---|---:|---:|---:|---:|");
        for r in rows {
            let _ = writeln!(o, "{r}");
        }
    }

    pub(super) fn markdown(&self) -> String {
        let mut o = String::new();
        let plan = &self.plan;
        let n = self.plan.compare_at;
        let sizes = self.packet_sizes();
        let _ = writeln!(o, "#### 1. Per-packet cost (ns per packet; BPF_PROG_TEST_RUN, median of {} calls × {} runs)\n",
            plan.test_run_runs, thousands(plan.test_run_repeat.into()));
        let head: Vec<String> = sizes
            .iter()
            .map(|s| format!("{} grants", thousands(*s)))
            .collect();
        let _ = writeln!(o, "| Program, case | {} | most / 1 |", head.join(" | "));
        let _ = writeln!(o, "|---|{}---|", "---:|".repeat(sizes.len()));
        for (key, label) in PACKET_CASES {
            let cells: Vec<String> = sizes
                .iter()
                .map(|s| opt(self.packet_median(*s, key), |v| format!("{v:.0}")))
                .collect();
            let growth = match (sizes.first(), sizes.last()) {
                (Some(lo), Some(hi)) => {
                    match (self.packet_median(*hi, key), self.packet_median(*lo, key)) {
                        (Some(h), Some(l)) if l > 0.0 => format!("{:.2}×", h / l),
                        _ => "n/a".into(),
                    }
                }
                _ => "n/a".into(),
            };
            let _ = writeln!(o, "| {label} | {} | {growth} |", cells.join(" | "));
        }
        let _ = writeln!(o, "\nN grants = N uid grants in PC_GRANTS and N /32 peers in PC_PEER_HOSTS granted for an hour (consecutive addresses; the allowed peer is the middle one, the denied one just past the end), plus one /32 peer with a standing allow (no expiry: no clock read). tc is `pc_tc_peer`, the peer filter on virtual devices (tcx).");
        let _ = writeln!(o, "¹ Two instructions (`r0 = XDP_PASS; exit`, `r0 = TC_ACT_OK; exit`) loaded with bpf(2): the cost of BPF_PROG_TEST_RUN itself.");
        let _ = writeln!(o, "² Nothing reads the deny-event ring during the run, so after the first ~3,000 packets the event write fails fast; with a reader it costs a little more.");
        let _ = writeln!(o, "³ BPF_PROG_TEST_RUN gives the packet a fresh socket that connect4/6 never marked: this is the path of every flow Portcullis did not let through a protected port (one socket-storage lookup). The per-packet check of marked flows is in the connection rates below.");
        let _ = writeln!(o, "⁴ The remote-peer check every interface gets without XDP: a SYN arriving on a network device for a listener's port. BPF_PROG_TEST_RUN gives a blank socket, so this runs `pc_skb_ingress_bench`, the same decision with the listener's protocol and port read from the packet.");
        let _ = writeln!(o, "⁵ `portcullis debug on` (every other row runs with it off, the default). Nothing reads the debug ring and each CPU may write 64 lines a second, so nearly every run pays for the switch and the budget check only: debug on under a flood.");

        let _ = writeln!(o, "\n#### 2. Connection rate (TCP connects/s to a protected port by an allowed client; median of {} runs × up to {} connects, interleaved with as many runs without the filter)\n",
            plan.runs, thousands(plan.connects));
        let _ = writeln!(o, "| Path | Filter | Grants | No filter | Filtered | Filtered / no filter |\n|---|---|---:|---:|---:|---:|");
        let mut shown: Vec<&RateBlock> = self
            .rates
            .iter()
            .filter(|b| {
                b.path == "loopback" && !(b.filter.starts_with("Portcullis") && b.grants != n)
            })
            .collect();
        shown.extend(self.rates.iter().filter(|b| b.path == "veth"));
        for b in shown {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                b.path,
                b.filter,
                if b.grants == 0 {
                    "–".to_string()
                } else {
                    thousands(b.grants.into())
                },
                opt(median(&b.baseline), |v| thousands(v as u64)),
                opt(median(&b.filtered), |v| thousands(v as u64)),
                opt(Some(b.ratio()), |r| format!("{:.1} %", r * 100.0))
            );
        }
        let _ = writeln!(o, "\nLoopback: client in a child cgroup as an allowed uid, server in the same cgroup (under the attach point for Portcullis' filtered runs); the no-filter runs use a twin cgroup the agent does not guard (Portcullis) or the same client with the ruleset removed (nftables, iptables; iptables' allowed rule is in the middle of the chain). Veth: client in a network namespace, server in the host's; the no-filter runs go through a second, unfiltered veth pair. Portcullis' peer filter on the veth ran as {} (its auto choice for a veth), and the reference row forced native XDP. Every connection is closed with a reset (no TIME_WAIT). The floor rows link empty programs (`return allow`) to the same hooks with no agent running: connect4 and cgroup_skb egress and ingress on the filtered cgroup (loopback), tcx ingress on the filtered veth; what the attach points alone cost.",
            self.xdp_mode.as_deref().unwrap_or("an unknown"));

        if !self.costs.is_empty() {
            let _ = writeln!(o, "\nWhere Portcullis' share goes, from the kernel's BPF run-time statistics over one extra run each ({} grants loaded; the statistics add two clock reads per program run), beside the empty programs of the floor rows:\n", thousands(n.into()));
            let _ = writeln!(o, "| Path | Program | Runs per connection | ns per run | ns per connection |\n|---|---|---:|---:|---:|");
            for c in &self.costs {
                for (name, runs, ns) in &c.programs {
                    let _ = writeln!(
                        o,
                        "| {} | {name} | {:.2} | {:.0} | {:.0} |",
                        c.path,
                        *runs as f64 / c.connects.max(1) as f64,
                        *ns as f64 / (*runs).max(1) as f64,
                        *ns as f64 / c.connects.max(1) as f64
                    );
                }
                let per = c.per_connection_ns();
                let _ = writeln!(
                    o,
                    "| {} | all | | | {per:.0} ({:.1} % of a connection at the no-filter rate) |",
                    c.path,
                    per * c.baseline_per_s / 1e9 * 100.0
                );
            }
            self.gap_split(&mut o);
        }

        let _ = writeln!(o, "\n#### 3. Revocation latency (ms from starting the revoking process to the first refused connect; {} revocations each, with {} grants loaded)\n",
            plan.revocations, thousands(n.into()));
        let _ = writeln!(o, "| Tool | Median | p99 | Max | Revoking process, start to exit (median) | First refusal seen as |\n|---|---:|---:|---:|---:|---|");
        for r in &self.revocations {
            let max = r.latency_ms.iter().copied().fold(f64::NAN, f64::max);
            let errors: Vec<String> = r.errors.iter().map(|(e, n)| format!("{e} ×{n}")).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                r.tool,
                opt(median(&r.latency_ms), |v| format!("{v:.2}")),
                opt(quantile(&r.latency_ms, 0.99), |v| format!("{v:.2}")),
                opt(Some(max), |v| format!("{v:.2}")),
                opt(median(&r.process_ms), |v| format!("{v:.2}")),
                errors.join(", ")
            );
        }
        let _ = writeln!(o, "\nA probe in the cgroup connects every {PROBE_INTERVAL_US} µs (plus the connect itself) until refused and stamps the refusal with CLOCK_MONOTONIC; the bench stamps the revoking process's start with the same clock. Portcullis refuses at the map delete, before its audit record and state file are written (fsync'd) and the CLI exits.");

        let b = &self.bulk;
        let _ = writeln!(
            o,
            "\n#### 4. Bulk load ({} grants)\n",
            thousands(b.grants.into())
        );
        let _ = writeln!(o, "| What | Time (median) | Grants/s |\n|---|---:|---:|");
        if let Some((t, r)) = b.portcullis() {
            let _ = writeln!(o, "| Portcullis: policy with {} standing `uid:` allows, agent start minus start with 1 allow ({:.3} s − {:.3} s; parse, validate, ledger, map writes) | {:.3} s | {} |",
                thousands(b.grants.into()), median(&b.start_n).unwrap_or(f64::NAN), median(&b.start_one).unwrap_or(f64::NAN), t, thousands(r as u64));
        } else {
            let _ = writeln!(o, "| Portcullis: policy with {} standing `uid:` allows, agent start minus start with 1 allow ({:.3} s − {:.3} s) | below the noise | n/a |",
                thousands(b.grants.into()), median(&b.start_n).unwrap_or(f64::NAN), median(&b.start_one).unwrap_or(f64::NAN));
        }
        if let Some((t, r)) = b.nft() {
            let _ = writeln!(o, "| nftables: `nft -f` adding {} set elements (with timeouts) in one batch | {t:.3} s | {} |", thousands(b.grants.into()), thousands(r as u64));
        }
        for (rules, s) in &b.iptables {
            if let Some(t) = median(s) {
                let _ = writeln!(
                    o,
                    "| iptables: `iptables-restore --noflush` of {} owner rules | {t:.3} s | {} |",
                    thousands((*rules).into()),
                    thousands((*rules as f64 / t) as u64)
                );
            }
        }
        if let Some(ms) = median(&b.grant_cli_ms) {
            let _ = writeln!(o, "| Portcullis: one `portcullis grant` (process start to exit, audit record fsync'd) | {ms:.2} ms | {} |", thousands((1000.0 / ms) as u64));
        }

        let f = &self.footprint;
        let _ = writeln!(o, "\n#### 5. Agent footprint\n");
        let _ = writeln!(o, "| What | Measured |\n|---|---:|");
        let _ = writeln!(
            o,
            "| Resident memory (VmRSS), idle, {} grant(s) | {:.1} MiB |",
            thousands(f.idle_grants.into()),
            f.idle_rss_kib as f64 / 1024.0
        );
        let _ = writeln!(
            o,
            "| Resident memory, {} grants | {:.1} MiB (peak {:.1} MiB) |",
            thousands(f.big_grants.into()),
            f.big_rss_kib as f64 / 1024.0,
            f.big_hwm_kib as f64 / 1024.0
        );
        let cpu_ms = f.idle_ticks as f64 * 1000.0 / self.clk_tck.max(1) as f64;
        let _ = writeln!(o, "| CPU used while idle over {} s (utime + stime) | {cpu_ms:.0} ms ({:.3} % of one core) |", f.idle_seconds, cpu_ms / (f.idle_seconds.max(1) as f64 * 10.0));

        let _ = writeln!(
            o,
            "\n#### 6. Scale (Portcullis from 1 to {} grants)\n",
            thousands(sizes.last().copied().unwrap_or(0))
        );
        let _ = writeln!(o, "| Grants | Agent start | Agent RSS | Connection rate / no filter | XDP allowed (ns) | XDP denied (ns) | cgroup_skb (ns) |\n|---:|---:|---:|---:|---:|---:|---:|");
        for s in &self.scale {
            let peers = if s.peers > 0 {
                format!(" (+ {} peers, XDP)", thousands(s.peers.into()))
            } else {
                String::new()
            };
            let g = u64::from(s.grants);
            let _ = writeln!(
                o,
                "| {}{peers} | {:.2} s | {:.1} MiB | {:.1} % | {} | {} | {} |",
                thousands(g),
                s.start_seconds,
                s.rss_kib as f64 / 1024.0,
                s.ratio * 100.0,
                opt(self.packet_median(g, "xdp_allowed"), |v| format!("{v:.0}")),
                opt(self.packet_median(g, "xdp_denied"), |v| format!("{v:.0}")),
                opt(self.packet_median(g, "skb_unmarked"), |v| format!("{v:.0}"))
            );
        }
        o
    }

    pub(super) fn json(&self) -> Value {
        let f = &self.footprint;
        let b = &self.bulk;
        json!({
            "machine": self.machine.json(),
            "plan": {"runs": self.plan.runs, "connects": self.plan.connects, "run_seconds": self.plan.run_seconds,
                "revocations": self.plan.revocations, "idle_seconds": self.plan.idle_seconds, "sizes": self.plan.sizes,
                "compare_at": self.plan.compare_at, "iptables_rules": self.plan.iptables_rules,
                "test_run_repeat": self.plan.test_run_repeat, "test_run_runs": self.plan.test_run_runs,
                "probe_interval_us": PROBE_INTERVAL_US},
            "took_seconds": self.took.as_secs_f64(),
            "host_rules_unchanged": self.host_rules_unchanged,
            "per_packet_ns": self.per_packet,
            "connection_rates": self.rates.iter().map(RateBlock::json).collect::<Vec<_>>(),
            "xdp_mode": self.xdp_mode,
            "program_cost": self.costs.iter().map(ProgramCost::json).collect::<Vec<_>>(),
            "revocation_ms": self.revocations.iter().map(|r| json!({"tool": r.tool, "latency": r.latency_ms,
                "process": r.process_ms, "attempts": r.attempts, "median": median(&r.latency_ms),
                "p99": quantile(&r.latency_ms, 0.99), "process_median": median(&r.process_ms),
                "errors": r.errors})).collect::<Vec<_>>(),
            "bulk": {"grants": b.grants, "agent_start_one_s": b.start_one, "agent_start_n_s": b.start_n,
                "nft_batch_s": b.nft_batch, "iptables_restore_s": b.iptables.iter().map(|(n, s)| json!({"rules": n, "seconds": s})).collect::<Vec<_>>(),
                "grant_cli_ms": b.grant_cli_ms,
                "portcullis_per_s": b.portcullis().map(|x| x.1), "nft_per_s": b.nft().map(|x| x.1)},
            "footprint": {"idle_grants": f.idle_grants, "idle_rss_kib": f.idle_rss_kib, "idle_cpu_ticks": f.idle_ticks,
                "clk_tck": self.clk_tck, "idle_seconds": f.idle_seconds, "big_grants": f.big_grants,
                "big_rss_kib": f.big_rss_kib, "big_hwm_kib": f.big_hwm_kib},
            "scale": self.scale.iter().map(|s| json!({"grants": s.grants, "peers": s.peers, "start_seconds": s.start_seconds,
                "rss_kib": s.rss_kib, "connection_ratio": s.ratio})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_rate_is_none_when_the_big_start_was_not_slower() {
        let mut b = Bulk {
            grants: 10_000,
            start_one: vec![0.467],
            start_n: vec![0.451],
            nft_batch: vec![0.11],
            iptables: Vec::new(),
            grant_cli_ms: Vec::new(),
        };
        assert_eq!(b.portcullis(), None);
        b.start_n = vec![0.567];
        let (t, r) = b.portcullis().unwrap();
        assert!((t - 0.1).abs() < 1e-9 && (r - 100_000.0).abs() < 1e-3);
    }

    #[test]
    fn gap_splits_into_floor_programs_and_rest() {
        // 30,000 connects/s: 33.3 µs each; 1,000 ns more in the programs is 3 points.
        let g = GapSplit::new(0.90, 0.98, 1_000.0, 30_000.0);
        assert!((g.gap - 0.10).abs() < 1e-9);
        assert!((g.floor - 0.02).abs() < 1e-9);
        assert!((g.programs - 0.03).abs() < 1e-9);
        assert!((g.rest - 0.05).abs() < 1e-9);
    }

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn ratio_is_of_medians() {
        let b = RateBlock::new(
            "loopback",
            "x",
            1,
            vec![100.0, 300.0, 200.0],
            vec![90.0, 180.0, 270.0],
        );
        assert!((b.ratio() - 0.9).abs() < 1e-9);
    }
}
