//! The `portcullis` command line: argument parsing, client-side checks, and
//! output (readable tables for people, `--json` for scripts).
//!
//! Exit codes: 0 done; 1 the agent refused (the message says why); 2 bad
//! arguments or an invalid policy (`check`); 3 the agent could not be reached.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    clock,
    control::{self, GrantView, ListView, Reply, Request, Response, StatusView},
    identity::{parse_ttl, Identity},
    policy::{self, HostCheck, Severity, SystemHost},
    server::AgentOptions,
};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "Port-level micro-segmentation: internal ports closed by default, opened per identity for a bounded time, enforced by eBPF."
)]
pub struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "PORTCULLIS_SOCKET", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent in the foreground: load and attach the programs, apply
    /// the policy, serve the control socket.
    Agent(AgentArgs),
    /// Open SEGMENT to IDENTITY for a bounded time; prints the grant's id.
    Grant {
        segment: String,
        /// unit:NAME.service, cgroup:/PATH, user:NAME, uid:N, group:NAME, gid:N, peer:CIDR
        identity: String,
        /// How long, e.g. 30m, 2h, 1h30m (default: the segment's default_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// Why (required where the segment's policy says so).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant by id, every grant of an identity, or every grant on a segment.
    Revoke {
        /// The grant id printed by `grant` and `list`.
        id: Option<u64>,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        segment: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show standing allows and live grants with their time left.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show what the agent enforces: programs, segments, counters, capacity.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate policy files or directories offline (no root, no agent).
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Stop enforcing: detach every program and remove every pinned map of
    /// the agent's bpffs directory. Explicit by design: stopping the agent
    /// never does this.
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/portcullis")]
        bpffs: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Directory of segment policy files (*.toml).
    #[arg(long, default_value = "/etc/portcullis/policies")]
    pub policies: PathBuf,
    /// bpffs directory for this agent's pinned programs and maps.
    #[arg(long, default_value = "/sys/fs/bpf/portcullis")]
    pub bpffs: PathBuf,
    /// cgroup to attach to, as a filesystem path (default: the cgroup2 root).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[arg(long, default_value = "/var/lib/portcullis")]
    pub state_dir: PathBuf,
    #[arg(long, default_value = "/var/log/portcullis/audit.jsonl")]
    pub audit_log: PathBuf,
    /// Control socket file mode (octal).
    #[arg(long, default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Group that may use the control socket.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Capacity of the local grant map.
    #[arg(long, default_value_t = agent_common::DEFAULT_MAX_GRANTS)]
    pub max_grants: u32,
    /// Capacity of the peer prefix map.
    #[arg(long, default_value_t = agent_common::DEFAULT_MAX_PEERS)]
    pub max_peers: u32,
    /// Interface on which XDP drops remote traffic to protected ports unless
    /// a `peer:` grant covers its source (repeatable).
    #[arg(long = "xdp-iface", value_name = "IFACE")]
    pub xdp_ifaces: Vec<String>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 660"))
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis: {msg}");
    ExitCode::from(code)
}

/// Runs a client command (everything but `agent`).
pub fn run_client(cli: Cli) -> ExitCode {
    let (request, json) = match cli.command {
        Command::Agent(_) => unreachable!("handled by main"),
        Command::Check { paths } => return check(&paths),
        Command::Uninstall { bpffs } => return uninstall(&bpffs),
        Command::Grant {
            segment,
            identity,
            ttl,
            reason,
            json,
        } => {
            if let Err(e) = identity.parse::<Identity>() {
                return fail(2, format!("identity {identity:?}: {e}"));
            }
            if let Some(t) = &ttl {
                if let Err(e) = parse_ttl(t) {
                    return fail(2, format!("--ttl {t:?}: {e}"));
                }
            }
            (
                Request::Grant {
                    segment,
                    identity,
                    ttl,
                    reason,
                },
                json,
            )
        }
        Command::Revoke {
            id,
            identity,
            segment,
            json,
        } => {
            if id.is_none() && identity.is_none() && segment.is_none() {
                return fail(
                    2,
                    "revoke needs a grant id, --identity IDENTITY [--segment S], or --segment S",
                );
            }
            if id.is_some() && (identity.is_some() || segment.is_some()) {
                return fail(
                    2,
                    "revoke takes either a grant id or --identity/--segment, not both",
                );
            }
            if let Some(i) = &identity {
                if let Err(e) = i.parse::<Identity>() {
                    return fail(2, format!("identity {i:?}: {e}"));
                }
            }
            (
                Request::Revoke {
                    id,
                    identity,
                    segment,
                },
                json,
            )
        }
        Command::List { json } => (Request::List {}, json),
        Command::Status { json } => (Request::Status {}, json),
    };
    let response = match control::call(&cli.socket, &request) {
        Ok(r) => r,
        Err(e) => return fail(3, e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).expect("serializes")
        );
        return match response {
            Response::Ok(_) => ExitCode::SUCCESS,
            Response::Error(_) => ExitCode::from(1),
        };
    }
    match response {
        Response::Error(refusal) => fail(1, refusal.message),
        Response::Ok(reply) => {
            print!("{}", render(&reply));
            ExitCode::SUCCESS
        }
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let (policy, diags) = policy::load_paths(paths, &SystemHost, HostCheck::Warn);
    for d in &diags.0 {
        eprintln!("{d}");
    }
    let errors = diags
        .0
        .iter()
        .filter(|d| matches!(d.severity, Severity::Error))
        .count();
    match policy {
        Some(p) if errors == 0 => {
            for line in p.summary_lines() {
                println!("{line}");
            }
            let warnings = diags.0.len();
            println!(
                "ok: {} segment(s) in {} file(s){}",
                p.segments.len(),
                p.files.len(),
                if warnings > 0 {
                    format!(", {warnings} warning(s)")
                } else {
                    String::new()
                }
            );
            ExitCode::SUCCESS
        }
        _ => fail(2, format!("{errors} error(s); nothing was applied")),
    }
}

fn uninstall(bpffs: &std::path::Path) -> ExitCode {
    match crate::dataplane::uninstall(bpffs) {
        Ok(removed) if removed.is_empty() => {
            println!("nothing pinned under {}; not enforcing", bpffs.display());
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            println!(
                "removed {} pinned object(s) under {}; ports are no longer protected",
                removed.len(),
                bpffs.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, format!("uninstall of {} failed: {e}", bpffs.display())),
    }
}

fn left(secs: u64) -> String {
    clock::human(Duration::from_secs(secs))
}

/// A plain text table with a header row.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn grant_line(g: &GrantView) -> String {
    format!(
        "grant {}: {} → {} ({}) for {}, until {}",
        g.id,
        g.identity,
        g.segment,
        g.ports.join(", "),
        left(g.remaining_secs),
        g.expires_at
    )
}

pub fn render(reply: &Reply) -> String {
    match reply {
        Reply::Granted { grant } => format!("{}\n", grant_line(grant)),
        Reply::Revoked { grants } if grants.is_empty() => {
            "no matching grants; nothing revoked\n".into()
        }
        Reply::Revoked { grants } => grants
            .iter()
            .map(|g| format!("revoked {}\n", grant_line(g).trim_start_matches("grant ")))
            .collect(),
        Reply::List(list) => render_list(list),
        Reply::Status(status) => render_status(status),
    }
}

fn render_list(l: &ListView) -> String {
    let mut out = String::new();
    if l.standing.is_empty() && l.grants.is_empty() {
        return "no standing allows and no grants\n".into();
    }
    if !l.standing.is_empty() {
        let rows: Vec<Vec<String>> = l
            .standing
            .iter()
            .map(|a| {
                vec![
                    a.segment.clone(),
                    a.identity.clone(),
                    a.ports.join(","),
                    a.unresolved
                        .clone()
                        .map(|u| format!("not resolved: {u}"))
                        .unwrap_or_else(|| "standing".into()),
                ]
            })
            .collect();
        out.push_str(&table(&["SEGMENT", "IDENTITY", "PORTS", "ACCESS"], &rows));
    }
    if !l.grants.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        let rows: Vec<Vec<String>> = l
            .grants
            .iter()
            .map(|g| {
                vec![
                    g.id.to_string(),
                    g.segment.clone(),
                    g.identity.clone(),
                    left(g.remaining_secs),
                    g.actor.clone(),
                    g.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ID", "SEGMENT", "IDENTITY", "LEFT", "GRANTED BY", "REASON"],
            &rows,
        ));
    }
    out
}

fn render_status(s: &StatusView) -> String {
    let mut out = format!(
        "portcullis {} enforcing on cgroup {}\nprograms: {}\npins: {}\npolicy: {} ({} file(s))\ngrants: {} live, {} map entries of {}; peer capacity {}\nlocal addresses: {}\n",
        s.version,
        s.cgroup,
        s.programs.join(", "),
        s.pin_dir,
        &s.policy_digest[..s.policy_digest.len().min(12)],
        s.policy_files.len(),
        s.grants,
        s.grant_entries,
        s.grant_capacity,
        s.peer_capacity,
        s.local_addresses,
    );
    if let Some(r) = &s.last_reload {
        out.push_str(&format!(
            "last reload: {} {}\n",
            r.at,
            if r.ok {
                "ok".to_string()
            } else {
                format!("FAILED:\n  {}", r.errors.join("\n  "))
            }
        ));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .segments
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.ports.join(","),
                g.allowed.to_string(),
                g.denied.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["SEGMENT", "PORTS", "ALLOWED", "DENIED"], &rows));
    out
}

impl AgentArgs {
    pub fn into_options(self, socket: PathBuf) -> AgentOptions {
        AgentOptions {
            policies: self.policies,
            socket,
            socket_mode: self.socket_mode,
            socket_group: self.socket_group,
            bpffs: self.bpffs,
            cgroup: self.cgroup,
            state_dir: self.state_dir,
            audit_log: self.audit_log,
            max_grants: self.max_grants,
            max_peers: self.max_peers,
            xdp_ifaces: self.xdp_ifaces,
            refresh: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn socket_mode_is_octal() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert!(parse_mode("999").is_err());
    }
}
