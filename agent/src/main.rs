//! `portcullis`: the agent (`portcullis agent`) and its command line, in one binary.
use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{self, Cli, Command};

fn main() -> ExitCode {
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
            match runtime.block_on(portcullis::server::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("portcullis: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "bench")]
        Command::BenchDataplane(args) => portcullis::benchprog::main(args),
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
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
