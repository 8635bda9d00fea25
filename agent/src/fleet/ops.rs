//! The CLI's `--fleet` operations, run by the local agent (it holds the
//! store credentials; the caller is authorized by this host's policy, by
//! the same rules as a local grant or revoke).
//!
//! `grant`: checked like a local grant, then written with its absolute
//! deadline (and a lease for garbage collection only, longer than the
//! grant). `revoke`: the keys deleted in one transaction, then a bounded
//! wait until every targeted live agent has applied that revision.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::{
    layout::{Layout, Target},
    store::call,
    value::{AgentRecord, GrantValue, FORMAT},
    FleetConfig, Link,
};
use crate::{
    agent::Agent,
    control::{
        fleet::{FleetGrantView, FleetHostView, FleetRevokeView, FleetStatusView, HostAck},
        PeerCred, Refusal, RefusalCode, Reply,
    },
};

/// This agent's fleet: its configuration and the watch's link.
pub(crate) struct Fleet {
    pub cfg: FleetConfig,
    pub link: Arc<Link>,
}

static FLEET: OnceLock<Fleet> = OnceLock::new();

/// Sets this agent's fleet (once, at start).
pub(crate) fn install(fleet: Fleet) -> &'static Fleet {
    FLEET.get_or_init(|| fleet)
}

/// How often `revoke --fleet` looks at the agents' records while it waits.
const ACK_POLL: Duration = Duration::from_millis(25);
/// Store operations per transaction (etcd's default `--max-txn-ops`).
const TXN_OPS: usize = 128;
/// The GC lease outlives the grant by this much (the kernel expiry is the
/// deadline in the value; the lease only removes the key later).
pub(super) const GC_MARGIN: Duration = Duration::from_secs(300);

pub(super) type Shared = Arc<Mutex<Agent>>;

pub(super) fn refuse(code: RefusalCode, msg: impl Into<String>) -> Refusal {
    Refusal::new(code, msg)
}

/// The `--hosts` a verb is limited to, when given (`revoke`, `unlock`).
pub(super) fn only_hosts(hosts: Option<&str>) -> Result<Option<Target>, Refusal> {
    hosts
        .map(Target::parse)
        .transpose()
        .map_err(|e| refuse(RefusalCode::Invalid, e))
}

pub(super) fn fleet() -> Result<&'static Fleet, Refusal> {
    FLEET.get().ok_or_else(|| {
        refuse(
            RefusalCode::Invalid,
            "this agent is not in fleet mode: its configuration has no [fleet] table (docs/fleet.md)",
        )
    })
}

/// The connected client, or the fail-closed refusal.
pub(super) fn client(f: &Fleet, what: &str) -> Result<etcd_client::Client, Refusal> {
    let s = f.link.get();
    s.client.ok_or_else(|| {
        refuse(
            RefusalCode::Unavailable,
            format!(
                "{what} refused: the fleet store is unreachable ({}); grants already made stay enforced on each host until their deadline",
                s.error.as_deref().unwrap_or("not connected yet")
            ),
        )
    })
}

pub(super) fn store_err(what: &str) -> impl Fn(super::store::StoreError) -> Refusal + '_ {
    move |e| {
        refuse(
            RefusalCode::Unavailable,
            format!("{what} refused: the fleet store is unreachable ({e})"),
        )
    }
}

pub(super) async fn on_agent<R: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&mut Agent) -> R + Send + 'static,
) -> R {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&mut shared.lock().expect("agent lock")))
        .await
        .expect("agent task")
}

pub(super) fn now_ms() -> u64 {
    crate::state::unix_ms(SystemTime::now())
}

