//! Portcullis: a port-level micro-segmentation agent.
//!
//! # Layout
//! - `identity`: identities and port ranges: parsing and display.
//! - `duration`: bounded durations (TTLs, intervals), parsed once where they enter.
//! - [`policy`]: segment policy files: parse, validate, diagnostics.
//! - `resolve`: from an identity to the kernel keys that stand for it here.
//! - `ledger`: which map entries each source of access opens.
//! - `dataplane`: the only module that touches aya: load, attach, pin, maps;
//!   its `enforcement` part checks the kernel against what it attached and repairs.
//! - `kernel`: the `KernelMaps` seam between the core and the kernel maps (and a fake for tests).
//! - `kernlog`: kernel debug lines (`portcullis debug on|off`) forwarded into the log.
//! - `lock`: one agent per pin directory, state directory, audit log and socket.
//! - `pindir`: pin directories only root can touch.
//! - `actor`: who did something (from peer credentials), and Unix milliseconds.
//! - `agent`: the agent's state and operations (grant, revoke, expire, reload).
//! - `requests`: the book of access requests (pending, approved, denied, expired).
//! - `explain`: why a subject may or may not reach a port, read from the kernel maps.
//! - `server`: the agent process: start-up, control socket, timers, signals.
//! - `control`: the control-socket protocol and client.
//! - `connlimit`: how many control connections are served, per uid and for root.
//! - `termtext`: free text the agent refuses, and the one escaping function for output.
//! - `audit`: the hash-chained audit log, its rotation, and `portcullis audit`.
//! - `notifications`: `[notify]` webhooks and commands, fed by the audit writer, delivered
//!   off the agent's path by a thread per sink.
//! - `denylog`: kernel deny events → the deny log and the journal, rate limited.
//! - `metrics`: the Prometheus snapshot, exposition and endpoint; `observe` takes the
//!   snapshot from the agent and starts the deny-log reader and the endpoint.
//! - `journal`: the agent's memory across restarts: a checksummed, fsync'd log of grants,
//!   requests, ids and segment ids, with snapshots; `state` holds the grant type and
//!   reads the state file of earlier versions (imported once).
//! - `cli`: the command line.
//! - `settings`: flags over the configuration file (`/etc/portcullis/agent.toml`) over
//!   defaults, resolved once; `duration` parses every duration a user writes.
//! - `watch`: inotify watches on the policy directory and the cgroup tree.
//! - `sweep`: judging every open flow with the kernel maps and cutting refused ones
//!   (at start, after revoke, expiry and reload, on kill requests); `sockdiag` is its netlink shim.
//! - `cgroupfs`, `hostaddrs`, `clock`, `mounts`: host facts.
//! - `benchprog` (feature `bench`): `portcullis bench-dataplane` (hidden): per-packet cost for `cargo xtask bench`;
//!   `benchjournal`: `portcullis bench-journal` (hidden): a state directory with N journaled grants.
//!
//! The crate's public surface is [`main`] (the binary is a one-line call to
//! it) and [`policy`] (for the fuzz target); every other module is
//! `pub(crate)`, so `unreachable_pub` and dead-code warnings see the truth.
pub(crate) mod actor;
pub(crate) mod agent;
pub(crate) mod audit;
#[cfg(feature = "bench")]
pub(crate) mod benchjournal;
#[cfg(feature = "bench")]
pub(crate) mod benchprog;
pub(crate) mod cgroupfs;
pub(crate) mod cli;
pub(crate) mod clock;
pub(crate) mod connlimit;
pub(crate) mod control;
pub(crate) mod cover;
pub(crate) mod dataplane;
pub(crate) mod denylog;
pub(crate) mod discover;
pub(crate) mod duration;
pub(crate) mod explain;
pub(crate) mod fleet;
pub(crate) mod hostaddrs;
pub(crate) mod identity;
pub(crate) mod journal;
pub(crate) mod kernel;
pub(crate) mod kernlog;
pub(crate) mod ledger;
pub(crate) mod lock;
pub(crate) mod metrics;
pub(crate) mod mounts;
pub(crate) mod name;
pub(crate) mod notifications;
pub(crate) mod notify;
pub(crate) mod observe;
pub(crate) mod pindir;
pub mod policy;
pub(crate) mod privileges;
pub(crate) mod requests;
pub(crate) mod resolve;
pub(crate) mod server;
pub(crate) mod settings;
pub(crate) mod sockdiag;
pub(crate) mod startup;
pub(crate) mod state;
pub(crate) mod sweep;
pub(crate) mod termtext;
pub(crate) mod usage;
pub(crate) mod watch;

#[cfg(test)]
mod layout_tests;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

/// The `portcullis` binary: the agent (`portcullis agent`) or the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => {
            init_tracing();
            let opts = match args.into_options(cli.socket) {
                Ok(opts) => opts,
                Err(e) => {
                    eprintln!("portcullis: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("portcullis: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(server::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                // Once: through the log (a terminal, or the journal, where
                // stderr would repeat it), or on stderr when logging is off.
                Err(e) => {
                    if tracing::enabled!(tracing::Level::ERROR) {
                        tracing::error!("{e:#}");
                    } else {
                        eprintln!("portcullis: {e:#}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "bench")]
        Command::BenchDataplane(args) => benchprog::main(args),
        #[cfg(feature = "bench")]
        Command::BenchJournal(args) => benchjournal::main(args),
        _ => cli::run_client(cli),
    }
}

/// Logs go to the journal, with their priority levels, when systemd
/// connected stderr to it (JOURNAL_STREAM); to stderr otherwise.
fn init_tracing() {
    use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};
    let filter =
        EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("portcullis".into()))
                .init();
            return;
        }
    }
    // Colours only for a person at a terminal: a file, a pipe or a log
    // collector gets plain text.
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
