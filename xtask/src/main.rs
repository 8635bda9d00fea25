//! `cargo xtask`: project automation for Portcullis.
//!
//! Each subcommand lives in its own module with an `Options` struct (clap
//! `Args`) and a `main(options, &Workspace)` function. Adding a subcommand is
//! one `Command` variant, one `match` arm and one module.

mod bench;
mod install;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::util::Workspace;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Portcullis project automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need and is missing (idempotent).
    Setup(setup::Options),
    /// Run setup, then build the agent (`cargo build -p portcullis`).
    Build(run::BuildOptions),
    /// Run setup, build the agent (release) and run it in the foreground as root.
    Run(run::RunOptions),
    /// Run setup, then the unit, integration and privileged end-to-end tests.
    Test(test::Options),
    /// Build and install the binary, systemd unit, default config and docs
    /// (under --destdir, or on this host).
    Install(install::InstallOptions),
    /// Build a .deb under target/package/.
    Package(install::PackageOptions),
    /// Measure Portcullis against nftables and iptables (as root; about 5
    /// minutes) and time per grant with up to 1,000,000 live grants (as long
    /// as filling takes, at most 30 minutes): Markdown tables on stdout,
    /// JSON in target/bench/.
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Plain text, without the backtrace anyhow adds under RUST_BACKTRACE.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {}", cause.to_string().replace('\n', "\n    "));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let ws = Workspace::new()?;
    match cli.command {
        Command::Setup(options) => setup::main(options, &ws),
        Command::Build(options) => run::build_main(options, &ws),
        Command::Run(options) => run::run_main(options, &ws),
        Command::Test(options) => test::main(options, &ws),
        Command::Install(options) => install::install_main(options, &ws),
        Command::Package(options) => install::package_main(options, &ws),
        Command::Bench(options) => bench::main(options, &ws),
    }
}
