//! The fast path's bookkeeping over the fake maps: masks set before the
//! entries that need them and cleared only after the last one goes; the
//! epoch bumped after every write that can end an allow, and only then.
use std::collections::HashMap;

use agent_common::{kind, GrantKey, Proto};

use super::FastPath;
use crate::{
    kernel::{FakeKernel, KernelMaps, Write},
    ledger::{Change, EntryKey},
};

fn cgroup(segment: u32, id: u64) -> EntryKey {
    EntryKey::Local(GrantKey {
        kind: kind::CGROUP,
        segment,
        id,
    })
}

fn uid(segment: u32, id: u64) -> EntryKey {
    EntryKey::Local(GrantKey {
        kind: kind::UID,
        segment,
        id,
    })
}

/// cgroup 100 is at level 3, 101 at level 3, 200 at level 5; others unknown.
fn levels() -> Box<dyn super::LevelOf> {
    Box::new(HashMap::from([(100, 3), (101, 3), (200, 5)]))
}

fn fast(k: &FakeKernel) -> FastPath {
    FastPath::new(Box::new(k.clone()), levels()).expect("fast path over the fake")
}

/// Index in `writes` of the first write of `key`.
fn at(k: &FakeKernel, w: &Write) -> usize {
    k.maps()
        .writes
        .iter()
        .position(|x| x == w)
        .expect("the write happened")
}

#[test]
fn a_level_bit_is_set_before_its_entry_and_cleared_after_the_last_one() {
    let k = FakeKernel::default();
    let mut f = fast(&k);
    f.apply_adding(&[Change::Put(cgroup(7, 100), u64::MAX)])
        .unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), Some(&(1 << 3)));
    // The mask write came before the entry's.
    let put = at(&k, &Write::Put(cgroup(7, 100)));
    let (mask_at, _, _) = k.maps().level_writes[0];
    assert!(mask_at <= put, "mask written after its entry");
    // A second entry at the same level, and one at level 5.
    f.apply_adding(&[
        Change::Put(cgroup(7, 101), u64::MAX),
        Change::Put(cgroup(7, 200), u64::MAX),
    ])
    .unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), Some(&((1 << 3) | (1 << 5))));
    // One of two at level 3 gone: the bit stays.
    f.apply(&[Change::Delete(cgroup(7, 100))]).unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), Some(&((1 << 3) | (1 << 5))));
    // The last one gone: cleared, after the delete.
    f.apply(&[Change::Delete(cgroup(7, 101))]).unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), Some(&(1 << 5)));
    let del = at(&k, &Write::Delete(cgroup(7, 101)));
    let last = *k.maps().level_writes.last().unwrap();
    assert_eq!((last.1, last.2), (7, 1 << 5));
    assert!(last.0 > del, "mask narrowed before the delete");
    f.apply(&[Change::Delete(cgroup(7, 200))]).unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), None);
    // uid entries never touch the masks.
    let n = k.maps().level_writes.len();
    f.apply(&[Change::Put(uid(7, 1000), 5), Change::Delete(uid(7, 1000))])
        .unwrap();
    assert_eq!(k.maps().level_writes.len(), n);
}

#[test]
fn a_cgroup_of_unknown_level_sets_every_bit() {
    let k = FakeKernel::default();
    let mut f = fast(&k);
    f.apply_adding(&[Change::Put(cgroup(3, 999), u64::MAX)])
        .unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&3), Some(&u32::MAX));
    f.apply_adding(&[Change::Put(cgroup(3, 100), u64::MAX)])
        .unwrap();
    f.apply(&[Change::Delete(cgroup(3, 999))]).unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&3), Some(&(1 << 3)));
}

#[test]
fn the_epoch_moves_after_every_write_that_can_end_an_allow_and_only_then() {
    let k = FakeKernel::default();
    let mut f = fast(&k);
    let e0 = k.maps().epoch;
    assert!(e0 >= 1, "a new agent bumps the epoch");
    // Adding: no bump.
    f.apply_adding(&[Change::Put(uid(1, 1000), 10)]).unwrap();
    assert_eq!(k.maps().epoch, e0);
    // A delete: bumped, after the delete was written.
    f.apply(&[Change::Delete(uid(1, 1000))]).unwrap();
    assert_eq!(k.maps().epoch, e0 + 1);
    let del = at(&k, &Write::Delete(uid(1, 1000)));
    let (epoch_at, e) = *k.maps().epoch_writes.last().unwrap();
    assert_eq!(e, e0 + 1);
    assert!(epoch_at > del, "epoch written before the delete");
    // A delete passed as "adding" still bumps.
    f.apply_adding(&[Change::Delete(uid(1, 1001))]).unwrap();
    assert_eq!(k.maps().epoch, e0 + 2);
    // A put through `apply` may lower an expiry: bumped.
    f.apply(&[Change::Put(uid(1, 1000), 5)]).unwrap();
    assert_eq!(k.maps().epoch, e0 + 3);
    // A policy change with a port write: bumped, after the port.
    f.apply_atomic(&[], &[(Proto::Tcp, 5432, 0)]).unwrap();
    assert_eq!(k.maps().epoch, e0 + 4);
    assert_eq!(f.current_epoch(), e0 + 4);
}

