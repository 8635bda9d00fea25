//! The cgroup cover the kernel's `cgroup_mkdir` tracepoint reads (see
//! `crate::cover`): for each `unit:` and `cgroup:` identity the agent
//! allows, standing or granted, the path its cgroup lives at and the
//! entries it holds there. Rewritten after every re-resolution, after any
//! change to a cgroup entry (a grant, a revoke) and on the heartbeat; the
//! entries the hook gives a new cgroup are the ones the agent writes
//! itself once it re-resolves that cgroup.
use agent_common::{kind, GrantKey, NEVER};
use tracing::warn;

use super::Agent;
use crate::{
    cover::CgroupCover,
    identity::Identity,
    ledger::{Change, EntryKey},
};

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
            for w in &seg.windowed {
                if let Some(expiry) = self.window_expiry(&seg.name, &w.identity.to_string()) {
                    add(&w.identity, id, expiry);
                }
            }
        }
        for g in self.grants.naming_cgroups() {
            if let Some(&id) = self.segment_ids.get(g.segment.as_str()) {
                add(&g.identity, id, g.expires_boot_ns);
            }
        }
        cover.retain(|path, _| self.resolver.hierarchy.coverable(path));
        cover
    }

    /// Writes [`Agent::cover`] to the kernel, then takes back what the
    /// hook may have given under the old cover and no one holds now: for
    /// each (path, segment) that left the cover, the entry of the cgroup
    /// now at that path unless the ledger holds it. (The cover is written
    /// first, so no cgroup made after this is given it; one made before is
    /// the one at the path, or gone with an id the kernel does not reuse.)
    /// A failure is logged: the cover only shortens the moment before the
    /// agent re-resolves a new cgroup, which happens either way.
    pub(crate) fn sync_cover(&mut self) {
        let cover = self.cover();
        if let Err(e) = self.kernel.set_cover(&cover) {
            warn!(error = %e, "writing the cgroup cover map failed; re-created cgroups are covered when the agent re-resolves them");
            return;
        }
        let before = std::mem::replace(&mut self.cover_written, cover);
        let mut takes = Vec::new();
        for (path, entries) in &before {
            let now: Vec<u32> = self
                .cover_written
                .get(path)
                .map(|e| e.iter().map(|(s, _)| *s).collect())
                .unwrap_or_default();
            let Ok(id) = self.resolver.hierarchy.id_of(path) else {
                continue;
            };
            for (segment, _) in entries {
                let key = EntryKey::Local(GrantKey {
                    kind: kind::CGROUP,
                    segment: *segment,
                    id,
                });
                if !now.contains(segment) && self.ledger.value(&key).is_none() {
                    takes.push(Change::Delete(key));
                }
            }
        }
        takes.dedup();
        if !takes.is_empty() {
            if let Err(e) = self.kernel.apply(&takes) {
                warn!(error = %e, "taking back entries the cgroup cover gave failed");
            }
        }
    }
}
