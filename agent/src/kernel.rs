//! The seam between the agent's core and the kernel: [`KernelMaps`], what
//! the core needs from the pinned maps (and from the links' check), with
//! its two implementations — the real [`Dataplane`] and, in tests, an
//! in-memory [`FakeKernel`].
//!
//! Owns the trait and the fake. It does not own loading, attaching, pins or
//! the rings: the server opens the dataplane, takes its rings, and hands it
//! to the agent as a `Box<dyn KernelMaps>`; from then on the core sees only
//! this trait. Every method of the real implementation delegates to the
//! dataplane's own public method of the same name.
//!
//! [`FastPath`] wraps either, so that every write keeps the kernel's
//! policy epoch and cgroup-level masks (see `kernel/fastpath.rs`).
//!
//! Kernel: what the dataplane needs (see `dataplane`); the fake needs none.
use std::{collections::BTreeSet, path::Path};

use agent_common::{DiscoveryKey, GrantKey, Proto, SegmentCounters, Sighting};

use crate::{
    cover::CgroupCover,
    dataplane::{Dataplane, DataplaneError, KernelCheck, PeerEntry, PeerFilter},
    hostaddrs::LocalNet,
    ledger::Change,
    usage::Totals,
};

pub(crate) use crate::dataplane::{CountersReader, UsageReader};

