//! The live grants, by id, by deadline, and the few that name a cgroup.
//!
//! Owns the indexes and keeps them in step: every insert and remove goes
//! through here, so "what expires next" is the first entry of the
//! deadline index, not a scan of every grant (as in mini-redis's
//! `expirations`). Knows nothing of the kernel, the audit log or policy.
//!
//! The grants themselves sit in one vector in ascending id order, found by
//! binary search: a million of them may be live, and a B-tree keyed by id
//! held each id twice and its nodes' overhead (~10 bytes a grant at a
//! million, issue 15). Ids only grow, so a new grant is appended; the
//! vector filled at start is the journal's own, taken without a copy. A
//! removed grant leaves a tombstone (its id) that a later insert of the
//! same id revives, and the vector is compacted once a quarter of it is
//! tombstones, so neither a revoke nor an expiry sweep shifts the rest.
use std::collections::BTreeSet;

use crate::{identity::Identity, state::Grant};

/// Tombstones below this many are never compacted away.
const COMPACT_FLOOR: usize = 64;

/// A grant, or the id of one removed since the last compaction. As large
/// as a [`Grant`]: the id fits beside the niche of its interned names.
#[derive(Debug)]
enum Slot {
    Live(Grant),
    Dead(u64),
}

impl Slot {
    fn id(&self) -> u64 {
        match self {
            Slot::Live(g) => g.id,
            Slot::Dead(id) => *id,
        }
    }

    fn live(&self) -> Option<&Grant> {
        match self {
            Slot::Live(g) => Some(g),
            Slot::Dead(_) => None,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct GrantBook {
    /// Grants and tombstones, ascending id.
    slots: Vec<Slot>,
    /// Tombstones in `slots`.
    dead: usize,
    /// (deadline on the boot clock, grant id).
    by_deadline: BTreeSet<(u64, u64)>,
    /// Ids of the grants to a `cgroup:` or `unit:` identity: what the
    /// cgroup cover is made of. The cover is re-made every few seconds
    /// under the agent's lock; walking every grant there made that pause
    /// grow with the grant count (a revoke arriving meanwhile waited).
    by_cgroup: BTreeSet<u64>,
}

/// Whether a grant's identity is a cgroup (named directly or by its unit).
fn names_a_cgroup(g: &Grant) -> bool {
    matches!(g.identity, Identity::Cgroup(_) | Identity::Unit(_))
}

impl GrantBook {
    /// Where grant `id` sits (or would) in `slots`, live or dead.
    fn find(&self, id: u64) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&id, Slot::id)
    }

    fn live_at(&self, id: u64) -> Option<usize> {
        self.find(id)
            .ok()
            .filter(|&at| matches!(self.slots[at], Slot::Live(_)))
    }

    /// Adds grant `g`'s entries to the indexes.
    fn index(&mut self, g: &Grant) {
        self.by_deadline.insert((g.expires_boot_ns, g.id));
        if names_a_cgroup(g) {
            self.by_cgroup.insert(g.id);
        }
    }

    /// Drops grant `g`'s entries from the indexes.
    fn unindex(&mut self, g: &Grant) {
        self.by_deadline.remove(&(g.expires_boot_ns, g.id));
        self.by_cgroup.remove(&g.id);
    }

    /// Adds or replaces grant `id`.
    pub(super) fn insert(&mut self, id: u64, grant: Grant) {
        debug_assert_eq!(id, grant.id);
        if self.slots.last().is_none_or(|s| s.id() < id) {
            self.index(&grant);
            self.slots.push(Slot::Live(grant));
            return;
        }
        match self.find(id) {
            Ok(at) => {
                match std::mem::replace(&mut self.slots[at], Slot::Dead(id)) {
                    Slot::Live(old) => self.unindex(&old),
                    Slot::Dead(_) => self.dead -= 1,
                }
                self.index(&grant);
                self.slots[at] = Slot::Live(grant);
            }
            // Out of id order (a restore into a book that holds grants):
            // rare, so the shift is too.
            Err(at) => {
                self.index(&grant);
                self.slots.insert(at, Slot::Live(grant));
            }
        }
    }

    /// Adds many grants. Into an empty book, in id order, the vector is
    /// taken as it is and the indexes are built in one go (a B-tree filled
    /// one ascending key at a time leaves its nodes about half full).
    pub(super) fn fill(&mut self, grants: Vec<Grant>) {
        let sorted = grants.windows(2).all(|w| w[0].id < w[1].id);
        if !(self.slots.is_empty() && sorted) {
            for g in grants {
                self.insert(g.id, g);
            }
            return;
        }
        let mut deadlines: Vec<(u64, u64)> =
            grants.iter().map(|g| (g.expires_boot_ns, g.id)).collect();
        deadlines.sort_unstable();
        self.by_deadline = deadlines.into_iter().collect();
        self.by_cgroup = grants
            .iter()
            .filter(|g| names_a_cgroup(g))
            .map(|g| g.id)
            .collect();
        // Same size and alignment: collected in place, no second copy.
        self.slots = grants.into_iter().map(Slot::Live).collect();
        self.dead = 0;
    }

    pub(super) fn remove(&mut self, id: &u64) -> Option<Grant> {
        let at = self.live_at(*id)?;
        let Slot::Live(g) = std::mem::replace(&mut self.slots[at], Slot::Dead(*id)) else {
            unreachable!("live_at found a live slot");
        };
        self.dead += 1;
        self.unindex(&g);
        if self.dead >= COMPACT_FLOOR && 4 * self.dead >= self.slots.len() {
            self.slots.retain(|s| matches!(s, Slot::Live(_)));
            self.dead = 0;
            if self.slots.capacity() > 2 * self.slots.len() {
                self.slots.shrink_to_fit();
            }
        }
        Some(g)
    }

    pub(super) fn get(&self, id: &u64) -> Option<&Grant> {
        self.live_at(*id).and_then(|at| self.slots[at].live())
    }

    pub(super) fn contains_key(&self, id: &u64) -> bool {
        self.live_at(*id).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len() - self.dead
    }

    /// In id order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Grant> {
        self.slots.iter().filter_map(Slot::live)
    }

