//! Which map entries each source of access contributes, and what the kernel
//! must hold as a result.
//!
//! Several sources can open the same map key: a standing allow for
//! `group:dev` and a JIT grant for `gid:1000` both write (gid 1000, segment).
//! The kernel holds one expiry per key: the latest of its live sources.
//! Revoking one source therefore recomputes its keys from what remains
//! instead of deleting them blindly. Pure bookkeeping: it returns the
//! changes and the dataplane applies them; it never touches the kernel.
use std::collections::{hash_map::Entry, HashMap};

use agent_common::GrantKey;

/// One map entry: a local identity key, or a peer prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum EntryKey {
    Local(GrantKey),
    /// Segment id, address (v4-mapped for IPv4) and IPv6 prefix length.
    Peer {
        segment: u32,
        addr: [u8; 16],
        prefix: u8,
    },
}

/// What grants access.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    /// A standing allow from policy: segment name and identity text.
    Standing { segment: String, identity: String },
    /// A grant, by id.
    Grant(u64),
}

/// A write the kernel must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Put(EntryKey, u64),
    Delete(EntryKey),
}

#[derive(Default, Debug, Clone)]
pub(crate) struct Ledger {
    entries: HashMap<EntryKey, Vec<(Source, u64)>>,
    by_source: HashMap<Source, Vec<EntryKey>>,
    /// How many of `entries` are peer entries (kept as they change, so
    /// the metrics never count the whole map).
    peers: usize,
}

