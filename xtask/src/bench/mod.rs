//! `cargo xtask bench`: Portcullis measured side by side with what users
//! would pick instead (nftables sets with timeouts, iptables owner rules),
//! in one run on one machine. Prints Markdown tables and saves them with a
//! JSON document of every sample under `target/bench/`.
//!
//! Layout: `measure` runs the measurements (one function per table),
//! `report` turns samples into medians, ratios and goal verdicts, `agent`
//! runs a real `portcullis agent`, `firewall` the nftables and iptables
//! peers, `host` the cgroups, namespaces, server and clean-up, `client`
//! the hidden `client` and `probe` subcommands the bench spawns where the
//! traffic starts, `grants` the grant-scale table (time per grant with up
//! to 1,000,000 live grants), `rollout` table 8, `fastpath` table 9 (issue
//! 15's rows, with `emptyprog`'s empty cgroup_skb floor), `scale` table 10
//! (memory, restart and bulk load with a million journaled grants), `fleet`
//! table 11 (issue 19: a real etcd and N fleet agents, `fleet/etcd.rs` the store). The per-packet figures come from the agent binary's
//! hidden `bench-dataplane` subcommand (agent/src/benchprog.rs).
//!
//! Not part of `cargo xtask test`: it takes minutes and its figures are
//! timings, which tests never assert on.
use std::{
    fs,
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::{setup, util, util::Workspace};

mod agent;
mod client;
mod emptyprog;
mod fastpath;
mod firewall;
mod fleet;
mod floor;
mod goals;
mod grants;
mod host;
mod measure;
mod progstats;
mod report;
mod rollout;
mod scale;
pub(crate) mod stats;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Options {
    /// Fewer, shorter runs and at most 100,000 grants (about a minute, plus
    /// filling an agent to 10,000 grants for the grant-scale table): for
    /// trying the bench itself. Its figures are not the reference ones.
    #[arg(long)]
    quick: bool,
    /// Run only these tables (default: all): `comparison` (tables 1-6:
    /// per-packet cost, connection rate, revocation, bulk load, footprint,
    /// scale), `grants` (table 7: time per grant at scale) and `rollout`
    /// (table 8: usage, discovery and audit mode on the connect path),
    /// `fastpath` (table 9: per-packet cost of marked and unmarked flows,
    /// a deep cgroup entry, a stream, a deny flood, reload to cut),
    /// `scale` (table 10: memory, restart and bulk load with a million
    /// journaled grants, beside `nft -f`), `fleet` (table 11: a real etcd
    /// and N agents; revoke and grant propagation, re-convergence after an
    /// etcd restart, idle memory and CPU).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Journaled grants for table 10 (default 1,000,000; `--quick`
    /// 100,000): a smaller N for a quick look at `--only scale`.
    #[arg(long)]
    scale_grants: Option<u32>,
    /// Numbers of hosts (agents) for the fleet table (default: 10 and 50;
    /// with --quick, 10).
    #[arg(long, value_delimiter = ',')]
    fleet_hosts: Vec<usize>,
    #[command(subcommand)]
    helper: Option<Helper>,
}

/// The parts of the report `--only` selects.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Comparison,
    Grants,
    Rollout,
    Fastpath,
    Scale,
    Fleet,
}

/// What the bench runs inside its cgroup and namespaces.
#[derive(clap::Subcommand)]
enum Helper {
    #[command(hide = true)]
    Client(client::ClientArgs),
    #[command(hide = true)]
    Probe(client::ProbeArgs),
    #[command(hide = true)]
    Rr(client::RrArgs),
    #[command(hide = true)]
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where to listen.
    #[arg(long)]
    addr: std::net::SocketAddrV4,
}

fn plan(quick: bool) -> measure::Plan {
    if quick {
        measure::Plan {
            runs: 3,
            connects: 3_000,
            run_seconds: 3.0,
            revocations: 20,
            idle_seconds: 3,
            sizes: vec![1, 10_000, 100_000],
            compare_at: 10_000,
            iptables_rules: vec![1_000],
            test_run_repeat: 100_000,
            test_run_runs: 3,
            bulk_starts: 1,
            grants: grants::GrantPlan {
                sizes: vec![1_000, 10_000],
                socket_runs: 100,
                process_runs: 15,
                fill_limit: std::time::Duration::from_secs(300),
            },
            scale_grants: 100_000,
            scale_rounds: 1,
        }
    } else {
        measure::Plan {
            runs: 9,
            connects: 20_000,
            run_seconds: 5.0,
            revocations: 200,
            idle_seconds: 30,
            sizes: vec![1, 10_000, 100_000, 1_000_000],
            compare_at: 100_000,
            iptables_rules: vec![1_000, 10_000],
            test_run_repeat: 100_000,
            test_run_runs: 15,
            bulk_starts: 3,
            grants: grants::GrantPlan {
                sizes: vec![1_000, 100_000, 1_000_000],
                socket_runs: 200,
                process_runs: 30,
                fill_limit: std::time::Duration::from_secs(1800),
            },
            scale_grants: 1_000_000,
            scale_rounds: 3,
        }
    }
}

