//! The fleet watch: list the grants and locks from a revision, reconcile
//! (locks first), then watch
//! from the next revision; publish what was applied in this host's leased
//! `agents/H` record (the acknowledgement `revoke --fleet` waits for).
//!
//! Failure semantics: when the store cannot be reached the agent keeps
//! enforcing what it has (the kernel's expiries keep firing: each grant
//! carries its own deadline), new fleet grants through this agent are
//! refused, and it reconnects with backoff (200 ms doubling to 5 s) and
//! re-lists; a watch whose revision was compacted away re-lists too.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use etcd_client::{EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tracing::{info, warn};

use super::{
    layout::Layout,
    reconcile::{plan, plan_locks, targeted, targeted_locks, Wanted, WantedLock},
    store::{self, call},
    value::{remaining, AgentRecord, GrantValue},
    FleetConfig, Link,
};
use crate::agent::{Agent, IncomingGrant, IncomingLock};

type Shared = Arc<Mutex<Agent>>;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    crate::state::unix_ms(SystemTime::now())
}

/// Wakes the agent's expiry timer (a grant applied here may hold the
/// earliest deadline now); set once by `start`.
static WAKE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Starts the watch task (never returns; runs for the agent's life);
/// `wake` tells the main loop that the earliest deadline may have moved.
pub(crate) fn start(cfg: FleetConfig, shared: Shared, link: Arc<Link>, wake: fn()) {
    let _ = WAKE.set(wake);
    tokio::spawn(async move {
        let layout = Layout::new(&cfg.prefix);
        let mut backoff = BACKOFF_MIN;
        loop {
            let watched = session(&cfg, &layout, &shared, &link).await;
            let Err((e, got_far)) = watched else { continue };
            if got_far {
                backoff = BACKOFF_MIN;
            }
            warn!(error = %e, retry_in = ?backoff, "fleet store unreachable; enforcing the last state, new fleet grants refused");
            link.update(|s| {
                s.client = None;
                s.error = Some(e);
            });
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
}

/// One connection's life: connect, lease, list, watch. Returns the error
/// that ended it, and whether it got as far as watching (the backoff
/// starts again from its minimum then).
async fn session(
    cfg: &FleetConfig,
    layout: &Layout,
    shared: &Shared,
    link: &Link,
) -> Result<(), (String, bool)> {
    let early = |e: store::StoreError| (e.to_string(), false);
    let mut client = store::connect(cfg).await.map_err(early)?;
    let ttl = cfg.lease_ttl.as_secs().max(2) as i64;
    let lease = call(cfg, client.lease_grant(ttl, None))
        .await
        .map_err(early)?
        .id();
    let (mut keeper, mut keep_stream) = call(cfg, client.lease_keep_alive(lease))
        .await
        .map_err(early)?;
    link.update(|s| {
        s.client = Some(client.clone());
        s.error = None;
        s.heard_unix_ms = now_ms();
    });
    info!(endpoints = %cfg.endpoints.join(","), host = %cfg.host, "fleet store connected");
    let late = |e: store::StoreError| (e.to_string(), true);
    'relist: loop {
        let (start, end) = layout.watched();
        let listing = call(
            cfg,
            client.get(
                start.clone(),
                Some(GetOptions::new().with_range(end.clone())),
            ),
        )
        .await
        .map_err(early)?;
        let revision = listing.header().map_or(0, |h| h.revision());
        let kvs = || listing.kvs().iter().map(|kv| (kv.key(), kv.value()));
        let (wanted, bad) = targeted(layout, &cfg.host, &cfg.groups, kvs());
        let (locks, bad_locks) = targeted_locks(layout, &cfg.host, &cfg.groups, kvs());
        let mut refused: BTreeMap<String, String> = bad
            .into_iter()
            .chain(bad_locks)
            .map(|(id, e)| (id, e.to_string()))
            .collect();
        let outcome = blocking(shared, move |a| reconcile(a, &locks, &wanted, revision)).await;
        refused.extend(outcome);
        note_refused(link, refused, true);
        link.update(|s| {
            s.applied_revision = revision;
            s.heard_unix_ms = now_ms();
            s.relists += 1;
        });
        heard(shared).await;
        publish(cfg, layout, &mut client, lease, shared, link)
            .await
            .map_err(early)?;
        let (_watcher, mut stream) = call(
            cfg,
            client.watch(
                start,
                Some(
                    WatchOptions::new()
                        .with_range(end)
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await
        .map_err(early)?;
        let mut tick = tokio::time::interval(cfg.lease_ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_publish = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = stream.message() => {
                    let message = message
                        .map_err(|e| (format!("watch: {e}"), true))?
                        .ok_or_else(|| ("watch: the store closed the stream".to_string(), true))?;
                    if message.compact_revision() > 0 {
                        info!(compacted = message.compact_revision(), "fleet watch revision compacted; listing again");
                        continue 'relist;
                    }
                    if message.canceled() {
                        info!(reason = %message.cancel_reason(), "fleet watch cancelled by the store; listing again");
                        continue 'relist;
                    }
                    // A lock imposed or lifted changes which grants may
                    // apply here: the whole state is listed again.
                    let locks_moved = message.events().iter().any(|ev| {
                        ev.kv().and_then(|kv| layout.parse_lock(kv.key())).is_some_and(|(t, _)| t.applies_to(&cfg.host, &cfg.groups))
                    });
                    if locks_moved {
                        continue 'relist;
                    }
                    let revision = message.header().map_or(0, |h| h.revision());
                    let events: Vec<Event> = message
                        .events()
                        .iter()
                        .filter_map(|ev| {
                            let kv = ev.kv()?;
                            let (target, id) = layout.parse_grant(kv.key())?;
                            if !target.applies_to(&cfg.host, &cfg.groups) {
                                return None;
                            }
                            Some(match ev.event_type() {
                                EventType::Delete => Event::Gone(id, kv.mod_revision()),
                                EventType::Put => match GrantValue::parse(kv.value()) {
                                    Ok((value, identity)) => Event::Put(id, Wanted { target, value, identity }, kv.mod_revision()),
                                    Err(e) => Event::Bad(id, e.to_string()),
                                },
                            })
                        })
                        .collect();
                    if !events.is_empty() {
                        let refused = blocking(shared, move |a| apply_events(a, events)).await;
                        note_refused(link, refused, false);
                    }
                    link.update(|s| {
                        s.applied_revision = s.applied_revision.max(revision);
                        s.heard_unix_ms = now_ms();
                    });
                    heard(shared).await;
                    publish(cfg, layout, &mut client, lease, shared, link).await.map_err(late)?;
                    last_publish = tokio::time::Instant::now();
                }
                _ = tick.tick() => {
                    call(cfg, keeper.keep_alive()).await.map_err(late)?;
                    match call(cfg, keep_stream.message()).await.map_err(late)? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Err(("the store let this agent's lease lapse".into(), true)),
                    }
                    link.update(|s| s.heard_unix_ms = now_ms());
                    heard(shared).await;
                    if last_publish.elapsed() >= cfg.lease_ttl {
                        publish(cfg, layout, &mut client, lease, shared, link).await.map_err(late)?;
                        last_publish = tokio::time::Instant::now();
                    }
                }
            }
        }
    }
}

/// The store answered and this host's view of it is current (listed, or
/// the watch delivering, or a keepalive answered on the watch's
/// connection): strict fleet grants work for `strict_after` more. Nothing
/// else moves that instant, so an agent that hangs or is cut off stops
/// calling this and the kernel ends its strict grants (`agent/freshness.rs`).
async fn heard(shared: &Shared) {
    let shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = shared.lock().expect("agent lock").heard_from_store() {
            warn!(error = %e, "writing \"fresh until\" failed; strict fleet grants stop when it passes");
        }
    })
    .await;
}

enum Event {
    Put(String, Wanted, i64),
    Gone(String, i64),
    Bad(String, String),
}

/// Runs `f` on the agent off the async workers (it journals, audits and
/// writes maps), then lets the sweeper and the expiry timer know.
async fn blocking<R: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&mut Agent) -> R + Send + 'static,
) -> R {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut a = shared.lock().expect("agent lock");
        let r = f(&mut a);
        a.publish();
        r
    })
    .await
    .expect("fleet apply task")
}

