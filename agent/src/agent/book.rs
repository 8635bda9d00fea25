//! The live grants, by id and by deadline.
//!
//! Owns the two indexes and keeps them in step: every insert and remove
//! goes through here, so "what expires next" is the first entry of the
//! deadline index, not a scan of every grant (as in mini-redis's
//! `expirations`). Knows nothing of the kernel, the audit log or policy.
use std::collections::{BTreeMap, BTreeSet};

use crate::state::Grant;

#[derive(Debug, Default)]
pub(crate) struct GrantBook {
    by_id: BTreeMap<u64, Grant>,
    /// (deadline on the boot clock, grant id).
    by_deadline: BTreeSet<(u64, u64)>,
}

impl GrantBook {
    /// Adds or replaces grant `id`.
    pub(super) fn insert(&mut self, id: u64, grant: Grant) {
        debug_assert_eq!(id, grant.id);
        if let Some(old) = self.by_id.remove(&id) {
            self.by_deadline.remove(&(old.expires_boot_ns, id));
        }
        self.by_deadline.insert((grant.expires_boot_ns, id));
        self.by_id.insert(id, grant);
    }

    pub(super) fn remove(&mut self, id: &u64) -> Option<Grant> {
        let g = self.by_id.remove(id)?;
        self.by_deadline.remove(&(g.expires_boot_ns, *id));
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
            boot_id: String::new(),
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
