//! `grant --fleet`, `revoke --fleet`, `list --fleet`, `status --fleet`:
//! the requests (checked before sending) and their human output. Text from
//! the store reaches here escaped (`termtext::escaped` on the whole reply).
use super::table;
use crate::{
    control::{
        fleet::{
            FleetGrantView, FleetLockView, FleetLockedView, FleetRequestView, FleetRevokeView,
            FleetStatusView, HostAck,
        },
        Request,
    },
    duration::Ttl,
    fleet::layout::Target,
    identity::Identity,
};

pub(super) fn grant(
    hosts: Option<String>,
    segment: String,
    identity: String,
    ttl: Option<Ttl>,
    reason: Option<String>,
    strict: bool,
) -> Result<Request, String> {
    let hosts = hosts.ok_or("grant --fleet needs --hosts host:NAME|group:NAME|all")?;
    Target::parse(&hosts)?;
    identity
        .parse::<Identity>()
        .map_err(|e| format!("identity {identity:?}: {e}"))?;
    Ok(Request::FleetGrant {
        hosts,
        segment,
        identity,
        ttl,
        reason,
        strict,
    })
}

pub(super) fn revoke(
    id: Option<String>,
    identity: Option<String>,
    segment: Option<String>,
    hosts: Option<String>,
) -> Result<Request, String> {
    if id.is_none() && identity.is_none() && segment.is_none() {
        return Err(
            "revoke --fleet needs a fleet grant id, --identity IDENTITY or --segment S".into(),
        );
    }
    if let Some(h) = &hosts {
        Target::parse(h)?;
    }
    if let Some(i) = &identity {
        i.parse::<Identity>()
            .map_err(|e| format!("identity {i:?}: {e}"))?;
    }
    Ok(Request::FleetRevoke {
        id,
        identity,
        segment,
        hosts,
    })
}

pub(super) fn lock(
    hosts: Option<String>,
    identity: String,
    reason: String,
    ttl: Option<Ttl>,
    include_standing: bool,
) -> Result<Request, String> {
    let hosts = hosts.ok_or("lock --fleet needs --hosts host:NAME|group:NAME|all")?;
    Target::parse(&hosts)?;
    identity
        .parse::<Identity>()
        .map_err(|e| format!("identity {identity:?}: {e}"))?;
    Ok(Request::FleetLock {
        hosts,
        identity,
        reason,
        ttl,
        include_standing,
    })
}

pub(super) fn request(
    hosts: Option<String>,
    segment: String,
    ttl: Option<Ttl>,
    reason: Option<String>,
) -> Result<Request, String> {
    let hosts = hosts.ok_or("request --fleet needs --hosts host:NAME|group:NAME|all")?;
    Target::parse(&hosts)?;
    Ok(Request::FleetRequest {
        hosts,
        segment,
        ttl,
        reason,
    })
}

pub(super) fn render_request(r: &FleetRequestView) -> String {
    let mut out = format!(
        "fleet request {} by {}: {} on {} for {} ({}s){}: {}",
        r.id,
        r.requester,
        r.identity,
        r.segment,
        r.hosts,
        r.ttl_secs,
        r.reason
            .as_ref()
            .map(|x| format!(", reason {x:?}"))
            .unwrap_or_default(),
        r.state
    );
    if let Some(by) = &r.decided_by {
        out.push_str(&format!(" by {by}"));
    }
    if let Some(g) = &r.grant {
        out.push_str(&format!("; fleet grant {g}"));
    }
    out.push('\n');
    out
}

pub(super) fn unlock(identity: String, hosts: Option<String>) -> Result<Request, String> {
    if let Some(h) = &hosts {
        Target::parse(h)?;
    }
    identity
        .parse::<Identity>()
        .map_err(|e| format!("identity {identity:?}: {e}"))?;
    Ok(Request::FleetUnlock { identity, hosts })
}

fn lock_line(l: &FleetLockView) -> String {
    format!(
        "fleet lock {} for {}: {} ({}){}{} (by {} on {}, revision {})",
        l.id,
        l.hosts,
        l.identity,
        l.reason,
        l.expires_at
            .as_ref()
            .map(|e| format!(" until {e}"))
            .unwrap_or_default(),
        if l.include_standing {
            ", standing allows too"
        } else {
            ""
        },
        l.actor,
        l.origin_host,
        l.revision
    )
}

