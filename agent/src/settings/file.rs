//! The agent's configuration file, `/etc/portcullis/agent.toml`: where the
//! agent reads its policy, where it keeps its socket, state, audit log and
//! pins, what it attaches to, and how large its maps are.
//!
//! Owns the file format (every key optional, unknown keys refused), the
//! documented defaults, and the checks on each value, reported with
//! file:line:column in the same form as policy problems. It does not merge
//! command-line flags over the file (the parent [`crate::settings`] does: a
//! flag that is given wins) and it starts nothing. Operators'
//! documentation: `docs/config.md`.
use std::{
    io,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::values::{parse_addr, parse_mode, parse_size};
use crate::{
    duration::{Bounded, Bounds, IntervalBounds, TtlBounds},
    policy::{Diagnostic, Diagnostics, SourceMap},
};

/// Where `portcullis agent` looks when `--config` is not given.
pub(crate) const DEFAULT_PATH: &str = "/etc/portcullis/agent.toml";

/// Every key the file may hold, for "did you mean" hints.
const KEYS: [&str; 27] = [
    "policy_dir",
    "socket",
    "socket_mode",
    "socket_group",
    "xdp_ifaces",
    "peer_filter",
    "audit_log",
    "state_dir",
    "bpffs",
    "cgroup",
    "max_grants",
    "max_peers",
    "request_expiry",
    "identity_rescan",
    "group_refresh",
    "lock_admins",
    "audit_max_bytes",
    "audit_keep",
    "deny_log",
    "deny_burst",
    "deny_window",
    "metrics_addr",
    "grant_grace",
    "policy_symlinks_outside",
    "mode",
    "discovery",
    "fleet",
];

/// The agent's settings from the file, with the documented default for
/// every key the file does not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentConfig {
    /// Directory of segment policy files (`*.toml`).
    pub policy_dir: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// File mode of the control socket.
    pub socket_mode: u32,
    /// Group owning the control socket; its members may use the CLI.
    pub socket_group: Option<String>,
    /// Interfaces to attach the XDP program to (none: no XDP).
    pub xdp_ifaces: Vec<String>,
    /// Where the peer filter may go (auto, xdp, tc).
    pub peer_filter: crate::dataplane::Placement,
    pub audit_log: PathBuf,
    pub state_dir: PathBuf,
    /// This agent's bpffs directory (pinned programs, links and maps).
    pub bpffs: PathBuf,
    /// Filesystem path of the cgroup to attach to; `None`: the cgroup2 root.
    pub cgroup: Option<PathBuf>,
    /// Capacity of the local grant map.
    pub max_grants: u32,
    /// Capacity of the peer prefix map.
    pub max_peers: u32,
    /// How long a pending access request waits for an approver.
    pub request_expiry: Duration,
    /// How often unit and cgroup identities are re-resolved even when no
    /// cgroup event was seen (a safety net under the cgroup watch).
    pub identity_rescan: Duration,
    /// How often `group:` memberships are read again through NSS even when
    /// /etc/group and /etc/passwd did not change (directory-backed groups).
    pub group_refresh: Duration,
    /// Who may `lock` and `unlock` identities besides root (`user:`,
    /// `uid:`, `group:`, `gid:`).
    pub lock_admins: Vec<crate::identity::Identity>,
    /// Rotate the audit log before it grows past this size; 0 never rotates.
    pub audit_max_bytes: u64,
    /// Rotated audit files kept (`audit.jsonl.1` ..).
    pub audit_keep: u32,
    /// The kernel deny log; `None`: `denies.jsonl` beside the audit log.
    pub deny_log: Option<PathBuf>,
    /// Denies written per identity × segment per window (the rest are counted).
    pub deny_burst: u32,
    /// The deny log's rate-limit window.
    pub deny_window: Duration,
    /// Where the Prometheus endpoint listens; `None`: off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long grants of a segment that left the policy are kept.
    pub grant_grace: Duration,
    /// Whether policy files may be symbolic links out of `policy_dir`.
    pub policy_symlinks_outside: bool,
    /// Every segment's mode, over what each segment says; `None`: each
    /// segment's own (`mode` in the policy, enforce by default).
    pub mode: Option<crate::policy::Mode>,
    /// Whether the kernel records who reaches which port (`portcullis discover`).
    pub discovery: bool,
    /// Fleet mode (`[fleet]`, docs/fleet.md); off when absent.
    pub fleet: Option<crate::fleet::FleetConfig>,
}

