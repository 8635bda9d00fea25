//! Which map entries each source of access contributes, and what the kernel
//! must hold as a result.
//!
//! Several sources can open the same map key: a standing allow for
//! `group:dev` and a JIT grant for `gid:1000` both write (gid 1000, segment).
//! The kernel holds one expiry per key: the latest of its live sources (a
//! strict source that outlasts the others makes the entry strict; see
//! `agent_common::expiry::later`).
//! Revoking one source therefore recomputes its keys from what remains
//! instead of deleting them blindly. Pure bookkeeping: it returns the
//! changes and the dataplane applies them; it never touches the kernel.
use std::{collections::HashMap, num::NonZeroU64, sync::Arc};

/// The ledger's hash tables: foldhash instead of SipHash, seeded at random
/// per process. A restart with a million grants makes a million inserts,
/// and SipHash was a quarter of that restart's time (perf, issue 15). The
/// keys come from policy files and grants that only the agent's operators
/// make, and the seed is random, so a chosen-key flood is not a concern.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use agent_common::GrantKey;

use by_grant::ByGrant;
use entries::{Contribs, Entries};

mod by_grant;
mod entries;

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

/// A source as the ledger keeps it: a grant by its id, or a standing allow
/// by its index in the ledger's interner (`STANDING` set). Eight bytes
/// instead of two strings per contribution, held complemented so that it
/// is never zero (no id is `u64::MAX`): the niche lets a contribution list
/// hold one source or a box in 16 bytes (`entries::Contribs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SourceId(NonZeroU64);

impl SourceId {
    fn new(raw: u64) -> Self {
        Self(NonZeroU64::new(!raw).expect("no source id is u64::MAX"))
    }

    fn raw(self) -> u64 {
        !self.0.get()
    }
}

/// Marks an interned standing allow (grant ids never reach 2^63).
const STANDING: u64 = 1 << 63;

/// The keys one source opens: almost always one, so no vector for it.
#[derive(Clone, Debug)]
enum Keys {
    One(EntryKey),
    Many(Box<[EntryKey]>),
}

impl From<Box<[EntryKey]>> for Keys {
    fn from(keys: Box<[EntryKey]>) -> Self {
        match *keys {
            [one] => Keys::One(one),
            _ => Keys::Many(keys),
        }
    }
}

impl Keys {
    fn as_slice(&self) -> &[EntryKey] {
        match self {
            Keys::One(k) => std::slice::from_ref(k),
            Keys::Many(v) => v,
        }
    }
}

/// The keys one source opens, as [`Ledger::keys_of`] lends them: the one
/// key by value (the grant index keeps it as a bare kernel key, not an
/// [`EntryKey`] to borrow), several by reference. Reads as a slice.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeysRef<'a> {
    One(EntryKey),
    Many(&'a [EntryKey]),
}

impl std::ops::Deref for KeysRef<'_> {
    type Target = [EntryKey];

    fn deref(&self) -> &[EntryKey] {
        match self {
            KeysRef::One(k) => std::slice::from_ref(k),
            KeysRef::Many(v) => v,
        }
    }
}

/// Standing allows by id and ids by standing allow, each string held once
/// (shared between the two directions). Ids of removed sources are reused.
#[derive(Clone, Debug, Default)]
struct Interner {
    ids: FastMap<Arc<Source>, u32>,
    sources: Vec<Option<Arc<Source>>>,
    free: Vec<u32>,
}

impl Interner {
    fn id(&self, source: &Source) -> Option<SourceId> {
        match source {
            Source::Grant(id) => Some(SourceId::new(*id)),
            Source::Standing { .. } => self
                .ids
                .get(source)
                .map(|&i| SourceId::new(STANDING | u64::from(i))),
        }
    }

    fn intern(&mut self, source: Source) -> SourceId {
        if let Some(id) = self.id(&source) {
            return id;
        }
        let shared = Arc::new(source);
        let index = match self.free.pop() {
            Some(i) => {
                self.sources[i as usize] = Some(shared.clone());
                i
            }
            None => {
                self.sources.push(Some(shared.clone()));
                u32::try_from(self.sources.len() - 1).expect("fewer than 2^32 standing allows")
            }
        };
        self.ids.insert(shared, index);
        SourceId::new(STANDING | u64::from(index))
    }

