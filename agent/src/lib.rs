//! Portcullis: a port-level micro-segmentation agent.
//!
//! # Layout
//! - [`identity`]: identities, port ranges and TTLs: parsing and display.
//! - [`policy`]: segment policy files: parse, validate, diagnostics.
//! - [`resolve`]: from an identity to the kernel keys that stand for it here.
//! - [`ledger`]: which map entries each source of access opens.
//! - [`dataplane`]: the only module that touches aya: load, attach, pin, maps.
//! - [`agent`]: the agent's state and operations (grant, revoke, expire, reload).
//! - [`server`]: the agent process: start-up, control socket, timers, signals.
//! - [`control`]: the control-socket protocol and client.
//! - [`audit`]: the hash-chained audit log.
//! - [`state`]: grants and ids saved across restarts.
//! - [`cli`]: the command line.
//! - [`cgroupfs`], [`hostaddrs`], [`clock`]: host facts.
pub mod agent;
pub mod audit;
pub mod cgroupfs;
pub mod cli;
pub mod clock;
pub mod control;
pub mod dataplane;
pub mod hostaddrs;
pub mod identity;
pub mod ledger;
pub mod policy;
pub mod resolve;
pub mod server;
pub mod sockdiag;
pub mod state;