    /// The grants to a `cgroup:` or `unit:` identity, in id order.
    pub(super) fn naming_cgroups(&self) -> impl Iterator<Item = &Grant> {
        self.by_cgroup.iter().filter_map(|id| self.get(id))
    }

    /// In id order, from id `first` on.
    pub(super) fn starting_at(&self, first: u64) -> impl Iterator<Item = &Grant> {
        let at = self.find(first).unwrap_or_else(|at| at);
        self.slots[at..].iter().filter_map(Slot::live)
    }

    /// The earliest deadline of any grant.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|&(at, _)| at)
    }

    /// Ids of the grants whose deadline is at or before `now`, earliest first.
    pub(super) fn due(&self, now: u64) -> Vec<u64> {
        self.by_deadline
            .range(..=(now, u64::MAX))
            .map(|&(_, id)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Actor;

    fn grant(id: u64, at: u64) -> Grant {
        Grant {
            id,
            segment: "db".into(),
            identity: "uid:1".parse().unwrap(),
            created_unix_ms: 0,
            expires_unix_ms: 0,
            expires_boot_ns: at,
            boot_id: "".into(),
            actor: Actor::agent(),
            reason: None,
            request_id: None,
            fleet: None,
        }
    }

    #[test]
    fn due_is_ordered_by_deadline_not_id() {
        let mut b = GrantBook::default();
        b.insert(1, grant(1, 300));
        b.insert(2, grant(2, 100));
        b.insert(3, grant(3, 200));
        b.insert(4, grant(4, 400));
        assert_eq!(b.next_deadline(), Some(100));
        assert_eq!(b.due(300), vec![2, 3, 1]);
        assert_eq!(b.due(99), Vec::<u64>::new());
    }

    #[test]
    fn filling_keeps_both_indexes_whatever_the_order() {
        for ids in [vec![1, 2, 3], vec![3, 1, 2]] {
            let mut b = GrantBook::default();
            b.fill(ids.iter().map(|&i| grant(i, 100 * (4 - i))).collect());
            assert_eq!(b.len(), 3);
            assert_eq!(b.values().map(|g| g.id).collect::<Vec<_>>(), vec![1, 2, 3]);
            assert_eq!(b.due(200), vec![3, 2]);
            assert_eq!(b.next_deadline(), Some(100));
        }
        // Into a book that holds grants: added, not replacing the book.
        let mut b = GrantBook::default();
        b.insert(9, grant(9, 50));
        b.fill(vec![grant(1, 300), grant(2, 200)]);
        assert_eq!(b.due(1000), vec![9, 2, 1]);
    }

    fn with_identity(id: u64, identity: &str) -> Grant {
        Grant {
            identity: identity.parse().unwrap(),
            ..grant(id, 100)
        }
    }

    #[test]
    fn the_cgroup_index_follows_inserts_fills_replacements_and_removals() {
        let ids = |b: &GrantBook| b.naming_cgroups().map(|g| g.id).collect::<Vec<_>>();
        let mut b = GrantBook::default();
        b.fill(vec![
            with_identity(1, "uid:1"),
            with_identity(2, "cgroup:/a.slice"),
            with_identity(3, "unit:x.service"),
        ]);
        assert_eq!(ids(&b), vec![2, 3]);
        b.insert(4, with_identity(4, "cgroup:/b"));
        b.insert(5, with_identity(5, "gid:5"));
        assert_eq!(ids(&b), vec![2, 3, 4]);
        // Replaced by a grant to a uid: no longer in the index.
        b.insert(2, with_identity(2, "uid:2"));
        assert_eq!(ids(&b), vec![3, 4]);
        assert!(b.remove(&3).is_some());
        assert_eq!(ids(&b), vec![4]);
        // Into a book that already holds grants (one at a time).
        b.fill(vec![
            with_identity(7, "unit:y.service"),
            with_identity(6, "uid:6"),
        ]);
        assert_eq!(ids(&b), vec![4, 7]);
    }

    #[test]
    fn replacing_and_removing_keep_the_index_in_step() {
        let mut b = GrantBook::default();
        b.insert(1, grant(1, 100));
        b.insert(1, grant(1, 500));
        assert_eq!(b.next_deadline(), Some(500));
        assert_eq!(b.due(200), Vec::<u64>::new());
        b.insert(2, grant(2, 50));
        assert!(b.remove(&2).is_some());
        assert_eq!(b.next_deadline(), Some(500));
        assert_eq!(b.len(), 1);
        assert!(b.remove(&1).is_some());
        assert_eq!(b.next_deadline(), None);
    }

    /// A tombstone costs no more than a grant: the vector is as large as
    /// the grants it holds.
    #[test]
    fn a_slot_is_as_large_as_a_grant() {
        assert_eq!(size_of::<Slot>(), size_of::<Grant>());
    }

    fn ids(b: &GrantBook) -> Vec<u64> {
        b.values().map(|g| g.id).collect()
    }

    /// A removed id is gone from every read, a second removal finds
    /// nothing, and inserting it again revives it in place.
    #[test]
    fn a_removed_grant_is_gone_and_can_come_back() {
        let mut b = GrantBook::default();
        for id in 1..=5 {
            b.insert(id, grant(id, 100 * id));
        }
        assert_eq!(b.remove(&3).map(|g| g.id), Some(3));
        assert!(b.remove(&3).is_none());
        assert!(b.get(&3).is_none() && !b.contains_key(&3));
        assert_eq!(b.len(), 4);
        assert_eq!(ids(&b), vec![1, 2, 4, 5]);
        assert_eq!(
            b.starting_at(3).map(|g| g.id).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(b.due(1000), vec![1, 2, 4, 5]);
        b.insert(3, grant(3, 50));
        assert_eq!(b.slots.len(), 5, "revived in place");
        assert_eq!(b.get(&3).map(|g| g.expires_boot_ns), Some(50));
        assert_eq!(ids(&b), vec![1, 2, 3, 4, 5]);
        assert_eq!(b.due(1000), vec![3, 1, 2, 4, 5]);
        assert_eq!(b.len(), 5);
    }

    /// An id below the last one that was never in the book lands in order.
    #[test]
    fn an_id_out_of_order_lands_in_order() {
        let mut b = GrantBook::default();
        for id in [10, 20, 5, 15, 30, 1] {
            b.insert(id, grant(id, id));
        }
        assert_eq!(ids(&b), vec![1, 5, 10, 15, 20, 30]);
        for id in [1, 5, 10, 15, 20, 30] {
            assert_eq!(b.get(&id).map(|g| g.id), Some(id));
        }
        assert!(b.get(&11).is_none());
        assert_eq!(
            b.starting_at(11).map(|g| g.id).collect::<Vec<_>>(),
            vec![15, 20, 30]
        );
        assert_eq!(b.starting_at(31).count(), 0);
    }

    /// Tombstones are compacted away once they are a quarter of the
    /// vector; no live grant is lost, and later grants still append.
    #[test]
    fn compaction_keeps_every_live_grant() {
        let mut b = GrantBook::default();
        let n = 8 * COMPACT_FLOOR as u64;
        b.fill((1..=n).map(|id| grant(id, n - id)).collect());
        for id in (1..=n).filter(|i| i % 3 != 0) {
            assert!(b.remove(&id).is_some(), "{id}");
        }
        assert!(b.slots.len() < n as usize, "compacted: {}", b.slots.len());
        let live: Vec<u64> = (1..=n).filter(|i| i % 3 == 0).collect();
        assert_eq!(ids(&b), live);
        assert_eq!(b.len(), live.len());
        for id in 1..=n {
            assert_eq!(b.contains_key(&id), id % 3 == 0, "{id}");
        }
        b.insert(n + 1, grant(n + 1, 0));
        assert_eq!(b.values().last().map(|g| g.id), Some(n + 1));
        // Expiry order is the deadlines' (n - id), not the ids'.
        assert_eq!(b.due(5), vec![n + 1, 510, 507]);
    }
}
