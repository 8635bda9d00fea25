//! The agent's settings in one place: the flags of `portcullis agent`
//! ([`flags`]) over the configuration file ([`file`]) over the documented
//! defaults, resolved once into [`Settings`], the only value the agent's
//! start-up ([`crate::server::run`]) reads.
//!
//! Where a new setting goes: its key, default and check in [`file`]
//! (`RawConfig`, `AgentConfig`, `KEYS`, `parse`), its flag in [`flags`], its
//! resolved field here, and a line in docs/config.md and
//! packaging/agent.toml (a test keeps that file equal to the defaults).
//! Value syntaxes are parsed once where they enter: durations by
//! [`crate::duration`], sizes, addresses and modes by [`values`].
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub(crate) mod file;
pub(crate) mod flags;
pub(crate) mod values;

pub(crate) use file::{AgentConfig, ConfigError, DEFAULT_PATH};
pub(crate) use flags::AgentArgs;

use crate::{audit::Rotation, denylog::DenyLogConfig, duration::Bounded, policy};

/// Everything `portcullis agent` is told, resolved.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub policies: PathBuf,
    pub socket: PathBuf,
    /// File mode of the control socket.
    pub socket_mode: u32,
    /// Group owning the control socket (members may connect).
    pub socket_group: Option<String>,
    /// This agent's bpffs directory.
    pub bpffs: PathBuf,
    /// Filesystem path of the cgroup to attach to; the cgroup2 root when `None`.
    pub cgroup: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub audit_log: PathBuf,
    pub max_grants: u32,
    pub max_peers: u32,
    /// Interfaces where XDP enforces `peer:` identities for remote traffic.
    pub xdp_ifaces: Vec<String>,
    /// Where the peer filter may go on those interfaces.
    pub peer_filter: crate::dataplane::Placement,
    /// How long a pending access request waits for an approver.
    pub request_expiry: Duration,
    /// How often unit and cgroup identities are re-resolved even without a
    /// cgroup event (the safety net under the cgroup watch).
    pub identity_rescan: Duration,
    /// How often `group:` memberships are read again (besides the watch on
    /// /etc/group and /etc/passwd).
    pub group_refresh: Duration,
    /// Who may lock and unlock besides root.
    pub lock_admins: Vec<crate::identity::Identity>,
    /// How long grants of a segment that left the policy are kept.
    pub grant_grace: Duration,
    /// Which policy files are read (symbolic links out of the directory).
    pub policy_trust: policy::FileTrust,
    /// When the audit log rotates.
    pub audit_rotation: Rotation,
    /// Where the deny log is written and how it is rate limited.
    pub deny_log: DenyLogConfig,
    /// Where the Prometheus endpoint listens; off when `None`.
    pub metrics_addr: Option<SocketAddr>,
    /// The agent-wide mode over each segment's (`None`: each segment's).
    pub mode: Option<policy::Mode>,
    /// Whether the hooks feed the discovery map.
    pub discovery: bool,
    /// Fleet mode (`[fleet]` in the file; no flag).
    pub fleet: Option<crate::fleet::FleetConfig>,
}