fn view(id: &str, target: &Target, v: &GrantValue, revision: i64) -> FleetGrantView {
    FleetGrantView {
        id: id.to_string(),
        hosts: target.to_string(),
        segment: v.segment.clone(),
        identity: v.identity.clone(),
        expires_at: crate::clock::rfc3339(UNIX_EPOCH + Duration::from_millis(v.deadline_unix_ms)),
        deadline_unix_ms: v.deadline_unix_ms,
        actor: format!(
            "{} (uid {})",
            v.actor_user.as_deref().unwrap_or("?"),
            v.actor_uid
        ),
        origin_host: v.origin_host.clone(),
        reason: v.reason.clone(),
        strict: v.strict,
        revision,
    }
}

/// `grant --fleet`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn grant(
    shared: &Shared,
    cred: PeerCred,
    hosts: String,
    segment: String,
    identity: String,
    ttl: Option<Duration>,
    reason: Option<String>,
    strict: bool,
) -> Result<Reply, Refusal> {
    let f = fleet()?;
    let target = Target::parse(&hosts).map_err(|e| refuse(RefusalCode::Invalid, e))?;
    let (seg, ident) = (segment.clone(), identity.clone());
    let (identity, ttl, reason) = on_agent(shared, move |a| {
        a.fleet_authorize_grant(&cred, &seg, &ident, ttl, reason.as_deref())
    })
    .await?;
    let mut client = client(f, "fleet grant")?;
    let created = now_ms();
    let value = GrantValue {
        format: FORMAT,
        segment,
        identity: identity.to_string(),
        created_unix_ms: created,
        deadline_unix_ms: created + ttl.as_millis() as u64,
        actor_uid: cred.uid,
        actor_user: crate::actor::Actor::from_uid(cred.uid, None)
            .user
            .map(String::from),
        origin_host: f.cfg.host.clone(),
        reason,
        strict,
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let id = format!("{}-{created}-{nanos:09}", f.cfg.host);
    let key = Layout::new(&f.cfg.prefix).grant(&target, &id);
    let gc = call(
        &f.cfg,
        client.lease_grant((ttl + GC_MARGIN).as_secs() as i64, None),
    )
    .await
    .map_err(store_err("fleet grant"))?
    .id();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            serde_json::to_vec(&value).expect("values serialize"),
            Some(PutOptions::new().with_lease(gc)),
        )]);
    let done = call(&f.cfg, client.txn(txn))
        .await
        .map_err(store_err("fleet grant"))?;
    if !done.succeeded() {
        return Err(refuse(
            RefusalCode::Internal,
            format!("fleet grant id {id} exists already; try again"),
        ));
    }
    let revision = done.header().map_or(0, |h| h.revision());
    tracing::info!(fleet = %id, hosts = %target, segment = %value.segment, identity = %value.identity, revision, "fleet grant written");
    Ok(Reply::FleetGranted {
        grant: Box::new(view(&id, &target, &value, revision)),
    })
}

