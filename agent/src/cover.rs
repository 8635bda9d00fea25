//! The cgroup cover: what the kernel's `cgroup_mkdir` tracepoint gives a
//! cgroup created at a known path (a restarted unit, a `cgroup:`
//! identity's directory made again) before `mkdir` returns, so that its
//! first processes are not refused in the moment before the agent
//! re-resolves it. The agent computes it (`agent/cover.rs`) from the
//! `unit:` and `cgroup:` identities it allows, the dataplane writes it
//! into `PC_CGROUP_COVER`.
//!
//! Owns the map's encoding: which paths fit a key, which entry lists fit a
//! value. A path that does not fit is left out: its re-creation is covered
//! when the agent re-resolves it, as without the hook.
use std::collections::BTreeMap;

use agent_common::{Cover, CoverEntry, CoverKey, COVER_ENTRIES, COVER_PATH_MAX};

/// Cgroup path (relative to the cgroup2 mount, with its leading `/`) →
/// (segment id, expiry in CLOCK_BOOTTIME ns) of each cgroup-kind entry an
/// identity resolved to that path holds.
pub(crate) type CgroupCover = BTreeMap<String, Vec<(u32, u64)>>;

/// The map key of `path`, or `None` when it is too long (or holds a NUL,
/// which no cgroup name can).
pub(crate) fn key(path: &str) -> Option<CoverKey> {
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() > COVER_PATH_MAX || bytes.contains(&0) {
        return None;
    }
    let mut key = CoverKey {
        path: [0; COVER_PATH_MAX + 1],
    };
    key.path[..bytes.len()].copy_from_slice(bytes);
    Some(key)
}

/// The map value of `entries` (one per segment, the latest expiry kept),
/// or `None` when there are none or more than a value holds.
pub(crate) fn value(entries: &[(u32, u64)]) -> Option<Cover> {
    let mut by_segment: BTreeMap<u32, u64> = BTreeMap::new();
    for &(segment, at) in entries {
        let e = by_segment.entry(segment).or_insert(at);
        *e = (*e).max(at);
    }
    if by_segment.is_empty() || by_segment.len() > COVER_ENTRIES {
        return None;
    }
    let mut cover = Cover {
        count: by_segment.len() as u32,
        _pad: 0,
        entries: [CoverEntry::default(); COVER_ENTRIES],
    };
    for (slot, (segment, at)) in cover.entries.iter_mut().zip(by_segment) {
        *slot = CoverEntry {
            segment,
            _pad: 0,
            at_boot_ns: at,
        };
    }
    Some(cover)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_path_zero_filled() {
        let k = key("/system.slice/db.service").unwrap();
        assert_eq!(&k.path[..24], b"/system.slice/db.service");
        assert!(k.path[24..].iter().all(|b| *b == 0));
    }

    #[test]
    fn paths_longer_than_a_key_are_left_out() {
        let long = format!("/{}", "a".repeat(COVER_PATH_MAX - 1));
        assert!(key(&long).is_some());
        assert!(key(&format!("{long}b")).is_none());
        assert!(key("").is_none());
        assert!(key("/a\0b").is_none());
    }

    #[test]
    fn values_keep_one_entry_per_segment_with_its_latest_expiry() {
        let v = value(&[(3, 10), (1, u64::MAX), (3, 20)]).unwrap();
        assert_eq!(v.count, 2);
        assert_eq!(
            (v.entries[0].segment, v.entries[0].at_boot_ns),
            (1, u64::MAX)
        );
        assert_eq!((v.entries[1].segment, v.entries[1].at_boot_ns), (3, 20));
        assert!(value(&[]).is_none());
        let many: Vec<(u32, u64)> = (1..=COVER_ENTRIES as u32 + 1).map(|s| (s, 5)).collect();
        assert!(value(&many).is_none());
        assert!(value(&many[..COVER_ENTRIES]).is_some());
    }
}