pub(crate) fn main(options: Options, ws: &Workspace) -> Result<()> {
    match options.helper {
        Some(Helper::Client(args)) => return client::client(args),
        Some(Helper::Probe(args)) => return client::probe(args),
        Some(Helper::Rr(args)) => return client::rr(args),
        Some(Helper::Serve(args)) => return host::serve(args.addr),
        None => {}
    }
    if !util::is_root() {
        bail!(
            "the bench loads eBPF programs, creates cgroups, namespaces and firewall rules, and \
             must run as root (euid is {})",
            util::euid()
        );
    }
    setup::setup(ws)?;
    firewall::require_tools(ws)?;
    let portcullis = build_bench_agent(ws)?;
    let started = Instant::now();
    host::catch_interrupts();
    let _lock = host::BenchLock::acquire()?;
    let mut removed = host::sweep_leftovers();
    removed.extend(firewall::sweep_leftovers());
    for r in &removed {
        eprintln!("bench: removed a leftover of an earlier run: {r}");
    }
    let rules_before = host::ruleset()?;

    let mut plan = plan(options.quick);
    if let Some(n) = options.scale_grants {
        plan.scale_grants = n.max(1);
    }
    let parts = if options.only.is_empty() {
        vec![
            Part::Comparison,
            Part::Grants,
            Part::Rollout,
            Part::Fastpath,
            Part::Scale,
            Part::Fleet,
        ]
    } else {
        options.only.clone()
    };
    let fleet_plan = fleet::FleetPlan {
        sizes: if !options.fleet_hosts.is_empty() {
            options.fleet_hosts.clone()
        } else if options.quick {
            vec![10]
        } else {
            vec![10, 50]
        },
        rounds: if options.quick { 5 } else { 20 },
        idle_seconds: if options.quick { 10 } else { 30 },
    };
    if let Some(n) = fleet_plan.sizes.iter().find(|n| **n == 0 || **n > 200) {
        bail!("--fleet-hosts {n}: from 1 to 200 agents");
    }
    let result = run_all(&portcullis, plan.clone(), &parts, &fleet_plan, started);
    // Every guard has dropped by now: compare the host's rules.
    let rules_after = host::ruleset()?;
    let unchanged = rules_before == rules_after;
    if !unchanged {
        eprintln!(
            "bench: WARNING: `nft list ruleset` differs from before the bench:\n--- before\n{rules_before}\n--- after\n{rules_after}"
        );
    }
    let Results {
        machine,
        comparison,
        grants,
        rollout,
        fastpath,
        scale,
        fleet,
    } = result?;
    let mut markdown = report::machine_line(&machine, started.elapsed(), unchanged);
    let mut figures = goals::Figures::default();
    let mut body = String::new();
    let mut json = serde_json::Map::new();
    if let Some(Comparison {
        per_packet,
        peers,
        ours,
        bulk,
        floor,
    }) = comparison
    {
        let mut rates = ours.rates;
        rates.extend(peers.rates);
        rates.extend(floor.rates);
        let mut costs = ours.costs;
        costs.extend(floor.costs);
        let report = report::Report {
            machine,
            plan,
            per_packet,
            rates,
            scale: ours.scale,
            footprint: ours.footprint,
            revocations: vec![ours.revocation, peers.revocation],
            bulk,
            xdp_mode: ours.xdp_mode,
            costs,
            host_rules_unchanged: unchanged,
            took: started.elapsed(),
            clk_tck: clk_tck(),
        };
        report.figures(&mut figures);
        body.push_str(&report.markdown());
        if let serde_json::Value::Object(m) = report.json() {
            json = m;
        }
    } else {
        json.insert("machine".into(), machine.json());
        json.insert(
            "took_seconds".into(),
            started.elapsed().as_secs_f64().into(),
        );
        json.insert("host_rules_unchanged".into(), unchanged.into());
    }
    if let Some(g) = grants {
        body.push_str(&g.markdown());
        json.insert("grant_scale".into(), g.json());
    }
    if let Some(r) = rollout {
        body.push_str(&r.markdown());
        json.insert("rollout".into(), r.json());
    }
    if let Some(f) = fastpath {
        f.figures(&mut figures);
        body.push_str(&f.markdown());
        json.insert("fastpath".into(), f.json());
    }
    if let Some(s) = scale {
        s.figures(&mut figures);
        body.push_str(&s.markdown());
        json.insert("scale".into(), s.json());
    }
    if let Some(f) = fleet {
        body.push_str(&f.markdown());
        json.insert("fleet".into(), f.json());
    }
    markdown.push_str(&figures.markdown());
    markdown.push_str(&body);
    json.insert("goals".into(), figures.json());
    println!("{markdown}");
    let dir = ws.target_dir()?.join("bench");
    fs::create_dir_all(&dir)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let json = serde_json::to_string_pretty(&serde_json::Value::Object(json))?;
    for name in [format!("bench-{stamp}.json"), "latest.json".into()] {
        fs::write(dir.join(name), &json)?;
    }
    fs::write(dir.join("latest.md"), &markdown)?;
    eprintln!(
        "bench: done in {}; saved {} and latest.md",
        util::human(started.elapsed()),
        dir.join(format!("bench-{stamp}.json")).display()
    );
    Ok(())
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100)
}

