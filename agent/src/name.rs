//! Interned strings: the few texts a million grants repeat (segment names,
//! boot ids, actor names, reasons) held once each, with a grant keeping an
//! 8-byte [`Name`] to the shared copy instead of its own heap string.
//!
//! One process-wide pool, behind a mutex: [`Name::new`] hands out the
//! pool's copy of equal text, so equal names share one allocation whoever
//! made them (the control socket, the journal's decoder, serde). Texts no
//! one holds any more are dropped from the pool in a sweep that runs when
//! the pool has doubled since the last one, so a pool of unique reasons
//! never holds more than about twice the live ones.
//!
//! A `Name` reads as a `&str` (`Deref`), compares, hashes, orders and
//! serializes as its text: to its holders it is an immutable string.
use std::{
    borrow::Borrow,
    collections::HashSet,
    fmt,
    hash::{Hash, Hasher},
    ops::Deref,
    sync::{Arc, LazyLock, Mutex},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable, interned string: one pointer wide (the text sits behind
/// the shared allocation; reads are rare next to holding).
#[derive(Clone)]
pub(crate) struct Name(Arc<Box<str>>);

/// The pool, and its size after the last sweep.
struct Pool {
    names: HashSet<Name>,
    swept_at: usize,
}

/// Below this many names the pool is never swept.
const SWEEP_FLOOR: usize = 1024;

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| {
    Mutex::new(Pool {
        names: HashSet::new(),
        swept_at: 0,
    })
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock leaves a set of valid names.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

impl Name {
    /// The pool's copy of `text` (made and pooled if new).
    pub(crate) fn new(text: &str) -> Self {
        let mut pool = pool();
        if let Some(n) = pool.names.get(text) {
            return n.clone();
        }
        Self::pool_new(&mut pool, Box::from(text))
    }

    fn pool_new(pool: &mut Pool, text: Box<str>) -> Self {
        if pool.names.len() >= (2 * pool.swept_at).max(SWEEP_FLOOR) {
            // Only the pool holds these: no one can ask for them by pointer.
            pool.names.retain(|n| Arc::strong_count(&n.0) > 1);
            pool.swept_at = pool.names.len();
        }
        let n = Name(Arc::new(text));
        pool.names.insert(n.clone());
        n
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` and `other` are the same pooled copy.
    #[cfg(test)]
    pub(crate) fn shares(&self, other: &Name) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Names the pool holds now (live or awaiting a sweep).
#[cfg(test)]
pub(crate) fn pooled() -> usize {
    pool().names.len()
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        let mut pool = pool();
        if let Some(n) = pool.names.get(s.as_str()) {
            return n.clone();
        }
        Self::pool_new(&mut pool, s.into_boxed_str())
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name::new(s)
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Name::new(s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.as_str().to_string()
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that `Borrow<str>` lookups find it.
        self.as_str().hash(state)
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Name::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of making a name of the same text gives the one pooled
    /// copy, and it reads, compares and serializes as the text.
    #[test]
    fn equal_texts_share_one_copy() {
        let a = Name::from("name-test-db".to_string());
        let b = Name::new("name-test-db");
        let c: Name = serde_json::from_str("\"name-test-db\"").unwrap();
        let d = Name::from("name-test-db");
        assert!(a.shares(&b) && a.shares(&c) && a.shares(&d));
        assert!(!a.shares(&Name::new("name-test-web")));
        assert_eq!(a, "name-test-db");
        assert_eq!(&*a, "name-test-db");
        assert_eq!(format!("{a} {a:?}"), "name-test-db \"name-test-db\"");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"name-test-db\"");
        assert_eq!(size_of::<Name>(), 8);
        assert_eq!(size_of::<Option<Name>>(), 8);
    }

    /// Texts nobody holds leave the pool at a sweep; held ones stay the
    /// same copy through it.
    #[test]
    fn unheld_texts_are_swept() {
        let kept = Name::new("name-test-kept");
        for i in 0..4 * SWEEP_FLOOR {
            drop(Name::from(format!("name-test-unique-{i}")));
        }
        // Sweeps ran on the way: the pool never held all of them at once.
        assert!(pooled() < 3 * SWEEP_FLOOR, "{}", pooled());
        assert!(kept.shares(&Name::new("name-test-kept")));
    }
}
