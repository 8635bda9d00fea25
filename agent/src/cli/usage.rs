//! `list --usage` and `report unused`: what the kernel counted for each
//! allow and grant, from the `list` reply (which always carries it).
//! Human output takes replies already escaped (`termtext::escaped`).
use std::process::ExitCode;

use serde::Serialize;

use super::{fail, left, refused, table};
use crate::{
    control::{self, ListView, Reply, Request, Response, UsageView},
    termtext,
};

/// One allow or grant with no use in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct Unused {
    pub segment: String,
    /// `allow` or `grant`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<u64>,
    pub identity: String,
    pub connections: u64,
    /// RFC 3339; absent when the kernel never saw it used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_use: Option<String>,
    /// For grants never used: when it was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

#[derive(Serialize)]
struct Report {
    since_secs: u64,
    unused: Vec<Unused>,
}

fn idle_for(u: &UsageView, window_secs: u64) -> bool {
    u.idle_secs.is_none_or(|idle| idle >= window_secs)
}

/// The standing allows and grants of `l` nothing used in the last
/// `window_secs`, by segment. `peer:` allows (not counted) are left out.
pub(super) fn unused(l: &ListView, window_secs: u64) -> Vec<Unused> {
    let mut out: Vec<Unused> = l
        .standing
        .iter()
        .filter_map(|a| {
            let u = a.usage.as_ref().filter(|u| idle_for(u, window_secs))?;
            Some(Unused {
                segment: a.segment.clone(),
                kind: "allow",
                grant_id: None,
                identity: a.identity.clone(),
                connections: u.connections,
                last_use: u.last_use.clone(),
                since: None,
            })
        })
        .chain(l.grants.iter().filter_map(|g| {
            let u = g.usage.as_deref().filter(|u| idle_for(u, window_secs))?;
            Some(Unused {
                segment: g.segment.clone(),
                kind: "grant",
                grant_id: Some(g.id),
                identity: g.identity.clone(),
                connections: u.connections,
                last_use: u.last_use.clone(),
                since: u.last_use.is_none().then(|| g.created_at.clone()),
            })
        }))
        .collect();
    out.sort_by(|a, b| (&a.segment, a.kind, a.grant_id).cmp(&(&b.segment, b.kind, b.grant_id)));
    out
}

fn render_unused(rows: &[Unused], window_secs: u64) -> String {
    if rows.is_empty() {
        return format!(
            "every allow and grant was used in the last {}\n",
            left(window_secs)
        );
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.segment.clone(),
                match r.grant_id {
                    Some(id) => format!("grant {id}"),
                    None => r.kind.to_string(),
                },
                r.identity.clone(),
                match (&r.last_use, &r.since) {
                    (Some(t), _) => format!("last used {t}"),
                    (None, Some(t)) => format!("never used (granted {t})"),
                    (None, None) => "never used".to_string(),
                },
            ]
        })
        .collect();
    format!(
        "unused in the last {}:\n{}",
        left(window_secs),
        table(&["SEGMENT", "ACCESS", "IDENTITY", "USE"], &rows)
    )
}

/// `list --usage` as a table.
pub(super) fn render_usage(l: &ListView) -> String {
    let cell = |u: Option<&UsageView>| -> Vec<String> {
        match u {
            None => vec!["-".into(), "-".into(), "-".into(), "-".into()],
            Some(u) => vec![
                u.connections.to_string(),
                u.first_use.clone().unwrap_or_else(|| "never".into()),
                u.last_use.clone().unwrap_or_else(|| "never".into()),
                u.idle_secs.map(left).unwrap_or_else(|| "-".into()),
            ],
        }
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for a in &l.standing {
        let mut r = vec![a.segment.clone(), "allow".into(), a.identity.clone()];
        r.extend(cell(a.usage.as_ref()));
        rows.push(r);
    }
    for g in &l.grants {
        let mut r = vec![
            g.segment.clone(),
            format!("grant {}", g.id),
            g.identity.clone(),
        ];
        r.extend(cell(g.usage.as_deref()));
        rows.push(r);
    }
    if rows.is_empty() {
        return "no standing allows and no grants\n".into();
    }
    table(
        &[
            "SEGMENT",
            "ACCESS",
            "IDENTITY",
            "CONNECTIONS",
            "FIRST USE",
            "LAST USE",
            "IDLE",
        ],
        &rows,
    )
}

/// `report unused`: asks for the list, reports what went unused.
pub(super) fn report_unused(socket: &std::path::Path, window_secs: u64, json: bool) -> ExitCode {
    let response = match control::call(socket, &Request::List {}) {
        Ok(r) => r,
        Err(e) => return fail(3, e),
    };
    let list = match response {
        Response::Error(refusal) => return refused(&refusal),
        Response::Ok(Reply::List(l)) => l,
        Response::Ok(_) => return fail(1, "the agent answered `list` with something else"),
    };
    if json {
        let report = Report {
            since_secs: window_secs,
            unused: unused(&list, window_secs),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializes")
        );
        return ExitCode::SUCCESS;
    }
    let Reply::List(list) = termtext::escaped(&Reply::List(list)) else {
        unreachable!("escaping keeps the variant")
    };
    print!(
        "{}",
        render_unused(&unused(&list, window_secs), window_secs)
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{AllowView, GrantView};

    fn usage(connections: u64, idle_secs: Option<u64>) -> Option<UsageView> {
        Some(UsageView {
            connections,
            first_use: idle_secs.map(|_| "t0".into()),
            last_use: idle_secs.map(|_| "t1".into()),
            idle_secs,
        })
    }

    fn allow(identity: &str, u: Option<UsageView>) -> AllowView {
        AllowView {
            segment: "db".into(),
            identity: identity.into(),
            ports: vec![],
            unresolved: None,
            mode: "enforce".into(),
            usage: u,
            window: None,
        }
    }

    fn grant(id: u64, u: Option<UsageView>) -> GrantView {
        GrantView {
            id,
            segment: "db".into(),
            identity: "user:bob".into(),
            ports: vec![],
            created_at: "made".into(),
            expires_at: String::new(),
            remaining_secs: 0,
            actor: String::new(),
            reason: None,
            request_id: None,
            suspended_until: None,
            usage: u.map(Box::new),
        }
    }

    #[test]
    fn unused_lists_the_never_used_and_the_long_idle_only() {
        let l = ListView {
            standing: vec![
                allow("user:never", usage(0, None)),
                allow("user:recent", usage(3, Some(10))),
                allow("user:old", usage(7, Some(100))),
                allow("peer:10.0.0.0/8", None),
            ],
            grants: vec![grant(4, usage(0, None)), grant(5, usage(1, Some(5)))],
            pending: vec![],
            locks: vec![],
        };
        let rows = unused(&l, 100);
        let ids: Vec<(&str, &str)> = rows.iter().map(|r| (r.kind, r.identity.as_str())).collect();
        assert_eq!(
            ids,
            vec![
                ("allow", "user:never"),
                ("allow", "user:old"),
                ("grant", "user:bob")
            ]
        );
        assert_eq!(rows[2].grant_id, Some(4));
        assert_eq!(rows[2].since.as_deref(), Some("made"));
        assert_eq!(rows[1].last_use.as_deref(), Some("t1"));
        // A window shorter than every idle time lists everything tracked.
        assert_eq!(unused(&l, 0).len(), 5);
        let text = render_unused(&rows, 100);
        assert!(text.contains("never used (granted made)"), "{text}");
        assert!(text.contains("last used t1"), "{text}");
    }
}