impl Default for AgentConfig {
    /// The documented defaults (docs/config.md, packaging/agent.toml).
    fn default() -> Self {
        AgentConfig {
            policy_dir: "/etc/portcullis/policies".into(),
            socket: crate::control::DEFAULT_SOCKET.into(),
            socket_mode: 0o660,
            socket_group: None,
            xdp_ifaces: Vec::new(),
            peer_filter: crate::dataplane::Placement::Auto,
            audit_log: "/var/log/portcullis/audit.jsonl".into(),
            state_dir: "/var/lib/portcullis".into(),
            bpffs: "/sys/fs/bpf/portcullis".into(),
            cgroup: None,
            max_grants: agent_common::DEFAULT_MAX_GRANTS,
            max_peers: agent_common::DEFAULT_MAX_PEERS,
            request_expiry: Duration::from_secs(3600),
            identity_rescan: Duration::from_secs(30),
            group_refresh: Duration::from_secs(30),
            lock_admins: Vec::new(),
            audit_max_bytes: crate::audit::Rotation::default().max_bytes,
            audit_keep: crate::audit::Rotation::default().keep as u32,
            deny_log: None,
            deny_burst: crate::denylog::DEFAULT_BURST,
            deny_window: crate::denylog::DEFAULT_WINDOW,
            metrics_addr: None,
            grant_grace: crate::agent::DEFAULT_GRANT_GRACE,
            policy_symlinks_outside: false,
            mode: None,
            discovery: true,
            fleet: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read the agent configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent configuration {path} is invalid:\n{diagnostics}")]
    Invalid {
        path: PathBuf,
        diagnostics: Diagnostics,
    },
}

/// The file as written: every key optional, each value with its place.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    policy_dir: Option<Spanned<PathBuf>>,
    socket: Option<Spanned<PathBuf>>,
    socket_mode: Option<Spanned<RawMode>>,
    socket_group: Option<Spanned<String>>,
    xdp_ifaces: Option<Vec<Spanned<String>>>,
    peer_filter: Option<Spanned<String>>,
    audit_log: Option<Spanned<PathBuf>>,
    state_dir: Option<Spanned<PathBuf>>,
    bpffs: Option<Spanned<PathBuf>>,
    cgroup: Option<Spanned<PathBuf>>,
    max_grants: Option<Spanned<i64>>,
    max_peers: Option<Spanned<i64>>,
    request_expiry: Option<Spanned<String>>,
    identity_rescan: Option<Spanned<String>>,
    group_refresh: Option<Spanned<String>>,
    lock_admins: Option<Vec<Spanned<String>>>,
    audit_max_bytes: Option<Spanned<String>>,
    audit_keep: Option<Spanned<i64>>,
    deny_log: Option<Spanned<PathBuf>>,
    deny_burst: Option<Spanned<i64>>,
    deny_window: Option<Spanned<String>>,
    metrics_addr: Option<Spanned<String>>,
    grant_grace: Option<Spanned<String>>,
    policy_symlinks_outside: Option<bool>,
    mode: Option<Spanned<String>>,
    discovery: Option<bool>,
    fleet: Option<Spanned<crate::fleet::config::RawFleet>>,
}

/// A mode is written as a string of octal digits; a TOML integer is taken
/// only to say so, because `660` would silently be decimal.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawMode {
    Text(String),
    Number(i64),
}

