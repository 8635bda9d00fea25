//! Views: the agent's state as the control protocol's wire types.
//!
//! The only part of the core that builds `control` replies from domain
//! state (`list`, `status`, one grant); everything else returns domain
//! values or errors.
use super::*;

impl Agent {
    pub(super) fn ports_of(&self, segment: &str) -> Vec<String> {
        self.policy
            .segments
            .get(segment)
            .map(|s| s.ports.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    pub(super) fn view(&self, g: &Grant) -> GrantView {
        GrantView {
            id: g.id,
            segment: g.segment.clone(),
            identity: g.identity.to_string(),
            ports: self.ports_of(&g.segment),
            created_at: clock::rfc3339(
                SystemTime::UNIX_EPOCH + Duration::from_millis(g.created_unix_ms),
            ),
            expires_at: clock::rfc3339(clock::wall_of(g.expires_boot_ns)),
            remaining_secs: clock::remaining(g.expires_boot_ns).as_secs_f64().ceil() as u64,
            actor: g.actor.to_string(),
            reason: g.reason.clone(),
            request_id: g.request_id,
            suspended_until: self
                .suspended
                .get(&g.id)
                .map(|s| clock::rfc3339(clock::wall_of(s.until.min(g.expires_boot_ns)))),
        }
    }

    pub fn list(&self) -> Reply {
        let map = self.read_usage();
        let now = clock::boot_ns();
        let mut standing = Vec::new();
        for seg in self.policy.segments.values() {
            for identity in &seg.allow {
                let source = Source::Standing {
                    segment: seg.name.clone(),
                    identity: identity.to_string(),
                };
                let usage = (!matches!(identity, Identity::Peer(_)))
                    .then(|| Self::usage_view(&self.usage_of(&source, &map), now));
                standing.push(AllowView {
                    usage,
                    segment: seg.name.clone(),
                    identity: identity.to_string(),
                    ports: self.ports_of(&seg.name),
                    unresolved: self
                        .unresolved
                        .get(&(seg.name.clone(), identity.to_string()))
                        .cloned(),
                });
            }
        }
        let grants = self
            .grants
            .values()
            .chain(self.suspended.values().map(|s| &s.grant))
            .map(|g| self.view(g))
            .collect();
        let grant_usage = self
            .grants
            .values()
            .map(|g| {
                let t = self.usage_of(&Source::Grant(g.id), &map);
                crate::control::GrantUsageView {
                    grant_id: g.id,
                    usage: Self::usage_view(&t, now),
                }
            })
            .collect();
        let pending = self.pending_views();
        Reply::List(ListView {
            standing,
            grants,
            pending,
            grant_usage,
        })
    }

    pub fn status(&self) -> Reply {
        let segments = self
            .policy
            .segments
            .values()
            .map(|s| {
                let id = self.segment_ids[&s.name];
                let c = self.kernel.counters(id).unwrap_or_default();
                SegmentStatus {
                    name: s.name.clone(),
                    id,
                    ports: self.ports_of(&s.name),
                    allowed: c.allowed,
                    denied: c.denied,
                }
            })
            .collect();
        let (grant_capacity, peer_capacity) = self.kernel.capacity();
        let (programs, enforcement) = self.enforcement_view();
        Reply::Status(Box::new(StatusView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cgroup: self.kernel.cgroup().display().to_string(),
            pin_dir: self.kernel.pin_dir().display().to_string(),
            // What the kernel has, not what the agent believes.
            programs,
            enforcement: Some(enforcement),
            policy_digest: self.policy.digest.clone(),
            policy_files: self
                .policy
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect(),
            segments,
            grants: self.grants.len(),
            grant_entries: self.ledger.len(),
            grant_capacity,
            peer_capacity,
            local_addresses: self.local_addresses,
            last_reload: self.last_reload.clone(),
            audit_log: self.audit.path().display().to_string(),
            audit_failing: self.audit.failing().map(str::to_string),
            deny_log: self.metrics.denies.as_ref().map(|d| d.view()),
        }))
    }
}
