//! The ledger's map entries and who contributes to each, kept compact: a
//! million grants are a million entries, each a hash-table slot.
//!
//! Local identity entries and peer entries sit in two tables, so a local
//! slot is its 16-byte kernel key and a 16-byte [`Contribs`] (one source
//! inline; the rare several boxed), 32 bytes instead of the 56 of one
//! table keyed by [`EntryKey`] with a vector per entry.
use super::FastMap;

use agent_common::GrantKey;

use super::{EntryKey, SourceId};

/// The sources contributing to one key: almost always one, so no vector
/// for it. 16 bytes: the box of the rare several sits beside the source id's
/// niche.
#[derive(Clone, Debug)]
pub(super) enum Contribs {
    One((SourceId, u64)),
    // Boxed on purpose: a bare `Vec` (24 bytes) would make every entry's
    // list 24 bytes for the rare key with several sources.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<(SourceId, u64)>>),
}

impl Contribs {
    pub(super) fn as_slice(&self) -> &[(SourceId, u64)] {
        match self {
            Contribs::One(one) => std::slice::from_ref(one),
            Contribs::Many(v) => v,
        }
    }

    /// The value the key holds: the latest deadline, a plain value
    /// winning a tie with a strict one (`agent_common::expiry::later`).
    pub(super) fn latest(&self) -> Option<u64> {
        self.as_slice()
            .iter()
            .map(|(_, e)| *e)
            .reduce(agent_common::expiry::later)
    }

    /// Sets `source`'s expiry (adding it if new).
    pub(super) fn put(&mut self, source: SourceId, expiry: u64) {
        match self {
            Contribs::One((s, e)) if *s == source => *e = expiry,
            Contribs::One(one) => *self = Contribs::Many(Box::new(vec![*one, (source, expiry)])),
            Contribs::Many(v) => match v.iter_mut().find(|(s, _)| *s == source) {
                Some(existing) => existing.1 = expiry,
                None => v.push((source, expiry)),
            },
        }
    }

    /// Drops `source`; false when nothing is left.
    pub(super) fn drop_source(&mut self, source: SourceId) -> bool {
        match self {
            Contribs::One((s, _)) => *s != source,
            Contribs::Many(v) => {
                v.retain(|(s, _)| *s != source);
                if let [one] = v.as_slice() {
                    *self = Contribs::One(*one);
                }
                !matches!(self, Contribs::Many(v) if v.is_empty())
            }
        }
    }
}

/// A peer entry's key, without the [`EntryKey`] tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PeerKey {
    segment: u32,
    addr: [u8; 16],
    prefix: u8,
}

/// Every map entry and its contributions, local and peer apart.
#[derive(Clone, Debug, Default)]
pub(super) struct Entries {
    local: FastMap<GrantKey, Contribs>,
    peer: FastMap<PeerKey, Contribs>,
}

impl Entries {
    pub(super) fn get(&self, key: &EntryKey) -> Option<&Contribs> {
        match *key {
            EntryKey::Local(k) => self.local.get(&k),
            EntryKey::Peer {
                segment,
                addr,
                prefix,
            } => self.peer.get(&PeerKey {
                segment,
                addr,
                prefix,
            }),
        }
    }

    pub(super) fn get_mut(&mut self, key: &EntryKey) -> Option<&mut Contribs> {
        match *key {
            EntryKey::Local(k) => self.local.get_mut(&k),
            EntryKey::Peer {
                segment,
                addr,
                prefix,
            } => self.peer.get_mut(&PeerKey {
                segment,
                addr,
                prefix,
            }),
        }
    }

    pub(super) fn insert(&mut self, key: EntryKey, c: Contribs) {
        match key {
            EntryKey::Local(k) => self.local.insert(k, c),
            EntryKey::Peer {
                segment,
                addr,
                prefix,
            } => self.peer.insert(
                PeerKey {
                    segment,
                    addr,
                    prefix,
                },
                c,
            ),
        };
    }

    pub(super) fn remove(&mut self, key: &EntryKey) {
        match *key {
            EntryKey::Local(k) => self.local.remove(&k),
            EntryKey::Peer {
                segment,
                addr,
                prefix,
            } => self.peer.remove(&PeerKey {
                segment,
                addr,
                prefix,
            }),
        };
    }

    pub(super) fn contains_key(&self, key: &EntryKey) -> bool {
        self.get(key).is_some()
    }

    /// Every entry (locals first, each table in no particular order).
    pub(super) fn iter(&self) -> impl Iterator<Item = (EntryKey, &Contribs)> {
        let locals = self.local.iter().map(|(k, c)| (EntryKey::Local(*k), c));
        let peers = self.peer.iter().map(|(p, c)| {
            let key = EntryKey::Peer {
                segment: p.segment,
                addr: p.addr,
                prefix: p.prefix,
            };
            (key, c)
        });
        locals.chain(peers)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = EntryKey> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Room for `n` more local entries.
    pub(super) fn reserve(&mut self, n: usize) {
        self.local.reserve(n);
    }

    /// (local identity entries, peer entries).
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.local.len(), self.peer.len())
    }
}

#[cfg(test)]
mod tests {
    use agent_common::kind;

    use super::*;

    fn sid(raw: u64) -> SourceId {
        SourceId::new(raw)
    }

    /// One contribution is stored without a vector; a second makes one,
    /// and dropping back to one goes back to no vector.
    #[test]
    fn contributions_go_from_one_to_many_and_back() {
        let mut c = Contribs::One((sid(1), 10));
        c.put(sid(1), 20);
        assert!(matches!(c, Contribs::One((s, 20)) if s == sid(1)));
        c.put(sid(2), 30);
        assert_eq!(c.as_slice(), &[(sid(1), 20), (sid(2), 30)]);
        assert_eq!(c.latest(), Some(30));
        assert!(c.drop_source(sid(2)));
        assert!(matches!(c, Contribs::One((s, 20)) if s == sid(1)));
        assert!(!c.drop_source(sid(1)));
    }

    /// The sizes the compact layout is for (a local slot is 32 bytes).
    #[test]
    fn a_local_slot_is_thirty_two_bytes() {
        assert_eq!(size_of::<Contribs>(), 16);
        assert_eq!(size_of::<(GrantKey, Contribs)>(), 32);
    }

    /// Local and peer keys go to their own tables and read back as the
    /// keys they were.
    #[test]
    fn keys_read_back_from_both_tables() {
        let local = EntryKey::Local(GrantKey {
            kind: kind::UID,
            segment: 1,
            id: 7,
        });
        let peer = EntryKey::Peer {
            segment: 1,
            addr: [9; 16],
            prefix: 120,
        };
        let mut e = Entries::default();
        e.insert(local, Contribs::One((sid(1), 5)));
        e.insert(peer, Contribs::One((sid(2), 6)));
        assert_eq!(e.counts(), (1, 1));
        assert_eq!(e.get(&peer).and_then(Contribs::latest), Some(6));
        let mut keys: Vec<EntryKey> = e.keys().collect();
        keys.sort();
        assert_eq!(keys, vec![local, peer]);
        e.remove(&peer);
        assert!(!e.contains_key(&peer) && e.contains_key(&local));
        assert_eq!(e.counts(), (1, 0));
    }
}
