//! `cargo xtask build` and `cargo xtask run`.

use std::{ffi::OsString, os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{bail, Result};

use crate::{setup, util, util::Workspace};

/// The agent's package and binary.
pub const AGENT: &str = "portcullis";

#[derive(clap::Args)]
pub struct BuildOptions {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

#[derive(clap::Args)]
pub struct RunOptions {
    /// Extra arguments for `portcullis agent`, after `--`.
    #[arg(last = true, value_name = "AGENT_ARGS")]
    agent_args: Vec<OsString>,
}

pub fn build_main(options: BuildOptions, ws: &Workspace) -> Result<()> {
    setup::setup(ws)?;
    let bin = build_agent(ws, options.release)?;
    eprintln!("build: ok ({})", bin.display());
    Ok(())
}

/// `cargo build -p portcullis [--release]`; returns the binary's path.
/// agent/build.rs builds the eBPF object with nightly and bpf-linker, which
/// children find in PATH ($CARGO_HOME/bin first).
pub fn build_agent(ws: &Workspace, release: bool) -> Result<PathBuf> {
    let mut cmd = ws.cargo();
    cmd.args(["build", "--package", AGENT]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(ws.target_dir()?.join(profile).join(AGENT))
}

pub fn run_main(options: RunOptions, ws: &Workspace) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the agent loads eBPF programs and must run as root (euid is {})",
            util::euid()
        );
    }
    setup::setup(ws)?;
    let bin = build_agent(ws, true)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("agent")
        .arg("--policies")
        .arg(ws.root.join("policies"))
        .args(&options.agent_args);
    eprintln!("run: {}", util::describe(&cmd));
    // Replace this process so that signals reach the agent directly.
    let err = cmd.exec();
    bail!("could not run `{}`: {err}", util::describe(&cmd))
}
