//! `portcullis uninstall`: lifting enforcement so that nothing is surprised.
//!
//! Reads the same configuration as the agent (`--config`, its `bpffs` and
//! `audit_log`); refuses a directory with nothing pinned (exit 1); asks for
//! confirmation on a terminal and needs `--yes` otherwise; says which ports
//! it opens. With an agent running on those pins it goes through the agent
//! (a root-only control operation), so the agent stops enforcing knowingly
//! and stays the audit log's only writer; with none, it takes the agent's
//! pin and audit-log locks itself and continues the hash chain.
use std::{
    io::{BufRead, IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Args;

use super::fail;
use crate::{
    control::{self, Reply, Request, Response},
    lock::{self, Holder, Kind},
    settings::{self, AgentConfig},
};

#[derive(Args, Debug)]
pub(crate) struct UninstallArgs {
    /// The agent's configuration file, for `bpffs` and `audit_log` [default:
    /// /etc/portcullis/agent.toml; a missing default file means all defaults].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The agent's bpffs directory [file: bpffs; default: /sys/fs/bpf/portcullis].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// Where the act is recorded [file: audit_log; default: /var/log/portcullis/audit.jsonl].
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// Whether anything is pinned below `dir` (a missing `dir`: no). A
/// directory that cannot be read is an error, not "nothing pinned".
fn has_pins(dir: &Path) -> std::io::Result<bool> {
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(e.path()),
                Ok(_) => return Ok(true),
                Err(_) => {}
            }
        }
    }
    Ok(false)
}

fn ports_text(ports: &[String]) -> String {
    if ports.is_empty() {
        "no protected ports".into()
    } else {
        ports.join(", ")
    }
}

/// Asks on the terminal; true only for an explicit yes.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// The one message a non-root user gets (before anything is tried, so
/// not a cascade of "could not be audited" and "Permission denied").
pub(super) const NEEDS_ROOT: &str = "uninstall needs root: it detaches the agent's programs, removes its pinned maps and records that in the audit log (run it as root, e.g. with sudo)";

pub(super) fn run(args: UninstallArgs) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return fail(1, NEEDS_ROOT);
    }
    let file = match &args.config {
        Some(path) => AgentConfig::load(path, true),
        None => AgentConfig::load(Path::new(settings::DEFAULT_PATH), false),
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => return fail(2, format!("{e:#}")),
    };
    let bpffs = args.bpffs.unwrap_or(file.bpffs);
    let audit_log = args.audit_log.unwrap_or(file.audit_log);
    let pinned = match has_pins(&bpffs) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                1,
                format!(
                    "cannot read {}: {e} (uninstall needs root)",
                    bpffs.display()
                ),
            )
        }
    };
    if !pinned {
        return fail(
            1,
            format!(
                "nothing is pinned under {}: no agent enforces from there, so there is nothing to uninstall (is that the agent's `bpffs`? pass --config or --bpffs)",
                bpffs.display()
            ),
        );
    }
    let agent = lock::holder(Kind::Pins, &bpffs);
    let ports: Vec<String> = crate::dataplane::pinned_ports(&bpffs)
        .map(|p| {
            p.into_iter()
                .map(|(proto, port)| format!("{port}/{}", proto_label(proto)))
                .collect()
        })
        .unwrap_or_default();
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return fail(
                2,
                format!(
                    "uninstall lifts enforcement under {} and opens {}; stdin is not a terminal, so pass --yes to confirm",
                    bpffs.display(),
                    ports_text(&ports)
                ),
            );
        }
        let who = match &agent {
            Some(h) => format!(" (the running agent, {h}, stops)"),
            None => String::new(),
        };
        if !confirm(&format!(
            "Lift enforcement under {}{who}? These ports open to everyone: {}.",
            bpffs.display(),
            ports_text(&ports)
        )) {
            return fail(1, "not confirmed; nothing was changed");
        }
    }
    match agent {
        Some(holder) => through_agent(&bpffs, &holder),
        None => by_itself(&bpffs, &audit_log, &ports),
    }
}

fn proto_label(p: agent_common::Proto) -> &'static str {
    p.name()
}

/// An agent holds the pins: it audits, unpins and stops.
fn through_agent(bpffs: &Path, holder: &Holder) -> ExitCode {
    let Some(socket) = &holder.socket else {
        return fail(
            1,
            format!(
                "another `portcullis uninstall` ({holder}) is removing {} right now",
                bpffs.display()
            ),
        );
    };
    match control::call(socket, &Request::Uninstall {}) {
        Ok(Response::Ok(Reply::Uninstalled {
            bpffs,
            removed,
            pid,
            ports,
        })) => {
            println!(
                "the agent (pid {pid}) removed {removed} pinned object(s) under {bpffs} and stops; ports are no longer protected: {}",
                ports_text(&ports)
            );
            ExitCode::SUCCESS
        }
        Ok(Response::Ok(_)) => fail(1, "the agent answered uninstall with something else"),
        Ok(Response::Error(r)) => fail(1, format!("the agent refused: {}", r.message)),
        Err(e) => fail(
            3,
            format!(
                "an agent ({holder}) holds {} but could not be asked to uninstall: {e}",
                bpffs.display()
            ),
        ),
    }
}

/// No agent: take its locks, continue its audit chain, unpin.
fn by_itself(bpffs: &Path, audit_log: &Path, ports: &[String]) -> ExitCode {
    let me = Holder {
        pid: std::process::id(),
        socket: None,
    };
    let _pins = match lock::take(Kind::Pins, bpffs, &me) {
        Ok(l) => l,
        Err(e) => return fail(1, e),
    };
    // An audit record that cannot be written does not block removal (this
    // is also the emergency exit), but another writer does: the chain
    // would fork.
    let audit_lock = lock::take(Kind::Audit, audit_log, &me);
    if let Err(e @ lock::LockError::Held { .. }) = &audit_lock {
        return fail(1, e);
    }
    let uid = nix::unistd::getuid().as_raw();
    let actor = crate::state::Actor::from_uid(uid, Some(std::process::id() as i32));
    let event = crate::audit::AuditEvent::Uninstall {
        actor,
        bpffs: bpffs.display().to_string(),
        via: "cli".into(),
        ports: ports.to_vec(),
    };
    let recorded = crate::audit::AuditLog::open(audit_log).and_then(|mut log| log.record(event));
    if let Err(e) = recorded {
        eprintln!("portcullis: warning: the uninstall could not be audited: {e}");
    }
    match crate::dataplane::uninstall(bpffs) {
        Ok(removed) => {
            println!(
                "removed {} pinned object(s) under {}; ports are no longer protected: {}",
                removed.len(),
                bpffs.display(),
                ports_text(ports)
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, format!("uninstall of {} failed: {e}", bpffs.display())),
    }
}
