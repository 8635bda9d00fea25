//! All-or-nothing writes: a policy change (or a start) lands in the kernel
//! whole, or not at all.
//!
//! Owns the capacity check before the first write and the undo log after
//! it: each write first records what the kernel held for that key (read from
//! the kernel, not from the agent's books, so that a start over a previous
//! run's maps is undone exactly too), and a failed write restores every
//! earlier one in reverse order. What the writes are is the ledger's and the
//! agent's business; this module only makes them atomic as seen from user
//! space. (The programs may decide on a half-written map for the few
//! microseconds a transaction takes; the order of the writes — allows first,
//! then ports, then removals — keeps that window from opening anything that
//! neither the old nor the new policy opens.)
//!
//! Kernel: hash and LPM-trie map updates (Linux 4.11 for LPM tries).
use std::collections::HashMap;

use agent_common::Proto;
use aya::maps::MapError;
use tracing::error;

use super::{map_err, map_names, peer_key, Dataplane, DataplaneError, Result};
use crate::ledger::{Change, EntryKey};
use agent_common::{Expiry, GrantKey, PeerKey};

/// One write and what the kernel held before it.
enum Undo {
    Entry(EntryKey, Option<u64>),
    Port(Proto, u16, u32),
}

/// Entries a transaction adds to and frees from one map.
#[derive(Default)]
struct Room {
    now: usize,
    fresh: usize,
    freed: usize,
}

impl Room {
    fn peak(&self, deletes_first: bool) -> usize {
        if deletes_first {
            (self.now - self.freed.min(self.now)) + self.fresh
        } else {
            self.now + self.fresh
        }
    }
}

/// The peer trie read whole: (segment, address, prefix) → expiry.
type PeerPrefixes = HashMap<(u32, [u8; 16], u8), u64>;

impl Dataplane {
    /// What the kernel holds for exactly `key` (no longest-prefix match).
    /// `prefixes` caches the peer trie, read whole at most once.
    fn entry_value(
        &self,
        key: &EntryKey,
        prefixes: &mut Option<PeerPrefixes>,
    ) -> Result<Option<u64>> {
        match *key {
            EntryKey::Local(k) => self.grant_expiry(&k),
            EntryKey::Peer {
                segment,
                addr,
                prefix: 128,
            } => match self.peer_hosts.get(
                &PeerKey {
                    segment_be: segment.to_be_bytes(),
                    addr,
                },
                0,
            ) {
                Ok(v) => Ok(Some(v.at_boot_ns)),
                Err(MapError::KeyNotFound) => Ok(None),
                Err(e) => Err(map_err(map_names::PEER_HOSTS, "read")(e)),
            },
            EntryKey::Peer {
                segment,
                addr,
                prefix,
            } => {
                // An LPM lookup is not exact: read the trie's entries.
                if prefixes.is_none() {
                    let mut all = HashMap::new();
                    for r in self.peers.iter() {
                        let (k, v) = r.map_err(map_err(map_names::PEERS, "read"))?;
                        let want = k.data();
                        all.insert(
                            (
                                u32::from_be_bytes(want.segment_be),
                                want.addr,
                                k.prefix_len() as u8,
                            ),
                            v.at_boot_ns,
                        );
                    }
                    *prefixes = Some(all);
                }
                let want = peer_key(segment, addr, prefix);
                Ok(prefixes.as_ref().and_then(|all| {
                    all.get(&(
                        u32::from_be_bytes(want.data().segment_be),
                        want.data().addr,
                        want.prefix_len() as u8,
                    ))
                    .copied()
                }))
            }
        }
    }

