//! The live grants, by id, by deadline, and the few that name a cgroup.
//!
//! Owns the two indexes and keeps them in step: every insert and remove
//! goes through here, so "what expires next" is the first entry of the
//! deadline index, not a scan of every grant (as in mini-redis's
//! `expirations`). Knows nothing of the kernel, the audit log or policy.
use std::collections::{BTreeMap, BTreeSet};

use crate::{identity::Identity, state::Grant};

#[derive(Debug, Default)]
pub(crate) struct GrantBook {
    by_id: BTreeMap<u64, Grant>,
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
    /// Adds or replaces grant `id`.
    pub(super) fn insert(&mut self, id: u64, grant: Grant) {
        debug_assert_eq!(id, grant.id);
        if let Some(old) = self.by_id.remove(&id) {
            self.by_deadline.remove(&(old.expires_boot_ns, id));
            self.by_cgroup.remove(&id);
        }
        self.by_deadline.insert((grant.expires_boot_ns, id));
        if names_a_cgroup(&grant) {
            self.by_cgroup.insert(id);
        }
        self.by_id.insert(id, grant);
    }

    /// Adds many grants. Into an empty book, in id order, the two indexes
    /// are built in one go (a B-tree filled one ascending key at a time
    /// leaves its nodes about half full).
    pub(super) fn fill(&mut self, grants: Vec<Grant>) {
        let sorted = grants.windows(2).all(|w| w[0].id < w[1].id);
        if !(self.by_id.is_empty() && sorted) {
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
        self.by_id = grants.into_iter().map(|g| (g.id, g)).collect();
    }

    pub(super) fn remove(&mut self, id: &u64) -> Option<Grant> {
        let g = self.by_id.remove(id)?;
        self.by_deadline.remove(&(g.expires_boot_ns, *id));
        self.by_cgroup.remove(id);
        Some(g)
    }

    pub(super) fn get(&self, id: &u64) -> Option<&Grant> {
        self.by_id.get(id)
    }

    pub(super) fn contains_key(&self, id: &u64) -> bool {
        self.by_id.contains_key(id)
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// In id order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Grant> {
        self.by_id.values()
    }

    /// The grants to a `cgroup:` or `unit:` identity, in id order.
    pub(super) fn naming_cgroups(&self) -> impl Iterator<Item = &Grant> {
        self.by_cgroup.iter().filter_map(|id| self.by_id.get(id))
    }

    /// In id order, from id `first` on.
    pub(super) fn starting_at(&self, first: u64) -> impl Iterator<Item = &Grant> {
        self.by_id.range(first..).map(|(_, g)| g)
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
}
