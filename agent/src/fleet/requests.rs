//! `request`, `approve` and `deny` with `--fleet`: an access request kept
//! in the store (`requests/ID`, and its decision at `requests/ID/status`),
//! decided by one compare-and-swap transaction: the status must still be
//! `pending`, and the approval writes the decision and the fleet grant
//! together. Two approvers can never both win; the loser is told who did.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{
    layout::{Layout, Target},
    ops::{self, Fleet},
    store::call,
    value::{GrantValue, FORMAT, MAX_VALUE},
};
use crate::{
    agent::Agent,
    control::{fleet::FleetRequestView, PeerCred, Refusal, RefusalCode, Reply},
};

type Shared = Arc<Mutex<Agent>>;

/// The status a request is created with; the CAS compares against it.
const PENDING: &str = "pending";
/// How long a fleet request waits for a decision.
const REQUEST_TTL: Duration = Duration::from_secs(3600);

/// `requests/ID`, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestValue {
    pub format: u32,
    pub hosts: String,
    pub segment: String,
    /// The requester's identity (their `user:` on the host they asked from).
    pub identity: String,
    pub ttl_secs: u64,
    #[serde(default)]
    pub reason: Option<String>,
    pub requester_uid: u32,
    #[serde(default)]
    pub requester_user: Option<String>,
    pub origin_host: String,
    pub created_unix_ms: u64,
    /// Undecided after this, the request lapses.
    pub expires_unix_ms: u64,
}

/// `requests/ID/status` once decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decision {
    /// `approved` or `denied`.
    pub state: String,
    pub by: String,
    pub at_unix_ms: u64,
    #[serde(default)]
    pub grant: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

fn refuse(code: RefusalCode, msg: impl Into<String>) -> Refusal {
    Refusal::new(code, msg)
}

fn unavailable(what: &str) -> impl Fn(super::store::StoreError) -> Refusal + '_ {
    move |e| {
        refuse(
            RefusalCode::Unavailable,
            format!("{what} refused: the fleet store is unreachable ({e})"),
        )
    }
}

fn now_ms() -> u64 {
    crate::state::unix_ms(SystemTime::now())
}

fn new_id(host: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{nanos:09}", now_ms())
}

fn status_key(layout: &Layout, id: &str) -> String {
    format!("{}status", request_key(layout, id))
}

fn request_key(layout: &Layout, id: &str) -> String {
    format!("{}{id}/", layout.requests())
}

fn who(uid: u32, host: &str) -> String {
    let user = crate::actor::Actor::from_uid(uid, None)
        .user
        .map(String::from)
        .unwrap_or_else(|| format!("uid {uid}"));
    format!("{user}@{host}")
}

fn view(id: &str, r: &RequestValue, status: &str) -> FleetRequestView {
    let decision: Option<Decision> = serde_json::from_str(status).ok();
    FleetRequestView {
        id: id.to_string(),
        hosts: r.hosts.clone(),
        segment: r.segment.clone(),
        identity: r.identity.clone(),
        ttl_secs: r.ttl_secs,
        reason: r.reason.clone(),
        requester: format!(
            "{}@{}",
            r.requester_user.as_deref().unwrap_or("?"),
            r.origin_host
        ),
        state: match &decision {
            Some(d) => d.state.clone(),
            None if r.expires_unix_ms <= now_ms() => "expired".into(),
            None => PENDING.into(),
        },
        decided_by: decision.as_ref().map(|d| d.by.clone()),
        grant: decision.and_then(|d| d.grant),
    }
}

async fn on_agent<R: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&mut Agent) -> R + Send + 'static,
) -> R {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&mut shared.lock().expect("agent lock")))
        .await
        .expect("agent task")
}

