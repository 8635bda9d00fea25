//! The flags of `portcullis agent`, as clap parses them: every value already
//! of its type (a duration within its bounds, a size, an address), and
//! `None` when the flag was not given, so that the file's value or the
//! default applies (see [`super::Settings`]). Owns the flag names and help
//! texts; nothing here reads the file or merges.
use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

use super::values::{parse_addr, parse_mode, parse_size};
use crate::duration::{Interval, Ttl};

/// Flags of `portcullis agent`. Each one left out takes its value from the
/// configuration file (docs/config.md), and from the documented default
/// when the file does not set it either.
#[derive(Args, Debug, Default)]
pub(crate) struct AgentArgs {
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
    #[arg(long, value_parser = parse_mode)]
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
    #[arg(long)]
    pub request_expiry: Option<Ttl>,
    /// Interface on which XDP drops remote traffic to protected ports early
    /// unless a `peer:` grant covers its source; without it, remote peers are
    /// still checked on every interface (repeatable) [file: xdp_ifaces].
    #[arg(long = "xdp-iface", value_name = "IFACE")]
    pub xdp_ifaces: Vec<String>,
    /// Where the peer filter goes on those interfaces: auto (native XDP on
    /// physical NICs with driver support, tc ingress elsewhere), xdp
    /// (native XDP everywhere) or tc [file: peer_filter; default: auto].
    #[arg(long, value_name = "auto|xdp|tc")]
    pub peer_filter: Option<crate::dataplane::Placement>,
    /// How long grants of a segment that leaves the policy are kept (suspended), e.g. 10m [file: grant_grace].
    #[arg(long)]
    pub grant_grace: Option<Ttl>,
    /// Read policy files that are symbolic links out of the policy directory [file: policy_symlinks_outside].
    #[arg(long)]
    pub policy_symlinks_outside: bool,
    /// Rotate the audit log before it grows past this size, e.g. 64M; 0 never rotates [file: audit_max_bytes; default: 64M].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit files kept (audit.jsonl.1 .. .N) [file: audit_keep; default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub audit_keep: Option<u32>,
    /// The kernel deny log [file: deny_log; default: denies.jsonl beside the audit log].
    #[arg(long, value_name = "PATH")]
    pub deny_log: Option<PathBuf>,
    /// Denies written per identity × segment per window; the rest are counted [file: deny_burst; default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub deny_burst: Option<u32>,
    /// The deny log's rate-limit window, 1s to 1d, e.g. 1m [file: deny_window; default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub deny_window: Option<Interval>,
    /// Every segment's mode, over each segment's own `mode`: audit logs
    /// refusals as would_deny and lets them through [file: mode; default: each segment's].
    #[arg(long, value_name = "MODE", value_parser = clap::value_parser!(crate::policy::Mode))]
    pub mode: Option<crate::policy::Mode>,
    /// Do not record who reaches which port in the kernel (`portcullis discover`) [file: discovery; default: on].
    #[arg(long)]
    pub no_discovery: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics: PORT (on localhost) or HOST:PORT [file: metrics_addr; default: off].
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics_addr: Option<SocketAddr>,
}
