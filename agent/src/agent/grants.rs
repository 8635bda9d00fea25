//! Grants: making, revoking, expiring and re-resolving them.
//!
//! Owns the one path by which access is granted (`open_grant`: resolve,
//! journal, audit, ledger, kernel) and the ways it ends (revoke, expire:
//! journal, kernel, audit). Who may do each is `authz`'s; what the wire says is `views`'.
use super::authz::{
    check_reason, check_ttl, credential_matches, jit_rules, requested_ttl, window_ttl,
};
use super::errors::CoreError;
use super::groups;
use super::*;

impl Agent {
    pub(crate) fn grant(
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
        let (seg, identity, ttl, reason) =
            self.grant_authorized(cred, segment, identity, ttl, reason)?;
        let grant = self.open_grant(cred, &seg, identity, ttl, reason, None)?;
        Ok(Reply::Granted {
            grant: self.view(&grant),
        })
    }

    /// The checks of a grant, local or fleet (`fleet`): who may, for whom,
    /// how long (the TTL inside the segment's max and window), why.
    pub(super) fn grant_authorized(
        &mut self,
        cred: &PeerCred,
        segment: &str,
        identity: &str,
        ttl: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<(Segment, Identity, Duration, Option<String>), Refusal> {
        let identity: Identity = identity
            .parse()
            .map_err(|e| refuse(RefusalCode::Invalid, format!("identity {identity:?}: {e}")))?;
        let seg = self.segment(segment)?.clone();
        if !self.may_administer(cred, &seg) {
            return Err(self.forbidden(
                cred,
                "grant",
                &seg.name,
                CoreError::NotApprover {
                    who: format!("uid {}", cred.uid),
                    action: "grant".into(),
                    segment: seg.name.clone(),
                },
            ));
        }
        if let Some(why) = authz::refusal(&identity, cred, &self.resolver) {
            return Err(self.refused(
                cred,
                "grant",
                &seg.name,
                format!("uid {} may not grant {identity} on segment {}: {why}; approvers do not open segments to themselves or to everyone, only root may", cred.uid, seg.name),
            ));
        }
        self.refuse_locked(cred, "grant", &seg.name, &identity)?;
        let jit = jit_rules(&seg)?;
        let ttl = requested_ttl(jit, ttl)?;
        check_ttl(&seg, jit, ttl)?;
        let reason = check_reason(&seg, jit, reason)?;
        // A grant closes at the end of the window it is made in.
        let ttl = window_ttl(&seg, jit, ttl)?;
        Ok((seg, identity, ttl, reason))
    }

    /// Opens `seg` to `identity` for `ttl`: resolve, journal (a grant the
    /// agent cannot remember is not made), audit (nor one it cannot
    /// record), ledger, kernel. The one path by which access is granted;
    /// the caller has already authorized `cred` and checked the segment's
    /// rules.
    ///
    /// Why this order: a crash after the journal and before the audit
    /// record leaves a journaled grant whose record is missing, which the
    /// next start finds from the audit chain's head and ends as
    /// `grant_failed` (see `restore`); after the audit record, the grant is
    /// restored at start (or, if the kernel write never happened, ended
    /// with a `revoke` while down). So every replied grant survives a
    /// crash, every audited grant is live or has one end record, and the
    /// id, persisted before use, is never handed out again.
    pub(super) fn open_grant(
        &mut self,
        cred: &PeerCred,
        seg: &Segment,
        identity: Identity,
        ttl: Duration,
        reason: Option<String>,
        request_id: Option<u64>,
    ) -> Result<Grant, Refusal> {
        let actor = Actor::from_uid(cred.uid, cred.pid);
        self.open_grant_as(actor, seg, identity, ttl, reason, request_id, None)
    }

    /// [`Self::open_grant`] for an actor that may be on another host (a
    /// fleet grant, `fleet`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_grant_as(
        &mut self,
        actor: Actor,
        seg: &Segment,
        identity: Identity,
        ttl: Duration,
        reason: Option<String>,
        request_id: Option<u64>,
        fleet: Option<state::FleetOrigin>,
    ) -> Result<Grant, Refusal> {
        let seg_id = self.segment_ids[&seg.name];
        let mut keys = self
            .resolver
            .keys(&identity, seg_id)
            .map_err(|e| refuse(RefusalCode::Invalid, format!("{identity}: {e}")))?;
        let mut members = keys.clone();
        if matches!(identity, Identity::Group(_)) {
            // A locked member is left out (see `locks`).
            let locked = self.locked_uids(false);
            keys.retain(|k| !groups::uids_of(&[*k]).iter().any(|u| locked.contains(u)));
        } else {
            members.clear();
        }
        let id = self.next_id;
        let now_wall = SystemTime::now();
        let deadline = clock::deadline_after(ttl);
        let grant = Grant {
            id,
            segment: crate::name::Name::from(seg.name.clone()),
            identity: identity.clone(),
            created_unix_ms: state::unix_ms(now_wall),
            expires_unix_ms: state::unix_ms(now_wall + ttl),
            expires_boot_ns: deadline,
            boot_id: self.boot_id.clone(),
            actor: actor.clone(),
            reason: reason.map(crate::name::Name::from),
            request_id,
            fleet: fleet.map(Box::new),
        };
        // Queued audit records first, so that the grant's record is the
        // very next one after the head the journal names.
        let head = self.audit_head();
        if self.audit.backlog() > 0 {
            let why = self
                .audit
                .failing()
                .unwrap_or("records are queued")
                .to_string();
            return Err(refuse(RefusalCode::Unavailable, format!("grant refused: the audit log cannot be written ({why}); revocations still work")));
        }
        let journaled = self.journal.append(&Op::Grant {
            grant: grant.clone(),
            audit_prev: Some(head),
        });
        // Used from here on, even if the write failed half-way.
        self.next_id += 1;
        journaled.map_err(|e| refuse(RefusalCode::Unavailable, format!("grant refused: the agent cannot write its journal, so it could not remember this grant ({e}); revocations still work")))?;
        if let Err(e) = self.audit.record(self.grant_event(&grant, ttl)) {
            self.grant_failed(&grant, format!("the audit log cannot be written: {e}"));
            return Err(refuse(
                RefusalCode::Unavailable,
                format!(
                    "grant refused: the audit log cannot be written ({e}); revocations still work"
                ),
            ));
        }
        let changes = self
            .ledger
            .set(Source::Grant(id), &keys, grant.kernel_value(deadline));
        // A new source only adds or extends entries: no epoch bump.
        if let Err(e) = self.kernel.apply_adding(&changes) {
            // Undo whatever part was written; nothing stays half-applied.
            let undo = self.ledger.remove(&Source::Grant(id));
            let _ = self.kernel.apply(&undo);
            self.grant_failed(&grant, e.to_string());
            return Err(refuse(
                RefusalCode::Unavailable,
                format!("grant refused: {e}"),
            ));
        }
        self.note_members(Source::Grant(id), &identity, &members);
        self.grants.insert(id, grant.clone());
        info!(grant = id, segment = %seg.name, %identity, ttl = %clock::human(ttl), actor = %actor, "granted");
        Ok(grant)
    }

