//! An in-memory [`KernelMaps`] for the fast, unprivileged test tier.
//!
//! Owns a copy of what the pinned maps would hold, a log of every write in
//! the order it was made (so tests can check that puts go before deletes),
//! and the same capacity rule as the real transaction: a change that does
//! not fit is refused before anything is written. Clones share one state,
//! so a test keeps a handle after giving the fake to the agent.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use agent_common::{DiscoveryKey, GrantKey, Proto, SegmentCounters, Sighting};

use super::KernelMaps;
use crate::{
    dataplane::{DataplaneError, KernelCheck, PeerEntry, PeerFilter},
    hostaddrs::LocalNet,
    ledger::{Change, EntryKey},
    usage::Totals,
};

/// One write, as the fake saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    Put(EntryKey),
    Delete(EntryKey),
    Port(Proto, u16, u32),
}

/// What the maps hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FakeMaps {
    pub ports: BTreeMap<(Proto, u16), u32>,
    pub grants: BTreeMap<GrantKey, u64>,
    /// (segment, address, IPv6 prefix length, expiry).
    pub peers: Vec<(u32, [u8; 16], u8, u64)>,
    pub local_nets: BTreeSet<LocalNet>,
    /// The cgroup cover map, as the agent last wrote it.
    pub cover: crate::cover::CgroupCover,
    pub counters: BTreeMap<u32, SegmentCounters>,
    /// What the discovery map holds (tests fill it as the hooks would).
    pub discovery: Vec<(DiscoveryKey, Sighting)>,
    /// What the hooks would have counted (tests write it directly).
    pub usage: BTreeMap<GrantKey, Totals>,
    pub max_grants: u32,
    pub max_peers: u32,
    /// Every write so far, oldest first.
    pub writes: Vec<Write>,
    /// The policy epoch.
    pub epoch: u64,
    /// "Fresh until" (`PC_FRESH`).
    pub fresh_until: u64,
    /// Every write of it: (how many `epoch_writes` came before it, value).
    pub fresh_writes: Vec<(usize, u64)>,
    /// Segment → cgroup-level mask (no entry: 0).
    pub cgroup_levels: BTreeMap<u32, u32>,
    /// Every epoch write: (how many `writes` came before it, the epoch).
    pub epoch_writes: Vec<(usize, u64)>,
    /// Every mask write: (how many `writes` came before it, segment, mask).
    pub level_writes: Vec<(usize, u32, u32)>,
}

impl FakeMaps {
    fn put(&mut self, key: EntryKey, at: u64) -> Result<(), DataplaneError> {
        match key {
            EntryKey::Local(k) => {
                if !self.grants.contains_key(&k) && self.grants.len() >= self.max_grants as usize {
                    return Err(DataplaneError::Full {
                        map: agent_common::map_names::GRANTS,
                        capacity: self.max_grants,
                    });
                }
                self.grants.insert(k, at);
            }
            EntryKey::Peer {
                segment,
                addr,
                prefix,
            } => {
                let full = self.peers.len() >= self.max_peers as usize;
                match self
                    .peers
                    .iter_mut()
                    .find(|p| (p.0, p.1, p.2) == (segment, addr, prefix))
                {
                    Some(p) => p.3 = at,
                    None if full => {
                        return Err(DataplaneError::Full {
                            map: agent_common::map_names::PEERS,
                            capacity: self.max_peers,
                        })
                    }
                    None => self.peers.push((segment, addr, prefix, at)),
                }
            }
        }
        self.writes.push(Write::Put(key));
        Ok(())
    }

    fn delete(&mut self, key: EntryKey) {
        match key {
            EntryKey::Local(k) => {
                self.grants.remove(&k);
            }
            EntryKey::Peer {
                segment,
                addr,
                prefix,
            } => self
                .peers
                .retain(|p| (p.0, p.1, p.2) != (segment, addr, prefix)),
        }
        self.writes.push(Write::Delete(key));
    }

    fn apply_one(&mut self, c: &Change) -> Result<(), DataplaneError> {
        match *c {
            Change::Put(k, at) => self.put(k, at),
            Change::Delete(k) => {
                self.delete(k);
                Ok(())
            }
        }
    }