/// Every fleet grant in the store: key, target, id, value, revision.
async fn listing(
    f: &Fleet,
    client: &mut etcd_client::Client,
    what: &str,
) -> Result<(i64, Vec<(Vec<u8>, Target, String, GrantValue, i64)>), Refusal> {
    let layout = Layout::new(&f.cfg.prefix);
    let r = call(
        &f.cfg,
        client.get(layout.grants(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(store_err(what))?;
    let rows = r
        .kvs()
        .iter()
        .filter_map(|kv| {
            let (t, id) = layout.parse_grant(kv.key())?;
            let (v, _) = GrantValue::parse(kv.value()).ok()?;
            Some((kv.key().to_vec(), t, id, v, kv.mod_revision()))
        })
        .collect();
    Ok((r.header().map_or(0, |h| h.revision()), rows))
}

/// `list --fleet`.
pub(crate) async fn list() -> Result<Reply, Refusal> {
    let f = fleet()?;
    let mut client = client(f, "list --fleet")?;
    let (_, rows) = listing(f, &mut client, "list --fleet").await?;
    let now = now_ms();
    let grants = rows
        .iter()
        .filter(|(.., v, _)| v.deadline_unix_ms > now)
        .map(|(_, t, id, v, rev)| view(id, t, v, *rev))
        .collect();
    let locks = super::locks::listing(f, &mut client, "list --fleet")
        .await?
        .iter()
        .filter(|(.., v, _)| v.expires_unix_ms.is_none_or(|e| e > now))
        .map(|(_, t, id, v, rev)| super::locks::view(id, t, v, *rev))
        .collect();
    Ok(Reply::FleetList { grants, locks })
}

/// `revoke --fleet`: by fleet id, or every grant of an identity and/or
/// segment (optionally only those for `hosts`).
pub(crate) async fn revoke(
    shared: &Shared,
    cred: PeerCred,
    id: Option<String>,
    identity: Option<String>,
    segment: Option<String>,
    hosts: Option<String>,
) -> Result<Reply, Refusal> {
    let f = fleet()?;
    let only = only_hosts(hosts.as_deref())?;
    if id.is_none() && identity.is_none() && segment.is_none() {
        return Err(refuse(
            RefusalCode::Invalid,
            "revoke --fleet needs a fleet grant id, --identity or --segment",
        ));
    }
    let mut client = client(f, "fleet revoke")?;
    let (_, rows) = listing(f, &mut client, "fleet revoke").await?;
    let selected: Vec<_> = rows
        .into_iter()
        .filter(|(_, t, gid, v, _)| {
            id.as_ref().is_none_or(|i| i == gid)
                && identity.as_ref().is_none_or(|i| *i == v.identity)
                && segment.as_ref().is_none_or(|s| *s == v.segment)
                && only.as_ref().is_none_or(|o| o == t)
        })
        .collect();
    if selected.is_empty() {
        return Err(refuse(
            RefusalCode::NotFound,
            "no fleet grant matches; nothing revoked",
        ));
    }
    let checks: Vec<(String, String)> = selected
        .iter()
        .map(|(.., v, _)| (v.segment.clone(), v.identity.clone()))
        .collect();
    let denied = on_agent(shared, move |a| {
        checks
            .into_iter()
            .find(|(s, i)| !a.fleet_may_revoke(&cred, s, i))
    })
    .await;
    if let Some((s, i)) = denied {
        return Err(refuse(
            RefusalCode::Forbidden,
            format!(
                "uid {} may not revoke the fleet grant of {} on segment {}: only root, the segment's approvers on this host, or the person it was granted to",
                cred.uid,
                crate::termtext::escape(&i),
                crate::termtext::escape(&s)
            ),
        ));
    }
    let mut revision = 0;
    for chunk in selected.chunks(TXN_OPS) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, ..)| TxnOp::delete(k.clone(), None))
            .collect();
        let r = call(&f.cfg, client.txn(Txn::new().and_then(ops)))
            .await
            .map_err(store_err("fleet revoke"))?;
        revision = r.header().map_or(revision, |h| h.revision());
    }
    let targets: Vec<Target> = selected.iter().map(|(_, t, ..)| t.clone()).collect();
    let (hosts, timed_out) = wait_for_acks(f, &mut client, &targets, revision).await?;
    tracing::info!(count = selected.len(), revision, "fleet grants revoked");
    let acknowledged = hosts.iter().filter(|h| h.state == "applied").count();
    Ok(Reply::FleetRevoked(Box::new(FleetRevokeView {
        revoked: selected
            .iter()
            .map(|(_, t, id, v, rev)| view(id, t, v, *rev))
            .collect(),
        revision,
        hosts,
        acknowledged,
        timed_out,
    })))
}

/// Live (`agents/`) and known (`seen/`) records, by host.
async fn records(
    f: &Fleet,
    client: &mut etcd_client::Client,
    what: &str,
) -> Result<
    (
        i64,
        BTreeMap<String, (Option<AgentRecord>, Option<AgentRecord>)>,
    ),
    Refusal,
