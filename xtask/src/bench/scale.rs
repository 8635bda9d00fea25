//! Table 10 (`--only scale`): the user side with a million grants (issue
//! 15): the agent's memory per grant, its restart time with the grants
//! already journaled, and how fast it loads them into the kernel beside
//! nftables' `nft -f` of a set with as many elements with timeouts.
//!
//! The grants are written straight into a journal snapshot by the agent's
//! hidden `portcullis bench-journal` (the agent's own journal code, so the
//! format is always the one this build reads): making a million one at a
//! time over the socket takes longer than the whole bench (table 7 does
//! that, to a bounded time). Each is `uid:N`, one hour or more, on the
//! bench segment, made by root with a reason, as `portcullis grant` makes
//! them.
//!
//! Per round, in this order: `nft -f` of N uids with `timeout 1h` into the
//! loopback table's empty set (table created before, deleted after, not
//! timed); an agent with no grants, started on fresh pins and then
//! restarted (SIGTERM, same pins and state: a service restart); an agent
//! with the N-grant journal, the same two starts. A start is spawn →
//! control socket (bound only once the maps are filled and the programs
//! attached). Memory is VmRSS 2 s after a start. Rounds give medians.
//!
//! - Memory per grant: (RSS with N, after the restart) − (RSS with none,
//!   after its restart), over N.
//! - Restart: the N agent's second start, whole (not minus the empty one):
//!   what an operator waits for.
//! - Bulk load: the N agent's first start (empty maps: every grant written
//!   to the kernel) minus the empty agent's first start, beside `nft -f`.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{
    agent::{Agent, Knobs, Spec, SEGMENT},
    firewall::{self, NftTable},
    goals::Figures,
    measure::Bench,
    report::thousands,
    stats::median,
};
use crate::util;

/// The first granted uid (above the standing allows' range of the other tables).
const FIRST_UID: u32 = 3_000_000;
/// How long after a start the memory is read (the sweep and the observers
/// have started by then).
const SETTLE: Duration = Duration::from_secs(2);

/// One start's figures.
#[derive(Clone, Default)]
struct Start {
    seconds: Vec<f64>,
    rss_kib: Vec<f64>,
    hwm_kib: Vec<f64>,
    /// The agent's own `start phases` line, last round.
    phases: Option<String>,
}

pub(super) struct Scale {
    grants: u32,
    rounds: usize,
    journal_bytes: u64,
    journal_seconds: f64,
    /// Empty agent: first start, restart; N agent: first start, restart.
    empty_first: Start,
    empty_restart: Start,
    full_first: Start,
    full_restart: Start,
    nft_seconds: Vec<f64>,
}

fn med(v: &[f64]) -> f64 {
    median(v).unwrap_or(f64::NAN)
}

impl Start {
    fn note(&mut self, agent: &Agent) -> Result<()> {
        self.seconds.push(agent.start_time.as_secs_f64());
        std::thread::sleep(SETTLE);
        self.rss_kib.push(agent.status_kib("VmRSS")? as f64);
        self.hwm_kib.push(agent.status_kib("VmHWM")? as f64);
        self.phases = agent.start_phases();
        Ok(())
    }
}

impl Bench<'_> {
    /// Writes the N-grant journal snapshot with `portcullis bench-journal`.
    fn scale_journal(&self, n: u32) -> Result<(PathBuf, f64)> {
        let state = self.work.join("scale-journal");
        let started = Instant::now();
        util::output(
            Command::new(&self.portcullis)
                .arg("bench-journal")
                .arg("--state-dir")
                .arg(&state)
                .arg("--grants")
                .arg(n.to_string())
                .arg("--segment")
                .arg(SEGMENT)
                .arg("--first-uid")
                .arg(FIRST_UID.to_string())
                .arg("--ttl-secs")
                .arg("7200"),
        )?;
        Ok((state.join("journal.snap"), started.elapsed().as_secs_f64()))
    }

    pub(super) fn scale(&self) -> Result<Scale> {
        let n = self.plan.scale_grants;
        let rounds = self.plan.scale_rounds;
        self.log(&format!("scale: a journal of {n} grants"));
        let (snap, journal_seconds) = self.scale_journal(n)?;
        let journal_bytes = std::fs::metadata(&snap)
            .with_context(|| format!("reading {}", snap.display()))?
            .len();
        let batch = self.work.join("scale-uids.nft");
        let elements: Vec<String> = (FIRST_UID..FIRST_UID + n).map(|u| u.to_string()).collect();
        firewall::write_batch(&batch, firewall::LOOPBACK_SET, &elements)?;
        drop(elements);
        let mut out = Scale {
            grants: n,
            rounds,
            journal_bytes,
            journal_seconds,
            empty_first: Start::default(),
            empty_restart: Start::default(),
            full_first: Start::default(),
            full_restart: Start::default(),
            nft_seconds: Vec::new(),
        };
        for round in 0..rounds {
            self.log(&format!(
                "scale round {}/{rounds}: nft -f of {n} elements",
                round + 1
            ));
            {
                let table = NftTable::loopback(self.server.port)?;
                out.nft_seconds
                    .push(firewall::nft_file(&batch)?.as_secs_f64());
                drop(table);
            }
            for (journal, first, restart) in [
                (None, &mut out.empty_first, &mut out.empty_restart),
                (Some(&snap), &mut out.full_first, &mut out.full_restart),
            ] {
                let count = if journal.is_some() { n } else { 0 };
                self.log(&format!(
                    "scale round {}/{rounds}: agent with {count} journaled grants, start and restart",
                    round + 1
                ));
                self.scale_agent(round, journal, count, first, restart)?;
            }
        }
        Ok(out)
    }

    fn scale_agent(
        &self,
        round: usize,
        journal: Option<&PathBuf>,
        count: u32,
        first: &mut Start,
        restart: &mut Start,
    ) -> Result<()> {
        let spec = Spec {
            port: self.server.port,
            uids: Vec::new(),
            peers: Vec::new(),
            xdp_iface: None,
            peer_filter: None,
            grants: count as usize,
            knobs: Knobs::default(),
            extra_ports: Vec::new(),
            extra_allows: Vec::new(),
            journal: journal.cloned(),
        };
        let mut agent = Agent::start(
            &self.portcullis,
            &self.work,
            &self.bpffs,
            &format!("scale-{count}-{round}"),
            &self.cgroups.filtered,
            &spec,
        )?;
        first.note(&agent)?;
        agent.restart()?;
        restart.note(&agent)?;
        Ok(())
    }
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