/// Everything measured, before it becomes a report.
struct Results {
    machine: report::Machine,
    comparison: Option<Comparison>,
    grants: Option<grants::GrantScale>,
    rollout: Option<rollout::Rollout>,
    fastpath: Option<fastpath::FastPath>,
    scale: Option<scale::Scale>,
    fleet: Option<fleet::Fleet>,
}

/// Tables 1-6: Portcullis beside nftables and iptables.
struct Comparison {
    per_packet: serde_json::Value,
    peers: measure::PeerResults,
    ours: measure::OurResults,
    bulk: report::Bulk,
    /// Empty programs at the same hooks (table 2's floor rows).
    floor: floor::Floor,
}

/// Removes a directory tree on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes the bench's bpffs directory (and anything left pinned in it) on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = host::remove_pins(&self.0) {
            eprintln!("bench: warning: removing {}: {e}", self.0.display());
        }
    }
}

/// Creates the fixtures, runs every measurement, and drops the fixtures
/// (in reverse order) whatever happens.
fn run_all(
    portcullis: &std::path::Path,
    plan: measure::Plan,
    parts: &[Part],
    fleet_plan: &fleet::FleetPlan,
    started: Instant,
) -> Result<Results> {
    let pid = std::process::id();
    let work = Scratch(std::env::temp_dir().join(format!("{}-{pid}", host::PREFIX)));
    fs::create_dir(&work.0).with_context(|| format!("creating {}", work.0.display()))?;
    let xtask = host::world_executable(&std::env::current_exe()?, &work.0)?;
    let bpffs = Pins(PathBuf::from(host::BPFFS_ROOT).join(format!("{}-{pid}", host::PREFIX)));
    fs::create_dir(&bpffs.0).with_context(|| format!("creating {}", bpffs.0.display()))?;
    let cgroups = host::Cgroups::create()?;
    let filtered_ns = host::Netns::create('x', 0)?;
    let plain_ns = host::Netns::create('p', 1)?;
    // The veth server stays in the bench's process (its packets come from
    // the namespaces); the loopback ones run in the client's cgroup.
    let server = host::Server::start(&[filtered_ns.host_addr, plain_ns.host_addr])?;
    let _loop_filtered = host::LoopServer::start(
        &xtask,
        &cgroups.filtered,
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, server.port),
    )?;
    let _loop_plain = host::LoopServer::start(
        &xtask,
        &cgroups.plain,
        std::net::SocketAddrV4::new(measure::PLAIN_LOOPBACK, server.port),
    )?;
    let (nft, iptables) = firewall::versions();
    let machine = report::Machine::probe(nft, iptables);
    let bench = measure::Bench {
        plan,
        portcullis: portcullis.to_path_buf(),
        xtask,
        work: work.0.clone(),
        bpffs: bpffs.0.clone(),
        cgroups: &cgroups,
        filtered_ns: &filtered_ns,
        plain_ns: &plain_ns,
        server: &server,
        started,
    };
    let comparison = if parts.contains(&Part::Comparison) {
        let per_packet = bench.per_packet()?;
        let peers = bench.peers()?;
        // No agent runs between the peers and Portcullis: the floors' turn.
        let floor = bench.floors()?;
        let ours = bench.portcullis()?;
        let bulk = bench.bulk(&peers, &ours)?;
        Some(Comparison {
            per_packet,
            peers,
            ours,
            bulk,
            floor,
        })
    } else {
        None
    };
    let grants = if parts.contains(&Part::Grants) {
        Some(bench.grant_scale()?)
    } else {
        None
    };
    let rollout = if parts.contains(&Part::Rollout) {
        Some(bench.rollout()?)
    } else {
        None
    };
    let fastpath = if parts.contains(&Part::Fastpath) {
        Some(bench.fastpath()?)
    } else {
        None
    };
    let scale = if parts.contains(&Part::Scale) {
        Some(bench.scale()?)
    } else {
        None
    };
    let fleet = if parts.contains(&Part::Fleet) {
        Some(bench.fleet(fleet_plan)?)
    } else {
        None
    };
    Ok(Results {
        machine,
        comparison,
        grants,
        rollout,
        fastpath,
        scale,
        fleet,
    })
}

/// Builds the release agent with its `bench` feature, which adds the hidden
/// `portcullis bench-dataplane` (BPF_PROG_TEST_RUN) the bench measures with.
fn build_bench_agent(ws: &Workspace) -> Result<PathBuf> {
    let mut cmd = ws.cargo();
    cmd.args([
        "build",
        "--release",
        "--package",
        "portcullis",
        "--features",
        "bench",
    ]);
    util::run(&mut cmd)?;
    Ok(ws.target_dir()?.join("release").join("portcullis"))
}
