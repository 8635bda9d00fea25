//! The `portcullis` command line: argument parsing, client-side checks, and
//! output (readable tables for people, `--json` for scripts).
//!
//! Exit codes: 0 done; 1 the agent refused (the message says why), or
//! the answer is "no" (`explain`: DENY; `status`: enforcement incomplete); 2 bad
//! arguments (including text with control characters, which the agent
//! refuses too) or an invalid policy (`check`); 3 the agent could not be
//! reached.
//!
//! Human-readable output never prints text from the agent raw: replies go
//! through [`termtext::escaped`] before rendering, refusals through
//! [`termtext::escape`]. `--json` prints the reply exactly.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// The examples of each subcommand's `--help`.
mod examples;
/// `--fleet`: requests and their replies.
mod fleet;
/// `request show`: one request's history for people.
mod history;
/// `request --wait`, `explain` arguments, rendering of requests and explanations.
mod jit;
/// Shell completions and man pages.
mod manuals;
/// Human-readable replies: tables, grant lines, status.
mod render;
/// Streamed replies (`list --json`, `revoke`) printed record by record.
mod stream;
/// `discover`'s table and `suggest`.
mod suggest;
/// `uninstall`: through the running agent, or under its locks.
mod uninstall;
/// `list --usage` and `report unused`.
mod usage;

pub(crate) use render::render;
use render::{exits_one, left, table};

