//! The agent's core: its state and start, with one submodule per use case.
//!
//! Owns the policy in force, the grants, the segment ids, and the ledger of
//! what each source opened. Every change goes the same way: decide,
//! journal (the agent's memory, `crate::journal`), audit, update the
//! ledger, apply its changes to the kernel (through the [`KernelMaps`]
//! seam), reply. Ends of grants: journal, kernel, audit. The runtime (`server`) owns sockets,
//! timers and signals and calls in here; it and the metrics see the agent
//! only through methods, never its fields.
//!
//! Layout: `apply` (policy application), `grants` (make, revoke, expire;
//! `book` is the expiry index), `jit` (requests), `authz` (who may do
//! what), `views` (domain → `control` wire types), `restore` (start-up
//! from the journal, ends while down), `recovery` (grants from the maps),
//! `enforce` (the kernel check and uninstall).
use std::{
    collections::BTreeMap,
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
    journal::{Journal, Op},
    kernel::KernelMaps,
    ledger::{Change, EntryKey, Ledger, Source},
    policy::{Mode, Policy, Segment},
    requests::{Now, RequestBook},
    resolve::Resolver,
    state::{self, Actor, Grant},
};

/// Applying a policy as one transaction; grants of vanished segments.
mod apply;
/// Requests that need more than one approver.
mod approvals;
/// Who may do what; approvers may not grant to themselves or to catch-alls.
mod authz;
/// The live grants, indexed by id and by deadline.
mod book;
/// Break-glass: access at once without an approver, bounded and audited.
mod breakglass;
/// The cgroup cover for the kernel's `cgroup_mkdir` tracepoint.
mod cover;
/// `discover`: who may, and the join with the segments in force.
mod discovery;
/// What the kernel has attached, checked against what the agent expects.
mod enforce;
/// Typed refusals, mapped to `Refusal` at the edge.
mod errors;
/// `extend`: a live grant's later expiry, in place.
mod extend;
/// Filing a request: journal, then audit.
mod filing;
/// Fleet grants (fleet mode): applied and ended as grants with a fleet id.
mod fleet;
/// "Fresh until" for strict fleet grants: the agent's side.
mod freshness;
/// A grantee's `extend`: a request whose approval extends the grant.
mod grantee;
/// Making, revoking and expiring grants.
mod grants;
/// `group:` identities kept current as members come and go.
mod groups;
/// `request show`: a request's history from the book and the audit log.
mod history;
/// Requests, approvals, denials and `explain` (the JIT workflow).
mod jit;
/// Locks: an identity stopped everywhere until unlocked.
mod locks;
mod recovery;
/// Start-up from the journal: changes a crash left unaudited, grants that
/// ended while the agent was down.
mod restore;
/// What the kernel counted per allow and grant; idle timeouts.
mod usage;
/// Domain state → control wire types.
mod views;
/// Windowed standing allows: opened and closed on time, audited.
mod windowed;
pub(crate) use apply::DEFAULT_GRANT_GRACE;
pub(crate) use authz::credential_matches;
pub(crate) use fleet::{IncomingGrant, IncomingLock};
pub(crate) use jit::DEFAULT_REQUEST_TTL;
pub(crate) use views::ListCursor;

/// Where the agent keeps what it must remember.
pub(crate) struct Paths {
    /// The journal in the state directory, being opened on its own thread
    /// while the start reads the kernel maps.
    pub journal: crate::startup::JournalOpening,
}