    /// Ends a journaled grant that was not made: its id stays used, and
    /// the `grant_failed` record says why.
    fn grant_failed(&mut self, g: &Grant, error: String) {
        let event = AuditEvent::GrantFailed {
            grant_id: g.id,
            segment: g.segment.to_string(),
            identity: g.identity.to_string(),
            actor: g.actor.clone(),
            request_id: g.request_id,
            error,
        };
        self.journal_end(g.id, &event);
        let _ = self.audit.record(event);
    }

    fn grant_event(&self, g: &Grant, ttl: Duration) -> AuditEvent {
        AuditEvent::Grant {
            grant_id: g.id,
            segment: g.segment.to_string(),
            identity: g.identity.to_string(),
            ports: self.ports_of(&g.segment),
            ttl_secs: ttl.as_secs(),
            expires_at: clock::rfc3339(clock::wall_of(g.expires_boot_ns)),
            reason: g.reason.clone().map(String::from),
            actor: g.actor.clone(),
            request_id: g.request_id,
            fleet: g.fleet.as_ref().map(|f| f.id.clone()),
        }
    }

    /// Revokes by id, by identity (optionally on one segment), or a whole segment.
    pub(crate) fn revoke(
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
                i.parse().map_err(|e| CoreError::BadIdentity {
                    text: i.to_string(),
                    why: format!("{e}"),
                })
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
                    return Err(CoreError::NoSuchGrant { id }.into());
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
            _ => return Err(CoreError::RevokeWhat.into()),
        };
        // Authorize every grant before touching any.
        for gid in &selected {
            let g = self.grants.get(gid).expect("selected from grants");
            let seg = self.policy.segments.get(g.segment.as_str());
            let own = credential_matches(&g.identity, cred, &self.resolver)
                && matches!(g.identity, Identity::User(_) | Identity::Uid(_));
            if !(own || seg.is_some_and(|s| self.may_administer(cred, s)) || cred.uid == 0) {
                let why = CoreError::MayNotRevoke {
                    uid: cred.uid,
                    grant: *gid,
                    segment: g.segment.to_string(),
                };
                let seg_name = g.segment.clone();
                return Err(self.forbidden(cred, "revoke", &seg_name, why));
            }
        }
        let actor = Actor::from_uid(cred.uid, cred.pid);
        let mut revoked = Vec::new();
        for gid in selected {
            revoked.push(self.revoke_one(gid, &actor, None)?);
            self.metrics.revoke_latency.observe(started.elapsed());
        }
        let views = revoked.iter().map(|g| self.view(g)).collect();
        Ok((Reply::Revoked { grants: views }, revoked))
    }

    /// Ends live grant `gid` for `actor` (`why`: a reason beyond the
    /// actor's say-so, e.g. a lock): journal, kernel, audit. Revocation
    /// happens even when the audit log or the journal cannot be written
    /// (its end is then queued).
    pub(super) fn revoke_one(
        &mut self,
        gid: u64,
        actor: &Actor,
        why: Option<String>,
    ) -> Result<Grant, CoreError> {
        let usage = self.usage_record(gid);
        let g = self.grants.get(&gid).expect("a live grant").clone();
        let event = AuditEvent::Revoke {
            grant_id: gid,
            segment: g.segment.to_string(),
            identity: g.identity.to_string(),
            ports: Some(self.ports_of(&g.segment)),
            actor: actor.clone(),
            expires_at: clock::rfc3339(clock::wall_of(g.expires_boot_ns)),
            request_id: g.request_id,
            why,
            suspended: None,
            while_down: None,
            usage,
        };
        // Written before the kernel acts, fdatasync'ed after: the revoke is
        // in force without waiting for the disk, and durable before its
        // audit record and the reply (journal.rs, "Order of writes").
        let staged = self.stage_journal_end(gid, &event);
        let changes = self.ledger.remove(&Source::Grant(gid));
        let applied = self.kernel.apply(&changes);
        self.commit_journal_end(gid, staged);
        if let Err(e) = applied {
            // Still live: the journal says so again.
            let _ = self.journal.append_or_queue(Op::Grant {
                grant: g,
                audit_prev: None,
            });
            return Err(CoreError::RevokeFailed {
                id: gid,
                why: e.to_string(),
            });
        }
        self.forget_usage_of(&changes);
        self.grants.remove(&gid);
        if let Err(e) = self.audit.record(event) {
            warn!(grant = gid, error = %e, "revoked, but the audit record could not be written");
        }
        info!(grant = gid, segment = %g.segment, identity = %g.identity, actor = %actor, "revoked");
        Ok(g)
    }

    /// Forgets grants whose deadline has passed (the kernel already stopped
    /// honouring them at that instant) and returns them. Expires pending
    /// requests past their deadline too.
    pub(crate) fn expire(&mut self) -> Vec<Grant> {
        self.expire_requests();
        self.expire_suspended();
        let now = clock::boot_ns();
        // Earliest first, from the deadline index: no scan of every grant.
        let due = self.grants.due(now);
        let mut out = Vec::new();
        for id in due {
            let usage = self.usage_record(id);
            let g = self.grants.remove(&id).expect("listed above");
            let event = AuditEvent::Expire {
                grant_id: id,
                segment: g.segment.to_string(),
                identity: g.identity.to_string(),
                ports: Some(self.ports_of(&g.segment)),
                actor: Actor::agent(),
                request_id: g.request_id,
                expired_at: Some(clock::rfc3339(clock::wall_of(g.expires_boot_ns))),
                cleaned_at: Some(clock::rfc3339(SystemTime::now())),
                expires_at: None,
                why: None,
                while_down: None,
                reason: Some("ttl".into()),
                usage,
            };
            self.journal_end(id, &event);
            let changes = self.ledger.remove(&Source::Grant(id));
            if let Err(e) = self.kernel.apply(&changes) {
                warn!(grant = id, error = %e, "cleaning up an expired grant failed; the kernel ignores it anyway");
            } else {
                self.forget_usage_of(&changes);
            }
            let _ = self.audit.record(event);
            info!(grant = id, segment = %g.segment, identity = %g.identity, "expired");
            out.push(g);
        }
        out.extend(self.lapse_idle());
        out
    }

    /// The earliest grant or pending-request deadline, for the expiry timer.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let grants = self
            .grants
            .next_deadline()
            .into_iter()
            .chain(self.next_suspended_deadline())
            .chain(self.next_idle_deadline())
            .chain(self.next_window_deadline())
            .chain(self.freshness_deadline())
            .min();
        match (grants, self.requests.next_deadline()) {
            (Some(g), Some(r)) => Some(g.min(r)),
            (g, r) => g.or(r),
        }
    }

    /// Re-resolves identities that live in the cgroup tree (units restart
    /// with new cgroup ids) and standing allows that did not resolve before.
    pub(crate) fn refresh_identities(&mut self) -> Result<(), crate::dataplane::DataplaneError> {
        let segments: Vec<Segment> = self.policy.segments.values().cloned().collect();
        for seg in segments {
            let id = self.segment_ids[&seg.name];
            // Plain allows never expire; windowed ones while open, at
            // their window's end.
            let moving: Vec<(Identity, u64)> = seg
                .allow
                .iter()
                .map(|i| (i, NEVER))
                .chain(seg.windowed.iter().filter_map(|w| {
                    self.window_expiry(&seg.name, &w.identity.to_string())
                        .map(|e| (&w.identity, e))
                }))
                .filter(|(i, _)| matches!(i, Identity::Unit(_) | Identity::Cgroup(_)))
                .filter(|(i, _)| self.standing_locked(i).is_none())
                .map(|(i, e)| (i.clone(), e))
                .collect();
            for (identity, expiry) in &moving {
                let source = Source::Standing {
                    segment: seg.name.clone(),
                    identity: identity.to_string(),
                };
                let slot = (seg.name.clone(), identity.to_string());
                match self.resolver.keys(identity, id) {
                    Ok(keys) => {
                        let changes = self.ledger.set(source, &keys, *expiry);
                        self.apply_changes(&changes)?;
                        self.unresolved.remove(&slot);
                    }
                    Err(e) => {
                        let changes = self.ledger.set(source, &[], *expiry);
                        self.apply_changes(&changes)?;
                        self.unresolved.insert(slot, e.to_string());
                    }
                }
            }
        }
        let grants: Vec<(u64, Identity, crate::name::Name, u64)> = self
            .grants
            .values()
            .filter(|g| matches!(g.identity, Identity::Unit(_) | Identity::Cgroup(_)))
            .map(|g| {
                (
                    g.id,
                    g.identity.clone(),
                    g.segment.clone(),
                    g.kernel_value(g.expires_boot_ns),
                )
            })
            .collect();
        for (gid, identity, segment, deadline) in grants {
            let seg_id = self.segment_ids[segment.as_str()];
            let keys = self.resolver.keys(&identity, seg_id).unwrap_or_default();
            let changes = self.ledger.set(Source::Grant(gid), &keys, deadline);
            self.apply_changes(&changes)?;
        }
        self.sync_cover();
        Ok(())
    }
}
