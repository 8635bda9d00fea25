//! `cargo xtask build` and `cargo xtask run`.

use std::{ffi::OsString, os::unix::process::CommandExt, path::PathBuf, process::Command};

use anyhow::{bail, Result};

use crate::{setup, util, util::Workspace};

/// The agent's package and binary.
pub(crate) const AGENT: &str = "portcullis";

#[derive(clap::Args)]
pub(crate) struct BuildOptions {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

#[derive(clap::Args)]
pub(crate) struct RunOptions {
    /// Extra arguments for `portcullis agent`, after `--`.
    #[arg(last = true, value_name = "AGENT_ARGS")]
    agent_args: Vec<OsString>,
}

pub(crate) fn build_main(options: BuildOptions, ws: &Workspace) -> Result<()> {
    setup::setup(ws)?;
    let bin = build_agent(ws, options.release)?;
    eprintln!("build: ok ({})", bin.display());
    Ok(())
}

/// `cargo build -p portcullis [--release]`; returns the binary's path.
/// agent/build.rs builds the eBPF object with nightly and bpf-linker, which
/// children find in PATH ($CARGO_HOME/bin first).
pub(crate) fn build_agent(ws: &Workspace, release: bool) -> Result<PathBuf> {
    let mut cmd = ws.cargo();
    cmd.args(["build", "--package", AGENT]);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(ws.target_dir()?.join(profile).join(AGENT))
}

pub(crate) fn run_main(options: RunOptions, ws: &Workspace) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the agent loads eBPF programs and must run as root (euid is {})",
            util::euid()
        );
    }
    setup::setup(ws)?;
    let bin = build_agent(ws, true)?;
    let policies = trusted_policies(ws)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("agent")
        .arg("--policies")
        .arg(&policies)
        .args(&options.agent_args);
    eprintln!("run: {}", util::describe(&cmd));
    // Replace this process so that signals reach the agent directly.
    let err = cmd.exec();
    bail!("could not run `{}`: {err}", util::describe(&cmd))
}

/// Whether the agent would trust `path` as a policy directory or file:
/// owned by root and not writable by group or others (docs/policy.md).
fn trusted(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == 0 && meta.mode() & 0o022 == 0
}

/// The example policies, where the agent will accept them. The agent reads
/// only root-owned policy files that group and others cannot write; a
/// checkout made by an ordinary user (or with a group-writable umask) is
/// copied to a root-owned directory, /run/portcullis-xtask/policies, instead, and the agent
/// then reads that copy (edits to `policies/` need another `cargo xtask run`).
fn trusted_policies(ws: &Workspace) -> Result<PathBuf> {
    use std::{fs, os::unix::fs::PermissionsExt};
    let repo = ws.root.join("policies");
    let mut all_trusted = trusted(&fs::metadata(&repo)?);
    // The agent also checks every directory above the policy directory
    // (root's, and not writable by others unless sticky).
    for dir in repo.canonicalize()?.ancestors().skip(1) {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(dir)?;
        all_trusted &= m.uid() == 0 && (m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0);
    }
    for entry in fs::read_dir(&repo)? {
        let entry = entry?;
        all_trusted &= trusted(&fs::symlink_metadata(entry.path())?);
    }
    if all_trusted {
        return Ok(repo);
    }
    // Not under target/: the checkout's owner could swap a copy there.
    let copy = PathBuf::from("/run/portcullis-xtask/policies");
    let _ = fs::remove_dir_all(&copy);
    fs::create_dir_all(&copy)?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&copy, Some(0), Some(0))?;
    for entry in fs::read_dir(&repo)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let to = copy.join(entry.file_name());
        fs::copy(entry.path(), &to)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644))?;
        std::os::unix::fs::chown(&to, Some(0), Some(0))?;
    }
    eprintln!(
        "run: {} is not root-owned or is writable by group/others, which the agent refuses \
         for policy files; using a root-owned copy in {}",
        repo.display(),
        copy.display()
    );
    Ok(copy)
}
