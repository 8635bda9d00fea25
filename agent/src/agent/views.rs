//! Views: the agent's state as the control protocol's wire types.
//!
//! The only part of the core that builds `control` replies from domain
//! state (`list`, `status`, one grant); everything else returns domain
//! values or errors.
use super::*;
use crate::control::{PeerFilterView, Record, UsageView};

/// Where a paged `list` goes on: at which standing allow, grant or request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ListCursor {
    Start,
    /// Allow number `next` of `segment` (segments in name order).
    Standing {
        segment: String,
        next: usize,
    },
    /// The grant with the least id at or above `next_id`.
    Grant {
        next_id: u64,
    },
    /// The pending request with the least id at or above `next_id`.
    Pending {
        next_id: u64,
    },
}

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
            segment: g.segment.to_string(),
            identity: g.identity.to_string(),
            ports: self.ports_of(&g.segment),
            created_at: clock::rfc3339(
                SystemTime::UNIX_EPOCH + Duration::from_millis(g.created_unix_ms),
            ),
            expires_at: clock::rfc3339(clock::wall_of(g.expires_boot_ns)),
            remaining_secs: clock::remaining(g.expires_boot_ns).as_secs_f64().ceil() as u64,
            actor: g.actor.to_string(),
            reason: g.reason.clone().map(String::from),
            request_id: g.request_id,
            suspended_until: self
                .suspended
                .get(&g.id)
                .map(|s| clock::rfc3339(clock::wall_of(s.until.min(g.expires_boot_ns)))),
            usage: None,
        }
    }

    /// A grant as `list` shows it: with what the kernel counted for it.
    fn listed(&self, g: &Grant, now: u64) -> GrantView {
        GrantView {
            usage: Some(Box::new(self.usage_view(&Source::Grant(g.id), now))),
            ..self.view(g)
        }
    }

    /// What `list` shows of an allow's use (`peer:` allows are not counted).
    fn allow_usage(&self, segment: &str, identity: &Identity, now: u64) -> Option<UsageView> {
        let source = Source::Standing {
            segment: segment.to_owned(),
            identity: identity.to_string(),
        };
        (!matches!(identity, Identity::Peer(_))).then(|| self.usage_view(&source, now))
    }

    /// The mode a segment is in: the agent-wide override, else its own.
    pub(super) fn mode_of(&self, segment: &Segment) -> Mode {
        self.mode_override.unwrap_or(segment.mode)
    }

    /// Allow number `n` of `seg` as `list` shows it: its plain allows,
    /// then its windowed ones.
    fn allow_view(&self, seg: &Segment, n: usize, now: u64) -> Option<AllowView> {
        let (identity, window) = match seg.allow.get(n) {
            Some(identity) => (identity, None),
            None => {
                let w = seg.windowed.get(n - seg.allow.len())?;
                (&w.identity, Some(self.window_view(&seg.name, w)))
            }
        };
        let text = identity.to_string();
        Some(AllowView {
            usage: self.allow_usage(&seg.name, identity, now),
            segment: seg.name.clone(),
            ports: self.ports_of(&seg.name),
            mode: self.mode_of(seg).name().to_owned(),
            unresolved: self
                .unresolved
                .get(&(seg.name.clone(), text.clone()))
                .cloned(),
            identity: text,
            window,
        })
    }

    pub(crate) fn list(&self) -> Reply {
        let now = clock::boot_ns();
        let mut standing = Vec::new();
        for seg in self.policy.segments.values() {
            standing.extend((0..).map_while(|n| self.allow_view(seg, n, now)));
        }
        let grants = self
            .grants
            .values()
            .chain(self.suspended.values().map(|s| &s.grant))
            .map(|g| self.listed(g, now))
            .collect();
        let pending = self.pending_views();
        Reply::List(ListView {
            standing,
            grants,
            pending,
            locks: self.lock_views(),
        })
    }

    /// One page of `list`, from `at` on: records until their weight
    /// reaches `budget` (at least one), and where the next page starts
    /// (`None` after the last). Pages are taken under the agent's lock one
    /// at a time, so a long list never holds it while a client reads;
    /// each page is consistent, the whole list is not a snapshot (a grant
    /// made or revoked between pages may or may not be in it).
    pub(crate) fn list_page(
        &self,
        at: &ListCursor,
        budget: usize,
    ) -> (Vec<Record>, Option<ListCursor>) {
        let now = clock::boot_ns();
        let mut page = Vec::new();
        let mut weight = 0;
        // Adds `record` unless the page is full; then returns where to go on.
        let mut add = |record: Record, here: ListCursor| -> Option<ListCursor> {
            if weight >= budget && !page.is_empty() {
                return Some(here);
            }
            weight += record.weight();
            page.push(record);
            None
        };
        if let ListCursor::Start | ListCursor::Standing { .. } = at {
            let (from, skip) = match at {
                ListCursor::Standing { segment, next } => (segment.as_str(), *next),
                _ => ("", 0),
            };
            let segments = self
                .policy
                .segments
                .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded));
            for seg in segments.map(|(_, s)| s) {
                // A segment gone since the last page: the next one starts at 0.
                let first = if seg.name == from { skip } else { 0 };
                for next in first.. {
                    let Some(view) = self.allow_view(seg, next, now) else {
                        break;
                    };
                    let record = Record::Standing(view);
                    let here = ListCursor::Standing {
                        segment: seg.name.clone(),
                        next,
                    };
                    if let Some(stop) = add(record, here) {
                        return (page, Some(stop));
                    }
                }
            }
        }
        if let ListCursor::Start | ListCursor::Standing { .. } | ListCursor::Grant { .. } = at {
            let first = match at {
                ListCursor::Grant { next_id } => *next_id,
                _ => 0,
            };
            // Live and suspended grants have distinct ids: merged in id order.
            let mut live = self.grants.starting_at(first).peekable();
            let mut suspended = self
                .suspended
                .range(first..)
                .map(|(_, s)| &s.grant)
                .peekable();
            loop {
                let g = match (live.peek(), suspended.peek()) {
                    (Some(l), Some(s)) if l.id < s.id => live.next(),
                    (Some(_), None) => live.next(),
                    (_, Some(_)) => suspended.next(),
                    (None, None) => break,
                };
                let g = g.expect("peeked");
                if let Some(stop) = add(
                    Record::Grant(self.listed(g, now)),
                    ListCursor::Grant { next_id: g.id },
                ) {
                    return (page, Some(stop));
                }
            }
        }
        let first = match at {
            ListCursor::Pending { next_id } => *next_id,
            _ => 0,
        };
        for r in self.requests.pending().filter(|r| r.id >= first) {
            let here = ListCursor::Pending { next_id: r.id };
            if let Some(stop) = add(Record::Pending(self.request_view(r)), here) {
                return (page, Some(stop));
            }
        }
        // Locks last, all on the last page (at most `locks::MAX_LOCKS`).
        page.extend(self.locks.values().map(|l| Record::Lock(self.lock_view(l))));
        (page, None)
    }

    pub(crate) fn status(&self) -> Reply {
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
                    would_deny: c.would_deny,
                    mode: self.mode_of(s).name().to_owned(),
                    description: s.description.clone(),
                    standing: s.allow.len() + s.windowed.len(),
                    grants: self.grants.values().filter(|g| g.segment == s.name).count(),
                }
            })
            .collect();
        let (grant_capacity, peer_capacity) = self.kernel.capacity();
        let (programs, enforcement) = self.enforcement_view();
        Reply::Status(Box::new(StatusView {
            locks: self.lock_views(),
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
            journal: self.journal.path().display().to_string(),
            journal_failing: self.journal.failing().map(str::to_string),
            deny_log: self.metrics.denies.as_ref().map(|d| d.view()),
            warnings: self.status_warnings(),
            peer_filters: self
                .kernel
                .peer_filters()
                .into_iter()
                .map(|f| PeerFilterView {
                    iface: f.iface,
                    mode: f.mode.name().to_string(),
                })
                .collect(),
        }))
    }

    /// What `status` warns about: coverage that is narrower than a reader
    /// may assume.
    fn status_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let cgroup = self.kernel.cgroup();
        if cgroup != self.resolver.hierarchy.mount.as_path() {
            out.push(format!(
                "attached to {}, not the cgroup2 root: processes outside it are not covered, neither as clients nor as servers for other hosts' packets",
                cgroup.display()
            ));
        }
        if let Some(addr) = self.metrics_addr {
            let on = self.policy.segments.values().find(|s| {
                s.ports
                    .iter()
                    .any(|r| r.contains(addr.port(), Protocol::Tcp))
            });
            if let Some(s) = on {
                out.push(format!(
                    "the metrics endpoint {addr} is on port {}/tcp of segment {}: scrapers need an allow or a grant there",
                    addr.port(),
                    s.name
                ));
            }
        }
        out
    }

    /// What the metrics show of the agent, without the kernel's counters
    /// (read at each scrape) or the deny log's (its own): O(segments).
    pub(super) fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        use crate::metrics::{SegmentCounts, Snapshot};
        let (grant_entries, peer_entries) = self.ledger.counts();
        let (grant_capacity, peer_capacity) = self.kernel.capacity();
        Snapshot {
            segments: self
                .policy
                .segments
                .values()
                .map(|s| SegmentCounts {
                    name: s.name.clone(),
                    id: self.segment_ids[&s.name],
                    ..SegmentCounts::default()
                })
                .collect(),
            grants_live: self.grants.len() as u64,
            requests_pending: self.requests.pending().count() as u64,
            grant_entries: Some(grant_entries as u64),
            peer_entries: Some(peer_entries as u64),
            grant_capacity: u64::from(grant_capacity),
            peer_capacity: u64::from(peer_capacity),
            reloads_ok: self.metrics.reloads_ok,
            reloads_failed: self.metrics.reloads_failed,
            enforcement_repairs: self.enforcement.repairs,
            enforcement_repair_failures: self.enforcement.repair_failures,
            enforcing: self.enforcing(),
            audit_write_failures: self.audit.write_failures(),
            audit_writable: self.audit.failing().is_none(),
            audit_queued: self.audit_health().2 as u64,
            journal_writable: self.journal_health().0.is_none(),
            journal_queued: self.journal_health().1 as u64,
            denies: None,
            notify: self.audit.notify_stats(),
            revoke_latency: self.metrics.revoke_latency.clone(),
        }
    }
}