pub(crate) struct Agent {
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
    /// Port → port entry (segment id and mode bit) as written to the kernel.
    ports: BTreeMap<(Proto, u16), u32>,
    /// The agent-wide mode (`--mode`), over each segment's own; `None`:
    /// each segment's.
    mode_override: Option<Mode>,
    /// Whether the hooks feed the discovery map.
    discovery_on: bool,
    /// Where the metrics endpoint listens (for `status`'s warning when it
    /// sits on a protected port).
    metrics_addr: Option<std::net::SocketAddr>,
    /// Standing allows that do not resolve right now, with why.
    unresolved: BTreeMap<(String, String), String>,
    /// The cgroup cover as last written to the kernel (see `cover`).
    cover_written: crate::cover::CgroupCover,
    /// Each source naming a `group:`: the group and the uids its keys
    /// were last written for (`groups`: what a refresh compares with).
    group_members: BTreeMap<Source, (String, std::collections::BTreeSet<u32>)>,
    /// Where each windowed standing allow stands (`windowed`).
    windows_state: BTreeMap<windowed::WindowKey, windowed::WindowState>,
    /// The boot-clock instant the next windowed allow opens or closes.
    window_deadline: Option<u64>,
    /// Locked identities, by text form (`locks`).
    locks: BTreeMap<String, state::Lock>,
    /// Who may lock and unlock besides root.
    lock_admins: Vec<Identity>,
    local_addresses: usize,
    last_reload: Option<ReloadView>,
    boot_id: crate::name::Name,
    /// What the agent remembers across restarts (written before each change).
    journal: Journal,
    /// The kernel maps (and the links' check), behind the seam.
    kernel: Box<dyn KernelMaps>,
    resolver: Resolver,
    audit: AuditLog,
    /// Counters kept only for `status` and the metrics endpoint.
    metrics: crate::metrics::AgentMetrics,
    /// Repairs and failures of the kernel check (see `enforce`).
    enforcement: enforce::Enforcement,
    /// What the metrics endpoint shows, replaced by [`Agent::publish`].
    board: std::sync::Arc<crate::metrics::Board>,
    /// "Fresh until" for strict fleet grants (`freshness`).
    freshness: freshness::Freshness,
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
    pub(crate) fn start(
        policy: Policy,
        kernel: Box<dyn KernelMaps>,
        resolver: Resolver,
        audit: AuditLog,
        paths: Paths,
        grant_grace: Duration,
        mode_override: Option<Mode>,
    ) -> anyhow::Result<Self> {
        // The kernel's side first, while the journal is read on its own
        // thread (`startup::JournalOpening`): nothing here writes a grant,
        // and nothing here needs the journal.
        //
        // Every write from here on keeps the kernel's policy epoch and
        // cgroup-level masks (see `kernel/fastpath.rs`).
        let levels = crate::kernel::CgroupLevels::new(resolver.hierarchy.mount.clone());
        let kernel: Box<dyn KernelMaps> =
            Box::new(crate::kernel::FastPath::new(kernel, Box::new(levels))?);
        let ports: BTreeMap<(Proto, u16), u32> = kernel
            .read_ports()?
            .into_iter()
            .map(|(p, port, s)| ((p, port), s))
            .collect();
        crate::startup::mark("read_ports");
        // The previous run's entries: known to the kernel, not (yet) to this
        // ledger. Everything the new ledger does not claim is deleted once the
        // policy and grants are applied, never before. Read before anything
        // is written (nothing until `apply_policy` writes to the maps).
        let mut kernel_before = kernel.read_grants()?;
        kernel_before.sort_unstable_by_key(|&(k, _)| k);
        let peers_before = kernel.read_peers()?;
        crate::startup::mark("read_kernel");
        let (journal, opened) = paths.journal.wait()?;
        crate::startup::mark("journal_wait");
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
            mode_override,
            discovery_on: true,
            metrics_addr: None,
            unresolved: BTreeMap::new(),
            cover_written: Default::default(),
            group_members: BTreeMap::new(),
            windows_state: BTreeMap::new(),
            window_deadline: None,
            locks: BTreeMap::new(),
            lock_admins: Vec::new(),
            local_addresses: 0,
            last_reload: None,
            boot_id: state::boot_id().into(),
            journal,
            kernel,
            resolver,
            audit,
            metrics: Default::default(),
            enforcement: Default::default(),
            board: Default::default(),
            freshness: Default::default(),
        };
        agent.freshness = freshness::Freshness::new(agent.kernel.fresh_until()?, clock::boot_ns());
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
        // Without a journal (or with a damaged one) the kernel maps are the
        // record of what is live (see `recovery`).
        let recovering = opened.fresh || opened.damaged.is_some();
        if let Some((why, moved_to)) = &opened.damaged {
            warn!(%why, moved_to = %moved_to.display(), "journal damaged; a copy is kept, live grants it lost are recovered from the kernel maps");
            let _ = agent.audit.record(AuditEvent::StateCorrupt {
                why: why.clone(),
                moved_to: moved_to.display().to_string(),
            });
        }
        let mut memory = opened.memory;
        agent.settle_owed(&mut memory, opened.last);
        agent.next_id = memory.next_id.max(1);
        if recovering {
            agent.next_id = agent.next_id.max(agent.max_audited_id() + 1);
        }
        agent.segment_ids = memory.segment_ids;
        agent.locks = std::mem::take(&mut memory.locks);
        agent.requests = RequestBook::restore(
            memory.requests.into_values().collect(),
            &agent.boot_id,
            Now::current(),
        );
        let ports_before = agent.ports.clone();
        crate::startup::mark("settle_requests");