    fn set_port(&mut self, proto: Proto, port: u16, segment: u32) {
        if segment == 0 {
            self.ports.remove(&(proto, port));
        } else {
            self.ports.insert((proto, port), segment);
        }
        self.writes.push(Write::Port(proto, port, segment));
    }
}

/// The fake kernel; clones share their maps.
#[derive(Clone, Debug)]
pub(crate) struct FakeKernel {
    maps: Arc<Mutex<FakeMaps>>,
    dir: PathBuf,
}

impl Default for FakeKernel {
    fn default() -> Self {
        Self::with_capacity(1024, 1024)
    }
}

impl FakeKernel {
    pub(crate) fn with_capacity(max_grants: u32, max_peers: u32) -> Self {
        Self {
            maps: Arc::new(Mutex::new(FakeMaps {
                max_grants,
                max_peers,
                ..Default::default()
            })),
            dir: PathBuf::from("/nonexistent/portcullis-fake"),
        }
    }

    /// The maps, to read or to arrange a test's starting point.
    pub(crate) fn maps(&self) -> MutexGuard<'_, FakeMaps> {
        self.maps.lock().expect("fake maps")
    }
}

impl KernelMaps for FakeKernel {
    fn apply(&mut self, changes: &[Change]) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        changes.iter().try_for_each(|c| m.apply_one(c))
    }

    fn apply_atomic(
        &mut self,
        changes: &[Change],
        ports: &[(Proto, u16, u32)],
    ) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        let before = m.clone();
        let (puts, deletes): (Vec<&Change>, Vec<&Change>) =
            changes.iter().partition(|c| matches!(c, Change::Put(..)));
        // Puts, ports, deletes; deletes first only when that is what fits
        // (as `dataplane::txn` does), and nothing at all when neither does.
        let attempt = |m: &mut FakeMaps, deletes_first: bool| {
            if deletes_first {
                deletes.iter().try_for_each(|c| m.apply_one(c))?;
            }
            puts.iter().try_for_each(|c| m.apply_one(c))?;
            for &(proto, port, seg) in ports {
                if m.ports.get(&(proto, port)).copied().unwrap_or(0) != seg {
                    m.set_port(proto, port, seg);
                }
            }
            if !deletes_first {
                deletes.iter().try_for_each(|c| m.apply_one(c))?;
            }
            Ok::<(), DataplaneError>(())
        };
        if attempt(&mut m, false).is_ok() {
            return Ok(());
        }
        *m = before.clone();
        match attempt(&mut m, true) {
            Ok(()) => Ok(()),
            Err(e) => {
                let writes = before.writes.clone();
                *m = before;
                m.writes = writes;
                Err(match e {
                    DataplaneError::Full { map, capacity } => DataplaneError::NoRoom {
                        map,
                        capacity,
                        needed: capacity as usize + 1,
                    },
                    other => other,
                })
            }
        }
    }

    fn epoch(&self) -> Result<u64, DataplaneError> {
        Ok(self.maps().epoch)
    }
    fn set_epoch(&mut self, epoch: u64) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        m.epoch = epoch;
        let at = m.writes.len();
        m.epoch_writes.push((at, epoch));
        Ok(())
    }
    fn fresh_until(&self) -> Result<u64, DataplaneError> {
        Ok(self.maps().fresh_until)
    }
    fn set_fresh_until(&mut self, at: u64) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        m.fresh_until = at;
        let before = m.epoch_writes.len();
        m.fresh_writes.push((before, at));
        Ok(())
    }
    fn read_cgroup_levels(&self) -> Result<Vec<(u32, u32)>, DataplaneError> {
        Ok(self
            .maps()
            .cgroup_levels
            .iter()
            .map(|(s, m)| (*s, *m))
            .collect())
    }
    fn set_cgroup_levels(&mut self, segment: u32, mask: u32) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        if mask == 0 {
            m.cgroup_levels.remove(&segment);
        } else {
            m.cgroup_levels.insert(segment, mask);
        }
        let at = m.writes.len();
        m.level_writes.push((at, segment, mask));
        Ok(())
    }
    fn set_local_addrs(&mut self, nets: &BTreeSet<LocalNet>) -> Result<(), DataplaneError> {
        self.maps().local_nets = nets.clone();
        Ok(())
    }
    fn set_cover(&mut self, cover: &crate::cover::CgroupCover) -> Result<(), DataplaneError> {
        self.maps().cover = cover.clone();
        Ok(())
    }
    fn read_ports(&self) -> Result<Vec<(Proto, u16, u32)>, DataplaneError> {
        Ok(self
            .maps()
            .ports
            .iter()
            .map(|(&(p, port), &s)| (p, port, s))
            .collect())
    }
    fn read_grants(&self) -> Result<Vec<(GrantKey, u64)>, DataplaneError> {
        Ok(self.maps().grants.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_peers(&self) -> Result<Vec<PeerEntry>, DataplaneError> {
        Ok(self
            .maps()
            .peers
            .iter()
            .map(|&(segment, addr, prefix, expiry)| PeerEntry {
                segment,
                addr,
                prefix,
                expiry,
            })
            .collect())
    }
    fn port_entry(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError> {
        Ok(*self.maps().ports.get(&(proto, port)).unwrap_or(&0))
    }
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError> {
        Ok(self.maps().grants.get(key).copied())
    }
    fn in_local_nets(&self, addr: [u8; 16]) -> Result<bool, DataplaneError> {
        Ok(self
            .maps()
            .local_nets
            .iter()
            .any(|n| super::prefix_contains(&n.addr, n.prefix, &addr)))
    }
    fn peer_lookup(&self, seg: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError> {
        Ok(self
            .maps()
            .peers
            .iter()
            .filter(|(s, net, p, _)| *s == seg && super::prefix_contains(net, *p, &addr))
            .max_by_key(|(_, _, p, _)| *p)
            .map(|(_, _, _, e)| *e))
    }
    fn counters(&self, segment: u32) -> Result<SegmentCounters, DataplaneError> {
        Ok(self
            .maps()
            .counters
            .get(&segment)
            .copied()
            .unwrap_or_default())
    }
    fn read_discovery(&self) -> Result<Vec<(DiscoveryKey, Sighting)>, DataplaneError> {
        Ok(self.maps().discovery.clone())
    }
    fn counters_reader(&self) -> Result<super::CountersReader, DataplaneError> {
        let maps = self.maps.clone();
        Ok(Box::new(move |segment| {
            Some(
                maps.lock()
                    .ok()?
                    .counters
                    .get(&segment)
                    .copied()
                    .unwrap_or_default(),
            )
        }))
    }
    fn capacity(&self) -> (u32, u32) {
        let m = self.maps();
        (m.max_grants, m.max_peers)
    }
    fn read_usage(&self) -> Result<Vec<(GrantKey, Totals)>, DataplaneError> {
        Ok(self.maps().usage.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn usage(&self, key: &GrantKey) -> Result<Option<Totals>, DataplaneError> {
        Ok(self.maps().usage.get(key).copied())
    }
    fn usage_reader(&self) -> Result<super::UsageReader, DataplaneError> {
        let maps = self.maps.clone();
        Ok(Box::new(move || {
            let mut by_segment = BTreeMap::new();
            if let Ok(m) = maps.lock() {
                for (k, t) in &m.usage {
                    *by_segment.entry(k.segment).or_insert(0u64) += t.connections;
                }
            }
            by_segment
        }))
    }
    fn forget_usage(&mut self, keys: &[GrantKey]) -> Result<(), DataplaneError> {
        let mut m = self.maps();
        for k in keys {
            m.usage.remove(k);
        }
        Ok(())
    }
    fn attach(&mut self) -> Result<Vec<PeerFilter>, DataplaneError> {
        Ok(Vec::new())
    }
    fn peer_filters(&self) -> Vec<PeerFilter> {
        Vec::new()
    }
    fn check(&self) -> KernelCheck {
        KernelCheck::default()
    }
    fn repair(&mut self) -> (KernelCheck, KernelCheck) {
        (KernelCheck::default(), KernelCheck::default())
    }
    fn release_links(&mut self) {}
    fn bpffs(&self) -> &Path {
        &self.dir
    }
    fn pin_dir(&self) -> &Path {
        &self.dir
    }
    fn cgroup(&self) -> &Path {
        &self.dir
    }
}