fn latest(contributions: &[(Source, u64)]) -> Option<u64> {
    contributions.iter().map(|(_, e)| *e).max()
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The keys a source contributes to.
    pub(crate) fn keys_of(&self, source: &Source) -> &[EntryKey] {
        self.by_source.get(source).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every source and the keys it opens.
    pub(crate) fn sources(&self) -> impl Iterator<Item = (&Source, &[EntryKey])> {
        self.by_source.iter().map(|(s, k)| (s, k.as_slice()))
    }

    /// The sources that open `key`, each with its expiry: the reverse of
    /// [`Ledger::keys_of`] (used by `explain` to say why an entry exists).
    pub(crate) fn sources_of(&self, key: &EntryKey) -> &[(Source, u64)] {
        self.entries.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every map entry with the sources that open it.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&EntryKey, &[(Source, u64)])> {
        self.entries.iter().map(|(k, s)| (k, s.as_slice()))
    }

    /// The value the kernel should hold for `key`.
    pub(crate) fn value(&self, key: &EntryKey) -> Option<u64> {
        self.entries.get(key).and_then(|c| latest(c))
    }

    /// Number of distinct map entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// (local identity entries, peer entries), without a walk.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.entries.len() - self.peers, self.peers)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `source` opening `keys` until `expiry` (replacing what it
    /// opened before) and returns the writes, puts first.
    pub(crate) fn set(&mut self, source: Source, keys: &[EntryKey], expiry: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut keys: Vec<EntryKey> = keys.to_vec();
        keys.sort();
        keys.dedup();
        for key in &keys {
            let slot = self.entries.entry(*key).or_default();
            if slot.is_empty() && matches!(key, EntryKey::Peer { .. }) {
                self.peers += 1;
            }
            let before = latest(slot);
            match slot.iter_mut().find(|(s, _)| *s == source) {
                Some(existing) => existing.1 = expiry,
                None => slot.push((source.clone(), expiry)),
            }
            let after = latest(slot);
            if after != before {
                changes.push(Change::Put(*key, after.expect("just inserted")));
            }
        }
        let old = self
            .by_source
            .insert(source.clone(), keys.clone())
            .unwrap_or_default();
        for key in old.into_iter().filter(|k| !keys.contains(k)) {
            changes.extend(self.drop_contribution(&source, key));
        }
        changes
    }

    /// Forgets `source` and returns the writes: keys no one else opens are
    /// deleted, keys others still open drop to the others' latest expiry.
    pub(crate) fn remove(&mut self, source: &Source) -> Vec<Change> {
        let Some(keys) = self.by_source.remove(source) else {
            return Vec::new();
        };
        let mut changes: Vec<Change> = keys
            .into_iter()
            .filter_map(|k| self.drop_contribution(source, k))
            .collect();
        // Puts before deletes, as everywhere else.
        changes.sort_by_key(|c| matches!(c, Change::Delete(_)));
        changes
    }

    /// The writes that turn a kernel holding `self` into one holding `to`:
    /// puts first, then deletes, each in key order (so that a plan is
    /// deterministic). Planning a change on a copy and diffing is how a
    /// policy change is checked whole before the first write.
    pub(crate) fn diff(&self, to: &Ledger) -> Vec<Change> {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for key in to.entries.keys() {
            let want = to.value(key);
            if want != self.value(key) {
                puts.push(Change::Put(*key, want.expect("present in `to`")));
            }
        }
        for key in self.entries.keys() {
            if !to.entries.contains_key(key) {
                deletes.push(Change::Delete(*key));
            }
        }
        puts.sort_by_key(|c| match c {
            Change::Put(k, _) | Change::Delete(k) => *k,
        });
        deletes.sort_by_key(|c| match c {
            Change::Put(k, _) | Change::Delete(k) => *k,
        });
        puts.extend(deletes);
        puts
    }

    fn drop_contribution(&mut self, source: &Source, key: EntryKey) -> Option<Change> {
        let Entry::Occupied(mut slot) = self.entries.entry(key) else {
            return None;
        };
        let before = latest(slot.get());
        slot.get_mut().retain(|(s, _)| s != source);
        if slot.get().is_empty() {
            slot.remove();
            if matches!(key, EntryKey::Peer { .. }) {
                self.peers -= 1;
            }
            return Some(Change::Delete(key));
        }
        let after = latest(slot.get());
        (after != before).then(|| Change::Put(key, after.expect("not empty")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::kind;

    fn uid(id: u64) -> EntryKey {
        EntryKey::Local(GrantKey {
            kind: kind::UID,
            segment: 1,
            id,
        })
    }

    /// The entry counts kept as the ledger changes are what a walk finds.
    #[test]
    fn counts_follow_every_change() {
        let peer = |n: u8| EntryKey::Peer {
            segment: 1,
            addr: [n; 16],
            prefix: 128,
        };
        let walk = |l: &Ledger| {
            let peers = l
                .entries()
                .filter(|(k, _)| matches!(k, EntryKey::Peer { .. }))
                .count();
            (l.len() - peers, peers)
        };
        let mut l = Ledger::new();
        l.set(Source::Grant(1), &[uid(1), peer(1), peer(2)], 10);
        l.set(Source::Grant(2), &[peer(2), peer(3), uid(2)], 20);
        assert_eq!(l.counts(), (2, 3));
        l.set(Source::Grant(1), &[uid(1)], 10);
        assert_eq!(l.counts(), walk(&l));
        l.remove(&Source::Grant(2));
        assert_eq!(l.counts(), (1, 0));
        assert_eq!(l.counts(), walk(&l));
    }

    #[test]
    fn grant_then_revoke_deletes() {
        let mut l = Ledger::new();
        assert_eq!(
            l.set(Source::Grant(1), &[uid(1000)], 50),
            vec![Change::Put(uid(1000), 50)]
        );
        assert_eq!(l.remove(&Source::Grant(1)), vec![Change::Delete(uid(1000))]);
        assert!(l.is_empty());
        assert_eq!(l.remove(&Source::Grant(1)), vec![]);
    }

    #[test]
    fn revoking_one_of_two_sources_keeps_the_other() {
        let mut l = Ledger::new();
        let standing = Source::Standing {
            segment: "db".into(),
            identity: "uid:1000".into(),
        };
        l.set(Source::Grant(7), &[uid(1000)], 50);
        assert_eq!(
            l.set(standing.clone(), &[uid(1000)], u64::MAX),
            vec![Change::Put(uid(1000), u64::MAX)]
        );
        // Revoking the grant changes nothing: the standing allow still holds.
        assert_eq!(l.remove(&Source::Grant(7)), vec![]);
        assert_eq!(l.value(&uid(1000)), Some(u64::MAX));
        assert_eq!(l.remove(&standing), vec![Change::Delete(uid(1000))]);
    }

    #[test]
    fn removing_the_longest_drops_to_the_next() {
        let mut l = Ledger::new();
        l.set(Source::Grant(1), &[uid(5)], 100);
        l.set(Source::Grant(2), &[uid(5)], 200);
        assert_eq!(l.remove(&Source::Grant(2)), vec![Change::Put(uid(5), 100)]);
    }

    #[test]
    fn resetting_a_source_moves_its_keys() {
        let mut l = Ledger::new();
        l.set(Source::Grant(1), &[uid(1), uid(2)], 10);
        let changes = l.set(Source::Grant(1), &[uid(2), uid(3)], 10);
        assert_eq!(
            changes,
            vec![Change::Put(uid(3), 10), Change::Delete(uid(1))]
        );
        assert_eq!(l.keys_of(&Source::Grant(1)), &[uid(2), uid(3)]);
    }

    #[test]
    fn diff_is_what_turns_one_into_the_other() {
        let mut a = Ledger::new();
        a.set(Source::Grant(1), &[uid(1), uid(2)], 10);
        let mut b = a.clone();
        b.remove(&Source::Grant(1));
        b.set(Source::Grant(2), &[uid(2), uid(3)], 20);
        assert_eq!(
            a.diff(&b),
            vec![
                Change::Put(uid(2), 20),
                Change::Put(uid(3), 20),
                Change::Delete(uid(1))
            ]
        );
        assert_eq!(a.diff(&a.clone()), vec![]);
    }

    #[test]
    fn unchanged_value_writes_nothing() {
        let mut l = Ledger::new();
        l.set(Source::Grant(1), &[uid(1)], 10);
        assert_eq!(l.set(Source::Grant(1), &[uid(1)], 10), vec![]);
    }
}