> {
    let layout = Layout::new(&f.cfg.prefix);
    let mut out: BTreeMap<String, (Option<AgentRecord>, Option<AgentRecord>)> = BTreeMap::new();
    let mut revision = 0;
    for (prefix, live) in [(layout.agents(), true), (layout.hosts(), false)] {
        let r = call(
            &f.cfg,
            client.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(store_err(what))?;
        revision = r.header().map_or(revision, |h| h.revision());
        for kv in r.kvs() {
            let (Some(host), Some(rec)) =
                (layout.parse_host(kv.key()), AgentRecord::parse(kv.value()))
            else {
                continue;
            };
            if rec.host != host {
                continue;
            }
            let slot = out.entry(host).or_default();
            if live {
                slot.0 = Some(rec);
            } else {
                slot.1 = Some(rec);
            }
        }
    }
    Ok((revision, out))
}

fn heard_ago(rec: &AgentRecord, now: u64) -> Option<u64> {
    (rec.heard_unix_ms > 0).then(|| now.saturating_sub(rec.heard_unix_ms) / 1000)
}

/// Waits (at most `ack_timeout`) until every targeted host with a live
/// record has applied `revision`; hosts without one are unreachable.
pub(super) async fn wait_for_acks(
    f: &Fleet,
    client: &mut etcd_client::Client,
    targets: &[Target],
    revision: i64,
) -> Result<(Vec<HostAck>, bool), Refusal> {
    let rounds = (f.cfg.ack_timeout.as_millis() / ACK_POLL.as_millis()).max(1);
    let mut round = 0;
    loop {
        let (_, recs) = records(f, client, "fleet revoke").await?;
        let now = now_ms();
        let acks: Vec<HostAck> = recs
            .iter()
            .filter_map(|(host, (live, known))| {
                let rec = live.as_ref().or(known.as_ref())?;
                targets
                    .iter()
                    .any(|t| t.applies_to(host, &rec.groups))
                    .then(|| HostAck {
                        host: host.clone(),
                        state: match live {
                            None => "unreachable",
                            Some(l) if l.applied_revision >= revision => "applied",
                            Some(_) => "behind",
                        }
                        .into(),
                        applied_revision: rec.applied_revision,
                        heard_secs_ago: heard_ago(rec, now),
                    })
            })
            .collect();
        let waiting = acks.iter().any(|a| a.state == "behind");
        round += 1;
        if !waiting || round >= rounds {
            return Ok((acks, waiting));
        }
        tokio::time::sleep(ACK_POLL).await;
    }
}

/// `status --fleet`.
pub(crate) async fn status() -> Result<Reply, Refusal> {
    let f = fleet()?;
    let s = f.link.get();
    let now = now_ms();
    let mut view = FleetStatusView {
        host: f.cfg.host.clone(),
        groups: f.cfg.groups.clone(),
        connected: s.client.is_some(),
        error: s.error.clone(),
        store_revision: 0,
        applied_revision: s.applied_revision,
        heard_secs_ago: (s.heard_unix_ms > 0).then(|| now.saturating_sub(s.heard_unix_ms) / 1000),
        refused: s.refused.into_iter().collect(),
        hosts: Vec::new(),
    };
    if let Some(mut client) = s.client {
        if let Ok((revision, recs)) = records(f, &mut client, "status --fleet").await {
            view.store_revision = revision;
            view.hosts = recs
                .into_iter()
                .filter_map(|(host, (live, known))| {
                    let is_live = live.is_some();
                    let rec = live.or(known)?;
                    Some(FleetHostView {
                        host,
                        heard_secs_ago: heard_ago(&rec, now),
                        groups: rec.groups,
                        live: is_live,
                        applied_revision: rec.applied_revision,
                        enforced: rec.enforced,
                        refused: rec.refused,
                        policy_digest: rec.policy_digest,
                        audit_head: rec.audit_head,
                        boot_id: rec.boot_id,
                    })
                })
                .collect();
        }
    }
    Ok(Reply::FleetStatus(Box::new(view)))
}
