//! A cgroup's level (0 = the hierarchy's root), for the kernel's
//! cgroup-level masks: the depth of its directory below the cgroup2 mount,
//! found by walking the hierarchy (ids are directory inode numbers) and
//! remembered; at most one walk per second, so a vanished cgroup does not
//! cost a walk per write (it counts as "level unknown": every bit set).
//!
//! The kernel's levels count from the root of the whole hierarchy; a
//! mount made in a cgroup namespace shows that namespace's root instead.
//! They agree only when the mount's root is the hierarchy's root (the root
//! cgroup's id is 1): otherwise every level is unknown (correct, and as
//! slow as before the masks).
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, Instant},
};

/// What a cgroup id's level is, when that can be told.
pub(crate) trait LevelOf: Send {
    fn level_of(&mut self, cgroup_id: u64) -> Option<u32>;
    /// The level a cgroup at `path` (relative to the cgroup2 mount, with
    /// its leading `/`) has or will have when it is made.
    fn level_of_path(&mut self, _path: &str) -> Option<u32> {
        None
    }
}

/// Fixed answers, for tests and for "never known".
impl LevelOf for HashMap<u64, u32> {
    fn level_of(&mut self, cgroup_id: u64) -> Option<u32> {
        self.get(&cgroup_id).copied()
    }
}

/// The id of a cgroup2 hierarchy's root cgroup.
const ROOT_CGROUP_ID: u64 = 1;
/// Most directories one walk visits.
const MAX_DIRS: usize = 100_000;
/// Least time between two walks.
const REWALK: Duration = Duration::from_secs(1);

/// Levels read from the cgroup2 hierarchy mounted at `mount`.
pub(crate) struct CgroupLevels {
    mount: Option<PathBuf>,
    known: HashMap<u64, u32>,
    walked: Option<Instant>,
}

impl CgroupLevels {
    /// Levels under `mount`, or none at all when the mount is not the
    /// hierarchy's root (its depths are not the kernel's levels).
    pub(crate) fn new(mount: PathBuf) -> Self {
        let root = fs::metadata(&mount).is_ok_and(|m| m.ino() == ROOT_CGROUP_ID);
        Self {
            mount: root.then_some(mount),
            known: HashMap::new(),
            walked: None,
        }
    }

    fn walk(&mut self) {
        let Some(mount) = &self.mount else { return };
        let mut stack = vec![(mount.clone(), 0u32)];
        let mut visited = 0;
        while let Some((dir, level)) = stack.pop() {
            visited += 1;
            if visited > MAX_DIRS {
                break;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            self.known.insert(meta.ino(), level);
            if level + 1 >= agent_common::CGROUP_LEVEL_BITS {
                continue;
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push((e.path(), level + 1));
                    }
                }
            }
        }
    }
}

impl LevelOf for CgroupLevels {
    fn level_of(&mut self, cgroup_id: u64) -> Option<u32> {
        if let Some(l) = self.known.get(&cgroup_id) {
            return Some(*l);
        }
        self.mount.as_ref()?;
        if self.walked.is_none_or(|t| t.elapsed() >= REWALK) {
            self.walked = Some(Instant::now());
            self.walk();
        }
        self.known.get(&cgroup_id).copied()
    }

    fn level_of_path(&mut self, path: &str) -> Option<u32> {
        self.mount.as_ref()?;
        u32::try_from(path.split('/').filter(|c| !c.is_empty()).count()).ok()
    }
}