use crate::{
    control::{self, Reply, Request, Response},
    duration::Ttl,
    identity::Identity,
    policy::{self, HostCheck, Severity, SystemHost},
    settings::{self, AgentArgs, AgentConfig},
    termtext,
};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "Port-level micro-segmentation: internal ports closed by default, opened per identity for a bounded time, enforced by eBPF."
)]
pub(crate) struct Cli {
    /// The agent's control socket [default: `socket` in /etc/portcullis/agent.toml,
    /// else /run/portcullis/control.sock].
    #[arg(long, global = true, env = "PORTCULLIS_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the agent in the foreground: load and attach the programs, apply
    /// the policy, serve the control socket.
    #[command(after_help = examples::AGENT)]
    Agent(Box<AgentArgs>),
    /// Open SEGMENT to IDENTITY for a bounded time; prints the grant's id.
    #[command(after_help = examples::GRANT)]
    Grant {
        /// The segment to open, as named in the policy.
        segment: String,
        /// unit:NAME.service, cgroup:/PATH, user:NAME, uid:N, group:NAME, gid:N, peer:CIDR
        identity: String,
        /// How long, e.g. 30m, 2h, 1h30m (default: the segment's default_ttl).
        #[arg(long)]
        ttl: Option<Ttl>,
        /// Why (required where the segment's policy says so).
        #[arg(long)]
        reason: Option<String>,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// Grant on every host --hosts names, through the fleet store (the
        /// local agent must be in fleet mode; docs/fleet.md).
        #[arg(long, requires = "hosts")]
        fleet: bool,
        /// With --fleet: host:NAME, group:NAME or all.
        #[arg(long, requires = "fleet")]
        hosts: Option<String>,
        /// With --fleet: the grant stops working on a host cut off from the
        /// store for longer than its staleness limit.
        #[arg(long, requires = "fleet")]
        strict: bool,
    },
    /// Lock an identity (root or `lock_admins`): revoke every grant that
    /// covers it and refuse new grants, requests and approvals for it until
    /// `unlock` (or the TTL). For "employee left / credentials compromised".
    #[command(after_help = examples::LOCK)]
    Lock {
        /// user:NAME, uid:N, group:NAME, gid:N, unit:NAME.service, cgroup:/PATH, peer:CIDR
        identity: String,
        /// Why (required; shown to everyone the lock refuses).
        #[arg(long)]
        reason: String,
        /// Lift the lock by itself after this long, e.g. 8h (default: never).
        #[arg(long)]
        ttl: Option<Ttl>,
        /// Also suspend the identity's standing allows from policy files.
        #[arg(long)]
        include_standing: bool,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// Lock on every host --hosts names, through the fleet store, and
        /// wait until each has applied it.
        #[arg(long, requires = "hosts")]
        fleet: bool,
        /// With --fleet: host:NAME, group:NAME or all.
        #[arg(long, requires = "fleet")]
        hosts: Option<String>,
    },
    /// Lift the lock on an identity.
    #[command(after_help = examples::UNLOCK)]
    Unlock {
        /// The identity as it was locked (`portcullis list` shows it).
        identity: String,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// Remove the identity's fleet locks from the fleet store.
        #[arg(long)]
        fleet: bool,
        /// With --fleet: only its locks for host:NAME, group:NAME or all.
        #[arg(long, requires = "fleet")]
        hosts: Option<String>,
    },
    /// Revoke a grant by id, every grant of an identity, or every grant on a segment.
    #[command(after_help = examples::REVOKE)]
    Revoke {
        /// The grant id printed by `grant` and `list` (with --fleet: the
        /// fleet grant id printed by `grant --fleet` and `list --fleet`).
        id: Option<String>,
        /// Every grant of this identity (with --segment: on that segment only).
        #[arg(long)]
        identity: Option<String>,
        /// Every grant on this segment (with --identity: only that identity's).
        #[arg(long)]
        segment: Option<String>,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// Revoke fleet grants in the fleet store and wait until every
        /// targeted host has applied the revocation.
        #[arg(long)]
        fleet: bool,
        /// With --fleet: only grants for host:NAME, group:NAME or all.
        #[arg(long, requires = "fleet")]
        hosts: Option<String>,
    },
    /// Show standing allows, live grants with their time left, and pending requests.
    #[command(after_help = examples::LIST)]
    List {
        /// Only the requests waiting for a decision.
        #[arg(long)]
        pending: bool,
        /// How much each allow and grant was used: connections, first and
        /// last use (counted by the kernel).
        #[arg(long, conflicts_with = "pending")]
        usage: bool,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// The live fleet grants in the fleet store.
        #[arg(long, conflicts_with_all = ["pending", "usage"])]
        fleet: bool,
    },
    /// Reports; `report unused`: standing allows and grants nobody used.
    #[command(subcommand, after_help = examples::REPORT)]
    Report(ReportCommand),
    /// Ask for access to SEGMENT for yourself (your user: identity); prints
    /// the request's id. Root or one of the segment's approvers decides.
    /// `--break-glass` opens it at once instead, where the policy allows;
    /// `request show ID` tells one request's history.
    #[command(
        after_help = examples::REQUEST,
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true
    )]
    Request {
        #[command(subcommand)]
        command: Option<RequestCommand>,
        /// The segment to ask for, as named in the policy.
        #[arg(required = true)]
        segment: Option<String>,
        /// How long, e.g. 30m (default: the segment's default_ttl, or with
        /// --break-glass its break_glass_max_ttl; never more than those allow).
        #[arg(long)]
        ttl: Option<Ttl>,
        /// Why (required where the segment's policy says so, and always with --break-glass).
        #[arg(long)]
        reason: Option<String>,
        /// Open the segment now, without an approver (only where its jit
        /// table has break_glass = true); audited as break_glass for review.
        #[arg(long, requires = "reason", conflicts_with = "wait")]
        break_glass: bool,
        /// Wait for the decision: exit 0 when approved, 1 when denied or expired.
        #[arg(long)]
        wait: bool,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// Ask through the fleet store for access on every host --hosts names.
        #[arg(long, requires = "hosts", conflicts_with = "wait")]
        fleet: bool,
        /// With --fleet: host:NAME, group:NAME or all.
        #[arg(long, requires = "fleet")]
        hosts: Option<String>,
    },
    /// Approve a pending request: grants it, for at most the TTL it asked for.
    #[command(after_help = examples::APPROVE)]
    Approve {
        /// The request id printed by `request` and `list --pending` (with
        /// --fleet: the fleet request id).
        id: String,
        /// Grant less time than asked (never more).
        #[arg(long)]
        ttl: Option<Ttl>,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// Approve a fleet request (one compare-and-swap: two approvers
        /// never both win).
        #[arg(long)]
        fleet: bool,
    },
    /// Give a live grant more time, in place: by root or an approver of its
    /// segment at once (never past max_ttl from the grant's start), by the
    /// grantee as a request that approvers decide.
    #[command(after_help = examples::EXTEND)]
    Extend {
        /// The grant id printed by `grant`, `approve` and `list`.
        id: u64,
        /// How long the grant lasts from now on.
        #[arg(long)]
        ttl: Ttl,
        /// Why (required when the segment requires reasons).
        #[arg(long)]
        reason: Option<String>,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
    },
    /// Deny a pending request.
    #[command(after_help = examples::DENY)]
    Deny {
        /// The request id printed by `request` and `list --pending` (with
        /// --fleet: the fleet request id).
        id: String,
        /// Why; the requester sees it.
        #[arg(long, required = true)]
        reason: String,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// Deny a fleet request.
        #[arg(long)]
        fleet: bool,
    },
    /// Say which segment, rule or grant decides whether IDENTITY (or the
    /// process --pid PID) may reach PORT/PROTO, read from the kernel maps.
    #[command(after_help = examples::EXPLAIN)]
    Explain {
        /// IDENTITY PORT/PROTO, or just PORT/PROTO with --pid.
        #[arg(value_name = "[IDENTITY] PORT/PROTO", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Take the identity from a running process (its cgroup, uid and gid).
        #[arg(long)]
        pid: Option<u32>,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
    },
    /// List every listening TCP/UDP socket and who the kernel saw reach
    /// each port since the agent started, protected or not (root only).
    #[command(after_help = examples::DISCOVER)]
    Discover {
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
    },
    /// Print a segment policy (TOML) allowing the clients the kernel saw,
    /// for review: `--segment S` (its ports) or `--port PORT/PROTO`.
    #[command(after_help = examples::SUGGEST)]
    Suggest {
        /// One port, e.g. 5432/tcp.
        #[arg(long, conflicts_with = "segment", required_unless_present = "segment")]
        port: Option<String>,
        /// A segment of the policy in force (all of its ports).
        #[arg(long)]
        segment: Option<String>,
        /// Only clients seen within this long, e.g. 7d.
        #[arg(long)]
        since: Option<Ttl>,
        /// Peers as their /24 (IPv4) or /64 (IPv6) instead of single addresses.
        #[arg(long)]
        aggregate: bool,
    },
    /// Show what the agent enforces: programs, segments, counters, capacity.
    #[command(after_help = examples::STATUS)]
    Status {
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
        /// This agent's link to the fleet store and every host's applied
        /// revision and staleness.
        #[arg(long)]
        fleet: bool,
    },
    /// Query the audit trail (`--denies`: the kernel deny log), or `audit verify` its hash chain.
    #[command(after_help = examples::AUDIT)]
    Audit(crate::audit::query::AuditArgs),
    /// Validate policy files or directories offline (no root, no agent).
    #[command(after_help = examples::CHECK)]
    Check {
        /// Policy files, or directories of them (every non-hidden *.toml).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Stop enforcing: detach every program and remove every pinned map of
    /// the agent's bpffs directory (through the agent when one runs; it then
    /// stops). Explicit by design: stopping the agent never does this.
    #[command(after_help = examples::UNINSTALL)]
    Uninstall(uninstall::UninstallArgs),
    /// Kernel debug lines in the agent's log (root only): which rule let a
    /// connection through, why one was refused. Off by default; without
    /// on/off, shows the state.
    #[command(after_help = examples::DEBUG)]
    Debug {
        /// `on` or `off`; without it, shows the state.
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script on stdout.
    #[command(after_help = examples::COMPLETIONS)]
    Completions {
        /// The shell to complete in.
        shell: manuals::Shell,
    },
    /// Write the man pages into DIR (for packaging).
    #[command(hide = true)]
    Man {
        /// Where to write portcullis.1 and portcullis-SUBCOMMAND.1.
        dir: PathBuf,
    },
    /// Per-packet cost of the programs under BPF_PROG_TEST_RUN, as JSON (for `cargo xtask bench`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchDataplane(crate::benchprog::BenchArgs),
    /// A state directory whose journal holds N grants (for `cargo xtask bench --only scale`).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchJournal(crate::benchjournal::JournalArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum RequestCommand {
    /// One request's history: state, who asked and why, every approval
    /// and denial, the grant it produced with its use and end (the
    /// requester, the segment's approvers and root may see it).
    #[command(after_help = examples::REQUEST_SHOW)]
    Show {
        /// The request id printed by `request` and `list --pending`.
        id: u64,
        /// Print the reply as JSON (errors too, with exit codes as without).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ReportCommand {
    /// Standing allows and grants with no use in the window (and since
    /// when), by segment. `peer:` allows are not counted and not listed.
    #[command(after_help = examples::REPORT)]
    Unused {
        /// The window, e.g. 30d, 12h.
        #[arg(long, default_value = "30d")]
        since: Ttl,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every break-glass in the audit log (current and rotated files):
    /// who, when, segment, TTL, reason, grant and how it ended, with use.
    #[command(name = "break-glass", after_help = examples::REPORT_BREAK_GLASS)]
    BreakGlass {
        /// Only those newer than this: a duration (`7d`) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Read this audit log instead of the agent's (its rotated files too).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis: {msg}");
    ExitCode::from(code)
}

/// The agent could not be reached (exit 3). With `--json` the error is
/// JSON on stdout too, shaped like the agent's refusals with the code
/// `unreachable`, so a script reading stdout always gets JSON.
fn unreachable(e: impl std::fmt::Display, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "error": { "code": "unreachable", "message": e.to_string() }
            }))
            .expect("serializes")
        );
    }
    fail(3, e)
}