pub(super) fn render_locked(v: &FleetLockedView) -> String {
    let mut out = String::new();
    for l in &v.locks {
        out.push_str(&format!(
            "{}ed {}\n",
            v.action,
            lock_line(l).trim_start_matches("fleet lock ")
        ));
    }
    out.push_str(&acks(&v.hosts, v.acknowledged, v.revision));
    out
}

pub(super) fn grant_line(g: &FleetGrantView) -> String {
    format!(
        "fleet grant {} for {}: {} on {} until {}{} (by {} on {}, revision {})",
        g.id,
        g.hosts,
        g.identity,
        g.segment,
        g.expires_at,
        if g.strict { ", strict" } else { "" },
        g.actor,
        g.origin_host,
        g.revision
    )
}

fn ago(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) => crate::clock::human(std::time::Duration::from_secs(s)),
    }
}

pub(super) fn render_revoked(v: &FleetRevokeView) -> String {
    let mut out = String::new();
    for g in &v.revoked {
        out.push_str(&format!(
            "revoked {}\n",
            grant_line(g).trim_start_matches("fleet grant ")
        ));
    }
    out.push_str(&acks(&v.hosts, v.acknowledged, v.revision));
    out
}

/// "enforced on 2 of 3 hosts (store revision 15); not yet: h3 (applied rev 12 < 15)".
fn acks(hosts: &[HostAck], acknowledged: usize, revision: i64) -> String {
    let not_yet: Vec<String> = hosts
        .iter()
        .filter(|h| h.state != "applied")
        .map(|h| match h.state.as_str() {
            "unreachable" => format!("{} (unreachable {})", h.host, ago(h.heard_secs_ago)),
            _ => format!(
                "{} (applied rev {} < {})",
                h.host, h.applied_revision, revision
            ),
        })
        .collect();
    let mut out = format!(
        "enforced on {acknowledged} of {} hosts (store revision {revision})",
        hosts.len()
    );
    if not_yet.is_empty() {
        out.push('\n');
    } else {
        out.push_str(&format!("; not yet: {}\n", not_yet.join(", ")));
    }
    out
}

pub(super) fn render_list(grants: &[FleetGrantView], locks: &[FleetLockView]) -> String {
    let mut out: String = locks
        .iter()
        .map(|l| format!("{}\n", lock_line(l)))
        .collect();
    if grants.is_empty() {
        out.push_str("no fleet grants\n");
        return out;
    }
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                g.hosts.clone(),
                g.segment.clone(),
                g.identity.clone(),
                g.expires_at.clone(),
                g.origin_host.clone(),
                if g.strict { "strict" } else { "" }.into(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["ID", "HOSTS", "SEGMENT", "IDENTITY", "EXPIRES", "FROM", ""],
        &rows,
    ));
    out
}

pub(super) fn render_status(s: &FleetStatusView) -> String {
    let mut out = format!(
        "this host: {} (groups: {})\nstore: {}\napplied revision: {} of {}; last heard {} ago\n",
        s.host,
        if s.groups.is_empty() {
            "none".into()
        } else {
            s.groups.join(", ")
        },
        if s.connected {
            "connected".to_string()
        } else {
            format!(
                "UNREACHABLE ({}): enforcing the last state; new fleet grants refused",
                s.error.as_deref().unwrap_or("not connected yet")
            )
        },
        s.applied_revision,
        s.store_revision,
        ago(s.heard_secs_ago),
    );
    for (id, why) in &s.refused {
        out.push_str(&format!("not applied here: fleet grant {id}: {why}\n"));
    }
    let rows: Vec<Vec<String>> = s
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                h.groups.join(","),
                if h.live { "live" } else { "unreachable" }.into(),
                h.applied_revision.to_string(),
                (s.store_revision - h.applied_revision).max(0).to_string(),
                ago(h.heard_secs_ago),
                h.enforced.to_string(),
                h.refused.to_string(),
                h.audit_head.chars().take(12).collect(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &[
                "HOST",
                "GROUPS",
                "STATE",
                "APPLIED",
                "BEHIND",
                "HEARD",
                "GRANTS",
                "REFUSED",
                "AUDIT HEAD",
            ],
            &rows,
        ));
    }
    out
}
