//! The agent's core: its state and start, with one submodule per use case.
//!
//! Owns the policy in force, the grants, the segment ids, and the ledger of
//! what each source opened. Every change goes the same way: decide, audit,
//! update the ledger, apply its changes to the kernel (through the
//! [`KernelMaps`] seam), save state. The runtime (`server`) owns sockets,
//! timers and signals and calls in here; it and the metrics see the agent
//! only through methods, never its fields.
//!
//! Layout: `apply` (policy application), `grants` (make, revoke, expire;
//! `book` is the expiry index), `jit` (requests), `authz` (who may do
//! what), `views` (domain → `control` wire types), `recovery` (grants from
//! the maps), `enforce` (the kernel check and uninstall).
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use agent_common::{Proto, NEVER};
use tracing::{info, warn};

use crate::{
    audit::{AuditEvent, AuditLog},
    clock,
    control::{
        AllowView, GrantView, ListView, PeerCred, Refusal, RefusalCode, ReloadView, Reply,
        SegmentStatus, StatusView,
    },
    identity::{Identity, Protocol},
    kernel::KernelMaps,
    ledger::{Change, Ledger, Source},
    policy::{Policy, Segment},
    requests::{Now, RequestBook},
    resolve::Resolver,
    state::{self, Actor, Grant, Loaded, Saved},
};

/// Applying a policy as one transaction; grants of vanished segments.
mod apply;
/// Who may do what; approvers may not grant to themselves or to catch-alls.
mod authz;
/// The live grants, indexed by id and by deadline.
mod book;
/// What the kernel has attached, checked against what the agent expects.
mod enforce;
/// Typed refusals, mapped to `Refusal` at the edge.
mod errors;
/// Making, revoking and expiring grants.
mod grants;
/// Requests, approvals, denials and `explain` (the JIT workflow).
mod jit;
mod recovery;
/// What the kernel counted per allow and grant; idle timeouts.
mod usage;
/// Domain state → control wire types.
mod views;
pub use apply::DEFAULT_GRANT_GRACE;
pub use authz::credential_matches;
pub use enforce::{EnforcementView, RepairView};
pub use errors::CoreError;
pub use jit::DEFAULT_REQUEST_TTL;

/// Where the agent keeps what it must remember.
#[derive(Clone, Debug)]
pub struct Paths {
    pub state_dir: PathBuf,
}

pub struct Agent {
    policy: Policy,
    segment_ids: BTreeMap<String, u32>,
    grants: book::GrantBook,
    /// Grants whose segment left the policy: they open nothing, and are
    /// live again if the segment comes back within `grant_grace`.
    suspended: BTreeMap<u64, apply::Suspended>,
    grant_grace: Duration,
    /// Ids for grants and requests alike, so the two never collide.
    next_id: u64,
    /// Access requests: pending and recently decided.
    requests: RequestBook,
    /// How long a request stays pending without a decision.
    request_ttl: Duration,
    ledger: Ledger,
    /// Port → segment id as written to the kernel.
    ports: BTreeMap<(Proto, u16), u32>,
    /// Standing allows that do not resolve right now, with why.
    unresolved: BTreeMap<(String, String), String>,
    local_addresses: usize,
    last_reload: Option<ReloadView>,
    boot_id: String,
    paths: Paths,
    /// The kernel maps (and the links' check), behind the seam.
    kernel: Box<dyn KernelMaps>,
    resolver: Resolver,
    audit: AuditLog,
    /// Counters kept only for `status` and the metrics endpoint.
    metrics: crate::metrics::AgentMetrics,
    /// Repairs and failures of the kernel check (see `enforce`).
    enforcement: enforce::Enforcement,
}