impl AgentArgs {
    /// The agent's settings: each flag given, else the configuration file's
    /// value, else the default. `socket` is the global `--socket`.
    pub(crate) fn into_options(self, socket: Option<PathBuf>) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => AgentConfig::load(path, true)?,
            None => AgentConfig::load(Path::new(DEFAULT_PATH), false)?,
        };
        Ok(self.resolve(file, socket))
    }

    /// Flags over `file` (which holds the default for what it does not set).
    pub(crate) fn resolve(self, file: AgentConfig, socket: Option<PathBuf>) -> Settings {
        let audit_log = self.audit_log.unwrap_or(file.audit_log);
        let mut deny_log = DenyLogConfig::new(
            self.deny_log
                .or(file.deny_log)
                .unwrap_or_else(|| audit_log.with_file_name(crate::audit::query::DENY_LOG_NAME)),
        );
        deny_log.burst = self.deny_burst.unwrap_or(file.deny_burst);
        deny_log.window = self.deny_window.map_or(file.deny_window, Bounded::get);
        Settings {
            policies: self.policies.unwrap_or(file.policy_dir),
            socket: socket.unwrap_or(file.socket),
            socket_mode: self.socket_mode.unwrap_or(file.socket_mode),
            socket_group: self.socket_group.or(file.socket_group),
            bpffs: self.bpffs.unwrap_or(file.bpffs),
            cgroup: self.cgroup.or(file.cgroup),
            state_dir: self.state_dir.unwrap_or(file.state_dir),
            max_grants: self.max_grants.unwrap_or(file.max_grants),
            max_peers: self.max_peers.unwrap_or(file.max_peers),
            // Repeated flags replace the file's whole list.
            xdp_ifaces: if self.xdp_ifaces.is_empty() {
                file.xdp_ifaces
            } else {
                self.xdp_ifaces
            },
            request_expiry: self
                .request_expiry
                .map_or(file.request_expiry, Bounded::get),
            identity_rescan: file.identity_rescan,
            group_refresh: file.group_refresh,
            lock_admins: file.lock_admins,
            grant_grace: self.grant_grace.map_or(file.grant_grace, Bounded::get),
            policy_trust: policy::FileTrust {
                symlinks_outside: self.policy_symlinks_outside || file.policy_symlinks_outside,
            },
            audit_rotation: Rotation {
                max_bytes: self.audit_max_bytes.unwrap_or(file.audit_max_bytes),
                keep: self.audit_keep.unwrap_or(file.audit_keep) as usize,
            },
            deny_log,
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
            mode: self.mode.or(file.mode),
            discovery: file.discovery && !self.no_discovery,
            peer_filter: self.peer_filter.unwrap_or(file.peer_filter),
            fleet: file.fleet,
            audit_log,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

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

    #[test]
    fn observe_flags_win_over_the_file_and_the_deny_log_sits_beside_the_audit_log() {
        let mut file = AgentConfig {
            audit_log: "/var/log/pc/audit.jsonl".into(),
            ..AgentConfig::default()
        };
        let o = AgentArgs::default().resolve(file.clone(), None);
        assert_eq!(o.audit_rotation, Rotation::default());
        assert_eq!(o.deny_log.path, PathBuf::from("/var/log/pc/denies.jsonl"));
        assert_eq!(o.metrics_addr, None);
        file.audit_keep = 3;
        file.deny_burst = 7;
        file.metrics_addr = Some("127.0.0.1:1".parse().unwrap());
        let flags = AgentArgs {
            deny_burst: Some(9),
            deny_log: Some("/d.jsonl".into()),
            ..Default::default()
        };
        let o = flags.resolve(file.clone(), None);
        assert_eq!(o.audit_rotation.keep, 3);
        assert_eq!(o.deny_log.burst, 9);
        assert_eq!(o.deny_log.path, PathBuf::from("/d.jsonl"));
        assert_eq!(o.metrics_addr, file.metrics_addr);
        // The deny log follows an --audit-log flag too.
        let flags = AgentArgs {
            audit_log: Some("/elsewhere/audit.jsonl".into()),
            ..Default::default()
        };
        let o = flags.resolve(AgentConfig::default(), None);
        assert_eq!(o.deny_log.path, PathBuf::from("/elsewhere/denies.jsonl"));
    }

    #[test]
    fn duration_flags_are_bounded_when_parsed() {
        let agent = |args: &[&str]| {
            let mut argv = vec!["portcullis", "agent"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(agent(&["--request-expiry", "2h", "--deny-window", "5m"]).is_ok());
        let e = agent(&["--request-expiry", "0s"]).unwrap_err();
        assert!(e.contains("greater than zero"), "{e}");
        let e = agent(&["--grant-grace", "400d"]).unwrap_err();
        assert!(e.contains("366 days"), "{e}");
        let e = agent(&["--deny-window", "2d"]).unwrap_err();
        assert!(e.contains("at most") || e.contains("maximum of 1d"), "{e}");
        let e = agent(&["--deny-window", "soon"]).unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
    }
}
