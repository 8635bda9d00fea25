//! The examples `--help` shows under each subcommand (`after_help`). A
//! unit test (`cli.rs`) keeps every subcommand with examples and every
//! option with a description.

pub(super) const AGENT: &str = "\
Examples:
  portcullis agent --config /etc/portcullis/agent.toml     # as the systemd unit runs it
  portcullis agent --policies ./policies --cgroup /sys/fs/cgroup/test.slice --mode audit
Every flag overrides its key in the configuration file (docs/config.md).";

pub(super) const GRANT: &str = "\
Examples:
  portcullis grant payments-db user:alice --ttl 30m --reason \"INC-4411 replication lag\"
  portcullis grant sessions-cache unit:report.service --ttl 2h --reason \"monthly report\"
  portcullis grant payments-db peer:10.20.3.4 --ttl 15m --reason \"migration host\"
  portcullis grant --fleet --hosts group:db payments-db user:alice --ttl 30m   # every db host
Durations: whole numbers with s, m, h or d, largest first: 90s, 15m, 1h30m, 2d.";

pub(super) const REVOKE: &str = "\
Examples:
  portcullis revoke 7                                   # one grant, by the id `grant` printed
  portcullis revoke --identity user:alice               # every grant of alice, everywhere
  portcullis revoke --identity user:alice --segment payments-db
  portcullis revoke --segment payments-db               # every grant on the segment
  portcullis revoke --fleet --identity user:alice       # fleet grants; waits for every host";

pub(super) const LOCK: &str = "\
Examples:
  portcullis lock user:alice --reason \"left the company\" --include-standing
  portcullis lock user:bob --reason \"laptop stolen, INC-5120\" --ttl 8h
Revokes every grant covering the identity and cuts its flows; docs/jit.md#locks.";

pub(super) const UNLOCK: &str = "\
Examples:
  portcullis unlock user:bob      # revoked grants stay revoked: grant or approve again";

pub(super) const LIST: &str = "\
Examples:
  portcullis list                 # standing allows, live grants, pending requests
  portcullis list --pending       # the requests waiting for a decision
  portcullis list --json | jq '.ok.grants[].identity'";

pub(super) const REQUEST: &str = "\
Examples:
  portcullis request payments-db --ttl 30m --reason \"INC-4411\" --wait
  portcullis request sessions-cache --reason \"debug a session\"   # the segment's default_ttl
--wait exits 0 once approved, 1 when denied or when the request lapses.";

pub(super) const APPROVE: &str = "\
Examples:
  portcullis approve 12               # for the TTL the request asked
  portcullis approve 12 --ttl 15m     # shorter (never longer)
  portcullis approve --fleet h1-1796601234567-000123456   # a fleet request
A segment with approvals_required = N grants once N distinct approvers approved.";

pub(super) const EXTEND: &str = "\
Examples:
  portcullis extend 13 --ttl 30m --reason \"INC-4411 still open\"   # 30m more from now
The grant's kernel entry is updated in place; never past max_ttl from its start.";

pub(super) const DENY: &str = "\
Examples:
  portcullis deny 14 --reason \"use the replica\"";

pub(super) const EXPLAIN: &str = "\
Examples:
  portcullis explain user:alice 5432/tcp
  portcullis explain --pid 4242 5432/tcp
  portcullis explain peer:10.20.3.4 6379/tcp --json
Exits 0 for ALLOW (and WOULD DENY in audit mode), 1 for DENY.";

pub(super) const DISCOVER: &str = "\
Examples:
  portcullis discover
  portcullis discover --json | jq '.ok.ports[] | select(.segment == null)'";

pub(super) const SUGGEST: &str = "\
Examples:
  portcullis suggest --segment payments-db --since 7d > payments-db.toml
  portcullis suggest --port 6379/tcp --aggregate
Review every line before use: whoever connected is listed, wanted or not.";

pub(super) const STATUS: &str = "\
Examples:
  portcullis status
  portcullis status --json | jq '.ok.segments[] | {name, ports, grants}'
Exits 1 while the kernel lacks part of the enforcement.";

pub(super) const AUDIT: &str = "\
Examples:
  portcullis audit --since 1h
  portcullis audit --segment payments-db --event grant
  portcullis audit -n 20 --follow
  portcullis audit --denies --identity user:alice
  portcullis audit verify";

pub(super) const REPORT: &str = "\
Examples:
  portcullis report unused                 # no use in the last 30 days
  portcullis report unused --since 7d --json";

pub(super) const CHECK: &str = "\
Examples:
  portcullis check /etc/portcullis/policies
  portcullis check payments-db.toml sessions.toml
Exits 0 when the policy is valid (warnings included), 2 when it is not. Needs no root and no agent.";

pub(super) const UNINSTALL: &str = "\
Examples:
  portcullis uninstall                      # asks first; says which ports it opens
  portcullis uninstall --yes --config /etc/portcullis/agent.toml
Needs root.";

pub(super) const DEBUG: &str = "\
Examples:
  portcullis debug on      # the kernel's reasons appear in the agent's log
  portcullis debug off
  portcullis debug         # shows the state";

pub(super) const COMPLETIONS: &str = "\
Examples:
  portcullis completions bash > /etc/bash_completion.d/portcullis
  portcullis completions zsh > \"${fpath[1]}/_portcullis\"
  portcullis completions fish > ~/.config/fish/completions/portcullis.fish
The package installs all three.";