/// Makes this host enforce exactly `wanted` from the fleet; returns the
/// grants it refused to apply, with why.
fn reconcile(
    a: &mut Agent,
    locks: &BTreeMap<String, WantedLock>,
    wanted: &BTreeMap<String, Wanted>,
    revision: i64,
) -> BTreeMap<String, String> {
    let mut refused = BTreeMap::new();
    let mut ended = false;
    // Locks first: a grant for a locked identity is then refused.
    let pl = plan_locks(locks, &a.fleet_locks());
    for id in &pl.end {
        a.fleet_unlock(id, revision);
    }
    for id in &pl.apply {
        let l = &locks[id];
        let v = &l.value;
        let incoming = IncomingLock {
            id,
            identity: l.identity.clone(),
            reason: &v.reason,
            include_standing: v.include_standing,
            created_unix_ms: v.created_unix_ms,
            expires_unix_ms: v.expires_unix_ms,
            actor_uid: v.actor_uid,
            actor_user: v.actor_user.as_deref(),
            origin_host: &v.origin_host,
        };
        match a.fleet_lock(incoming, now_ms()) {
            Ok(revoked) => {
                info!(fleet = id, hosts = %l.target, identity = %l.identity, revoked = revoked.len(), "fleet lock in force");
                ended |= !revoked.is_empty();
            }
            Err(why) => {
                refused.insert(id.clone(), why);
            }
        }
    }
    let p = plan(wanted, &a.fleet_enforced());
    for id in &p.end {
        ended |= a.fleet_end(id, revision).is_some();
    }
    for id in &p.apply {
        let w = &wanted[id];
        if let Err(why) = apply_one(a, id, w, revision) {
            refused.insert(id.clone(), why);
        }
    }
    after(ended, !p.apply.is_empty());
    refused
}