/// What the agent's core reads from and writes to the kernel.
pub(crate) trait KernelMaps: Send {
    /// Applies ledger changes in order; stops at the first failure.
    fn apply(&mut self, changes: &[Change]) -> Result<(), DataplaneError>;
    /// `apply` for changes that can only add or extend allows (a new
    /// grant): no open flow's allow can end, so the policy epoch stays.
    fn apply_adding(&mut self, changes: &[Change]) -> Result<(), DataplaneError> {
        self.apply(changes)
    }
    /// The policy epoch marked flows are compared against.
    fn epoch(&self) -> Result<u64, DataplaneError>;
    /// Writes the policy epoch (see `kernel/fastpath.rs`).
    fn set_epoch(&mut self, epoch: u64) -> Result<(), DataplaneError>;
    /// "Fresh until" (`PC_FRESH`): strict entries work only below it.
    fn fresh_until(&self) -> Result<u64, DataplaneError>;
    /// Writes "fresh until" (see `agent/freshness.rs`; [`FastPath`] bumps
    /// the epoch when it goes down).
    fn set_fresh_until(&mut self, at: u64) -> Result<(), DataplaneError>;
    /// Every segment's cgroup-level mask that is not 0.
    fn read_cgroup_levels(&self) -> Result<Vec<(u32, u32)>, DataplaneError>;
    /// Sets a segment's cgroup-level mask.
    fn set_cgroup_levels(&mut self, segment: u32, mask: u32) -> Result<(), DataplaneError>;
    /// Puts, then `ports`, then deletes, all or nothing (see `dataplane::txn`).
    fn apply_atomic(
        &mut self,
        changes: &[Change],
        ports: &[(Proto, u16, u32)],
    ) -> Result<(), DataplaneError>;
    /// Makes the local-prefix trie hold exactly `nets`.
    fn set_local_addrs(&mut self, nets: &BTreeSet<LocalNet>) -> Result<(), DataplaneError>;
    /// Every (protocol, port) → segment entry the kernel holds.
    fn read_ports(&self) -> Result<Vec<(Proto, u16, u32)>, DataplaneError>;
    /// Every local grant entry the kernel holds.
    fn read_grants(&self) -> Result<Vec<(GrantKey, u64)>, DataplaneError>;
    /// Every peer entry the kernel holds.
    fn read_peers(&self) -> Result<Vec<PeerEntry>, DataplaneError>;
    /// A port's entry: segment id and mode bit (`agent_common::port_entry`; 0 = none).
    fn port_entry(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError>;
    /// One local grant entry's expiry.
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError>;
    /// The peer entry that decides for `addr` on `segment`.
    fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError>;
    /// Whether `addr` is in the mirror of the kernel's local routes.
    fn in_local_nets(&self, addr: [u8; 16]) -> Result<bool, DataplaneError>;
    /// Allowed/denied counts of a segment.
    fn counters(&self, segment: u32) -> Result<SegmentCounters, DataplaneError>;
    /// A reader of the same counters that needs neither `self` nor the
    /// agent's lock (the metrics endpoint's).
    fn counters_reader(&self) -> Result<CountersReader, DataplaneError>;
    /// Every entry of the discovery map: who reached which local port.
    fn read_discovery(&self) -> Result<Vec<(DiscoveryKey, Sighting)>, DataplaneError>;
    /// (grant map, peer maps) capacity.
    fn capacity(&self) -> (u32, u32);
    /// Every usage entry, summed over CPUs.
    fn read_usage(&self) -> Result<Vec<(GrantKey, Totals)>, DataplaneError>;
    /// One local entry's use, summed over CPUs (`None`: never used).
    fn usage(&self, key: &GrantKey) -> Result<Option<Totals>, DataplaneError>;
    /// A reader of connections per segment id from the usage map that
    /// needs neither `self` nor the agent's lock (the metrics endpoint's).
    fn usage_reader(&self) -> Result<UsageReader, DataplaneError>;
    /// Deletes the usage entries of `keys` (gone from the grant map).
    fn forget_usage(&mut self, keys: &[GrantKey]) -> Result<(), DataplaneError>;

    /// Attaches the programs (the server does this once the maps are full);
    /// returns where the peer filter went.
    fn attach(&mut self) -> Result<Vec<PeerFilter>, DataplaneError>;
    /// Where the peer filter is attached, and how (for `status`).
    fn peer_filters(&self) -> Vec<PeerFilter>;
    /// Asks the kernel what is attached; changes nothing.
    fn check(&self) -> KernelCheck;
    /// Re-attaches what is missing: (before, after).
    fn repair(&mut self) -> (KernelCheck, KernelCheck);
    /// Lets go of the held links (for uninstall).
    fn release_links(&mut self);
    fn bpffs(&self) -> &Path;
    fn pin_dir(&self) -> &Path;
    fn cgroup(&self) -> &Path;
    /// Makes the cgroup cover map hold exactly `cover` (see `crate::cover`).
    fn set_cover(&mut self, cover: &CgroupCover) -> Result<(), DataplaneError>;
}

impl KernelMaps for Dataplane {
    fn apply(&mut self, changes: &[Change]) -> Result<(), DataplaneError> {
        Dataplane::apply(self, changes)
    }
    fn apply_atomic(
        &mut self,
        changes: &[Change],
        ports: &[(Proto, u16, u32)],
    ) -> Result<(), DataplaneError> {
        Dataplane::apply_atomic(self, changes, ports)
    }
    fn epoch(&self) -> Result<u64, DataplaneError> {
        Dataplane::epoch(self)
    }
    fn set_epoch(&mut self, epoch: u64) -> Result<(), DataplaneError> {
        Dataplane::set_epoch(self, epoch)
    }
    fn fresh_until(&self) -> Result<u64, DataplaneError> {
        Dataplane::fresh_until(self)
    }
    fn set_fresh_until(&mut self, at: u64) -> Result<(), DataplaneError> {
        Dataplane::set_fresh_until(self, at)
    }
    fn read_cgroup_levels(&self) -> Result<Vec<(u32, u32)>, DataplaneError> {
        Dataplane::read_cgroup_levels(self)
    }
    fn set_cgroup_levels(&mut self, segment: u32, mask: u32) -> Result<(), DataplaneError> {
        Dataplane::set_cgroup_levels(self, segment, mask)
    }
    fn set_local_addrs(&mut self, nets: &BTreeSet<LocalNet>) -> Result<(), DataplaneError> {
        Dataplane::set_local_addrs(self, nets)
    }
    fn set_cover(&mut self, cover: &CgroupCover) -> Result<(), DataplaneError> {
        Dataplane::set_cover(self, cover)
    }
    fn read_ports(&self) -> Result<Vec<(Proto, u16, u32)>, DataplaneError> {
        Dataplane::read_ports(self)
    }
    fn read_grants(&self) -> Result<Vec<(GrantKey, u64)>, DataplaneError> {
        Dataplane::read_grants(self)
    }
    fn read_peers(&self) -> Result<Vec<PeerEntry>, DataplaneError> {
        Dataplane::read_peers(self)
    }
    fn port_entry(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError> {
        Dataplane::port_entry(self, proto, port)
    }
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError> {
        Dataplane::grant_expiry(self, key)
    }
    fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError> {
        Dataplane::peer_lookup(self, segment, addr)
    }
    fn in_local_nets(&self, addr: [u8; 16]) -> Result<bool, DataplaneError> {
        Dataplane::in_local_nets(self, addr)
    }
    fn counters(&self, segment: u32) -> Result<SegmentCounters, DataplaneError> {
        Dataplane::counters(self, segment)
    }
    fn counters_reader(&self) -> Result<CountersReader, DataplaneError> {
        Dataplane::counters_reader(self)
    }
    fn read_discovery(&self) -> Result<Vec<(DiscoveryKey, Sighting)>, DataplaneError> {
        Dataplane::read_discovery(self)
    }
    fn capacity(&self) -> (u32, u32) {
        Dataplane::capacity(self)
    }
    fn read_usage(&self) -> Result<Vec<(GrantKey, Totals)>, DataplaneError> {
        Dataplane::read_usage(self)
    }
    fn usage(&self, key: &GrantKey) -> Result<Option<Totals>, DataplaneError> {
        Dataplane::usage(self, key)
    }
    fn usage_reader(&self) -> Result<UsageReader, DataplaneError> {
        Dataplane::usage_reader(self)
    }
    fn forget_usage(&mut self, keys: &[GrantKey]) -> Result<(), DataplaneError> {
        Dataplane::forget_usage(self, keys)
    }
    fn attach(&mut self) -> Result<Vec<PeerFilter>, DataplaneError> {
        Dataplane::attach(self)?;
        Ok(Dataplane::filters(self).to_vec())
    }
    fn peer_filters(&self) -> Vec<PeerFilter> {
        Dataplane::filters(self).to_vec()
    }
    fn check(&self) -> KernelCheck {
        Dataplane::check(self)
    }
    fn repair(&mut self) -> (KernelCheck, KernelCheck) {
        Dataplane::repair(self)
    }
    fn release_links(&mut self) {
        Dataplane::release_links(self)
    }
    fn bpffs(&self) -> &Path {
        Dataplane::bpffs(self)
    }
    fn pin_dir(&self) -> &Path {
        Dataplane::pin_dir(self)
    }
    fn cgroup(&self) -> &Path {
        Dataplane::cgroup(self)
    }
}

#[cfg(test)]
pub(crate) use fake::{FakeKernel, Write};

#[cfg(test)]
mod fake;
mod fastpath;

pub(crate) use fastpath::{CgroupLevels, FastPath};

/// Whether a peer trie entry (v6 form, v6 prefix length) contains `addr`.
pub(crate) fn prefix_contains(net: &[u8; 16], prefix: u8, addr: &[u8; 16]) -> bool {
    let bits = u128::from_be_bytes(*addr);
    let net = u128::from_be_bytes(*net);
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix.min(128) as u32)
    };
    bits & mask == net & mask
}