        if recovering {
            agent.adopt_segment_ids(&policy);
        }
        agent.apply_policy(policy)?;
        crate::startup::mark("apply_policy");
        let claimed = agent.restore_grants(
            memory.grants.into_values().collect(),
            &restore::KernelBefore {
                locals: &kernel_before,
                peers: &peers_before,
                ports: &ports_before,
            },
        )?;
        crate::startup::mark("restore_grants");
        if recovering {
            agent.recover_grants(&kernel_before, &peers_before)?;
        }
        // Sweep what no source claims any more. An entry a restored grant
        // claimed is in the ledger (nothing since took a claim away): only
        // the others are looked up there.
        let mut stale = Vec::new();
        for (&(key, _), claimed) in kernel_before.iter().zip(claimed) {
            let k = EntryKey::Local(key);
            if !claimed && agent.ledger.value(&k).is_none() {
                stale.push(Change::Delete(k));
            }
        }
        for p in peers_before {
            let k = EntryKey::Peer {
                segment: p.segment,
                addr: p.addr,
                prefix: p.prefix,
            };
            if agent.ledger.value(&k).is_none() {
                stale.push(Change::Delete(k));
            }
        }
        agent.apply_changes(&stale)?;
        crate::startup::mark("stale_sweep");
        // What each group stands for now: the base later changes are
        // audited against.
        agent.refresh_groups()?;
        // Start from a fresh snapshot: the log holds only this run's changes.
        crate::startup::mark("groups");
        // A fresh snapshot only when the journal needs one: after an import
        // or a recovery (what is live came from elsewhere), or when the log
        // has grown past the compaction threshold. Otherwise the snapshot
        // and log on disk replay to this very state (what start changed was
        // appended to the log), and rewriting a million grants costs
        // seconds of start for nothing.
        if recovering || opened.migrated.is_some() || agent.journal.wants_compaction() {
            let memory = agent.memory();
            if let Err(e) = agent.journal.compact(&memory) {
                warn!(error = %e, "could not compact the journal at start; new grants are refused until it can be written");
            }
        }
        crate::startup::mark("compact");
        Ok(agent)
    }

    fn apply_changes(
        &mut self,
        changes: &[Change],
    ) -> Result<(), crate::dataplane::DataplaneError> {
        self.kernel.apply(changes)?;
        self.changed_cgroups(changes);
        Ok(())
    }

    /// After `changes` reached the kernel: a cgroup entry came or went (a
    /// grant, a revoke, a re-resolution): the cover follows at once, so a
    /// revoked grant's path stops being covered before the revoke is
    /// reported.
    fn changed_cgroups(&mut self, changes: &[Change]) {
        let cgroup_entry = |c: &Change| match c {
            Change::Put(EntryKey::Local(k), _) | Change::Delete(EntryKey::Local(k)) => {
                k.kind == agent_common::kind::CGROUP
            }
            _ => false,
        };
        if changes.iter().any(cgroup_entry) {
            self.sync_cover();
        }
    }

    /// Records a reload attempt's outcome for `status` and the audit log:
    /// the new digest, or the errors. `trigger` is what asked for it.
    pub(crate) fn note_reload(&mut self, outcome: Result<String, Vec<String>>, trigger: &str) {
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
    pub(crate) fn note_start(&mut self, cgroup: &std::path::Path) {
        let _ = self.audit.record(AuditEvent::AgentStart {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cgroup: cgroup.display().to_string(),
            policy_digest: self.policy.digest.clone(),
            pid: std::process::id(),
        });
    }

    /// Audits the agent stopping (enforcement stays pinned).
    pub(crate) fn note_stop(&mut self) {
        let _ = self.audit.record(AuditEvent::AgentStop {
            pid: std::process::id(),
        });
    }

    /// Segment id → name, for naming the segments in kernel deny events.
    pub(crate) fn segment_names(&self) -> std::collections::HashMap<u32, String> {
        self.segment_ids
            .iter()
            .map(|(name, id)| (*id, name.clone()))
            .collect()
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The outcome of the last reload, if there was one.
    pub(crate) fn last_reload(&self) -> Option<&ReloadView> {
        self.last_reload.as_ref()
    }

    /// Makes the kernel's local-prefix map hold exactly `nets`.
    pub(crate) fn set_local_addrs(
        &mut self,
        nets: &std::collections::BTreeSet<crate::hostaddrs::LocalNet>,
    ) -> Result<(), crate::dataplane::DataplaneError> {
        self.kernel.set_local_addrs(nets)?;
        self.local_addresses = nets.len();
        Ok(())
    }

    /// Attaches the programs once the maps hold the policy, the grants and
    /// this host's addresses; returns where the peer filter went.
    pub(crate) fn attach(
        &mut self,
    ) -> Result<Vec<crate::dataplane::PeerFilter>, crate::dataplane::DataplaneError> {
        self.kernel.attach()
    }

    /// Whether the peer filter (XDP or tc) enforces remote peers on some
    /// interface (the sweep then judges every flow).
    pub(crate) fn has_peer_filter(&self) -> bool {
        !self.kernel.peer_filters().is_empty()
    }

    /// The maps' read side, for the sweep's judgement.
    pub(crate) fn kernel(&self) -> &dyn KernelMaps {
        &*self.kernel
    }

    pub(crate) fn pin_dir(&self) -> &std::path::Path {
        self.kernel.pin_dir()
    }

    /// Where the deny log's counters live, once its reader runs.
    pub(crate) fn set_deny_stats(&mut self, stats: std::sync::Arc<crate::denylog::DenyStats>) {
        self.metrics.denies = Some(stats);
    }

    /// Whether `uninstall` went through this agent.
    pub(crate) fn uninstalled(&self) -> bool {
        self.enforcement.uninstalled
    }

    /// The board the metrics endpoint reads (see [`Agent::publish`]).
    pub(crate) fn board(&self) -> std::sync::Arc<crate::metrics::Board> {
        self.board.clone()
    }

    /// Puts what the metrics show of the agent now on its board, so that a
    /// scrape never takes the agent's lock: O(segments), no map walk. The
    /// server calls it after every request and every piece of main-loop
    /// work, with the lock still held.
    pub(crate) fn publish(&self) {
        self.board.publish(self.metrics_snapshot());
    }

    /// The audit log's health: write failures, why it fails now, backlog.
    pub(crate) fn audit_health(&self) -> (u64, Option<&str>, usize) {
        (
            self.audit.write_failures(),
            self.audit.failing(),
            self.audit.backlog(),
        )
    }

    /// Writes audit records and journal changes queued while they could
    /// not be written, and compacts the journal when its log has grown
    /// much larger than the live set (on the heartbeat: between
    /// operations, never between a change and its audit record).
    pub(crate) fn retry_audit(&mut self) {
        self.audit.retry();
        self.journal.retry();
        if self.journal.wants_compaction() {
            let memory = self.memory();
            if let Err(e) = self.journal.compact(&memory) {
                warn!(error = %e, "could not compact the journal");
            }
        }
    }

    /// The journal's health: why it cannot be written now, changes queued.
    pub(crate) fn journal_health(&self) -> (Option<&str>, usize) {
        (self.journal.failing(), self.journal.queued())
    }
}

#[cfg(test)]
mod tests;
