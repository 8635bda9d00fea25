//! Typed map I/O: ports, local grants, peers, local nets, counters and
//! capacities, as the agent reads and writes them: one entry at a time, or
//! (whole-map reads, runs of grant puts) in batches through `batch`.
//! All-or-nothing writes are `txn`'s.
//!
//! Kernel: array, hash, LPM-trie and per-CPU array maps (Linux 4.11).
use std::{collections::BTreeSet, os::fd::AsFd};

use agent_common::{
    map_names, port_index, CoverKey, DiscoveryKey, Expiry, GrantKey, PeerKey, Proto,
    SegmentCounters, Sighting, DISCOVERY_ENTRIES, MAX_COVERED_PATHS, MAX_LOCAL_NETS, PORT_SLOTS,
};
use aya::maps::MapError;

use super::{
    batch::{self, Batch},
    map_err, Dataplane, DataplaneError, PeerEntry, Result,
};
use crate::{
    hostaddrs::LocalNet,
    ledger::{Change, EntryKey},
};

impl Dataplane {
    /// Every (protocol, port) → port entry (segment id and mode bit) the
    /// kernel holds now: one batch read of the whole array (a few dozen
    /// calls), else one lookup per slot.
    pub(crate) fn read_ports(&self) -> Result<Vec<(Proto, u16, u32)>> {
        let slot = |index: u32, seg: u32| {
            let proto = if index < 65536 {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            (proto, (index & 0xffff) as u16, seg)
        };
        match batch::lookup_all::<u32, u32>(self.ports_fd.as_fd()) {
            Ok(Batch::Done(all)) => {
                return Ok(all
                    .into_iter()
                    .filter(|&(i, seg)| seg != 0 && i < PORT_SLOTS)
                    .map(|(i, seg)| slot(i, seg))
                    .collect())
            }
            Ok(Batch::Unsupported) => {}
            Err(e) => return Err(batch_err(map_names::PORTS, "read", e)),
        }
        let mut out = Vec::new();
        for index in 0..PORT_SLOTS {
            let seg = self
                .ports
                .get(&index, 0)
                .map_err(map_err(map_names::PORTS, "read"))?;
            if seg != 0 {
                out.push(slot(index, seg));
            }
        }
        Ok(out)
    }

    /// A port's entry as the kernel holds it: segment id and mode bit
    /// (`agent_common::port_entry`; 0 = unprotected).
    pub(crate) fn port_entry(&self, proto: Proto, port: u16) -> Result<u32> {
        self.ports
            .get(&port_index(proto, port), 0)
            .map_err(map_err(map_names::PORTS, "read"))
    }

    pub(crate) fn set_port(&mut self, proto: Proto, port: u16, segment: u32) -> Result<()> {
        self.ports
            .set(port_index(proto, port), segment, 0)
            .map_err(map_err(map_names::PORTS, "write"))
    }

    /// Applies ledger changes in order and stops at the first failure.
    /// Runs of local-grant puts go to the kernel in batches.
    pub(crate) fn apply(&mut self, changes: &[Change]) -> Result<()> {
        let mut i = 0;
        while i < changes.len() {
            let run = local_puts(&changes[i..]);
            if run.len() > 1 {
                self.put_grants(&run)?;
                i += run.len();
            } else {
                self.apply_one(&changes[i])?;
                i += 1;
            }
        }
        Ok(())
    }

    /// Writes local grant entries, in batches where the kernel has them.
    pub(super) fn put_grants(&mut self, entries: &[(GrantKey, Expiry)]) -> Result<()> {
        let (fd, grants, max) = (&self.grants_fd, &mut self.grants, self.max_grants);
        batch::put_all(
            entries,
            |k, v| batch::update(fd.as_fd(), k, v).map_err(|(n, e)| (n, Bulk::Io(e))),
            |k, v| {
                grants.insert(*k, *v, 0).map_err(|e| {
                    Bulk::Dataplane(Box::new(full_or(e, map_names::GRANTS, max, "insert")))
                })
            },
        )
        .map_err(|e| match e {
            Bulk::Io(e) if e.raw_os_error() == Some(libc::E2BIG) => DataplaneError::Full {
                map: map_names::GRANTS,
                capacity: max,
            },
            Bulk::Io(e) => batch_err(map_names::GRANTS, "insert (batch)", e),
            Bulk::Dataplane(e) => *e,
        })
    }

    pub(super) fn apply_one(&mut self, change: &Change) -> Result<()> {
        match *change {
            Change::Put(EntryKey::Local(key), at) => self
                .grants
                .insert(key, Expiry { at_boot_ns: at }, 0)
                .map_err(|e| full_or(e, map_names::GRANTS, self.max_grants, "insert")),
            Change::Delete(EntryKey::Local(key)) => ignore_missing(self.grants.remove(&key))
                .map_err(map_err(map_names::GRANTS, "delete")),
            // A single host (IPv6 /128, IPv4 /32 as v4-mapped): the host map.
            Change::Put(
                EntryKey::Peer {
                    segment,
                    addr,
                    prefix: 128,
                },
                at,
            ) => self
                .peer_hosts
                .insert(
                    PeerKey {
                        segment_be: segment.to_be_bytes(),
                        addr,
                    },
                    Expiry { at_boot_ns: at },
                    0,
                )
                .map_err(|e| full_or(e, map_names::PEER_HOSTS, self.max_peers, "insert")),
            Change::Delete(EntryKey::Peer {
                segment,
                addr,
                prefix: 128,
            }) => ignore_missing(self.peer_hosts.remove(&PeerKey {
                segment_be: segment.to_be_bytes(),
                addr,
            }))
            .map_err(map_err(map_names::PEER_HOSTS, "delete")),
            Change::Put(
                EntryKey::Peer {
                    segment,
                    addr,
                    prefix,
                },
                at,
            ) => {
                let key = peer_key(segment, addr, prefix);
                self.peers
                    .insert(&key, Expiry { at_boot_ns: at }, 0)
                    .map_err(|e| full_or(e, map_names::PEERS, self.max_peers, "insert"))
            }
            Change::Delete(EntryKey::Peer {
                segment,
                addr,
                prefix,
            }) => ignore_missing(self.peers.remove(&peer_key(segment, addr, prefix)))
                .map_err(map_err(map_names::PEERS, "delete")),
        }
    }

    /// The policy epoch the programs compare marked flows against.
    pub(crate) fn epoch(&self) -> Result<u64> {
        self.epoch
            .get(&0, 0)
            .map_err(map_err(map_names::EPOCH, "read"))
    }

    /// Writes the policy epoch (one 8-byte array update: the programs
    /// never see half of it).
    pub(crate) fn set_epoch(&mut self, epoch: u64) -> Result<()> {
        self.epoch
            .set(0, epoch, 0)
            .map_err(map_err(map_names::EPOCH, "write"))
    }

    /// "Fresh until" (`PC_FRESH`): strict entries work only below it.
    pub(crate) fn fresh_until(&self) -> Result<u64> {
        self.fresh
            .get(&0, 0)
            .map_err(map_err(map_names::FRESH, "read"))
    }

    /// Writes "fresh until" (one 8-byte array update).
    pub(crate) fn set_fresh_until(&mut self, at: u64) -> Result<()> {
        self.fresh
            .set(0, at, 0)
            .map_err(map_err(map_names::FRESH, "write"))
    }

    /// Every segment's cgroup-level mask that is not 0.
    pub(crate) fn read_cgroup_levels(&self) -> Result<Vec<(u32, u32)>> {
        // One batch read where the kernel has it (one call instead of one
        // per segment slot: 4,096 at every start).
        match batch::lookup_all::<u32, u32>(
            aya::maps::IterableMap::map(&self.cgroup_levels)
                .fd()
                .as_fd(),
        ) {
            Ok(Batch::Done(all)) => {
                return Ok(all
                    .into_iter()
                    .filter(|&(segment, mask)| mask != 0 && segment < agent_common::MAX_SEGMENTS)
                    .collect())
            }
            Ok(Batch::Unsupported) => {}
            Err(e) => return Err(batch_err(map_names::CGROUP_LEVELS, "read", e)),
        }
        let mut out = Vec::new();
        for segment in 0..agent_common::MAX_SEGMENTS {
            let mask = self
                .cgroup_levels
                .get(&segment, 0)
                .map_err(map_err(map_names::CGROUP_LEVELS, "read"))?;
            if mask != 0 {
                out.push((segment, mask));
            }
        }
        Ok(out)
    }

    /// Sets a segment's cgroup-level mask.
    pub(crate) fn set_cgroup_levels(&mut self, segment: u32, mask: u32) -> Result<()> {
        self.cgroup_levels
            .set(segment, mask, 0)
            .map_err(map_err(map_names::CGROUP_LEVELS, "write"))
    }

    /// Every local grant entry the kernel holds (batch reads where the
    /// kernel has them).
    pub(crate) fn read_grants(&self) -> Result<Vec<(GrantKey, u64)>> {
        match batch::lookup_all::<GrantKey, Expiry>(self.grants_fd.as_fd()) {
            Ok(Batch::Done(all)) => {
                return Ok(all.into_iter().map(|(k, v)| (k, v.at_boot_ns)).collect())
            }
            Ok(Batch::Unsupported) => {}
            Err(e) => return Err(batch_err(map_names::GRANTS, "read", e)),
        }
        self.grants
            .iter()
            .map(|r| r.map(|(k, v)| (k, v.at_boot_ns)))
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(map_names::GRANTS, "read"))
    }

