//! The keys each grant opens, by grant id, kept compact: the ledger's
//! reverse index for grants (standing allows, a few hundred at most, keep
//! a plain map in the ledger).
//!
//! Almost every grant opens exactly one local key and grant ids only grow,
//! so those sit in one vector of (id, kernel key) in ascending id order:
//! 24 bytes a grant (the kernel key without the [`EntryKey`] tag a peer
//! key needs room for, which made it 32), appended at the end as grants
//! are made, found by binary search.
//! A removed grant leaves a tombstone (its id flagged [`DEAD`]) that a new
//! setting of the same id revives; the vector is compacted when half of it
//! is tombstones, so removal costs no shifting of the rest. Grants with
//! none or several keys (group grants) or one peer key go in a hash map.
//!
//! It stays inside the ledger (not in the grant book) because the ledger
//! is cloned to plan a policy change on the copy: the copy must know what
//! each grant opens without the book.
use agent_common::GrantKey;

use super::FastMap;

use super::{EntryKey, Keys, KeysRef};

/// Flags a tombstone's id (grant ids never reach 2^63).
const DEAD: u64 = 1 << 63;
/// Tombstones below this many are never compacted away.
const COMPACT_FLOOR: usize = 64;

#[derive(Clone, Debug, Default)]
pub(super) struct ByGrant {
    /// (grant id, possibly flagged [`DEAD`], its one local key), ascending id.
    one: Vec<(u64, GrantKey)>,
    /// Tombstones in `one`.
    dead: usize,
    /// Grants opening none, several or one peer key.
    other: FastMap<u64, Box<[EntryKey]>>,
}

