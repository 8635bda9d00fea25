//! What the kernel's fast path needs from every map write: the policy
//! epoch and the per-segment cgroup-level masks, kept by one wrapper around
//! any [`KernelMaps`] (the real dataplane or the fake), so the core's
//! writes cannot forget them.
//!
//! Owns: the epoch bump after every write that can end an allow (a delete,
//! a lowered expiry, a port change: everything but [`KernelMaps::apply_adding`];
//! a lowered "fresh until", which can end strict allows),
//! and the masks: for each segment, which cgroup levels hold cgroup entries
//! (counted per level from the entries written), set before the entries
//! that need them and cleared only after the last one is gone, so the
//! kernel's ancestor walk never skips a level that holds a live entry. A
//! cgroup whose level cannot be told (gone, or the agent in a cgroup
//! namespace of its own) sets every bit: a slower walk, never a missed
//! entry.
//!
//! Ordering (see `agent-ebpf/src/skb.rs::local_flow` for the kernel's
//! half): the entry writes, then a full fence, then the epoch write, then
//! (the caller's) reply. The fence keeps a weakly ordered CPU from making
//! the new epoch visible before the writes it stands for.
use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::atomic::{fence, Ordering},
};

use agent_common::{kind, DiscoveryKey, GrantKey, Proto, SegmentCounters, Sighting};

use super::{CountersReader, KernelMaps, UsageReader};
use crate::{
    cover::CgroupCover,
    dataplane::{DataplaneError, KernelCheck, PeerEntry, PeerFilter},
    hostaddrs::LocalNet,
    ledger::{Change, EntryKey},
    usage::Totals,
};

mod levels;

pub(crate) use levels::{CgroupLevels, LevelOf};

/// Slot for cgroups whose level is unknown, after the 32 level slots.
const UNKNOWN: usize = agent_common::CGROUP_LEVEL_BITS as usize;

/// Per-level counts of one segment's cgroup entries (+ the unknown slot).
type Counts = [u32; UNKNOWN + 1];

fn mask_of(counts: &Counts) -> u32 {
    if counts[UNKNOWN] > 0 {
        return u32::MAX;
    }
    counts[..UNKNOWN]
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .fold(0, |m, (level, _)| m | (1 << level))
}

/// A [`KernelMaps`] that keeps the epoch and the cgroup-level masks.
pub(crate) struct FastPath {
    inner: Box<dyn KernelMaps>,
    levels: Box<dyn LevelOf>,
    /// The cgroup entries in the kernel's map and the level slot each counts in.
    cgroups: HashMap<GrantKey, usize>,
    counts: HashMap<u32, Counts>,
    /// The masks as written to the kernel.
    written: HashMap<u32, u32>,
    /// Per segment, the levels of the paths in the cgroup cover: the
    /// `cgroup_mkdir` tracepoint writes entries there by itself, so the
    /// walk must not skip those levels even while no entry is counted.
    cover: HashMap<u32, u32>,
    epoch: u64,
    /// The grant map as `resync` read it at open, for the first
    /// `read_grants` (see there); dropped at the first grant write. An
    /// entry the old run's `cgroup_mkdir` tracepoint writes in between is
    /// missed just as one written right after a fresh read would be: the
    /// start's stale sweep only deletes what it read.
    primed: std::sync::Mutex<Option<Vec<(GrantKey, u64)>>>,
}

impl FastPath {
    /// Takes over `inner`: counts the cgroup entries it holds, writes
    /// exact masks, and bumps the epoch (a new agent re-decides every
    /// marked flow once).
    pub(crate) fn new(
        inner: Box<dyn KernelMaps>,
        levels: Box<dyn LevelOf>,
    ) -> Result<Self, DataplaneError> {
        let mut fp = Self {
            inner,
            levels,
            cgroups: HashMap::new(),
            counts: HashMap::new(),
            written: HashMap::new(),
            cover: HashMap::new(),
            epoch: 0,
            primed: std::sync::Mutex::new(None),
        };
        fp.written = fp.inner.read_cgroup_levels()?.into_iter().collect();
        fp.epoch = fp.inner.epoch()?;
        fp.resync()?;
        fp.bump()?;
        Ok(fp)
    }

    /// The epoch last written.
    #[cfg(test)]
    pub(crate) fn current_epoch(&self) -> u64 {
        self.epoch
    }

    /// Recounts from what the kernel holds and writes exact masks.
    fn resync(&mut self) -> Result<(), DataplaneError> {
        self.cgroups.clear();
        self.counts.clear();
        let all = self.inner.read_grants()?;
        let keys: Vec<GrantKey> = all
            .iter()
            .map(|&(k, _)| k)
            .filter(|k| k.kind == kind::CGROUP)
            .collect();
        *self.primed.lock().unwrap_or_else(|e| e.into_inner()) = Some(all);
        for k in keys {
            self.count_put(k);
        }
        let segments: BTreeSet<u32> = self
            .written
            .keys()
            .chain(self.counts.keys())
            .copied()
            .collect();
        self.write_masks(&segments, false)
    }