/// `request --fleet --hosts H SEGMENT`.
pub(crate) async fn request(
    shared: &Shared,
    cred: PeerCred,
    hosts: String,
    segment: String,
    ttl: Option<Duration>,
    reason: Option<String>,
) -> Result<Reply, Refusal> {
    let f = ops::fleet()?;
    Target::parse(&hosts).map_err(|e| refuse(RefusalCode::Invalid, e))?;
    let seg = segment.clone();
    let (identity, ttl, reason) = on_agent(shared, move |a| {
        a.fleet_check_request(&cred, &seg, ttl, reason.as_deref())
    })
    .await?;
    let mut client = ops::client(f, "fleet request")?;
    let created = now_ms();
    let value = RequestValue {
        format: FORMAT,
        hosts,
        segment,
        identity: identity.to_string(),
        ttl_secs: ttl.as_secs(),
        reason,
        requester_uid: cred.uid,
        requester_user: crate::actor::Actor::from_uid(cred.uid, None)
            .user
            .map(String::from),
        origin_host: f.cfg.host.clone(),
        created_unix_ms: created,
        expires_unix_ms: created + REQUEST_TTL.as_millis() as u64,
    };
    let id = new_id(&f.cfg.host);
    let layout = Layout::new(&f.cfg.prefix);
    let gc = call(
        &f.cfg,
        client.lease_grant((REQUEST_TTL * 2).as_secs() as i64, None),
    )
    .await
    .map_err(unavailable("fleet request"))?
    .id();
    let opts = || Some(PutOptions::new().with_lease(gc));
    let txn = Txn::new()
        .when([Compare::create_revision(
            request_key(&layout, &id),
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::put(
                request_key(&layout, &id),
                serde_json::to_vec(&value).expect("serializes"),
                opts(),
            ),
            TxnOp::put(status_key(&layout, &id), PENDING, opts()),
        ]);
    call(&f.cfg, client.txn(txn))
        .await
        .map_err(unavailable("fleet request"))?;
    Ok(Reply::FleetRequest(Box::new(view(&id, &value, PENDING))))
}

/// The request and its status.
async fn read(
    f: &Fleet,
    client: &mut etcd_client::Client,
    id: &str,
    what: &str,
) -> Result<(RequestValue, String), Refusal> {
    if !super::config::valid_name(id) {
        return Err(refuse(RefusalCode::Invalid, "not a fleet request id"));
    }
    let layout = Layout::new(&f.cfg.prefix);
    let r = call(&f.cfg, client.get(request_key(&layout, id), None))
        .await
        .map_err(unavailable(what))?;
    let Some(kv) = r.kvs().first() else {
        return Err(refuse(
            RefusalCode::NotFound,
            format!("no fleet request {id}"),
        ));
    };
    if kv.value().len() > MAX_VALUE {
        return Err(refuse(
            RefusalCode::Invalid,
            "the stored request is too large",
        ));
    }
    let value: RequestValue = serde_json::from_slice(kv.value()).map_err(|e| {
        refuse(
            RefusalCode::Invalid,
            format!("the stored request is not valid: {e}"),
        )
    })?;
    let s = call(&f.cfg, client.get(status_key(&layout, id), None))
        .await
        .map_err(unavailable(what))?;
    let status = s
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default();
    Ok((value, status))
}

/// `approve --fleet ID` / `deny --fleet ID --reason R`.
pub(crate) async fn decide(
    shared: &Shared,
    cred: PeerCred,
    id: String,
    approve: bool,
    ttl: Option<Duration>,
    reason: Option<String>,
) -> Result<Reply, Refusal> {
    let f = ops::fleet()?;
    let what = if approve {
        "fleet approval"
    } else {
        "fleet denial"
    };
    let mut client = ops::client(f, what)?;
    let (request, status) = read(f, &mut client, &id, what).await?;
    if status != PENDING {
        return Err(already(&id, &request, &status));
    }
    if request.expires_unix_ms <= now_ms() {
        return Err(refuse(
            RefusalCode::Invalid,
            format!("fleet request {id} has expired"),
        ));
    }
    let target = Target::parse(&request.hosts).map_err(|e| refuse(RefusalCode::Invalid, e))?;
    let me = who(cred.uid, &f.cfg.host);
    let (seg, ident, requester) = (
        request.segment.clone(),
        request.identity.clone(),
        format!(
            "{}@{}",
            request.requester_user.as_deref().unwrap_or("?"),
            request.origin_host
        ),
    );
    let asked = Duration::from_secs(request.ttl_secs);
    let checked = on_agent(shared, move |a| {
        a.fleet_check_approval(&cred, &seg, &ident, &requester, &me, asked, ttl)
    })
    .await?;
    let layout = Layout::new(&f.cfg.prefix);
    let now = now_ms();
    let by = who(cred.uid, &f.cfg.host);
    let mut ops_then = Vec::new();
    let mut grant_id = None;
    if approve {
        let gid = new_id(&f.cfg.host);
        let value = GrantValue {
            format: FORMAT,
            segment: request.segment.clone(),
            identity: request.identity.clone(),
            created_unix_ms: now,
            deadline_unix_ms: now + checked.as_millis() as u64,
            actor_uid: cred.uid,
            actor_user: crate::actor::Actor::from_uid(cred.uid, None)
                .user
                .map(String::from),
            origin_host: f.cfg.host.clone(),
            reason: request.reason.clone(),
            strict: false,
        };
        let gc = call(
            &f.cfg,
            client.lease_grant((checked + Duration::from_secs(300)).as_secs() as i64, None),
        )
        .await
        .map_err(unavailable(what))?
        .id();
        ops_then.push(TxnOp::put(
            layout.grant(&target, &gid),
            serde_json::to_vec(&value).expect("serializes"),
            Some(PutOptions::new().with_lease(gc)),
        ));
        grant_id = Some(gid);
    }
    let decision = Decision {
        state: if approve { "approved" } else { "denied" }.into(),
        by,
        at_unix_ms: now,
        grant: grant_id,
        reason: if approve { None } else { reason },
    };
    let decision_text = serde_json::to_string(&decision).expect("serializes");
    ops_then.push(TxnOp::put(
        status_key(&layout, &id),
        decision_text.clone(),
        Some(PutOptions::new().with_ignore_lease()),
    ));
    // The compare-and-swap: only while the status still says pending.
    let txn = Txn::new()
        .when([Compare::value(
            status_key(&layout, &id),
            CompareOp::Equal,
            PENDING,
        )])
        .and_then(ops_then);
    let done = call(&f.cfg, client.txn(txn))
        .await
        .map_err(unavailable(what))?;
    if !done.succeeded() {
        let (request, status) = read(f, &mut client, &id, what).await?;
        return Err(already(&id, &request, &status));
    }
    Ok(Reply::FleetRequest(Box::new(view(
        &id,
        &request,
        &decision_text,
    ))))
}

fn already(id: &str, request: &RequestValue, status: &str) -> Refusal {
    let v = view(id, request, status);
    refuse(
        RefusalCode::Invalid,
        format!(
            "fleet request {id} was decided already: {} by {}",
            v.state,
            v.decided_by.as_deref().unwrap_or("?")
        ),
    )
}