fn proto_of(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

fn refuse(code: RefusalCode, msg: impl Into<String>) -> Refusal {
    Refusal::new(code, msg)
}

impl Agent {
    /// Takes over the kernel state left by a previous run (if any), restores
    /// saved grants that are still live, and applies `policy`.
    pub fn start(
        policy: Policy,
        kernel: Box<dyn KernelMaps>,
        resolver: Resolver,
        audit: AuditLog,
        paths: Paths,
        grant_grace: Duration,
    ) -> anyhow::Result<Self> {
        let ports: BTreeMap<(Proto, u16), u32> = kernel
            .read_ports()?
            .into_iter()
            .map(|(p, port, s)| ((p, port), s))
            .collect();
        let mut agent = Self {
            policy: Policy {
                segments: BTreeMap::new(),
                files: Vec::new(),
                digest: String::new(),
                allow_empty: false,
            },
            segment_ids: BTreeMap::new(),
            grants: book::GrantBook::default(),
            suspended: BTreeMap::new(),
            grant_grace: DEFAULT_GRANT_GRACE,
            next_id: 1,
            requests: RequestBook::new(),
            request_ttl: DEFAULT_REQUEST_TTL,
            ledger: Ledger::new(),
            ports,
            unresolved: BTreeMap::new(),
            local_addresses: 0,
            last_reload: None,
            boot_id: state::boot_id(),
            paths,
            kernel,
            resolver,
            audit,
            metrics: Default::default(),
            enforcement: Default::default(),
        };
        agent.grant_grace = grant_grace;
        // An empty policy over pins that protect ports would open them all:
        // a directory being redeployed, not an intent, unless it says so.
        if policy.segments.is_empty() && !agent.ports.is_empty() && !policy.allow_empty {
            anyhow::bail!(
                "the policy protects nothing, but the pinned maps protect {} port(s) from a previous run; \
                 refusing to open them all. If that is intended, add `allow_empty = true` to a policy file \
                 (see docs/policy.md), or run `portcullis uninstall`",
                agent.ports.len()
            );
        }
        let mut restored = Vec::new();
        // Without a readable state file the kernel maps are the record of
        // what is live (see `recovery`).
        let mut recovering = true;
        match state::load(&agent.paths.state_dir)? {
            Loaded::Fresh => {}
            Loaded::Ok(saved) => {
                recovering = false;
                agent.next_id = saved.next_id.max(1);
                agent.segment_ids = saved.segment_ids;
                restored = saved.grants;
                agent.requests =
                    RequestBook::restore(saved.requests, &agent.boot_id, Now::current());
            }
            Loaded::Corrupt { why, moved_to } => {
                warn!(%why, moved_to = %moved_to.display(), "state file unreadable; set aside, starting from the kernel maps and policy");
                let _ = agent.audit.record(AuditEvent::StateCorrupt {
                    why,
                    moved_to: moved_to.display().to_string(),
                });
            }
        }
        // The previous run's entries: known to the kernel, not (yet) to this
        // ledger. Everything the new ledger does not claim is deleted once the
        // policy and grants are applied, never before.
        let kernel_before = agent.kernel.read_grants()?;
        let peers_before = agent.kernel.read_peers()?;

        if recovering {
            agent.adopt_segment_ids(&policy);
        }
        agent.apply_policy(policy)?;
        let now = clock::boot_ns();
        for g in restored {
            let deadline = g.deadline(&agent.boot_id);
            if deadline <= now {
                continue;
            }
            if !agent.policy.segments.contains_key(&g.segment) {
                // Suspended before the restart, or its segment left while
                // the agent was down: kept for the grace, opens nothing.
                let id = g.id;
                agent.suspend(
                    Grant {
                        expires_boot_ns: deadline,
                        boot_id: agent.boot_id.clone(),
                        ..g
                    },
                    "segment not in the policy at start",
                );
                agent.next_id = agent.next_id.max(id + 1);
                continue;
            }
            let id = g.id;
            let Some(&seg) = agent.segment_ids.get(&g.segment) else {
                continue;
            };
            match agent.resolver.keys(&g.identity, seg) {
                Ok(keys) => {
                    let changes = agent.ledger.set(Source::Grant(id), &keys, deadline);
                    agent.apply_changes(&changes)?;
                }
                Err(e) => {
                    warn!(grant = id, error = %e, "restored grant does not resolve now; kept, retried later")
                }
            }
            agent.grants.insert(
                id,
                Grant {
                    expires_boot_ns: deadline,
                    boot_id: agent.boot_id.clone(),
                    ..g
                },
            );
            agent.next_id = agent.next_id.max(id + 1);
        }
        if recovering {
            agent.recover_grants(&kernel_before, &peers_before)?;
        }
        // Sweep what no source claims any more.
        let mut stale = Vec::new();
        for &(key, _) in &kernel_before {
            let k = crate::ledger::EntryKey::Local(key);
            if agent.ledger.value(&k).is_none() {
                stale.push(Change::Delete(k));
            }
        }
        for p in peers_before {
            let k = crate::ledger::EntryKey::Peer {
                segment: p.segment,
                addr: p.addr,
                prefix: p.prefix,
            };
            if agent.ledger.value(&k).is_none() {
                stale.push(Change::Delete(k));
            }
        }
        agent.apply_changes(&stale)?;
        agent.save();
        Ok(agent)
    }

    fn apply_changes(
        &mut self,
        changes: &[Change],
    ) -> Result<(), crate::dataplane::DataplaneError> {
        self.kernel.apply(changes)
    }

    fn save(&self) {
        let saved = Saved {
            format: 0,
            next_id: self.next_id,
            segment_ids: self.segment_ids.clone(),
            grants: self
                .grants
                .values()
                .chain(self.suspended.values().map(|s| &s.grant))
                .cloned()
                .collect(),
            requests: self.requests.saved(),
        };
        if let Err(e) = state::save(&self.paths.state_dir, &saved) {
            warn!(error = %e, "could not save state; grants stay enforced in the kernel");
        }
    }

    /// Records a reload attempt's outcome for `status` and the audit log:
    /// the new digest, or the errors. `trigger` is what asked for it.
    pub fn note_reload(&mut self, outcome: Result<String, Vec<String>>, trigger: &str) {
        let ok = outcome.is_ok();
        if ok {
            self.metrics.reloads_ok += 1;
        } else {
            self.metrics.reloads_failed += 1;
        }
        let (digest, errors) = match outcome {
            Ok(digest) => (Some(digest), None),
            Err(errors) => (None, Some(errors)),
        };
        self.last_reload = Some(ReloadView {
            at: clock::rfc3339(SystemTime::now()),
            ok,
            errors: errors.clone().unwrap_or_default(),
        });
        let _ = self.audit.record(AuditEvent::PolicyReload {
            ok,
            digest,
            errors,
            trigger: Some(trigger.to_string()),
            actor: Some(Actor::agent()),
        });
    }

    /// Audits the start of enforcement (after `attach`).
    pub fn note_start(&mut self, cgroup: &std::path::Path) {
        let _ = self.audit.record(AuditEvent::AgentStart {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cgroup: cgroup.display().to_string(),
            policy_digest: self.policy.digest.clone(),
            pid: std::process::id(),
        });
    }

    /// Audits the agent stopping (enforcement stays pinned).
    pub fn note_stop(&mut self) {
        let _ = self.audit.record(AuditEvent::AgentStop {
            pid: std::process::id(),
        });
    }

    /// Segment id → name, for naming the segments in kernel deny events.
    pub fn segment_names(&self) -> std::collections::HashMap<u32, String> {
        self.segment_ids
            .iter()
            .map(|(name, id)| (*id, name.clone()))
            .collect()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The outcome of the last reload, if there was one.
    pub fn last_reload(&self) -> Option<&ReloadView> {
        self.last_reload.as_ref()
    }

    /// Makes the kernel's local-prefix map hold exactly `nets`.
    pub fn set_local_addrs(
        &mut self,
        nets: &std::collections::BTreeSet<crate::hostaddrs::LocalNet>,
    ) -> Result<(), crate::dataplane::DataplaneError> {
        self.kernel.set_local_addrs(nets)?;
        self.local_addresses = nets.len();
        Ok(())
    }

    /// Attaches the programs once the maps hold the policy, the grants and
    /// this host's addresses; returns where XDP went.
    pub fn attach(
        &mut self,
    ) -> Result<Vec<crate::dataplane::XdpAttachment>, crate::dataplane::DataplaneError> {
        self.kernel.attach()
    }

    /// Whether XDP enforces remote peers (the sweep then judges every flow).
    pub fn has_xdp(&self) -> bool {
        self.kernel.has_xdp()
    }

    /// The maps' read side, for the sweep's judgement.
    pub fn kernel(&self) -> &dyn KernelMaps {
        &*self.kernel
    }

    pub fn pin_dir(&self) -> &std::path::Path {
        self.kernel.pin_dir()
    }

    /// Counters kept for `status` and the metrics endpoint.
    pub fn metrics(&self) -> &crate::metrics::AgentMetrics {
        &self.metrics
    }

    /// Where the deny log's counters live, once its reader runs.
    pub fn set_deny_stats(&mut self, stats: std::sync::Arc<crate::denylog::DenyStats>) {
        self.metrics.denies = Some(stats);
    }

    /// Repairs and failures of the kernel check so far.
    pub fn enforcement(&self) -> &enforce::Enforcement {
        &self.enforcement
    }

    /// Whether `uninstall` went through this agent.
    pub fn uninstalled(&self) -> bool {
        self.enforcement.uninstalled
    }

    /// The audit log's health: write failures, why it fails now, backlog.
    pub fn audit_health(&self) -> (u64, Option<&str>, usize) {
        (
            self.audit.write_failures(),
            self.audit.failing(),
            self.audit.backlog(),
        )
    }

    /// Writes audit records queued while the log could not be written.
    pub fn retry_audit(&mut self) {
        self.audit.retry();
    }

    /// Entries in the local grant map and in the peer maps, as the kernel has them.
    pub fn map_entries(
        &self,
    ) -> (
        Result<usize, crate::dataplane::DataplaneError>,
        Result<usize, crate::dataplane::DataplaneError>,
    ) {
        (
            self.kernel.read_grants().map(|g| g.len()),
            self.kernel.read_peers().map(|p| p.len()),
        )
    }
}

#[cfg(test)]
mod tests;