fn phases(p: &Option<String>) -> String {
    p.as_deref().unwrap_or("(not logged)").replace(' ', ", ")
}

impl Scale {
    fn bytes_per_grant(&self) -> f64 {
        (med(&self.full_restart.rss_kib) - med(&self.empty_restart.rss_kib)) * 1024.0
            / f64::from(self.grants)
    }

    /// This table's figures for the goals table.
    pub(super) fn figures(&self, f: &mut Figures) {
        f.scale_grants = Some(self.grants);
        f.bytes_per_grant = Some(self.bytes_per_grant());
        f.restart_s = Some(med(&self.full_restart.seconds));
        let bulk = self.bulk_seconds();
        f.bulk_vs_nft = Some(if bulk > 0.0 {
            med(&self.nft_seconds) / bulk
        } else {
            f64::NAN
        });
    }

    fn bulk_seconds(&self) -> f64 {
        med(&self.full_first.seconds) - med(&self.empty_first.seconds)
    }

    pub(super) fn markdown(&self) -> String {
        let n = thousands(u64::from(self.grants));
        let bytes = self.bytes_per_grant();
        let restart = med(&self.full_restart.seconds);
        let bulk = self.bulk_seconds();
        let nft = med(&self.nft_seconds);
        let speedup = nft / bulk;
        let mut md = format!(
            "\n### 10. {n} grants: memory, restart, bulk load (issue 15)\n\n\
             Grants journaled by `portcullis bench-journal` ({:.1} MiB snapshot, written in \
             {:.1} s), each `uid:N` for 2 h on one segment; medians of {} round(s). A start is \
             spawn → control socket; memory is VmRSS {} s after it.\n\n\
             | Figure | Measured |\n|---|---:|\n",
            self.journal_bytes as f64 / (1024.0 * 1024.0),
            self.journal_seconds,
            self.rounds,
            SETTLE.as_secs(),
        );
        md.push_str(&format!(
            "| Agent memory per grant at {n} (RSS minus the RSS with none) | {bytes:.0} B |\n\
             | Agent restart with {n} journaled grants | {restart:.2} s |\n\
             | Bulk load of {n} grants vs `nft -f` of {n} elements with timeouts | {speedup:.2}× ({bulk:.2} s vs {nft:.2} s) |\n"
        ));
        md.push_str(
            "\n| Agent | Start (s) | RSS after | Peak RSS (VmHWM) |\n|---|---:|---:|---:|\n",
        );
        for (name, s) in [
            ("no grants, first start", &self.empty_first),
            ("no grants, restart", &self.empty_restart),
            ("N grants, first start (empty maps)", &self.full_first),
            ("N grants, restart (maps pinned)", &self.full_restart),
        ] {
            md.push_str(&format!(
                "| {} | {:.2} | {} | {} |\n",
                name.replace('N', &n),
                med(&s.seconds),
                mib(med(&s.rss_kib)),
                mib(med(&s.hwm_kib)),
            ));
        }
        md.push_str(&format!(
            "| `nft -f`, {n} set elements with timeouts | {nft:.2} | | |\n"
        ));
        md.push_str(&format!(
            "\nWhere the agent's start went (its `start phases` log line, last round; wall \
             time, then its RSS after the phase):\n\n- first start with {n}: {}\n- restart with {n}: {}\n",
            phases(&self.full_first.phases),
            phases(&self.full_restart.phases)
        ));
        md
    }

    pub(super) fn json(&self) -> Value {
        let start = |s: &Start| {
            json!({
                "seconds": s.seconds,
                "rss_kib": s.rss_kib,
                "hwm_kib": s.hwm_kib,
                "phases": s.phases,
            })
        };
        json!({
            "grants": self.grants,
            "journal_bytes": self.journal_bytes,
            "empty_first_start": start(&self.empty_first),
            "empty_restart": start(&self.empty_restart),
            "full_first_start": start(&self.full_first),
            "full_restart": start(&self.full_restart),
            "nft_seconds": self.nft_seconds,
            "bytes_per_grant": self.bytes_per_grant(),
            "bulk_seconds": self.bulk_seconds(),
        })
    }
}