impl AgentConfig {
    /// Reads the configuration at `path`. `explicit` says whether the user
    /// named the file: a missing default file means "all defaults", a
    /// missing file that was asked for is an error.
    pub(crate) fn load(path: &Path, explicit: bool) -> Result<AgentConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => {
                return Ok(AgentConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::parse(path, &text).map_err(|diagnostics| ConfigError::Invalid {
            path: path.to_owned(),
            diagnostics,
        })
    }

    /// Parses one configuration text; `file` is only used in locations.
    /// Reports every bad value, not just the first (a TOML syntax error or
    /// an unknown key stops the parse, so those come alone).
    pub(crate) fn parse(file: &Path, text: &str) -> Result<AgentConfig, Diagnostics> {
        let map = SourceMap::new(file, text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let location = map.span(e.span()).unwrap_or_else(|| map.start());
            let message = e.message().trim().replace('\n', ": ");
            Diagnostics::from(vec![
                Diagnostic::error(Some(location), message.clone()).with_help(serde_help(&message))
            ])
        })?;
        let mut check = Checker {
            map,
            diagnostics: Diagnostics::default(),
        };
        let mut config = AgentConfig::default();
        let paths = [
            ("policy_dir", raw.policy_dir, &mut config.policy_dir),
            ("socket", raw.socket, &mut config.socket),
            ("audit_log", raw.audit_log, &mut config.audit_log),
            ("state_dir", raw.state_dir, &mut config.state_dir),
            ("bpffs", raw.bpffs, &mut config.bpffs),
        ];
        for (key, value, slot) in paths {
            if let Some(path) = value.and_then(|v| check.path(key, v)) {
                *slot = path;
            }
        }
        if let Some(cgroup) = raw.cgroup {
            config.cgroup = check.path("cgroup", cgroup);
        }
        if let Some(mode) = raw.socket_mode.and_then(|m| check.mode(m)) {
            config.socket_mode = mode;
        }
        if let Some(group) = raw.socket_group {
            let span = group.span();
            let group = group.into_inner();
            if group.is_empty() {
                check.error(
                    span,
                    "socket_group is empty".into(),
                    "name a group, or remove the key to keep the socket's group root",
                );
            } else {
                config.socket_group = Some(group);
            }
        }
        if let Some(ifaces) = raw.xdp_ifaces {
            config.xdp_ifaces = ifaces
                .into_iter()
                .filter_map(|i| check.interface(i))
                .collect();
        }
        for admin in raw.lock_admins.unwrap_or_default() {
            let span = admin.span();
            match admin.get_ref().parse::<crate::identity::Identity>() {
                Ok(
                    i @ (crate::identity::Identity::User(_)
                    | crate::identity::Identity::Uid(_)
                    | crate::identity::Identity::Group(_)
                    | crate::identity::Identity::Gid(_)),
                ) => config.lock_admins.push(i),
                Ok(other) => check.error(
                    span,
                    format!("lock_admins: {other} is not a person"),
                    "name people: user:NAME, uid:N, group:NAME or gid:N",
                ),
                Err(e) => check.error(
                    span,
                    format!("lock_admins: {e}"),
                    "name people: user:NAME, uid:N, group:NAME or gid:N",
                ),
            }
        }
        for (key, value, slot) in [
            ("max_grants", raw.max_grants, &mut config.max_grants),
            ("max_peers", raw.max_peers, &mut config.max_peers),
        ] {
            if let Some(n) = value.and_then(|v| check.capacity(key, v)) {
                *slot = n;
            }
        }
        if let Some(d) = raw.grant_grace.and_then(|v| {
            check.duration::<TtlBounds>(
                "grant_grace",
                v,
                "write a duration such as \"10m\" (at most 366 days)",
            )
        }) {
            config.grant_grace = d;
        }
        if let Some(outside) = raw.policy_symlinks_outside {
            config.policy_symlinks_outside = outside;
        }
        if let Some(on) = raw.discovery {
            config.discovery = on;
        }
        if let Some(v) = raw.peer_filter {
            match v.get_ref().parse::<crate::dataplane::Placement>() {
                Ok(p) => config.peer_filter = p,
                Err(e) => check.error(
                    v.span(),
                    e,
                    "\"auto\" puts native XDP on physical NICs with driver support and tc ingress elsewhere",
                ),
            }
        }
        if let Some(v) = raw.mode {
            match v.get_ref().parse::<crate::policy::Mode>() {
                Ok(m) => config.mode = Some(m),
                Err(e) => check.error(
                    v.span(),
                    e,
                    "\"audit\" lets every segment's refusals through and logs them as would_deny; leave the key out to use each segment's own mode",
                ),
            }
        }
        if let Some(d) = raw.request_expiry.and_then(|v| {
            check.duration::<TtlBounds>(
                "request_expiry",
                v,
                "write a duration such as \"1h\" or \"30m\" (at most 366 days)",
            )
        }) {
            config.request_expiry = d;
        }
        if let Some(d) = raw.identity_rescan.and_then(|v| {
            check.duration::<IntervalBounds>(
                "identity_rescan",
                v,
                "write a duration from \"1s\" to \"1d\", such as \"30s\" or \"5m\"; the cgroup watch reacts at once, this is only the safety net",
            )
        }) {
            config.identity_rescan = d;
        }
        if let Some(d) = raw.group_refresh.and_then(|v| {
            check.duration::<IntervalBounds>(
                "group_refresh",
                v,
                "write a duration from \"1s\" to \"1d\", such as \"30s\" or \"5m\"; changes to /etc/group and /etc/passwd are seen at once, this re-reads groups from a directory (SSSD, LDAP)",
            )
        }) {
            config.group_refresh = d;
        }
        // The audit log's rotation, the deny log and the metrics endpoint
        // (docs/audit.md).
        if let Some(v) = raw.audit_max_bytes {
            match parse_size(v.get_ref()) {
                Ok(n) => config.audit_max_bytes = n,
                Err(e) => check.error(
                    v.span(),
                    format!("audit_max_bytes: {e}"),
                    "write a size in quotes, e.g. \"64M\"; \"0\" never rotates",
                ),
            }
        }
        for (key, value, slot, max) in [
            ("audit_keep", raw.audit_keep, &mut config.audit_keep, 10_000),
            (
                "deny_burst",
                raw.deny_burst,
                &mut config.deny_burst,
                1_000_000,
            ),
        ] {
            if let Some(v) = value {
                match u32::try_from(*v.get_ref()) {
                    Ok(n) if (1..=max).contains(&n) => *slot = n,
                    _ => check.error(
                        v.span(),
                        format!("{key} {} is out of range", v.get_ref()),
                        &format!("use 1 to {max}"),
                    ),
                }
            }
        }
        if let Some(p) = raw.deny_log {
            config.deny_log = check.path("deny_log", p);
        }
        if let Some(d) = raw.deny_window.and_then(|v| {
            check.duration::<IntervalBounds>(
                "deny_window",
                v,
                "write a duration from \"1s\" to \"1d\", such as \"60s\" or \"5m\"",
            )
        }) {
            config.deny_window = d;
        }
        if let Some(v) = raw.metrics_addr {
            match parse_addr(v.get_ref()) {
                Ok(a) => config.metrics_addr = Some(a),
                Err(e) => check.error(
                    v.span(),
                    e,
                    "e.g. \"127.0.0.1:9464\", or \"9464\" for localhost",
                ),
            }
        }
        if let Some(f) = raw.fleet {
            let span = f.span();
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default();
            match f.into_inner().resolve(&hostname) {
                Ok(c) => config.fleet = Some(c),
                Err(problems) => {
                    for p in problems {
                        check.error(span.clone(), p.message, &p.help);
                    }
                }
            }
        }
        if check.diagnostics.has_errors() {
            Err(check.diagnostics)
        } else {
            Ok(config)
        }
    }
}