    fn forget(&mut self, id: SourceId) {
        if id.raw() & STANDING == 0 {
            return;
        }
        let index = (id.raw() & !STANDING) as u32;
        if let Some(source) = self.sources.get_mut(index as usize).and_then(Option::take) {
            self.ids.remove(&*source);
            self.free.push(index);
        }
    }

    fn source(&self, id: SourceId) -> Source {
        if id.raw() & STANDING == 0 {
            return Source::Grant(id.raw());
        }
        let shared = self.sources[(id.raw() & !STANDING) as usize]
            .as_ref()
            .expect("a live id names a live source");
        (**shared).clone()
    }

    /// Every standing allow interned now.
    fn standing(&self) -> impl Iterator<Item = (SourceId, &Source)> {
        self.sources.iter().enumerate().filter_map(|(i, s)| {
            s.as_deref()
                .map(|s| (SourceId::new(STANDING | i as u64), s))
        })
    }
}

#[derive(Default, Debug, Clone)]
pub(crate) struct Ledger {
    entries: Entries,
    /// The keys each standing allow opens.
    by_standing: FastMap<SourceId, Keys>,
    /// The keys each grant opens.
    by_grant: ByGrant,
    interner: Interner,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The keys a source contributes to.
    pub(crate) fn keys_of(&self, source: &Source) -> KeysRef<'_> {
        match source {
            Source::Grant(id) => self.by_grant.get(*id),
            Source::Standing { .. } => self
                .interner
                .id(source)
                .and_then(|id| self.by_standing.get(&id))
                .map(|k| KeysRef::Many(k.as_slice())),
        }
        .unwrap_or(KeysRef::Many(&[]))
    }

    /// What `id` opens now, replaced by `keys` (the previous keys returned).
    fn record(&mut self, id: SourceId, keys: &[EntryKey]) -> Option<Keys> {
        if id.raw() & STANDING == 0 {
            self.by_grant.insert(id.raw(), keys)
        } else {
            self.by_standing.insert(id, Keys::from(Box::from(keys)))
        }
    }

    /// Forgets what `id` opens, returning it.
    fn unrecord(&mut self, id: SourceId) -> Option<Keys> {
        if id.raw() & STANDING == 0 {
            self.by_grant.remove(id.raw())
        } else {
            self.by_standing.remove(&id)
        }
    }

    /// Every standing allow the ledger holds (with or without keys).
    pub(crate) fn standing_sources(&self) -> impl Iterator<Item = &Source> {
        self.interner.standing().map(|(_, s)| s)
    }

    /// Every source and the keys it opens.
    #[cfg(test)]
    pub(crate) fn sources(&self) -> impl Iterator<Item = (Source, KeysRef<'_>)> {
        self.by_standing
            .iter()
            .map(|(id, k)| (self.interner.source(*id), KeysRef::Many(k.as_slice())))
            .chain(self.by_grant.iter().map(|(id, k)| (Source::Grant(id), k)))
    }

    /// The sources that open `key`, each with its expiry: the reverse of
    /// `keys_of` (used by `explain` to say why an entry exists).
    pub(crate) fn sources_of(&self, key: &EntryKey) -> Vec<(Source, u64)> {
        self.entries
            .get(key)
            .map(|c| {
                c.as_slice()
                    .iter()
                    .map(|(s, e)| (self.interner.source(*s), *e))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every map entry's key.
    pub(crate) fn keys(&self) -> impl Iterator<Item = EntryKey> + '_ {
        self.entries.keys()
    }

    /// Every map entry with the sources that open it.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> impl Iterator<Item = (EntryKey, Vec<(Source, u64)>)> + '_ {
        self.entries.keys().map(|k| (k, self.sources_of(&k)))
    }

    /// The value the kernel should hold for `key`.
    pub(crate) fn value(&self, key: &EntryKey) -> Option<u64> {
        self.entries.get(key).and_then(Contribs::latest)
    }

    /// Room for `n` more sources of one key each, so that a bulk fill
    /// (the grants at start) does not rehash on the way.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
        self.by_grant.reserve(n);
    }

    /// Number of distinct map entries.
    pub(crate) fn len(&self) -> usize {
        let (locals, peers) = self.entries.counts();
        locals + peers
    }

    /// (local identity entries, peer entries), without a walk.
    pub(crate) fn counts(&self) -> (usize, usize) {
        self.entries.counts()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `source` opening `keys` until `expiry` (replacing what it
    /// opened before) and returns the writes, puts first.
    pub(crate) fn set(&mut self, source: Source, keys: &[EntryKey], expiry: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut keys: Vec<EntryKey> = keys.to_vec();
        keys.sort();
        keys.dedup();
        let id = self.interner.intern(source);
        for key in &keys {
            let before = match self.entries.get_mut(key) {
                None => {
                    self.entries.insert(*key, Contribs::One((id, expiry)));
                    None
                }
                Some(c) => {
                    let before = c.latest();
                    c.put(id, expiry);
                    before
                }
            };
            let after = self.value(key);
            if after != before {
                changes.push(Change::Put(*key, after.expect("just inserted")));
            }
        }
        let old = self.record(id, &keys);
        if let Some(old) = old {
            for key in old
                .as_slice()
                .iter()
                .filter(|k| keys.binary_search(k).is_err())
            {
                changes.extend(self.drop_contribution(id, *key));
            }
        }
        changes
    }

    /// Forgets `source` and returns the writes: keys no one else opens are
    /// deleted, keys others still open drop to the others' latest expiry.
    pub(crate) fn remove(&mut self, source: &Source) -> Vec<Change> {
        let Some(id) = self.interner.id(source) else {
            return Vec::new();
        };
        let Some(keys) = self.unrecord(id) else {
            return Vec::new();
        };
        self.interner.forget(id);
        let mut changes: Vec<Change> = keys
            .as_slice()
            .iter()
            .filter_map(|k| self.drop_contribution(id, *k))
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
        for (key, c) in to.entries.iter() {
            let want = c.latest();
            if want != self.value(&key) {
                puts.push(Change::Put(key, want.expect("present in `to`")));
            }
        }
        for key in self.entries.keys() {
            if !to.entries.contains_key(&key) {
                deletes.push(Change::Delete(key));
            }
        }
        puts.sort_unstable_by_key(|c| match c {
            Change::Put(k, _) | Change::Delete(k) => *k,
        });
        deletes.sort_unstable_by_key(|c| match c {
            Change::Put(k, _) | Change::Delete(k) => *k,
        });
        puts.extend(deletes);
        puts
    }

    fn drop_contribution(&mut self, source: SourceId, key: EntryKey) -> Option<Change> {
        let slot = self.entries.get_mut(&key)?;
        let before = slot.latest();
        if !slot.drop_source(source) {
            self.entries.remove(&key);
            return Some(Change::Delete(key));
        }
        let after = slot.latest();
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
        assert_eq!(&*l.keys_of(&Source::Grant(1)), &[uid(2), uid(3)]);
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

    fn standing(identity: &str) -> Source {
        Source::Standing {
            segment: "db".into(),
            identity: identity.into(),
        }
    }

    /// A standing allow is held once whatever the number of keys it opens,
    /// reads back as the same strings, and its id is reused once removed.
    #[test]
    fn standing_allows_are_interned_once_and_their_ids_reused() {
        let mut i = Interner::default();
        let a = i.intern(standing("uid:1"));
        assert_eq!(i.intern(standing("uid:1")), a);
        let b = i.intern(standing("uid:2"));
        assert_ne!(a, b);
        assert_eq!(i.ids.len(), 2);
        assert_eq!(i.source(a), standing("uid:1"));
        // Grants are their own ids: nothing interned.
        assert_eq!(i.intern(Source::Grant(7)), SourceId::new(7));
        assert_eq!(i.source(SourceId::new(7)), Source::Grant(7));
        assert_eq!(i.ids.len(), 2);
        i.forget(a);
        assert_eq!(i.id(&standing("uid:1")), None);
        assert_eq!(i.standing().count(), 1);
        let c = i.intern(standing("uid:3"));
        assert_eq!(c, a, "the freed id is reused");
        assert_eq!(i.source(c), standing("uid:3"));
        assert_eq!(i.source(b), standing("uid:2"));
    }

    /// Through the ledger: a standing allow removed is gone from the
    /// sources, and one reset to no keys stays (a reload that cannot
    /// resolve it keeps it known).
    #[test]
    fn the_ledger_reports_standing_allows_by_their_strings() {
        let mut l = Ledger::new();
        l.set(standing("uid:1"), &[uid(1)], u64::MAX);
        l.set(standing("uid:2"), &[], u64::MAX);
        l.set(Source::Grant(3), &[uid(1)], 5);
        let mut names: Vec<Source> = l.standing_sources().cloned().collect();
        names.sort();
        assert_eq!(names, vec![standing("uid:1"), standing("uid:2")]);
        assert_eq!(
            l.sources_of(&uid(1)),
            vec![(standing("uid:1"), u64::MAX), (Source::Grant(3), 5)]
        );
        assert_eq!(l.remove(&standing("uid:1")), vec![Change::Put(uid(1), 5)]);
        assert_eq!(l.sources_of(&uid(1)), vec![(Source::Grant(3), 5)]);
        assert_eq!(
            l.standing_sources().cloned().collect::<Vec<_>>(),
            vec![standing("uid:2")]
        );
        assert_eq!(l.sources().count(), 2);
    }

    /// Many single-key grants (the compact reverse index): revoking and
    /// re-setting them keep every key's value and every grant's keys right,
    /// on the ledger and on a copy a plan is made on.
    #[test]
    fn many_grants_come_and_go_with_their_keys() {
        let mut l = Ledger::new();
        for id in 1..=1000 {
            l.set(Source::Grant(id), &[uid(id)], id);
        }
        // A grant of several keys, one of them shared with grant 1.
        l.set(Source::Grant(1001), &[uid(1), uid(2000)], 5000);
        for id in (1..=1000).filter(|i| i % 3 != 0) {
            let want = match id {
                1 => vec![],
                _ => vec![Change::Delete(uid(id))],
            };
            assert_eq!(l.remove(&Source::Grant(id)), want, "{id}");
        }
        assert_eq!(l.counts(), (1000 / 3 + 2, 0));
        for id in (3..=1000).step_by(3) {
            assert_eq!(&*l.keys_of(&Source::Grant(id)), &[uid(id)]);
            assert_eq!(l.value(&uid(id)), Some(id));
        }
        assert!(l.keys_of(&Source::Grant(2)).is_empty());
        assert_eq!(&*l.keys_of(&Source::Grant(1001)), &[uid(1), uid(2000)]);
        // An old id set again (a restore out of order), planned on a copy.
        let mut plan = l.clone();
        plan.set(Source::Grant(2), &[uid(2)], 7);
        plan.remove(&Source::Grant(3));
        assert_eq!(
            l.diff(&plan),
            vec![Change::Put(uid(2), 7), Change::Delete(uid(3))]
        );
        assert_eq!(
            &*l.keys_of(&Source::Grant(3)),
            &[uid(3)],
            "the original is untouched"
        );
        assert_eq!(&*plan.keys_of(&Source::Grant(2)), &[uid(2)]);
    }

    #[test]
    fn unchanged_value_writes_nothing() {
        let mut l = Ledger::new();
        l.set(Source::Grant(1), &[uid(1)], 10);
        assert_eq!(l.set(Source::Grant(1), &[uid(1)], 10), vec![]);
    }

    /// Strict fleet entries (issue 19): a key opened by a plain and a
    /// strict source holds the later deadline, plain on a tie, and drops
    /// back to the plain one when the strict source goes.
    #[test]
    fn a_strict_source_makes_the_entry_strict_only_when_it_outlasts_the_rest() {
        use agent_common::expiry::strict;
        let mut l = Ledger::new();
        assert_eq!(
            l.set(Source::Grant(1), &[uid(7)], 100),
            vec![Change::Put(uid(7), 100)]
        );
        assert_eq!(l.set(Source::Grant(2), &[uid(7)], strict(50)), vec![]);
        assert_eq!(l.set(Source::Grant(2), &[uid(7)], strict(100)), vec![]);
        assert_eq!(
            l.set(Source::Grant(2), &[uid(7)], strict(200)),
            vec![Change::Put(uid(7), strict(200))]
        );
        assert_eq!(l.remove(&Source::Grant(2)), vec![Change::Put(uid(7), 100)]);
    }
}