    fn count_put(&mut self, key: GrantKey) -> Option<u32> {
        if self.cgroups.contains_key(&key) {
            return None;
        }
        let slot = self
            .levels
            .level_of(key.id)
            .map(|l| l as usize)
            .filter(|l| *l < UNKNOWN)
            .unwrap_or(UNKNOWN);
        self.cgroups.insert(key, slot);
        self.counts.entry(key.segment).or_insert([0; UNKNOWN + 1])[slot] += 1;
        Some(key.segment)
    }

    fn count_delete(&mut self, key: &GrantKey) -> Option<u32> {
        let slot = self.cgroups.remove(key)?;
        if let Some(c) = self.counts.get_mut(&key.segment) {
            c[slot] = c[slot].saturating_sub(1);
            if c.iter().all(|n| *n == 0) {
                self.counts.remove(&key.segment);
            }
        }
        Some(key.segment)
    }

    fn mask(&self, segment: u32) -> u32 {
        self.counts.get(&segment).map(mask_of).unwrap_or(0)
            | self.cover.get(&segment).copied().unwrap_or(0)
    }

    /// The cover's levels per segment (every bit where a path's level
    /// cannot be told).
    fn cover_masks(&mut self, cover: &CgroupCover) -> HashMap<u32, u32> {
        let mut masks: HashMap<u32, u32> = HashMap::new();
        for (path, entries) in cover {
            let bit = self
                .levels
                .level_of_path(path)
                .filter(|l| (*l as usize) < UNKNOWN)
                .map_or(u32::MAX, |l| 1 << l);
            for &(segment, _) in entries {
                *masks.entry(segment).or_default() |= bit;
            }
        }
        masks
    }

    /// Writes the masks of `segments`: with `superset`, what was written
    /// or-ed with the new mask (before entries land); else the exact mask.
    fn write_masks(
        &mut self,
        segments: &BTreeSet<u32>,
        superset: bool,
    ) -> Result<(), DataplaneError> {
        for &segment in segments {
            let old = self.written.get(&segment).copied().unwrap_or(0);
            let new = if superset {
                old | self.mask(segment)
            } else {
                self.mask(segment)
            };
            if new != old {
                self.inner.set_cgroup_levels(segment, new)?;
                if new == 0 {
                    self.written.remove(&segment);
                } else {
                    self.written.insert(segment, new);
                }
            }
        }
        Ok(())
    }

    /// A full fence, then the next epoch: every marked flow decides again.
    fn bump(&mut self) -> Result<(), DataplaneError> {
        fence(Ordering::SeqCst);
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.inner.set_epoch(self.epoch)
    }

    /// Counts `changes` in, and returns the segments whose masks may change.
    fn note(&mut self, changes: &[Change]) -> BTreeSet<u32> {
        let mut touched = BTreeSet::new();
        for c in changes {
            let seg = match c {
                Change::Put(EntryKey::Local(k), _) if k.kind == kind::CGROUP => self.count_put(*k),
                Change::Delete(EntryKey::Local(k)) if k.kind == kind::CGROUP => {
                    self.count_delete(k)
                }
                _ => None,
            };
            touched.extend(seg);
        }
        touched
    }

    /// Masks widened, `write`, masks narrowed, epoch bumped (unless the
    /// changes can only add); after a failed write the counts are taken
    /// again from the kernel, and the epoch is bumped anyway unless the
    /// write was all or nothing (`atomic`: nothing changed).
    fn around(
        &mut self,
        changes: &[Change],
        bump: bool,
        atomic: bool,
        write: impl FnOnce(&mut dyn KernelMaps) -> Result<(), DataplaneError>,
    ) -> Result<(), DataplaneError> {
        self.primed.lock().unwrap_or_else(|e| e.into_inner()).take();
        let touched = self.note(changes);
        self.write_masks(&touched, true)?;
        let result = write(&mut *self.inner);
        if result.is_err() {
            let _ = self.resync();
            if !atomic {
                let _ = self.bump();
            }
            return result;
        }
        self.write_masks(&touched, false)?;
        if bump {
            self.bump()?;
        }
        Ok(())
    }
}