/// Help for a problem serde found: a near key for an unknown one.
fn serde_help(message: &str) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let near = unknown.and_then(|name| {
        KEYS.iter()
            .map(|k| (strsim::jaro_winkler(name, k), *k))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| k)
    });
    match near {
        Some(k) => format!("did you mean `{k}`? every key is listed in docs/config.md"),
        None => "every key, its type and its default are listed in docs/config.md".into(),
    }
}

struct Checker<'a> {
    map: SourceMap<'a>,
    diagnostics: Diagnostics,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: String, help: &str) {
        let location = self.map.location(span.start);
        self.diagnostics
            .push(Diagnostic::error(Some(location), message).with_help(help));
    }

    /// A duration within `B`'s bounds; the message names the key and value
    /// first (`identity_rescan "soon" is not a duration: ...`).
    fn duration<B: Bounds>(
        &mut self,
        key: &str,
        value: Spanned<String>,
        help: &str,
    ) -> Option<Duration> {
        match value.get_ref().parse::<Bounded<B>>() {
            Ok(d) => Some(d.get()),
            Err(e) => {
                self.error(
                    value.span(),
                    format!("{key} {:?} {}", value.get_ref(), e.reason()),
                    help,
                );
                None
            }
        }
    }

    /// A path must be absolute: the agent's working directory is no place
    /// to resolve one against.
    fn path(&mut self, key: &str, value: Spanned<PathBuf>) -> Option<PathBuf> {
        let span = value.span();
        let path = value.into_inner();
        if path.is_absolute() {
            return Some(path);
        }
        self.error(
            span,
            format!(
                "{key} {:?} is not an absolute path",
                path.display().to_string()
            ),
            "write the full path, starting with `/`",
        );
        None
    }

    fn mode(&mut self, value: Spanned<RawMode>) -> Option<u32> {
        let span = value.span();
        match value.into_inner() {
            RawMode::Text(text) => match parse_mode(&text) {
                Ok(mode) => Some(mode),
                Err(e) => {
                    self.error(
                        span,
                        format!("socket_mode {e}"),
                        "write octal digits in a string, at most \"0777\"",
                    );
                    None
                }
            },
            RawMode::Number(n) => {
                self.error(
                    span,
                    format!("socket_mode {n} is a number; a file mode is written as a string"),
                    "write it in quotes as octal digits, e.g. socket_mode = \"0660\"",
                );
                None
            }
        }
    }

    /// Linux interface names: 1-15 bytes, no `/`, no whitespace, not `.`
    /// or `..` (the kernel's `dev_valid_name`).
    fn interface(&mut self, value: Spanned<String>) -> Option<String> {
        let span = value.span();
        let name = value.into_inner();
        let valid = (1..=15).contains(&name.len())
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if valid {
            return Some(name);
        }
        self.error(
            span,
            format!("xdp_ifaces: {name:?} is not a network interface name"),
            "interface names are 1-15 characters without `/`, `:` or spaces; see `ip link`",
        );
        None
    }

    fn capacity(&mut self, key: &str, value: Spanned<i64>) -> Option<u32> {
        let span = value.span();
        match u32::try_from(*value.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.error(
                    span,
                    format!("{key} {} is out of range", value.get_ref()),
                    "a map holds 1 to 4294967295 entries; the kernel refuses what memory cannot hold",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