    /// How many local grant entries the kernel holds (a batch read, else a
    /// walk of the keys).
    pub(super) fn grant_count(&self) -> Result<usize> {
        match batch::lookup_all::<GrantKey, Expiry>(self.grants_fd.as_fd()) {
            Ok(Batch::Done(all)) => Ok(all.len()),
            Ok(Batch::Unsupported) => Ok(self.grants.keys().count()),
            Err(e) => Err(batch_err(map_names::GRANTS, "read", e)),
        }
    }

    /// One local grant entry's expiry, as the kernel holds it.
    pub(crate) fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>> {
        match self.grants.get(key, 0) {
            Ok(v) => Ok(Some(v.at_boot_ns)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::GRANTS, "read")(e)),
        }
    }

    /// Every peer entry the kernel holds.
    pub(crate) fn read_peers(&self) -> Result<Vec<PeerEntry>> {
        let mut out = Vec::new();
        for r in self.peers.iter() {
            let (k, v) = r.map_err(map_err(map_names::PEERS, "read"))?;
            let data = k.data();
            let prefix = (k.prefix_len().saturating_sub(32)) as u8;
            out.push(PeerEntry {
                segment: u32::from_be_bytes(data.segment_be),
                addr: data.addr,
                prefix,
                expiry: v.at_boot_ns,
            });
        }
        for r in self.peer_hosts.iter() {
            let (k, v) = r.map_err(map_err(map_names::PEER_HOSTS, "read"))?;
            out.push(PeerEntry {
                segment: u32::from_be_bytes(k.segment_be),
                addr: k.addr,
                prefix: 128,
                expiry: v.at_boot_ns,
            });
        }
        Ok(out)
    }

    /// The peer entry that decides for a source address on a segment, as
    /// the XDP program and the ingress peer check find it: a live host entry, else the longest prefix,
    /// else an expired host entry.
    pub(crate) fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>> {
        let host = match self.peer_hosts.get(
            &PeerKey {
                segment_be: segment.to_be_bytes(),
                addr,
            },
            0,
        ) {
            Ok(v) => Some(v.at_boot_ns),
            Err(MapError::KeyNotFound) => None,
            Err(e) => return Err(map_err(map_names::PEER_HOSTS, "read")(e)),
        };
        if host.is_some_and(|at| {
            agent_common::expiry::until(at, self.fresh_until().unwrap_or(0))
                > crate::clock::boot_ns()
        }) {
            return Ok(host);
        }
        match self.peers.get(&peer_key(segment, addr, 128), 0) {
            Ok(v) => Ok(Some(v.at_boot_ns)),
            Err(MapError::KeyNotFound) => Ok(host),
            Err(e) => Err(map_err(map_names::PEERS, "read")(e)),
        }
    }

    /// Whether `addr` falls in a prefix of the local-prefix trie (what the
    /// programs' `in_local_nets` asks).
    pub(crate) fn in_local_nets(&self, addr: [u8; 16]) -> Result<bool> {
        let key = aya::maps::lpm_trie::Key::new(128, addr);
        match self.local_nets.get(&key, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(map_names::LOCAL_NETS, "read")(e)),
        }
    }

    /// Makes the local-prefix trie hold exactly `nets` (adds first, so a
    /// prefix that stays local is never missing for an instant).
    pub(crate) fn set_local_addrs(&mut self, nets: &BTreeSet<LocalNet>) -> Result<()> {
        let current: BTreeSet<LocalNet> = self
            .local_nets
            .keys()
            .map(|k| {
                k.map(|k| LocalNet {
                    addr: k.data(),
                    prefix: k.prefix_len() as u8,
                })
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(map_names::LOCAL_NETS, "read"))?;
        let key = |n: &LocalNet| aya::maps::lpm_trie::Key::new(n.prefix as u32, n.addr);
        for n in nets.difference(&current) {
            self.local_nets.insert(&key(n), 1, 0).map_err(|e| {
                match full_or(e, map_names::LOCAL_NETS, MAX_LOCAL_NETS, "insert") {
                    DataplaneError::Full { capacity, .. } => {
                        DataplaneError::LocalNetsFull { capacity }
                    }
                    other => other,
                }
            })?;
        }
        for n in current.difference(nets) {
            ignore_missing(self.local_nets.remove(&key(n)))
                .map_err(map_err(map_names::LOCAL_NETS, "delete"))?;
        }
        Ok(())
    }

    /// Makes the cgroup cover map hold exactly `cover` (path → entries;
    /// see [`crate::cover::CgroupCover`]). Paths too long for a key, and
    /// paths with more entries than a value holds, are skipped by the
    /// caller ([`crate::cover::key`]).
    pub(crate) fn set_cover(&mut self, cover: &crate::cover::CgroupCover) -> Result<()> {
        let current: Vec<CoverKey> = self
            .cover
            .keys()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(map_names::CGROUP_COVER, "read"))?;
        let mut wanted = std::collections::BTreeMap::new();
        for (path, entries) in cover {
            if let (Some(key), Some(value)) =
                (crate::cover::key(path), crate::cover::value(entries))
            {
                wanted.insert(key.path, value);
            }
        }
        for key in current {
            if !wanted.contains_key(&key.path) {
                ignore_missing(self.cover.remove(&key))
                    .map_err(map_err(map_names::CGROUP_COVER, "delete"))?;
            }
        }
        for (path, value) in wanted {
            let key = CoverKey { path };
            if self.cover.get(&key, 0).ok() != Some(value) {
                self.cover.insert(key, value, 0).map_err(|e| {
                    full_or(e, map_names::CGROUP_COVER, MAX_COVERED_PATHS, "insert")
                })?;
            }
        }
        Ok(())
    }

    /// Allowed/denied counts of a segment, summed over CPUs.
    pub(crate) fn counters(&self, segment: u32) -> Result<SegmentCounters> {
        let per_cpu = self
            .counters
            .get(&segment, 0)
            .map_err(map_err(map_names::COUNTERS, "read"))?;
        Ok(per_cpu
            .iter()
            .fold(SegmentCounters::default(), |acc, c| SegmentCounters {
                allowed: acc.allowed + c.allowed,
                denied: acc.denied + c.denied,
                would_deny: acc.would_deny + c.would_deny,
            }))
    }

    /// A reader of the per-segment counters on its own descriptor (the
    /// pinned map opened again), usable without the agent: the metrics
    /// endpoint reads the kernel's counters with it at every scrape.
    pub(crate) fn counters_reader(&self) -> Result<super::CountersReader> {
        use aya::maps::{Map, MapData, PerCpuArray};
        let path = self.pin_dir.join("maps").join(map_names::COUNTERS);
        let open = || map_err(map_names::COUNTERS, "open");
        let data = MapData::from_pin(&path).map_err(open())?;
        let map: PerCpuArray<MapData, SegmentCounters> =
            PerCpuArray::try_from(Map::from_map_data(data).map_err(open())?).map_err(open())?;
        Ok(Box::new(move |segment| {
            let per_cpu = map.get(&segment, 0).ok()?;
            Some(
                per_cpu
                    .iter()
                    .fold(SegmentCounters::default(), |acc, c| SegmentCounters {
                        allowed: acc.allowed + c.allowed,
                        denied: acc.denied + c.denied,
                        would_deny: acc.would_deny + c.would_deny,
                    }),
            )
        }))
    }

    /// Every entry of the discovery map (bounded by its capacity). Entries
    /// the LRU evicts while the walk runs are skipped.
    pub(crate) fn read_discovery(&self) -> Result<Vec<(DiscoveryKey, Sighting)>> {
        let mut out = Vec::new();
        for entry in self.discovery.iter().take(DISCOVERY_ENTRIES as usize * 2) {
            match entry {
                Ok(kv) => out.push(kv),
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(map_names::DISCOVERY, "read")(e)),
            }
        }
        Ok(out)
    }

    pub(crate) fn capacity(&self) -> (u32, u32) {
        (self.max_grants, self.max_peers)
    }
}

