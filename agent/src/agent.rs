//! The agent's state and every operation on it: applying a policy, granting,
//! revoking, expiring, and answering `list` and `status`.
//!
//! Owns the policy in force, the grants, the segment ids, and the ledger of
//! what each source opened. Every change goes the same way: decide, audit,
//! update the ledger, apply its changes to the kernel, save state. The
//! runtime (`server`) owns sockets, timers and signals and calls in here.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use agent_common::{Proto, NEVER};
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use crate::{
    audit::AuditLog,
    clock,
    control::{
        AllowView, GrantView, ListView, PeerCred, Refusal, RefusalCode, ReloadView, Reply,
        SegmentStatus, StatusView,
    },
    dataplane::Dataplane,
    identity::{Identity, Protocol},
    ledger::{Change, Ledger, Source},
    policy::{Policy, Segment},
    requests::{Now, RequestBook},
    resolve::Resolver,
    state::{self, Actor, Grant, Loaded, Saved},
};

/// Applying a policy as one transaction; grants of vanished segments.
mod apply;
/// What the kernel has attached, checked against what the agent expects.
mod enforce;
/// Requests, approvals, denials and `explain` (the JIT workflow).
mod jit;
mod recovery;
/// Approvers may not grant to themselves or to catch-alls.
mod selfgrant;
pub use apply::DEFAULT_GRANT_GRACE;
pub use enforce::{EnforcementView, RepairView};
pub use jit::DEFAULT_REQUEST_TTL;

/// Where the agent keeps what it must remember.
#[derive(Clone, Debug)]
pub struct Paths {
    pub state_dir: PathBuf,
}

pub struct Agent {
    policy: Policy,
    segment_ids: BTreeMap<String, u32>,
    grants: BTreeMap<u64, Grant>,
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
    pub dataplane: Dataplane,
    pub resolver: Resolver,
    pub audit: AuditLog,
    /// Counters kept only for `status` and the metrics endpoint.
    pub metrics: crate::metrics::AgentMetrics,
    /// Repairs and failures of the kernel check (see `enforce`).
    pub enforcement: enforce::Enforcement,
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

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn actor_json(a: &Actor) -> Value {
    json!({"uid": a.uid, "user": a.user, "pid": a.pid})
}

impl Agent {
    /// Takes over the kernel state left by a previous run (if any), restores
    /// saved grants that are still live, and applies `policy`.
    pub fn start(
        policy: Policy,
        dataplane: Dataplane,
        resolver: Resolver,
        audit: AuditLog,
        paths: Paths,
        grant_grace: Duration,
    ) -> anyhow::Result<Self> {
        let ports: BTreeMap<(Proto, u16), u32> = dataplane
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
            grants: BTreeMap::new(),
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
            dataplane,
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
                let _ = agent.audit.record(
                    "state_corrupt",
                    obj(json!({"why": why, "moved_to": moved_to.display().to_string()})),
                );
            }
        }
        // The previous run's entries: known to the kernel, not (yet) to this
        // ledger. Everything the new ledger does not claim is deleted once the
        // policy and grants are applied, never before.
        let kernel_before = agent.dataplane.read_grants()?;
        let peers_before = agent.dataplane.read_peers()?;

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
        self.dataplane.apply(changes)
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