#[test]
fn a_new_agent_takes_over_the_counts_and_moves_the_epoch_on() {
    let k = FakeKernel::default();
    {
        let mut m = k.maps();
        m.epoch = 41;
        // A stale mask for a segment with no cgroup entries left.
        m.cgroup_levels.insert(9, 1 << 4);
    }
    k.clone()
        .apply(&[Change::Put(cgroup(2, 200), u64::MAX)])
        .unwrap();
    let mut f = fast(&k);
    assert_eq!(k.maps().epoch, 42);
    assert_eq!(k.maps().cgroup_levels.get(&2), Some(&(1 << 5)));
    assert_eq!(k.maps().cgroup_levels.get(&9), None);
    // The taken-over entry counts: deleting it clears the bit.
    f.apply(&[Change::Delete(cgroup(2, 200))]).unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&2), None);
}

#[test]
fn a_failed_write_recounts_from_the_kernel_and_still_bumps() {
    // Room for one grant: the second put fails half-way through `apply`.
    let k = FakeKernel::with_capacity(1, 4);
    let mut f = fast(&k);
    let e0 = k.maps().epoch;
    let r = f.apply_adding(&[
        Change::Put(cgroup(4, 100), u64::MAX),
        Change::Put(cgroup(4, 200), u64::MAX),
    ]);
    assert!(r.is_err());
    // What landed (cgroup 100, level 3) is what the mask says.
    assert_eq!(k.maps().cgroup_levels.get(&4), Some(&(1 << 3)));
    assert_eq!(k.maps().epoch, e0 + 1);
}

/// Levels of ids as [`levels`], and of paths by their depth.
struct PathLevels;

impl super::LevelOf for PathLevels {
    fn level_of(&mut self, cgroup_id: u64) -> Option<u32> {
        levels().level_of(cgroup_id)
    }
    fn level_of_path(&mut self, path: &str) -> Option<u32> {
        Some(path.split('/').filter(|c| !c.is_empty()).count() as u32)
    }
}

#[test]
fn the_cgroup_cover_keeps_its_levels_in_the_mask_with_no_entry_there() {
    // The tracepoint writes a re-created cgroup's entry by itself: the
    // walk must look at that level although the agent counts no entry.
    let k = FakeKernel::default();
    let mut f = FastPath::new(Box::new(k.clone()), Box::new(PathLevels)).unwrap();
    let cover = crate::cover::CgroupCover::from([("/t/a/app".to_string(), vec![(7, u64::MAX)])]);
    f.set_cover(&cover).unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), Some(&(1 << 3)));
    assert_eq!(k.maps().cover, cover);
    // An entry elsewhere keeps the cover's bit; the cover leaving clears it.
    f.apply_adding(&[Change::Put(cgroup(7, 200), u64::MAX)])
        .unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), Some(&(1 << 3 | 1 << 5)));
    f.set_cover(&crate::cover::CgroupCover::new()).unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), Some(&(1 << 5)));
    // A path whose level cannot be told sets every bit.
    let mut g = fast(&k);
    g.set_cover(&cover).unwrap();
    assert_eq!(k.maps().cgroup_levels.get(&7), Some(&u32::MAX));
}

/// Strict entries (issue 19): marked flows cache the earlier of an entry's
/// deadline and "fresh until", so moving it back must make them decide
/// again (the epoch moves after the write); moving it forward need not.
#[test]
fn a_lowered_fresh_until_moves_the_epoch_after_it_and_a_raised_one_does_not() {
    let k = FakeKernel::default();
    let mut f = fast(&k);
    let start = f.current_epoch();
    f.set_fresh_until(1_000).unwrap();
    f.set_fresh_until(2_000).unwrap();
    assert_eq!(f.current_epoch(), start, "forward: no bump");
    f.set_fresh_until(1_500).unwrap();
    assert_eq!(f.current_epoch(), start + 1, "back: bump");
    let m = k.maps();
    assert_eq!(m.fresh_until, 1_500);
    let (epochs_before, _) = *m.fresh_writes.last().unwrap();
    assert_eq!(
        m.epoch_writes.len(),
        epochs_before + 1,
        "the epoch after the write"
    );
}
