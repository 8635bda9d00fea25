//! `cargo xtask test`: unit, integration and privileged end-to-end tests.

use std::{env, ffi::OsString, time::Instant};

use anyhow::{bail, Result};

use crate::{run, setup, util, util::Workspace};

/// The crate of privileged end-to-end tests, which run `PORTCULLIS_BIN`.
const E2E_CRATE: &str = "portcullis-tests";
const DEFAULT_TEST_THREADS: &str = "--test-threads=2";

#[derive(clap::Args)]
pub(crate) struct Options {
    /// Not root: run only the unit tests of libraries and binaries, without
    /// the end-to-end tests (which need root).
    #[arg(long)]
    no_privileged: bool,
    /// Arguments for the test binaries, after `--`: a name filter, --nocapture,
    /// --ignored, ... `--test-threads=2` is added unless given here or in
    /// RUST_TEST_THREADS.
    #[arg(last = true, value_name = "FILTER")]
    args: Vec<OsString>,
}

pub(crate) fn main(options: Options, ws: &Workspace) -> Result<()> {
    let privileged = !options.no_privileged;
    if privileged && !util::is_root() {
        bail!(
            "the end-to-end tests need root (euid is {}): run as root, or pass --no-privileged \
             to run only the unit tests",
            util::euid()
        );
    }
    let start = Instant::now();
    let what = if privileged {
        "unit, integration and end-to-end tests"
    } else {
        "unit tests (no end-to-end tests: --no-privileged)"
    };
    let result = run_tests(ws, privileged, &options.args);
    let took = util::human(start.elapsed());
    match &result {
        Ok(()) => eprintln!("test: ok: {what} passed in {took}"),
        Err(_) => eprintln!("test: FAILED after {took} (the error follows)"),
    }
    result
}

fn run_tests(ws: &Workspace, privileged: bool, args: &[OsString]) -> Result<()> {
    setup::setup(ws)?;
    let mut cmd = ws.cargo();
    // --no-fail-fast: one run reports every failing test binary (CI).
    cmd.args(["test", "--workspace", "--release", "--no-fail-fast"]);
    if privileged {
        // The end-to-end tests spawn the real binary: build it first.
        let bin = run::build_agent(ws, true)?;
        cmd.env("PORTCULLIS_BIN", bin);
    } else {
        cmd.args(["--lib", "--bins", "--exclude", E2E_CRATE]);
    }
    cmd.arg("--").args(args);
    let threads_given = args
        .iter()
        .any(|a| a.to_string_lossy().starts_with("--test-threads"))
        || env::var_os("RUST_TEST_THREADS").is_some();
    if !threads_given {
        cmd.arg(DEFAULT_TEST_THREADS);
    }
    eprintln!("test: {}", util::describe(&cmd));
    util::run(&mut cmd)
}