    /// Records a reload attempt's outcome for `status`.
    pub fn note_reload(&mut self, ok: bool, errors: Vec<String>) {
        if ok {
            self.metrics.reloads_ok += 1;
        } else {
            self.metrics.reloads_failed += 1;
        }
        self.last_reload = Some(ReloadView {
            at: clock::rfc3339(SystemTime::now()),
            ok,
            errors,
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

    pub fn set_local_address_count(&mut self, n: usize) {
        self.local_addresses = n;
    }

    fn segment(&self, name: &str) -> Result<&Segment, Refusal> {
        self.policy.segments.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.policy.segments.keys().map(String::as_str).collect();
            refuse(
                RefusalCode::NotFound,
                format!(
                    "unknown segment {name:?}; segments in force: {}",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    /// Whether `cred` may grant and revoke on `segment`: root, or an approver.
    fn may_administer(&self, cred: &PeerCred, segment: &Segment) -> bool {
        cred.uid == 0
            || segment
                .jit
                .as_ref()
                .is_some_and(|j| j.approvers.iter().any(|a| credential_matches(a, cred)))
    }

    pub fn grant(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        identity: &str,
        ttl: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<Reply, Refusal> {
        let result = self.grant_checked(cred, segment, identity, ttl, reason);
        self.audited(cred, "grant", segment, result)
    }

    fn grant_checked(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        identity: &str,
        ttl: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<Reply, Refusal> {
        let identity: Identity = identity
            .parse()
            .map_err(|e| refuse(RefusalCode::Invalid, format!("identity {identity:?}: {e}")))?;
        let seg = self.segment(segment)?.clone();
        if !self.may_administer(cred, &seg) {
            return Err(self.refused(
                cred,
                "grant",
                &seg.name,
                format!(
                    "uid {} may not grant on segment {}: only root and the segment's approvers may",
                    cred.uid, seg.name
                ),
            ));
        }
        if let Some(why) = selfgrant::refusal(&identity, cred, &self.resolver) {
            return Err(self.refused(
                cred,
                "grant",
                &seg.name,
                format!("uid {} may not grant {identity} on segment {}: {why}; approvers do not open segments to themselves or to everyone, only root may", cred.uid, seg.name),
            ));
        }
        let jit = jit_rules(&seg)?;
        let ttl = requested_ttl(jit, ttl)?;
        check_ttl(&seg, jit, ttl)?;
        let reason = check_reason(&seg, jit, reason)?;
        let grant = self.open_grant(cred, &seg, identity, ttl, reason, None)?;
        Ok(Reply::Granted {
            grant: self.view(&grant),
        })
    }

    /// Opens `seg` to `identity` for `ttl`: resolve, audit (first: a grant
    /// that cannot be recorded is not made), ledger, kernel, state. The one
    /// path by which access is granted; the caller has already authorized
    /// `cred` and checked the segment's rules.
    fn open_grant(
        &mut self,
        cred: &PeerCred,
        seg: &Segment,
        identity: Identity,
        ttl: Duration,
        reason: Option<String>,
        request_id: Option<u64>,
    ) -> Result<Grant, Refusal> {
        let seg_id = self.segment_ids[&seg.name];
        let keys = self
            .resolver
            .keys(&identity, seg_id)
            .map_err(|e| refuse(RefusalCode::Invalid, format!("{identity}: {e}")))?;
        let id = self.next_id;
        let actor = Actor::from_uid(cred.uid, cred.pid);
        let now_wall = SystemTime::now();
        let deadline = clock::deadline_after(ttl);
        let grant = Grant {
            id,
            segment: seg.name.clone(),
            identity: identity.clone(),
            created_unix_ms: state::unix_ms(now_wall),
            expires_unix_ms: state::unix_ms(now_wall + ttl),
            expires_boot_ns: deadline,
            boot_id: self.boot_id.clone(),
            actor: actor.clone(),
            reason,
            request_id,
        };
        // Audit first: a grant that cannot be recorded is not made.
        self.audit
            .record("grant", self.grant_fields(&grant, ttl))
            .map_err(|e| refuse(RefusalCode::Unavailable, format!("grant refused: the audit log cannot be written ({e}); revocations still work")))?;
        let changes = self.ledger.set(Source::Grant(id), &keys, deadline);
        if let Err(e) = self.dataplane.apply(&changes) {
            // Undo whatever part was written; nothing stays half-applied.
            let undo = self.ledger.remove(&Source::Grant(id));
            let _ = self.dataplane.apply(&undo);
            let _ = self.audit.record(
                "grant_failed",
                obj(
                    json!({"grant_id": id, "segment": seg.name, "identity": identity.to_string(),
                    "actor": actor_json(&actor), "request_id": request_id, "error": e.to_string()}),
                ),
            );
            return Err(refuse(
                RefusalCode::Unavailable,
                format!("grant refused: {e}"),
            ));
        }
        self.next_id += 1;
        self.grants.insert(id, grant.clone());
        self.save();
        info!(grant = id, segment = %seg.name, %identity, ttl = %clock::human(ttl), actor = %actor, "granted");
        Ok(grant)
    }

    fn grant_fields(&self, g: &Grant, ttl: Duration) -> Map<String, Value> {
        obj(json!({
            "grant_id": g.id,
            "segment": g.segment,
            "identity": g.identity.to_string(),
            "ports": self.ports_of(&g.segment),
            "ttl_secs": ttl.as_secs(),
            "expires_at": clock::rfc3339(clock::wall_of(g.expires_boot_ns)),
            "reason": g.reason,
            "actor": actor_json(&g.actor),
            "request_id": g.request_id,
        }))
    }

    /// Records a refused command and builds its refusal.
    pub(crate) fn refused(
        &mut self,
        cred: &PeerCred,
        op: &str,
        segment: &str,
        why: String,
    ) -> Refusal {
        let refusal = refuse(RefusalCode::Forbidden, why);
        self.note_refusal(cred, op, segment, &refusal);
        refusal
    }

    fn note_refusal(&mut self, cred: &PeerCred, op: &str, segment: &str, refusal: &Refusal) {
        let actor = Actor::from_uid(cred.uid, cred.pid);
        let _ = self.audit.record(
            "refused",
            obj(json!({
                "op": op, "segment": segment, "actor": actor_json(&actor),
                "why": refusal.message, "code": refusal.code,
            })),
        );
    }

    /// Audits the refusals of an operation that `refused` has not already
    /// recorded (it records the `Forbidden` ones where authorization fails),
    /// so that every refusal is audited exactly once.
    fn audited<T>(
        &mut self,
        cred: &PeerCred,
        op: &str,
        segment: &str,
        result: Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        if let Err(refusal) = &result {
            if refusal.code != RefusalCode::Forbidden {
                self.note_refusal(cred, op, segment, refusal);
            }
        }
        result
    }

    /// Revokes by id, by identity (optionally on one segment), or a whole segment.
    pub fn revoke(
        &mut self,
        cred: &PeerCred,
        id: Option<u64>,
        identity: Option<&str>,
        segment: Option<&str>,
    ) -> Result<(Reply, Vec<Grant>), Refusal> {
        // For the revocation-to-enforcement latency metric.
        let started = std::time::Instant::now();
        let identity: Option<Identity> = identity
            .map(|i| {
                i.parse()
                    .map_err(|e| refuse(RefusalCode::Invalid, format!("identity {i:?}: {e}")))
            })
            .transpose()?;
        if let Some(gid) = id.filter(|i| self.suspended.contains_key(i) && identity.is_none()) {
            return self.revoke_suspended(cred, gid);
        }
        if let (None, Some(i), None) = (id, &identity, segment) {
            // Suspended grants of that identity go too (root only: their
            // segment, and so its approvers, are not in the policy).
            if cred.uid == 0 {
                let ids: Vec<u64> = self
                    .suspended
                    .values()
                    .filter(|s| &s.grant.identity == i)
                    .map(|s| s.grant.id)
                    .collect();
                for gid in ids {
                    self.revoke_suspended(cred, gid)?;
                }
            }
        }
        if let Some(s) = segment {
            self.segment(s)?;
        }
        let selected: Vec<u64> = match (id, &identity, segment) {
            (Some(id), None, None) => {
                if !self.grants.contains_key(&id) {
                    return Err(refuse(
                        RefusalCode::NotFound,
                        format!("no live grant with id {id} (see `portcullis list`)"),
                    ));
                }
                vec![id]
            }
            (None, Some(_), _) | (None, None, Some(_)) => self
                .grants
                .values()
                .filter(|g| identity.as_ref().is_none_or(|i| &g.identity == i))
                .filter(|g| segment.is_none_or(|s| g.segment == s))
                .map(|g| g.id)
                .collect(),
            _ => {
                return Err(refuse(
                    RefusalCode::BadRequest,
                    "revoke takes a grant id, or --identity [--segment], or --segment",
                ))
            }
        };
        // Authorize every grant before touching any.
        for gid in &selected {
            let g = &self.grants[gid];
            let seg = self.policy.segments.get(&g.segment);
            let own = credential_matches(&g.identity, cred)
                && matches!(g.identity, Identity::User(_) | Identity::Uid(_));
            if !(own || seg.is_some_and(|s| self.may_administer(cred, s)) || cred.uid == 0) {
                let why = format!("uid {} may not revoke grant {} on segment {}: only root, the segment's approvers and the grantee may", cred.uid, gid, g.segment);
                let seg_name = g.segment.clone();
                return Err(self.refused(cred, "revoke", &seg_name, why));
            }
        }
        let actor = Actor::from_uid(cred.uid, cred.pid);
        let mut revoked = Vec::new();
        for gid in selected {
            // Revocation happens even when the audit log cannot be written.
            let changes = self.ledger.remove(&Source::Grant(gid));
            if let Err(e) = self.dataplane.apply(&changes) {
                return Err(refuse(
                    RefusalCode::Internal,
                    format!("revoking grant {gid} failed: {e}"),
                ));
            }
            self.metrics.revoke_latency.observe(started.elapsed());
            let g = self.grants.remove(&gid).expect("selected from grants");
            if let Err(e) = self.audit.record(
                "revoke",
                obj(json!({"grant_id": gid, "segment": g.segment, "identity": g.identity.to_string(),
                    "ports": self.ports_of(&g.segment), "actor": actor_json(&actor),
                    "expires_at": clock::rfc3339(clock::wall_of(g.expires_boot_ns)),
                    "request_id": g.request_id})),
            ) {
                warn!(grant = gid, error = %e, "revoked, but the audit record could not be written");
            }
            info!(grant = gid, segment = %g.segment, identity = %g.identity, actor = %actor, "revoked");
            revoked.push(g);
        }
        self.save();
        let views = revoked.iter().map(|g| self.view(g)).collect();
        Ok((Reply::Revoked { grants: views }, revoked))
    }

    /// Forgets grants whose deadline has passed (the kernel already stopped
    /// honouring them at that instant) and returns them. Expires pending
    /// requests past their deadline too.
    pub fn expire(&mut self) -> Vec<Grant> {
        self.expire_requests();
        if self.expire_suspended() {
            self.save();
        }
        let now = clock::boot_ns();
        let due: Vec<u64> = self
            .grants
            .values()
            .filter(|g| g.expires_boot_ns <= now)
            .map(|g| g.id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            let changes = self.ledger.remove(&Source::Grant(id));
            if let Err(e) = self.dataplane.apply(&changes) {
                warn!(grant = id, error = %e, "cleaning up an expired grant failed; the kernel ignores it anyway");
            }
            let g = self.grants.remove(&id).expect("listed above");
            let _ = self.audit.record(
                "expire",
                obj(
                    json!({"grant_id": id, "segment": g.segment, "identity": g.identity.to_string(),
                    "ports": self.ports_of(&g.segment), "actor": actor_json(&Actor::agent()),
                    "request_id": g.request_id,
                    "expired_at": clock::rfc3339(clock::wall_of(g.expires_boot_ns)),
                    "cleaned_at": clock::rfc3339(SystemTime::now())}),
                ),
            );
            info!(grant = id, segment = %g.segment, identity = %g.identity, "expired");
            out.push(g);
        }
        if !out.is_empty() {
            self.save();
        }
        out
    }

    /// The earliest grant or pending-request deadline, for the expiry timer.
    pub fn next_deadline(&self) -> Option<u64> {
        let grants = self
            .grants
            .values()
            .map(|g| g.expires_boot_ns)
            .chain(self.next_suspended_deadline())
            .min();
        match (grants, self.requests.next_deadline()) {
            (Some(g), Some(r)) => Some(g.min(r)),
            (g, r) => g.or(r),
        }
    }

    /// Re-resolves identities that live in the cgroup tree (units restart
    /// with new cgroup ids) and standing allows that did not resolve before.
    pub fn refresh_identities(&mut self) -> Result<(), crate::dataplane::DataplaneError> {
        let segments: Vec<Segment> = self.policy.segments.values().cloned().collect();
        for seg in segments {
            let id = self.segment_ids[&seg.name];
            for identity in seg
                .allow
                .iter()
                .filter(|i| matches!(i, Identity::Unit(_) | Identity::Cgroup(_)))
            {
                let source = Source::Standing {
                    segment: seg.name.clone(),
                    identity: identity.to_string(),
                };
                let slot = (seg.name.clone(), identity.to_string());
                match self.resolver.keys(identity, id) {
                    Ok(keys) => {
                        let changes = self.ledger.set(source, &keys, NEVER);
                        self.apply_changes(&changes)?;
                        self.unresolved.remove(&slot);
                    }
                    Err(e) => {
                        let changes = self.ledger.set(source, &[], NEVER);
                        self.apply_changes(&changes)?;
                        self.unresolved.insert(slot, e.to_string());
                    }
                }
            }
        }
        let grants: Vec<(u64, Identity, String, u64)> = self
            .grants
            .values()
            .filter(|g| matches!(g.identity, Identity::Unit(_) | Identity::Cgroup(_)))
            .map(|g| {
                (
                    g.id,
                    g.identity.clone(),
                    g.segment.clone(),
                    g.expires_boot_ns,
                )
            })
            .collect();
        for (gid, identity, segment, deadline) in grants {
            let seg_id = self.segment_ids[&segment];
            let keys = self.resolver.keys(&identity, seg_id).unwrap_or_default();
            let changes = self.ledger.set(Source::Grant(gid), &keys, deadline);
            self.apply_changes(&changes)?;
        }
        Ok(())
    }

    fn ports_of(&self, segment: &str) -> Vec<String> {
        self.policy
            .segments
            .get(segment)
            .map(|s| s.ports.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    fn view(&self, g: &Grant) -> GrantView {
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
        let mut standing = Vec::new();
        for seg in self.policy.segments.values() {
            for identity in &seg.allow {
                standing.push(AllowView {
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
        let pending = self.pending_views();
        Reply::List(ListView {
            standing,
            grants,
            pending,
        })
    }

    pub fn status(&self) -> Reply {
        let segments = self
            .policy
            .segments
            .values()
            .map(|s| {
                let id = self.segment_ids[&s.name];
                let c = self.dataplane.counters(id).unwrap_or_default();
                SegmentStatus {
                    name: s.name.clone(),
                    id,
                    ports: self.ports_of(&s.name),
                    allowed: c.allowed,
                    denied: c.denied,
                }
            })
            .collect();
        let (grant_capacity, peer_capacity) = self.dataplane.capacity();
        let (programs, enforcement) = self.enforcement_view();
        Reply::Status(Box::new(StatusView {
            version: env!("CARGO_PKG_VERSION").to_string(),
            cgroup: self.dataplane.cgroup().display().to_string(),
            pin_dir: self.dataplane.pin_dir().display().to_string(),
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

/// The segment's JIT rules; a segment without them takes no grants or requests.
fn jit_rules(seg: &Segment) -> Result<&crate::policy::Jit, Refusal> {
    seg.jit.as_ref().ok_or_else(|| {
        refuse(
            RefusalCode::Invalid,
            format!("segment {} has no [segment.{}.jit] table, so it takes no grants or requests; add one to its policy", seg.name, seg.name),
        )
    })
}

/// The TTL asked for (in bounds since the request was decoded), or the
/// segment's default when none was given.
fn requested_ttl(jit: &crate::policy::Jit, ttl: Option<Duration>) -> Result<Duration, Refusal> {
    Ok(ttl.unwrap_or(jit.default_ttl))
}

fn check_ttl(seg: &Segment, jit: &crate::policy::Jit, ttl: Duration) -> Result<(), Refusal> {
    if ttl > jit.max_ttl {
        return Err(refuse(
            RefusalCode::Invalid,
            format!(
                "TTL {} is longer than segment {}'s max_ttl of {}",
                clock::human(ttl),
                seg.name,
                clock::human(jit.max_ttl)
            ),
        ));
    }
    Ok(())
}

/// The trimmed reason, required where the segment says so.
fn check_reason(
    seg: &Segment,
    jit: &crate::policy::Jit,
    reason: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if jit.require_reason && reason.is_none() {
        return Err(refuse(
            RefusalCode::Invalid,
            format!("segment {} requires a reason (--reason TEXT)", seg.name),
        ));
    }
    Ok(reason.map(str::to_string))
}

/// Whether the process behind `cred` is `identity` (for user/uid/group/gid
/// identities; group membership includes supplementary groups).
pub fn credential_matches(identity: &Identity, cred: &PeerCred) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    match identity {
        Identity::Uid(u) => *u == cred.uid,
        Identity::User(name) => User::from_name(name)
            .ok()
            .flatten()
            .is_some_and(|u| u.uid.as_raw() == cred.uid),
        Identity::Gid(_) | Identity::Group(_) => {
            let gid = match identity {
                Identity::Gid(g) => Some(*g),
                Identity::Group(name) => Group::from_name(name)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw()),
                _ => None,
            };
            let Some(gid) = gid else { return false };
            if cred.gid == gid {
                return true;
            }
            let Some(user) = User::from_uid(Uid::from_raw(cred.uid)).ok().flatten() else {
                return false;
            };
            let Ok(name) = std::ffi::CString::new(user.name) else {
                return false;
            };
            nix::unistd::getgrouplist(&name, user.gid)
                .map(|gs| gs.contains(&Gid::from_raw(gid)))
                .unwrap_or(false)
        }
        _ => false,
    }
}
