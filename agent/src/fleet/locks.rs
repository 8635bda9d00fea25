//! `lock --fleet` and `unlock --fleet`: a lock of one identity written to
//! `locks/{target}/ID` (with a GC lease after its own expiry, if it has
//! one), then the same wait for the targeted hosts as a revoke. Who may:
//! root and this host's `lock_admins`. Each host imposes it as a local
//! lock (`agent/fleet.rs`, through the watch).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};

use super::{
    layout::{Layout, Target},
    ops::{
        self, client, fleet, on_agent, refuse, store_err, wait_for_acks, Fleet, Shared, GC_MARGIN,
    },
    store::call,
    value::{LockValue, FORMAT},
};
use crate::control::{
    fleet::{FleetLockView, FleetLockedView, HostAck},
    PeerCred, Refusal, RefusalCode, Reply,
};

pub(super) fn view(id: &str, target: &Target, v: &LockValue, revision: i64) -> FleetLockView {
    FleetLockView {
        id: id.to_string(),
        hosts: target.to_string(),
        identity: v.identity.clone(),
        reason: v.reason.clone(),
        include_standing: v.include_standing,
        expires_at: v
            .expires_unix_ms
            .map(|e| crate::clock::rfc3339(UNIX_EPOCH + Duration::from_millis(e))),
        actor: format!(
            "{} (uid {})",
            v.actor_user.as_deref().unwrap_or("?"),
            v.actor_uid
        ),
        origin_host: v.origin_host.clone(),
        revision,
    }
}

type LockRow = (Vec<u8>, Target, String, LockValue, i64);

pub(super) async fn listing(
    f: &Fleet,
    client: &mut etcd_client::Client,
    what: &str,
) -> Result<Vec<LockRow>, Refusal> {
    let layout = Layout::new(&f.cfg.prefix);
    let r = call(
        &f.cfg,
        client.get(layout.locks(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(store_err(what))?;
    Ok(r.kvs()
        .iter()
        .filter_map(|kv| {
            let (t, id) = layout.parse_lock(kv.key())?;
            let (v, _) = LockValue::parse(kv.value()).ok()?;
            Some((kv.key().to_vec(), t, id, v, kv.mod_revision()))
        })
        .collect())
}

fn may_lock_refusal(cred: &PeerCred, what: &str) -> Refusal {
    refuse(
        RefusalCode::Forbidden,
        format!(
            "uid {} may not {what} identities across the fleet: only root and this host's lock_admins may",
            cred.uid
        ),
    )
}

/// `lock --fleet`: written with its own deadline (if any) and a GC lease
/// after it; waits for the targeted hosts like a revoke.
pub(crate) async fn lock(
    shared: &Shared,
    cred: PeerCred,
    hosts: String,
    identity: String,
    reason: String,
    ttl: Option<Duration>,
    include_standing: bool,
) -> Result<Reply, Refusal> {
    let f = fleet()?;
    let target = Target::parse(&hosts).map_err(|e| refuse(RefusalCode::Invalid, e))?;
    let parsed: crate::identity::Identity = identity
        .parse()
        .map_err(|e| refuse(RefusalCode::Invalid, format!("identity {identity:?}: {e}")))?;
    let reason = reason.trim().to_string();
    if reason.is_empty() {
        return Err(refuse(
            RefusalCode::Invalid,
            "a lock needs a reason (--reason TEXT): it is shown to everyone it refuses",
        ));
    }
    if !on_agent(shared, move |a| a.fleet_may_lock(&cred)).await {
        return Err(may_lock_refusal(&cred, "lock"));
    }
    let mut client = client(f, "fleet lock")?;
    let created = ops::now_ms();
    let value = LockValue {
        format: FORMAT,
        identity: parsed.to_string(),
        reason,
        include_standing,
        created_unix_ms: created,
        expires_unix_ms: ttl.map(|t| created + t.as_millis() as u64),
        actor_uid: cred.uid,
        actor_user: crate::actor::Actor::from_uid(cred.uid, None)
            .user
            .map(String::from),
        origin_host: f.cfg.host.clone(),
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let id = format!("{}-{created}-{nanos:09}", f.cfg.host);
    let key = Layout::new(&f.cfg.prefix).lock(&target, &id);
    let options = match ttl {
        Some(t) => {
            let gc = call(
                &f.cfg,
                client.lease_grant((t + GC_MARGIN).as_secs() as i64, None),
            )
            .await
            .map_err(store_err("fleet lock"))?
            .id();
            Some(PutOptions::new().with_lease(gc))
        }
        None => None,
    };
    let bytes = serde_json::to_vec(&value).expect("values serialize");
    let done = call(&f.cfg, client.put(key, bytes, options))
        .await
        .map_err(store_err("fleet lock"))?;
    let revision = done.header().map_or(0, |h| h.revision());
    let (hosts, timed_out) =
        wait_for_acks(f, &mut client, std::slice::from_ref(&target), revision).await?;
    tracing::info!(fleet = %id, hosts = %target, identity = %value.identity, revision, "fleet lock written");
    Ok(locked_reply(
        "lock",
        vec![view(&id, &target, &value, revision)],
        revision,
        hosts,
        timed_out,
    ))
}

fn locked_reply(
    action: &str,
    locks: Vec<FleetLockView>,
    revision: i64,
    hosts: Vec<HostAck>,
    timed_out: bool,
) -> Reply {
    let acknowledged = hosts.iter().filter(|h| h.state == "applied").count();
    Reply::FleetLocked(Box::new(FleetLockedView {
        action: action.into(),
        locks,
        revision,
        hosts,
        acknowledged,
        timed_out,
    }))
}

/// `unlock --fleet`: removes every fleet lock of `identity` (only those
/// for `hosts` when given).
pub(crate) async fn unlock(
    shared: &Shared,
    cred: PeerCred,
    identity: String,
    hosts: Option<String>,
) -> Result<Reply, Refusal> {
    let f = fleet()?;
    let only = ops::only_hosts(hosts.as_deref())?;
    let parsed: crate::identity::Identity = identity
        .parse()
        .map_err(|e| refuse(RefusalCode::Invalid, format!("identity {identity:?}: {e}")))?;
    if !on_agent(shared, move |a| a.fleet_may_lock(&cred)).await {
        return Err(may_lock_refusal(&cred, "unlock"));
    }
    let mut client = client(f, "fleet unlock")?;
    let selected: Vec<LockRow> = listing(f, &mut client, "fleet unlock")
        .await?
        .into_iter()
        .filter(|(_, t, _, v, _)| {
            v.identity == parsed.to_string() && only.as_ref().is_none_or(|o| o == t)
        })
        .collect();
    if selected.is_empty() {
        return Err(refuse(
            RefusalCode::NotFound,
            format!("{parsed} has no fleet lock; nothing unlocked"),
        ));
    }
    let ops: Vec<TxnOp> = selected
        .iter()
        .map(|(k, ..)| TxnOp::delete(k.clone(), None))
        .collect();
    let r = call(&f.cfg, client.txn(Txn::new().and_then(ops)))
        .await
        .map_err(store_err("fleet unlock"))?;
    let revision = r.header().map_or(0, |h| h.revision());
    let targets: Vec<Target> = selected.iter().map(|(_, t, ..)| t.clone()).collect();
    let (hosts, timed_out) = wait_for_acks(f, &mut client, &targets, revision).await?;
    let views = selected
        .iter()
        .map(|(_, t, id, v, rev)| view(id, t, v, *rev))
        .collect();
    Ok(locked_reply("unlock", views, revision, hosts, timed_out))
}
