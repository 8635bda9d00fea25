//! The `portcullis` command line: argument parsing, client-side checks, and
//! output (readable tables for people, `--json` for scripts).
//!
//! Exit codes: 0 done; 1 the agent refused (the message says why); 2 bad
//! arguments (including text with control characters, which the agent
//! refuses too) or an invalid policy (`check`); 3 the agent could not be
//! reached.
//!
//! Human-readable output never prints text from the agent raw: replies go
//! through [`termtext::escaped`] before rendering, refusals through
//! [`termtext::escape`]. `--json` prints the reply exactly.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

/// `request --wait`, `explain` arguments, rendering of requests and explanations.
mod jit;
/// `uninstall`: through the running agent, or under its locks.
mod uninstall;

use crate::{
    clock,
    config::{self, AgentConfig},
    control::{self, GrantView, ListView, Reply, Request, Response, StatusView},
    identity::{parse_ttl, Identity},
    policy::{self, HostCheck, Severity, SystemHost},
    server::AgentOptions,
    termtext,
};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "Port-level micro-segmentation: internal ports closed by default, opened per identity for a bounded time, enforced by eBPF."
)]
pub struct Cli {
    /// The agent's control socket [default: `socket` in /etc/portcullis/agent.toml,
    /// else /run/portcullis/control.sock].
    #[arg(long, global = true, env = "PORTCULLIS_SOCKET")]
    pub socket: Option<PathBuf>,
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
    /// Show standing allows, live grants with their time left, and pending requests.
    List {
        /// Only the requests waiting for a decision.
        #[arg(long)]
        pending: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ask for access to SEGMENT for yourself (your user: identity); prints
    /// the request's id. Root or one of the segment's approvers decides.
    Request {
        segment: String,
        /// How long, e.g. 30m (default: the segment's default_ttl; at most its max_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// Why (required where the segment's policy says so).
        #[arg(long)]
        reason: Option<String>,
        /// Wait for the decision: exit 0 when approved, 1 when denied or expired.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request: grants it, for at most the TTL it asked for.
    Approve {
        /// The request id printed by `request` and `list --pending`.
        id: u64,
        /// Grant less time than asked (never more).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Deny a pending request.
    Deny {
        id: u64,
        /// Why; the requester sees it.
        #[arg(long, required = true)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Say which segment, rule or grant decides whether IDENTITY (or the
    /// process --pid PID) may reach PORT/PROTO, read from the kernel maps.
    Explain {
        /// IDENTITY PORT/PROTO, or just PORT/PROTO with --pid.
        #[arg(value_name = "[IDENTITY] PORT/PROTO", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Take the identity from a running process (its cgroup, uid and gid).
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Show what the agent enforces: programs, segments, counters, capacity.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Query the audit trail (`--denies`: the kernel deny log), or `audit verify` its hash chain.
    Audit(crate::audit::query::AuditArgs),
    /// Validate policy files or directories offline (no root, no agent).
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Stop enforcing: detach every program and remove every pinned map of
    /// the agent's bpffs directory (through the agent when one runs; it then
    /// stops). Explicit by design: stopping the agent never does this.
    Uninstall(uninstall::UninstallArgs),
    /// Kernel debug lines in the agent's log (root only): which rule let a
    /// connection through, why one was refused. Off by default; without
    /// on/off, shows the state.
    Debug {
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Per-packet cost of the programs under BPF_PROG_TEST_RUN, as JSON (for `cargo xtask bench`).
    #[command(hide = true)]
    BenchDataplane(crate::benchprog::BenchArgs),
}

/// Flags of `portcullis agent`. Each one left out takes its value from the
/// configuration file (docs/config.md), and from the documented default
/// when the file does not set it either.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent's configuration file (a missing default file means all defaults).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory of segment policy files (*.toml) [file: policy_dir].
    #[arg(long, visible_alias = "policy-dir", value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// bpffs directory for this agent's pinned programs and maps [file: bpffs].
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// cgroup to attach to, as a filesystem path [file: cgroup; default: the cgroup2 root].
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// [file: state_dir]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// [file: audit_log]
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Control socket file mode, octal [file: socket_mode].
    #[arg(long, value_parser = config::parse_mode)]
    pub socket_mode: Option<u32>,
    /// Group that may use the control socket [file: socket_group].
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Capacity of the local grant map [file: max_grants].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_grants: Option<u32>,
    /// Capacity of the peer prefix map [file: max_peers].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_peers: Option<u32>,
    /// How long a pending access request waits for approval, e.g. 1h [file: request_expiry].
    #[arg(long, value_parser = parse_duration_flag)]
    pub request_expiry: Option<Duration>,
    /// Interface on which XDP drops remote traffic to protected ports early
    /// unless a `peer:` grant covers its source; without it, remote peers are
    /// still checked on every interface (repeatable) [file: xdp_ifaces].
    #[arg(long = "xdp-iface", value_name = "IFACE")]
    pub xdp_ifaces: Vec<String>,
    /// How long grants of a segment that leaves the policy are kept (suspended), e.g. 10m [file: grant_grace].
    #[arg(long, value_parser = parse_duration_flag)]
    pub grant_grace: Option<Duration>,
    /// Read policy files that are symbolic links out of the policy directory [file: policy_symlinks_outside].
    #[arg(long)]
    pub policy_symlinks_outside: bool,
    /// Audit rotation, deny log and metrics endpoint.
    #[command(flatten)]
    pub observe: crate::metrics::ObserveArgs,
}

fn parse_duration_flag(s: &str) -> Result<Duration, String> {
    parse_ttl(s).map_err(|e| e.to_string())
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis: {msg}");
    ExitCode::from(code)
}

/// Runs a client command (everything but `agent`).
pub fn run_client(cli: Cli) -> ExitCode {
    let (request, json) = match cli.command {
        Command::Agent(_) | Command::BenchDataplane(_) => unreachable!("handled by main"),
        Command::Check { paths } => return check(&paths),
        Command::Audit(args) => return crate::audit::query::run(args, &client_socket(cli.socket)),
        Command::Uninstall(args) => return uninstall::run(args),
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
        Command::List { pending, json } => (
            if pending {
                Request::Pending {}
            } else {
                Request::List {}
            },
            json,
        ),
        Command::Request {
            segment,
            ttl,
            reason,
            wait,
            json,
        } => {
            if let Some(t) = &ttl {
                if let Err(e) = parse_ttl(t) {
                    return fail(2, format!("--ttl {t:?}: {e}"));
                }
            }
            let request = Request::RequestAccess {
                segment,
                ttl,
                reason,
            };
            if wait {
                if let Err(msg) = sendable(&request) {
                    return fail(2, msg);
                }
                return jit::request_and_wait(&client_socket(cli.socket), request, json);
            }
            (request, json)
        }
        Command::Approve { id, ttl, json } => {
            if let Some(t) = &ttl {
                if let Err(e) = parse_ttl(t) {
                    return fail(2, format!("--ttl {t:?}: {e}"));
                }
            }
            (Request::Approve { id, ttl }, json)
        }
        Command::Deny { id, reason, json } => (Request::Deny { id, reason }, json),
        Command::Explain { args, pid, json } => match jit::explain_request(args, pid) {
            Ok(request) => (request, json),
            Err(msg) => return fail(2, msg),
        },
        Command::Status { json } => (Request::Status {}, json),
        Command::Debug { state, json } => (
            Request::Debug {
                on: state.map(|s| s == "on"),
            },
            json,
        ),
    };
    if let Err(msg) = sendable(&request) {
        return fail(2, msg);
    }
    let response = match control::call(&client_socket(cli.socket), &request) {
        Ok(r) => r,
        Err(e) => return fail(3, e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).expect("serializes")
        );
        return match response {
            Response::Ok(reply) if !not_enforcing(&reply) => ExitCode::SUCCESS,
            _ => ExitCode::from(1),
        };
    }
    match response {
        Response::Error(refusal) => refused(&refusal),
        Response::Ok(reply) => {
            print!("{}", render(&termtext::escaped(&reply)));
            // `status` fails while the kernel lacks part of the enforcement.
            if not_enforcing(&reply) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// Checks what the agent would refuse before sending: text with control
/// characters or direction overrides, a request over the size cap.
fn sendable(request: &Request) -> Result<(), String> {
    control::check_text(request).map_err(|e| e.to_string())?;
    let len = serde_json::to_vec(request).map(|v| v.len()).unwrap_or(0) + 1;
    if len > control::MAX_REQUEST {
        return Err(format!(
            "this request is {len} bytes; the agent reads at most {} (shorten --reason)",
            control::MAX_REQUEST
        ));
    }
    Ok(())
}

/// The agent's refusal, escaped (it may quote what was sent): exit 2 for
/// a request the agent could not accept as sent (bad text, too long), 1
/// for every other refusal.
fn refused(refusal: &control::Refusal) -> ExitCode {
    let code = match refusal.code {
        control::RefusalCode::BadRequest => 2,
        _ => 1,
    };
    fail(code, termtext::escape(&refusal.message))
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
        Reply::Requested { request } | Reply::Request { request } => jit::render_request(request),
        Reply::Approved { request, grant } => {
            format!("{}{}\n", jit::render_decided(request), grant_line(grant))
        }
        Reply::Denied { request } => jit::render_decided(request),
        Reply::Pending { requests } => jit::render_pending(requests),
        Reply::Explained(view) => jit::render_explain(view),
        Reply::Uninstalled {
            bpffs,
            removed,
            pid,
            ports,
        } => format!(
            "the agent (pid {pid}) removed {removed} pinned object(s) under {bpffs}; ports are no longer protected: {}\n",
            ports.join(", ")
        ),
        Reply::Debug {
            on,
            dropped,
            lines_per_sec,
        } => format!(
            "kernel debug lines are {} (target portcullis::kernel, at most {lines_per_sec} a second per CPU; {dropped} dropped by that limit since the programs were loaded)\n",
            if *on { "on" } else { "off" }
        ),
    }
}

/// A `status` reply whose kernel check found enforcement incomplete.
fn not_enforcing(reply: &Reply) -> bool {
    matches!(reply, Reply::Status(s) if s.enforcement.as_ref().is_some_and(|e| !e.ok))
}

fn render_list(l: &ListView) -> String {
    let mut out = String::new();
    if l.standing.is_empty() && l.grants.is_empty() && l.pending.is_empty() {
        return "no standing allows, no grants and no pending requests\n".into();
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
                    match &g.suspended_until {
                        Some(_) => format!("{} (suspended)", left(g.remaining_secs)),
                        None => left(g.remaining_secs),
                    },
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
    if !l.pending.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&jit::pending_table(&l.pending));
    }
    out
}

fn render_status(s: &StatusView) -> String {
    let enforcing = match &s.enforcement {
        Some(e) if !e.ok => "NOT FULLY ENFORCING",
        _ => "enforcing",
    };
    let mut out = format!(
        "portcullis {} {enforcing} on cgroup {}\nprograms (as the kernel has them): {}\npins: {}\npolicy: {} ({} file(s))\ngrants: {} live, {} map entries of {}; peer capacity {}\nlocal addresses: {}\n",
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
    if let Some(e) = &s.enforcement {
        for m in &e.missing {
            out.push_str(&format!("MISSING in the kernel: {m}\n"));
        }
        if let Some(r) = &e.last_repair {
            out.push_str(&format!(
                "enforcement repaired {} time(s); last at {}{}: {}\n",
                e.repairs,
                r.at,
                if r.ok { "" } else { " (FAILED)" },
                r.missing.join("; ")
            ));
        }
        if let Some(at) = &e.cgroup_recreated_at {
            out.push_str(&format!(
                "attach cgroup was removed and recreated; programs re-attached to the new one at {at}\n"
            ));
        }
    }
    match &s.audit_failing {
        Some(why) => out.push_str(&format!(
            "audit log: {} CANNOT BE WRITTEN ({why}); new grants and approvals are refused until it can, revocations still work\n",
            s.audit_log
        )),
        None => out.push_str(&format!("audit log: {}\n", s.audit_log)),
    }
    if let Some(d) = &s.deny_log {
        out.push_str(&format!(
            "deny log: {} ({} denies read, {} logged, {} suppressed by the rate limit)\n",
            d.path, d.received, d.logged, d.suppressed
        ));
    }
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
    /// The agent's options: each flag given, else the configuration file's
    /// value, else the default. `socket` is the global `--socket`.
    pub fn into_options(
        self,
        socket: Option<PathBuf>,
    ) -> Result<AgentOptions, config::ConfigError> {
        let file = match &self.config {
            Some(path) => AgentConfig::load(path, true)?,
            None => AgentConfig::load(std::path::Path::new(config::DEFAULT_PATH), false)?,
        };
        let observe = self
            .observe
            .resolve(&file, self.audit_log.as_deref().unwrap_or(&file.audit_log));
        Ok(AgentOptions {
            observe,
            policies: self.policies.unwrap_or(file.policy_dir),
            socket: socket.unwrap_or(file.socket),
            socket_mode: self.socket_mode.unwrap_or(file.socket_mode),
            socket_group: self.socket_group.or(file.socket_group),
            bpffs: self.bpffs.unwrap_or(file.bpffs),
            cgroup: self.cgroup.or(file.cgroup),
            state_dir: self.state_dir.unwrap_or(file.state_dir),
            audit_log: self.audit_log.unwrap_or(file.audit_log),
            max_grants: self.max_grants.unwrap_or(file.max_grants),
            max_peers: self.max_peers.unwrap_or(file.max_peers),
            // Repeated flags replace the file's whole list.
            xdp_ifaces: if self.xdp_ifaces.is_empty() {
                file.xdp_ifaces
            } else {
                self.xdp_ifaces
            },
            request_expiry: self.request_expiry.unwrap_or(file.request_expiry),
            refresh: file.identity_rescan,
            grant_grace: self.grant_grace.unwrap_or(file.grant_grace),
            policy_trust: crate::policy::FileTrust {
                symlinks_outside: self.policy_symlinks_outside || file.policy_symlinks_outside,
            },
        })
    }
}

/// The socket a client command uses: `--socket`/`PORTCULLIS_SOCKET`, else
/// the `socket` of /etc/portcullis/agent.toml, else the default.
fn client_socket(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        match AgentConfig::load(std::path::Path::new(config::DEFAULT_PATH), false) {
            Ok(c) => c.socket,
            Err(e) => {
                eprintln!(
                    "portcullis: warning: {e:#}; using {}",
                    control::DEFAULT_SOCKET
                );
                control::DEFAULT_SOCKET.into()
            }
        }
    })
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
    fn flags_given_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "policy_dir = \"/from/file\"\nmax_peers = 7\nsocket = \"/file.sock\"\nxdp_ifaces = [\"eth0\"]\n",
        )
        .unwrap();
        let parse = |args: &[&str]| {
            let mut argv = vec!["portcullis", "agent", "--config", file.to_str().unwrap()];
            argv.extend_from_slice(args);
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Agent(a) = cli.command else {
                panic!("not agent")
            };
            a.into_options(cli.socket).unwrap()
        };
        let o = parse(&[]);
        assert_eq!(o.policies, PathBuf::from("/from/file"));
        assert_eq!(o.max_peers, 7);
        assert_eq!(o.socket, PathBuf::from("/file.sock"));
        assert_eq!(o.xdp_ifaces, vec!["eth0".to_string()]);
        assert_eq!(o.max_grants, agent_common::DEFAULT_MAX_GRANTS);
        assert_eq!(o.socket_mode, 0o660);
        let o = parse(&[
            "--policies",
            "/from/flag",
            "--max-peers",
            "9",
            "--socket-mode",
            "600",
            "--xdp-iface",
            "eth1",
        ]);
        assert_eq!(o.policies, PathBuf::from("/from/flag"));
        assert_eq!(o.max_peers, 9);
        assert_eq!(o.socket_mode, 0o600);
        assert_eq!(o.xdp_ifaces, vec!["eth1".to_string()]);
        let o = parse(&["--socket", "/flag.sock"]);
        assert_eq!(o.socket, PathBuf::from("/flag.sock"));
        // A named configuration file that does not exist is an error.
        let cli =
            Cli::try_parse_from(["portcullis", "agent", "--config", "/nonexistent/agent.toml"])
                .unwrap();
        let Command::Agent(a) = cli.command else {
            panic!("not agent")
        };
        assert!(a.into_options(None).is_err());
    }
}