impl KernelMaps for FastPath {
    fn apply(&mut self, changes: &[Change]) -> Result<(), DataplaneError> {
        self.around(changes, true, false, |k| k.apply(changes))
    }
    fn apply_adding(&mut self, changes: &[Change]) -> Result<(), DataplaneError> {
        // A delete among them is not "adding": bump after all.
        let bump = changes.iter().any(|c| matches!(c, Change::Delete(_)));
        self.around(changes, bump, false, |k| k.apply(changes))
    }
    fn apply_atomic(
        &mut self,
        changes: &[Change],
        ports: &[(Proto, u16, u32)],
    ) -> Result<(), DataplaneError> {
        self.around(changes, true, true, |k| k.apply_atomic(changes, ports))
    }
    fn epoch(&self) -> Result<u64, DataplaneError> {
        self.inner.epoch()
    }
    fn set_epoch(&mut self, epoch: u64) -> Result<(), DataplaneError> {
        self.epoch = epoch;
        self.inner.set_epoch(epoch)
    }
    fn fresh_until(&self) -> Result<u64, DataplaneError> {
        self.inner.fresh_until()
    }
    fn set_fresh_until(&mut self, at: u64) -> Result<(), DataplaneError> {
        // Marked flows cache the earlier of a strict entry's deadline and
        // "fresh until": moving it forward needs nothing (they decide
        // again at the old instant and pick up the new one), moving it
        // back can end an allow before a cached instant, so it bumps.
        let lowered = at < self.inner.fresh_until()?;
        self.inner.set_fresh_until(at)?;
        if lowered {
            self.bump()?;
        }
        Ok(())
    }
    fn read_cgroup_levels(&self) -> Result<Vec<(u32, u32)>, DataplaneError> {
        self.inner.read_cgroup_levels()
    }
    fn set_cgroup_levels(&mut self, segment: u32, mask: u32) -> Result<(), DataplaneError> {
        self.inner.set_cgroup_levels(segment, mask)
    }
    fn set_local_addrs(&mut self, nets: &BTreeSet<LocalNet>) -> Result<(), DataplaneError> {
        self.inner.set_local_addrs(nets)
    }
    fn read_ports(&self) -> Result<Vec<(Proto, u16, u32)>, DataplaneError> {
        self.inner.read_ports()
    }
    fn read_grants(&self) -> Result<Vec<(GrantKey, u64)>, DataplaneError> {
        // The agent's start reads the whole map right after `new` read it:
        // with a million entries that is a second, so the first read is
        // handed over once, unless the agent wrote grants in between.
        let primed = self.primed.lock().unwrap_or_else(|e| e.into_inner()).take();
        match primed {
            Some(all) => Ok(all),
            None => self.inner.read_grants(),
        }
    }
    fn read_peers(&self) -> Result<Vec<PeerEntry>, DataplaneError> {
        self.inner.read_peers()
    }
    fn port_entry(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError> {
        self.inner.port_entry(proto, port)
    }
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError> {
        self.inner.grant_expiry(key)
    }
    fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError> {
        self.inner.peer_lookup(segment, addr)
    }
    fn in_local_nets(&self, addr: [u8; 16]) -> Result<bool, DataplaneError> {
        self.inner.in_local_nets(addr)
    }
    fn counters(&self, segment: u32) -> Result<SegmentCounters, DataplaneError> {
        self.inner.counters(segment)
    }
    fn counters_reader(&self) -> Result<CountersReader, DataplaneError> {
        self.inner.counters_reader()
    }
    fn set_cover(&mut self, cover: &CgroupCover) -> Result<(), DataplaneError> {
        // Levels widened before the tracepoint can write there, narrowed
        // only after the paths that needed them left the cover.
        let new = self.cover_masks(cover);
        let touched: BTreeSet<u32> = new.keys().chain(self.cover.keys()).copied().collect();
        let old = std::mem::replace(&mut self.cover, new.clone());
        for (segment, bits) in &old {
            *self.cover.entry(*segment).or_default() |= bits;
        }
        self.write_masks(&touched, true)?;
        self.inner.set_cover(cover)?;
        self.cover = new;
        self.write_masks(&touched, false)
    }
    fn read_discovery(&self) -> Result<Vec<(DiscoveryKey, Sighting)>, DataplaneError> {
        self.inner.read_discovery()
    }
    fn capacity(&self) -> (u32, u32) {
        self.inner.capacity()
    }
    fn read_usage(&self) -> Result<Vec<(GrantKey, Totals)>, DataplaneError> {
        self.inner.read_usage()
    }
    fn usage(&self, key: &GrantKey) -> Result<Option<Totals>, DataplaneError> {
        self.inner.usage(key)
    }
    fn usage_reader(&self) -> Result<UsageReader, DataplaneError> {
        self.inner.usage_reader()
    }
    fn forget_usage(&mut self, keys: &[GrantKey]) -> Result<(), DataplaneError> {
        self.inner.forget_usage(keys)
    }
    fn attach(&mut self) -> Result<Vec<PeerFilter>, DataplaneError> {
        self.inner.attach()
    }
    fn peer_filters(&self) -> Vec<PeerFilter> {
        self.inner.peer_filters()
    }
    fn check(&self) -> KernelCheck {
        self.inner.check()
    }
    fn repair(&mut self) -> (KernelCheck, KernelCheck) {
        self.inner.repair()
    }
    fn release_links(&mut self) {
        self.inner.release_links()
    }
    fn bpffs(&self) -> &Path {
        self.inner.bpffs()
    }
    fn pin_dir(&self) -> &Path {
        self.inner.pin_dir()
    }
    fn cgroup(&self) -> &Path {
        self.inner.cgroup()
    }
}

#[cfg(test)]
mod tests;