/// Runs a client command (everything but `agent`).
pub(crate) fn run_client(cli: Cli) -> ExitCode {
    let (request, json) = match cli.command {
        Command::Agent(_) => unreachable!("handled by main"),
        #[cfg(feature = "bench")]
        Command::BenchDataplane(_) | Command::BenchJournal(_) => unreachable!("handled by main"),
        Command::Check { paths } => return check(&paths),
        Command::Completions { shell } => {
            manuals::completions(shell, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            return match manuals::man_pages(&dir) {
                Ok(pages) => {
                    for p in pages {
                        println!("{}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, format!("writing man pages into {}: {e}", dir.display())),
            }
        }
        Command::Audit(args) => return crate::audit::query::run(args, &client_socket(cli.socket)),
        Command::Uninstall(args) => return uninstall::run(args),
        Command::Grant {
            segment,
            identity,
            ttl,
            reason,
            json,
            fleet: true,
            hosts,
            strict,
        } => match fleet::grant(hosts, segment, identity, ttl, reason, strict) {
            Ok(request) => (request, json),
            Err(e) => return fail(2, e),
        },
        Command::Revoke {
            id,
            identity,
            segment,
            json,
            fleet: true,
            hosts,
        } => match fleet::revoke(id, identity, segment, hosts) {
            Ok(request) => (request, json),
            Err(e) => return fail(2, e),
        },
        Command::Lock {
            identity,
            reason,
            ttl,
            include_standing,
            json,
            fleet: true,
            hosts,
        } => match fleet::lock(hosts, identity, reason, ttl, include_standing) {
            Ok(request) => (request, json),
            Err(e) => return fail(2, e),
        },
        Command::Unlock {
            identity,
            json,
            fleet: true,
            hosts,
        } => match fleet::unlock(identity, hosts) {
            Ok(request) => (request, json),
            Err(e) => return fail(2, e),
        },
        Command::List {
            json, fleet: true, ..
        } => (Request::FleetList {}, json),
        Command::Status { json, fleet: true } => (Request::FleetStatus {}, json),
        Command::Grant {
            segment,
            identity,
            ttl,
            reason,
            json,
            ..
        } => {
            if let Err(e) = identity.parse::<Identity>() {
                return fail(2, format!("identity {identity:?}: {e}"));
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
            ..
        } => {
            let id = match id.map(|i| i.parse::<u64>()).transpose() {
                Ok(id) => id,
                Err(_) => {
                    return fail(
                        2,
                        "a grant id is a number (fleet grant ids go with --fleet)",
                    )
                }
            };
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
        Command::Lock {
            identity,
            reason,
            ttl,
            include_standing,
            json,
            ..
        } => {
            if let Err(e) = identity.parse::<Identity>() {
                return fail(2, format!("identity {identity:?}: {e}"));
            }
            (
                Request::Lock {
                    identity,
                    reason,
                    ttl,
                    include_standing,
                },
                json,
            )
        }
        Command::Unlock { identity, json, .. } => {
            if let Err(e) = identity.parse::<Identity>() {
                return fail(2, format!("identity {identity:?}: {e}"));
            }
            (Request::Unlock { identity }, json)
        }
        Command::Report(ReportCommand::BreakGlass { since, file, json }) => {
            return crate::audit::breakglass::report(
                &client_socket(cli.socket),
                since.as_deref(),
                file,
                json,
            );
        }
        Command::Report(ReportCommand::Unused { since, json }) => {
            let window = std::time::Duration::from(since).as_secs();
            return usage::report_unused(&client_socket(cli.socket), window, json);
        }
        Command::List {
            usage: true,
            json: false,
            ..
        } => {
            return match control::call(&client_socket(cli.socket), &Request::List {}) {
                Err(e) => fail(3, e),
                Ok(Response::Error(refusal)) => refused(&refusal),
                Ok(Response::Ok(reply)) => match termtext::escaped(&reply) {
                    Reply::List(l) => {
                        print!("{}", usage::render_usage(&l));
                        ExitCode::SUCCESS
                    }
                    _ => fail(1, "the agent answered `list` with something else"),
                },
            };
        }
        Command::List { pending, json, .. } => (
            if pending {
                Request::Pending {}
            } else {
                Request::List {}
            },
            json,
        ),
        Command::Request {
            command: Some(RequestCommand::Show { id, json }),
            ..
        } => (Request::RequestHistory { id }, json),
        Command::Request {
            segment: Some(segment),
            ttl,
            reason: Some(reason),
            break_glass: true,
            json,
            ..
        } => (
            Request::BreakGlass {
                segment,
                ttl,
                reason,
            },
            json,
        ),
        Command::Request {
            segment,
            ttl,
            reason,
            json,
            fleet: true,
            hosts,
            ..
        } => {
            let Some(segment) = segment else {
                return fail(2, "request --fleet needs a SEGMENT");
            };
            match fleet::request(hosts, segment, ttl, reason) {
                Ok(request) => (request, json),
                Err(e) => return fail(2, e),
            }
        }
        Command::Request {
            segment,
            ttl,
            reason,
            wait,
            json,
            ..
        } => {
            let Some(segment) = segment else {
                return fail(2, "request needs a SEGMENT (or `request show ID`)");
            };
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
        Command::Approve {
            id,
            ttl,
            json,
            fleet: true,
        } => (Request::FleetApprove { id, ttl }, json),
        Command::Deny {
            id,
            reason,
            json,
            fleet: true,
        } => (Request::FleetDeny { id, reason }, json),
        Command::Approve { id, ttl, json, .. } => match id.parse() {
            Ok(id) => (Request::Approve { id, ttl }, json),
            Err(_) => {
                return fail(
                    2,
                    "a request id is a number (fleet request ids go with --fleet)",
                )
            }
        },
        Command::Deny {
            id, reason, json, ..
        } => match id.parse() {
            Ok(id) => (Request::Deny { id, reason }, json),
            Err(_) => {
                return fail(
                    2,
                    "a request id is a number (fleet request ids go with --fleet)",
                )
            }
        },
        Command::Extend {
            id,
            ttl,
            reason,
            json,
        } => (Request::Extend { id, ttl, reason }, json),
        Command::Explain { args, pid, json } => match jit::explain_request(args, pid) {
            Ok(request) => (request, json),
            Err(msg) => return fail(2, msg),
        },
        Command::Status { json, .. } => (Request::Status {}, json),
        Command::Discover { json } => (Request::Discover {}, json),
        Command::Suggest {
            port,
            segment,
            since,
            aggregate,
        } => {
            let target = match (port, segment) {
                (Some(p), _) => match p.parse::<crate::identity::PortRange>() {
                    Ok(r) if r.first == r.last => suggest::Target::Port(r),
                    _ => return fail(2, format!("--port {p:?}: write one port, e.g. 5432/tcp")),
                },
                (None, Some(s)) => suggest::Target::Segment(s),
                (None, None) => return fail(2, "suggest needs --port PORT/PROTO or --segment S"),
            };
            let args = suggest::SuggestArgs {
                target,
                since: since.map(Ttl::get),
                aggregate,
            };
            return match control::call(&client_socket(cli.socket), &Request::Discover {}) {
                Err(e) => fail(3, e),
                Ok(Response::Error(refusal)) => refused(&refusal),
                Ok(Response::Ok(Reply::Discovered(view))) => {
                    match suggest::suggest(&termtext::escaped(&*view), &args) {
                        Ok(text) => {
                            print!("{text}");
                            ExitCode::SUCCESS
                        }
                        Err(msg) => fail(1, termtext::escape(&msg)),
                    }
                }
                Ok(Response::Ok(_)) => fail(3, "the agent answered discover with something else"),
            };
        }
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
    let response = match control::open(&client_socket(cli.socket), &request) {
        Ok(control::Answer::Whole(r)) => r,
        // `list --json` and `revoke` print as the records arrive.
        Ok(control::Answer::Stream(records)) if json => return stream::print_json(records),
        Ok(control::Answer::Stream(records)) if records.of() == control::StreamOf::Revoked => {
            return stream::print_revoked(records)
        }
        // A table needs every row first.
        Ok(control::Answer::Stream(records)) => match records.collect() {
            Ok(reply) => Response::Ok(reply),
            Err(e) => return fail(3, e),
        },
        Err(e) => return unreachable(e, json),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).expect("serializes")
        );
        return match response {
            Response::Ok(reply) if !exits_one(&reply) => ExitCode::SUCCESS,
            _ => ExitCode::from(1),
        };
    }
    match response {
        Response::Error(refusal) => refused(&refusal),
        Response::Ok(reply) => {
            print!("{}", render(&termtext::escaped(&reply)));
            // `status` fails while the kernel lacks part of the enforcement,
            // `explain` when the answer is DENY.
            if exits_one(&reply) {
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
        _ => fail(
            2,
            format!("{errors} error(s): the policy is invalid; an agent would refuse it and keep its current policy"),
        ),
    }
}

/// The socket a client command uses: `--socket`/`PORTCULLIS_SOCKET`, else
/// the `socket` of /etc/portcullis/agent.toml, else the default.
fn client_socket(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        match AgentConfig::load(std::path::Path::new(settings::DEFAULT_PATH), false) {
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

    /// Issue 20: every subcommand shows examples, every option says what
    /// it is for.
    #[test]
    fn every_subcommand_has_examples_and_every_option_a_description() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        let mut stack: Vec<(String, &clap::Command)> = cmd
            .get_subcommands()
            .map(|c| (c.get_name().to_string(), c))
            .collect();
        while let Some((path, c)) = stack.pop() {
            if c.is_hide_set() || c.get_name() == "help" {
                continue;
            }
            if c.get_after_help().is_none() {
                missing.push(format!("{path}: no examples (after_help)"));
            }
            for a in c.get_arguments() {
                if a.is_hide_set() || ["help", "version"].contains(&a.get_id().as_str()) {
                    continue;
                }
                if a.get_help().is_none() {
                    missing.push(format!("{path} {}: no description", a.get_id()));
                }
            }
            stack.extend(
                c.get_subcommands()
                    .map(|s| (format!("{path} {}", s.get_name()), s)),
            );
        }
        missing.sort();
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