impl ByGrant {
    /// Where grant `id` sits (or would) in `one`, whether live or dead.
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.one.binary_search_by_key(&id, |&(i, _)| i & !DEAD)
    }

    fn live_at(&self, id: u64) -> Option<usize> {
        self.find(id).ok().filter(|&at| self.one[at].0 & DEAD == 0)
    }

    /// The keys grant `id` opens; `None` when it is not recorded.
    pub(super) fn get(&self, id: u64) -> Option<KeysRef<'_>> {
        match self.live_at(id) {
            Some(at) => Some(KeysRef::One(EntryKey::Local(self.one[at].1))),
            None => self.other.get(&id).map(|k| KeysRef::Many(k)),
        }
    }

    /// Records grant `id` opening `keys`, returning what it opened before.
    pub(super) fn insert(&mut self, id: u64, keys: &[EntryKey]) -> Option<Keys> {
        debug_assert_eq!(id & DEAD, 0);
        let old = self.remove(id);
        let [EntryKey::Local(key)] = keys else {
            self.other.insert(id, keys.into());
            return old;
        };
        match self.one.last() {
            Some(&(last, _)) if last & !DEAD >= id => match self.find(id) {
                Ok(at) => {
                    // A tombstone of this id (live ones were removed above).
                    self.one[at] = (id, *key);
                    self.dead -= 1;
                }
                // Out of id order: rare (ids only grow), so the shift is too.
                Err(at) => self.one.insert(at, (id, *key)),
            },
            _ => self.one.push((id, *key)),
        }
        old
    }

    /// Forgets grant `id`, returning the keys it opened.
    pub(super) fn remove(&mut self, id: u64) -> Option<Keys> {
        let Some(at) = self.live_at(id) else {
            return self.other.remove(&id).map(Keys::from);
        };
        self.one[at].0 |= DEAD;
        self.dead += 1;
        let key = self.one[at].1;
        if self.dead >= COMPACT_FLOOR && 2 * self.dead >= self.one.len() {
            self.one.retain(|&(i, _)| i & DEAD == 0);
            self.dead = 0;
        }
        Some(Keys::One(EntryKey::Local(key)))
    }

    /// Room for `n` more single-key grants.
    pub(super) fn reserve(&mut self, n: usize) {
        self.one.reserve(n);
    }

    /// Every recorded grant and its keys (in no particular order).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, KeysRef<'_>)> {
        self.one
            .iter()
            .filter(|(i, _)| i & DEAD == 0)
            .map(|(i, k)| (*i, KeysRef::One(EntryKey::Local(*k))))
            .chain(self.other.iter().map(|(i, k)| (*i, KeysRef::Many(k))))
    }

    /// Slots in the vector, live and dead.
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.one.len()
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{kind, GrantKey};

    use super::*;

    fn uid(id: u64) -> EntryKey {
        EntryKey::Local(GrantKey {
            kind: kind::UID,
            segment: 1,
            id,
        })
    }

    fn got(b: &ByGrant, id: u64) -> Option<Vec<EntryKey>> {
        b.get(id).map(|k| k.to_vec())
    }

    fn keys(k: Option<Keys>) -> Option<Vec<EntryKey>> {
        k.map(|k| k.as_slice().to_vec())
    }

    #[test]
    fn single_and_several_keys_read_back_and_move_between_homes() {
        let mut b = ByGrant::default();
        assert!(b.insert(1, &[uid(10)]).is_none());
        assert!(b.insert(2, &[uid(20), uid(21)]).is_none());
        assert!(b.insert(3, &[]).is_none());
        assert_eq!(got(&b, 1), Some(vec![uid(10)]));
        assert_eq!(got(&b, 2), Some(vec![uid(20), uid(21)]));
        assert_eq!(got(&b, 3), Some(vec![]));
        assert_eq!(got(&b, 4), None);
        // One key to several and back: never in both homes.
        assert_eq!(keys(b.insert(1, &[uid(10), uid(11)])), Some(vec![uid(10)]));
        assert_eq!(got(&b, 1), Some(vec![uid(10), uid(11)]));
        assert_eq!(keys(b.insert(1, &[uid(12)])), Some(vec![uid(10), uid(11)]));
        assert_eq!(got(&b, 1), Some(vec![uid(12)]));
        assert_eq!(b.iter().count(), 3);
        assert_eq!(keys(b.remove(1)), Some(vec![uid(12)]));
        assert_eq!(b.remove(1).map(|_| ()), None);
        assert_eq!(got(&b, 1), None);
    }

    /// Ids arriving out of order (a restore, a re-set of an old grant) land
    /// in order, so every later lookup finds them.
    #[test]
    fn out_of_order_ids_are_found() {
        let mut b = ByGrant::default();
        for id in [5, 1, 9, 3, 7] {
            b.insert(id, &[uid(id)]);
        }
        for id in [1, 3, 5, 7, 9] {
            assert_eq!(got(&b, id), Some(vec![uid(id)]), "{id}");
        }
        assert_eq!(got(&b, 4), None);
    }

    /// Removals leave tombstones that are revived or compacted away, and a
    /// compaction never loses a live grant.
    #[test]
    fn tombstones_are_revived_and_compacted() {
        let mut b = ByGrant::default();
        let n = 4 * COMPACT_FLOOR as u64;
        for id in 1..=n {
            b.insert(id, &[uid(id)]);
        }
        b.remove(2);
        assert_eq!(got(&b, 2), None);
        b.insert(2, &[uid(200)]);
        assert_eq!(got(&b, 2), Some(vec![uid(200)]));
        assert_eq!(b.slots(), n as usize, "revived in place");
        for id in (1..=n).filter(|i| i % 4 != 0) {
            b.remove(id);
        }
        assert!(b.slots() < n as usize, "compacted: {}", b.slots());
        for id in 1..=n {
            let want = (id % 4 == 0).then(|| vec![uid(id)]);
            assert_eq!(got(&b, id), want, "{id}");
        }
        // New grants still go after the survivors.
        b.insert(n + 1, &[uid(n + 1)]);
        assert_eq!(got(&b, n + 1), Some(vec![uid(n + 1)]));
        assert_eq!(b.iter().count(), n as usize / 4 + 1);
    }

    /// A grant's one peer key (no room for it in the compact vector) reads
    /// back too, and moves to the vector when the grant is set to a local
    /// key; the vector's slot is 24 bytes.
    #[test]
    fn a_single_peer_key_reads_back() {
        assert_eq!(size_of::<(u64, GrantKey)>(), 24);
        let peer = EntryKey::Peer {
            segment: 1,
            addr: [7; 16],
            prefix: 128,
        };
        let mut b = ByGrant::default();
        b.insert(1, &[uid(1)]);
        assert!(b.insert(2, &[peer]).is_none());
        assert_eq!(got(&b, 2), Some(vec![peer]));
        assert_eq!(keys(b.insert(2, &[uid(2)])), Some(vec![peer]));
        assert_eq!(got(&b, 2), Some(vec![uid(2)]));
        assert_eq!(keys(b.insert(1, &[peer])), Some(vec![uid(1)]));
        assert_eq!(keys(b.remove(1)), Some(vec![peer]));
        assert_eq!(b.iter().count(), 1);
    }
}
