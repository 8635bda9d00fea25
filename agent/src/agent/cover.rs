//! The cgroup cover the kernel's `cgroup_mkdir` tracepoint reads (see
//! `crate::cover`): for each `unit:` and `cgroup:` identity the agent
//! allows, standing or granted, the path its cgroup lives at and the
//! entries it holds there. Recomputed after every re-resolution and on the
//! heartbeat; the kernel entries it produces for a new cgroup are the ones
//! the agent writes itself once it re-resolves that cgroup.
use agent_common::NEVER;
use tracing::warn;

use super::Agent;
use crate::{cover::CgroupCover, identity::Identity};

impl Agent {
    /// The cover as the agent's state says it should be now. Only paths
    /// where no one but root can create a cgroup are in it
    /// (`Hierarchy::coverable`): a hit makes the new cgroup allowed.
    pub(crate) fn cover(&self) -> CgroupCover {
        let mut cover = CgroupCover::new();
        let mut add = |identity: &Identity, segment: u32, at: u64| {
            let path = match identity {
                Identity::Cgroup(path) => path.clone(),
                Identity::Unit(name) => match self.resolver.unit_path(name) {
                    Some(path) => path,
                    None => return,
                },
                _ => return,
            };
            cover.entry(path).or_default().push((segment, at));
        };
        for seg in self.policy.segments.values() {
            let Some(&id) = self.segment_ids.get(&seg.name) else {
                continue;
            };
            for identity in &seg.allow {
                add(identity, id, NEVER);
            }
        }
        for g in self.grants.values() {
            if let Some(&id) = self.segment_ids.get(&g.segment) {
                add(&g.identity, id, g.expires_boot_ns);
            }
        }
        cover.retain(|path, _| self.resolver.hierarchy.coverable(path));
        cover
    }

    /// Writes [`Agent::cover`] to the kernel. A failure is logged: the
    /// cover only shortens the moment before the agent re-resolves a new
    /// cgroup, which happens either way.
    pub(crate) fn sync_cover(&mut self) {
        let cover = self.cover();
        if let Err(e) = self.kernel.set_cover(&cover) {
            warn!(error = %e, "writing the cgroup cover map failed; re-created cgroups are covered when the agent re-resolves them");
        }
    }
}
