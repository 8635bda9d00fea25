//! A set of disjoint port ranges, ordered, for overlap checks in
//! O(log n) per range (so a policy of n ranges is checked in O(n log n),
//! not by comparing every range with every earlier one).
//!
//! Owns nothing but the search: what an overlap means for the policy is
//! `schema`'s (within a segment) and `validate`'s (across segments).
use std::collections::BTreeMap;

use crate::identity::{PortRange, Protocol};

/// Disjoint ranges, each with what the caller wants to know about it
/// (where it was written, which segment).
#[derive(Debug)]
pub(super) struct RangeSet<T> {
    /// (protocol, first port) → (the range, its tag).
    by_start: BTreeMap<(Protocol, u16), (PortRange, T)>,
}

impl<T> Default for RangeSet<T> {
    fn default() -> Self {
        Self {
            by_start: BTreeMap::new(),
        }
    }
}

impl<T> RangeSet<T> {
    /// A range of the set that shares a port with `range`, if any. The
    /// ranges are disjoint, so of those starting at or before
    /// `range.last`, the last one also ends last: it overlaps `range`
    /// exactly when any of them does.
    pub(super) fn overlapping(&self, range: &PortRange) -> Option<(&PortRange, &T)> {
        let (_, (found, tag)) = self
            .by_start
            .range((range.proto, 0)..=(range.proto, range.last))
            .next_back()?;
        found.overlaps(range).then_some((found, tag))
    }

    /// Adds `range`, which must not overlap the set (callers check with
    /// [`Self::overlapping`] first); returns false and adds nothing if it does.
    pub(super) fn insert(&mut self, range: PortRange, tag: T) -> bool {
        if self.overlapping(&range).is_some() {
            return false;
        }
        self.by_start
            .insert((range.proto, range.first), (range, tag));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> PortRange {
        text.parse().unwrap()
    }

    /// The answer the quadratic check gave: does any range of `set` overlap?
    fn brute(set: &[PortRange], range: &PortRange) -> bool {
        set.iter().any(|s| s.overlaps(range))
    }

    #[test]
    fn finds_an_overlap_wherever_it_is() {
        let mut set = RangeSet::default();
        for (i, text) in ["10-19/tcp", "30/tcp", "40-49/tcp", "10-19/udp"]
            .iter()
            .enumerate()
        {
            assert!(set.insert(r(text), i));
        }
        assert_eq!(set.overlapping(&r("15/tcp")).map(|(_, t)| *t), Some(0));
        assert_eq!(set.overlapping(&r("1-10/tcp")).map(|(_, t)| *t), Some(0));
        assert_eq!(set.overlapping(&r("19-29/tcp")).map(|(_, t)| *t), Some(0));
        assert_eq!(set.overlapping(&r("20-35/tcp")).map(|(_, t)| *t), Some(1));
        assert_eq!(
            set.overlapping(&r("49-65535/tcp")).map(|(_, t)| *t),
            Some(2)
        );
        // A range that covers several reports one of them.
        assert!(set.overlapping(&r("1-65535/tcp")).is_some());
        assert!(set.overlapping(&r("20-29/tcp")).is_none());
        assert!(set.overlapping(&r("31-39/tcp")).is_none());
        assert!(set.overlapping(&r("50-65535/tcp")).is_none());
        assert!(set.overlapping(&r("30/udp")).is_none());
        assert_eq!(set.overlapping(&r("12/udp")).map(|(_, t)| *t), Some(3));
        assert!(
            !set.insert(r("45/tcp"), 9),
            "an overlapping range is not added"
        );
    }

    #[test]
    fn agrees_with_comparing_every_pair() {
        // A deterministic walk over many small ranges, checked against the
        // pairwise answer.
        let mut set = RangeSet::default();
        let mut kept = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..3000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let first = (x >> 8) % 2000 + 1;
            let len = (x >> 20) % 7;
            let proto = if x & 1 == 0 { "tcp" } else { "udp" };
            let range = if len == 0 {
                r(&format!("{first}/{proto}"))
            } else {
                r(&format!("{first}-{}/{proto}", first + len))
            };
            let expected = brute(&kept, &range);
            assert_eq!(set.overlapping(&range).is_some(), expected, "{range}");
            if !expected {
                assert!(set.insert(range, ()));
                kept.push(range);
            }
        }
        assert!(kept.len() > 100, "the walk kept {} ranges", kept.len());
    }
}