fn apply_events(a: &mut Agent, events: Vec<Event>) -> BTreeMap<String, String> {
    let mut refused = BTreeMap::new();
    let (mut ended, mut applied) = (false, false);
    for ev in events {
        match ev {
            Event::Gone(id, rev) => ended |= a.fleet_end(&id, rev).is_some(),
            Event::Bad(id, why) => {
                // A grant rewritten into something unreadable ends here.
                ended |= a.fleet_end(&id, 0).is_some();
                refused.insert(id, why);
            }
            Event::Put(id, w, rev) => {
                match a.fleet_enforced().get(&id) {
                    Some((_, deadline)) if *deadline == w.value.deadline_unix_ms => continue,
                    Some(_) => ended |= a.fleet_end(&id, rev).is_some(),
                    None => {}
                }
                applied = true;
                if let Err(why) = apply_one(a, &id, &w, rev) {
                    refused.insert(id, why);
                }
            }
        }
    }
    after(ended, applied);
    refused
}

/// Applies one; a grant whose deadline passed is not a refusal (it ended
/// here, in the kernel, at that deadline).
fn apply_one(a: &mut Agent, id: &str, w: &Wanted, revision: i64) -> Result<(), String> {
    let now = now_ms();
    if w.value.deadline_unix_ms <= now {
        return Ok(());
    }
    let ttl = remaining(w.value.deadline_unix_ms, now).map_err(|e| e.to_string())?;
    let v = &w.value;
    let incoming = IncomingGrant {
        id,
        segment: &v.segment,
        identity: w.identity.clone(),
        ttl,
        reason: v.reason.clone(),
        actor_uid: v.actor_uid,
        actor_user: v.actor_user.as_deref(),
        origin_host: &v.origin_host,
        revision,
        strict: v.strict,
    };
    let local = a.fleet_apply(incoming)?;
    info!(fleet = id, grant = local, hosts = %w.target, segment = %v.segment, identity = %w.identity, "fleet grant enforced");
    Ok(())
}

fn after(ended: bool, applied: bool) {
    if ended {
        // Idle flows and flows the programs never marked are cut now.
        crate::sweep::request();
    }
    if applied {
        if let Some(wake) = WAKE.get() {
            wake();
        }
    }
}

/// Records refusals, logging each new one once; a re-list replaces the set.
fn note_refused(link: &Link, refused: BTreeMap<String, String>, replace: bool) {
    link.update(|s| {
        for (id, why) in &refused {
            if s.refused.get(id) != Some(why) {
                warn!(fleet = %crate::termtext::escape(id), why = %why, "fleet grant not applied on this host");
            }
        }
        if replace {
            s.refused = refused;
        } else {
            s.refused.extend(refused);
        }
    });
}

/// Writes `agents/H` (leased: gone when this agent stops renewing) and
/// `seen/H` (kept: a host that was there and is gone shows as
/// unreachable) in one transaction.
async fn publish(
    cfg: &FleetConfig,
    layout: &Layout,
    client: &mut etcd_client::Client,
    lease: i64,
    shared: &Shared,
    link: &Link,
) -> Result<(), store::StoreError> {
    let ((digest, head, boot), enforced) =
        blocking(shared, |a| (a.fleet_facts(), a.fleet_enforced().len())).await;
    let state = link.get();
    let record = AgentRecord {
        host: cfg.host.clone(),
        groups: cfg.groups.clone(),
        applied_revision: state.applied_revision,
        policy_digest: digest,
        audit_head: head,
        boot_id: boot,
        heard_unix_ms: state.heard_unix_ms,
        enforced: u32::try_from(enforced).unwrap_or(u32::MAX),
        refused: u32::try_from(state.refused.len()).unwrap_or(u32::MAX),
    };
    let bytes = serde_json::to_vec(&record).expect("records serialize");
    let txn = Txn::new().and_then([
        TxnOp::put(
            layout.agent(&cfg.host),
            bytes.clone(),
            Some(PutOptions::new().with_lease(lease)),
        ),
        TxnOp::put(layout.host(&cfg.host), bytes, None),
    ]);
    call(cfg, client.txn(txn)).await.map(|_| ())
}