pub(super) fn peer_key(
    segment: u32,
    addr: [u8; 16],
    prefix: u8,
) -> aya::maps::lpm_trie::Key<PeerKey> {
    aya::maps::lpm_trie::Key::new(
        agent_common::peer_prefix_len(prefix as u32),
        PeerKey {
            segment_be: segment.to_be_bytes(),
            addr,
        },
    )
}

/// The leading run of local-grant puts in `changes`, as map entries.
pub(super) fn local_puts(changes: &[Change]) -> Vec<(GrantKey, Expiry)> {
    changes
        .iter()
        .map_while(|c| match *c {
            Change::Put(EntryKey::Local(k), at) => Some((k, Expiry { at_boot_ns: at })),
            _ => None,
        })
        .collect()
}

/// A batch write's failure: the batch call's own, or a single write's.
enum Bulk {
    Io(std::io::Error),
    Dataplane(Box<DataplaneError>),
}

/// A failed batch call as a map error naming the syscall.
pub(super) fn batch_err(map: &'static str, op: &'static str, e: std::io::Error) -> DataplaneError {
    DataplaneError::Map {
        map,
        op,
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_batch",
            io_error: e,
        }),
    }
}

pub(super) fn ignore_missing(
    r: std::result::Result<(), MapError>,
) -> std::result::Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(ref e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        other => other,
    }
}

pub(super) fn full_or(
    e: MapError,
    map: &'static str,
    capacity: u32,
    op: &'static str,
) -> DataplaneError {
    if let MapError::SyscallError(ref s) = e {
        if s.io_error.raw_os_error() == Some(libc::E2BIG) {
            return DataplaneError::Full { map, capacity };
        }
    }
    DataplaneError::Map { map, op, source: e }
}
