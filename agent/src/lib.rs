//! Portcullis: a port-level micro-segmentation agent.
//!
//! # Layout
//! - [`identity`]: identities and port ranges: parsing and display.
//! - [`duration`]: bounded durations (TTLs, intervals), parsed once where they enter.
//! - [`policy`]: segment policy files: parse, validate, diagnostics.
//! - [`resolve`]: from an identity to the kernel keys that stand for it here.
//! - [`ledger`]: which map entries each source of access opens.
//! - [`dataplane`]: the only module that touches aya: load, attach, pin, maps;
//!   its `enforcement` part checks the kernel against what it attached and repairs.
//! - [`kernel`]: the `KernelMaps` seam between the core and the kernel maps (and a fake for tests).
//! - [`kernlog`]: kernel debug lines (`portcullis debug on|off`) forwarded into the log.
//! - [`lock`]: one agent per pin directory, state directory, audit log and socket.
//! - [`pindir`]: pin directories only root can touch.
//! - [`actor`]: who did something (from peer credentials), and Unix milliseconds.
//! - [`agent`]: the agent's state and operations (grant, revoke, expire, reload).
//! - [`requests`]: the book of access requests (pending, approved, denied, expired).
//! - [`explain`]: why a subject may or may not reach a port, read from the kernel maps.
//! - [`server`]: the agent process: start-up, control socket, timers, signals.
//! - [`control`]: the control-socket protocol and client.
//! - [`connlimit`]: how many control connections are served, per uid and for root.
//! - [`termtext`]: free text the agent refuses, and the one escaping function for output.
//! - [`audit`]: the hash-chained audit log, its rotation, and `portcullis audit`.
//! - [`denylog`]: kernel deny events → the deny log and the journal, rate limited.
//! - [`metrics`]: the Prometheus snapshot, exposition and endpoint; [`observe`] takes the
//!   snapshot from the agent and starts the deny-log reader and the endpoint.
//! - [`state`]: grants and ids saved across restarts.
//! - [`cli`]: the command line.
//! - [`settings`]: flags over the configuration file (`/etc/portcullis/agent.toml`) over
//!   defaults, resolved once; [`duration`] parses every duration a user writes.
//! - [`watch`]: inotify watches on the policy directory and the cgroup tree.
//! - [`sweep`]: judging every open flow with the kernel maps and cutting refused ones
//!   (at start, after revoke, expiry and reload, on kill requests); [`sockdiag`] is its netlink shim.
//! - [`cgroupfs`], [`hostaddrs`], [`clock`], [`mounts`]: host facts.
//! - `benchprog` (feature `bench`): `portcullis bench-dataplane` (hidden): per-packet cost for `cargo xtask bench`.
pub mod actor;
pub mod agent;
pub mod audit;
#[cfg(feature = "bench")]
pub mod benchprog;
pub mod cgroupfs;
pub mod cli;
pub mod clock;
pub mod connlimit;
pub mod control;
pub mod dataplane;
pub mod denylog;
pub mod duration;
pub mod explain;
pub mod hostaddrs;
pub mod identity;
pub mod kernel;
pub mod kernlog;
pub mod ledger;
pub mod lock;
pub mod metrics;
pub mod mounts;
pub mod notify;
pub mod observe;
pub mod pindir;
pub mod policy;
pub mod privileges;
pub mod requests;
pub mod resolve;
pub mod server;
pub mod settings;
pub mod sockdiag;
pub mod state;
pub mod sweep;
pub mod termtext;
pub mod usage;
pub mod watch;