    /// Applies `changes` (puts, then deletes, in the order given) and sets
    /// `ports` (between the puts and the deletes), all or nothing: every map
    /// is first checked to have room for the writes, and if a write fails
    /// anyway, every earlier one is undone before the error is returned.
    pub(crate) fn apply_atomic(
        &mut self,
        changes: &[Change],
        ports: &[(Proto, u16, u32)],
    ) -> Result<()> {
        let mut before = Vec::with_capacity(changes.len());
        let mut prefixes = None;
        // Many local keys: one batch read of the grants map beats a lookup
        // per key.
        let locals = changes
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Change::Put(EntryKey::Local(_), _) | Change::Delete(EntryKey::Local(_))
                )
            })
            .count();
        let grants: Option<HashMap<GrantKey, u64>> = if locals > super::batch::CHUNK {
            Some(self.read_grants()?.into_iter().collect())
        } else {
            None
        };
        for c in changes {
            let key = match c {
                Change::Put(k, _) | Change::Delete(k) => *k,
            };
            before.push(match (&grants, key) {
                (Some(all), EntryKey::Local(k)) => all.get(&k).copied(),
                _ => self.entry_value(&key, &mut prefixes)?,
            });
        }
        drop(grants);
        let deletes_first = self.check_room(changes, &before)?;
        let (puts, deletes): (Vec<usize>, Vec<usize>) =
            (0..changes.len()).partition(|&i| matches!(changes[i], Change::Put(..)));
        let mut undo: Vec<Undo> = Vec::new();
        let result = (|| {
            let order: Vec<usize> = if deletes_first {
                deletes.iter().chain(puts.iter()).copied().collect()
            } else {
                puts.to_vec()
            };
            self.write_all(changes, &order, &before, &mut undo)?;
            for &(proto, port, segment) in ports {
                let was = self.port_entry(proto, port)?;
                if was != segment {
                    undo.push(Undo::Port(proto, port, was));
                    self.set_port(proto, port, segment)?;
                }
            }
            if !deletes_first {
                self.write_all(changes, &deletes, &before, &mut undo)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.roll_back(undo);
            return Err(e);
        }
        Ok(())
    }

    /// Writes `changes[i]` for each `i` of `order`, runs of local-grant
    /// puts in batches; every key's undo is recorded before it is written.
    fn write_all(
        &mut self,
        changes: &[Change],
        order: &[usize],
        before: &[Option<u64>],
        undo: &mut Vec<Undo>,
    ) -> Result<()> {
        let mut n = 0;
        while n < order.len() {
            let run: Vec<(GrantKey, Expiry)> = order[n..]
                .iter()
                .map_while(|&i| match changes[i] {
                    Change::Put(EntryKey::Local(k), at) => Some((k, Expiry { at_boot_ns: at })),
                    _ => None,
                })
                .collect();
            if run.len() > 1 {
                for &i in &order[n..n + run.len()] {
                    let key = match changes[i] {
                        Change::Put(k, _) | Change::Delete(k) => k,
                    };
                    undo.push(Undo::Entry(key, before[i]));
                }
                self.put_grants(&run)?;
                n += run.len();
            } else {
                let i = order[n];
                self.write(&changes[i], before[i], undo)?;
                n += 1;
            }
        }
        Ok(())
    }

    fn write(&mut self, change: &Change, was: Option<u64>, undo: &mut Vec<Undo>) -> Result<()> {
        let key = match change {
            Change::Put(k, _) | Change::Delete(k) => *k,
        };
        undo.push(Undo::Entry(key, was));
        self.apply_one(change)
    }

    /// Restores what the kernel held before each recorded write, newest first.
    fn roll_back(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            let result = match u {
                Undo::Entry(key, Some(v)) => self.apply_one(&Change::Put(key, v)),
                Undo::Entry(key, None) => self.apply_one(&Change::Delete(key)),
                Undo::Port(proto, port, seg) => self.set_port(proto, port, seg),
            };
            if let Err(e) = result {
                error!(error = %e, "undoing a failed policy change failed; the kernel may differ from `status` until the next reload");
            }
        }
    }

    /// Checks that every map has room for the writes; says whether the
    /// deletes must go first to make that room.
    fn check_room(&self, changes: &[Change], before: &[Option<u64>]) -> Result<bool> {
        let mut local = Room::default();
        let mut hosts = Room::default();
        let mut prefixes = Room::default();
        for (c, was) in changes.iter().zip(before) {
            let (key, put) = match c {
                Change::Put(k, _) => (k, true),
                Change::Delete(k) => (k, false),
            };
            let room = match key {
                EntryKey::Local(_) => &mut local,
                EntryKey::Peer { prefix: 128, .. } => &mut hosts,
                EntryKey::Peer { .. } => &mut prefixes,
            };
            match (put, was.is_some()) {
                (true, false) => room.fresh += 1,
                (false, true) => room.freed += 1,
                _ => {}
            }
        }
        if local.fresh + hosts.fresh + prefixes.fresh == 0 {
            return Ok(false);
        }
        local.now = self.grant_count()?;
        hosts.now = self.peer_hosts.keys().count();
        prefixes.now = self.peers.keys().count();
        let maps = [
            (map_names::GRANTS, &local, self.max_grants),
            (map_names::PEER_HOSTS, &hosts, self.max_peers),
            (map_names::PEERS, &prefixes, self.max_peers),
        ];
        let fits = |deletes_first| {
            maps.iter()
                .find(|(_, room, cap)| room.peak(deletes_first) > *cap as usize)
        };
        match (fits(false), fits(true)) {
            (None, _) => Ok(false),
            (Some(_), None) => Ok(true),
            (Some(_), Some(&(map, room, capacity))) => Err(DataplaneError::NoRoom {
                map,
                capacity,
                needed: room.peak(true),
            }),
        }
    }
}
