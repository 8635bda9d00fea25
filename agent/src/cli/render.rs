//! Human-readable output of replies: tables for `list` and `status`, one
//! line per grant, and (through [`super::jit`]) requests and explanations.
//! Callers pass replies already escaped ([`crate::termtext::escaped`]);
//! `--json` output does not come here.
use std::time::Duration;

use super::jit;
use crate::{
    clock,
    control::{GrantView, ListView, LockView, Reply, StatusView},
};

pub(super) fn left(secs: u64) -> String {
    clock::human(Duration::from_secs(secs))
}

/// A plain text table with a header row.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn grant_line(g: &GrantView) -> String {
    format!(
        "grant {}: {} → {} ({}) for {}, until {}",
        g.id,
        g.identity,
        g.segment,
        g.ports.join(", "),
        left(g.remaining_secs),
        g.expires_at
    )
}

pub(crate) fn render(reply: &Reply) -> String {
    match reply {
        Reply::Discovered(v) => super::suggest::render_discovery(v),
        Reply::Granted { grant } => format!("{}\n", grant_line(grant)),
        Reply::Revoked { grants } if grants.is_empty() => {
            "no matching grants; nothing revoked\n".into()
        }
        Reply::Revoked { grants } => grants
            .iter()
            .map(|g| format!("revoked {}\n", grant_line(g).trim_start_matches("grant ")))
            .collect(),
        Reply::List(list) => render_list(list),
        Reply::Status(status) => render_status(status),
        Reply::Requested { request } | Reply::Request { request } => jit::render_request(request),
        Reply::Approved { request, grant } => {
            format!("{}{}\n", jit::render_decided(request), grant_line(grant))
        }
        Reply::Denied { request } => jit::render_decided(request),
        Reply::Extended { grant } => format!("extended: {}\n", grant_line(grant)),
        Reply::Pending { requests } => jit::render_pending(requests),
        Reply::Explained(view) => jit::render_explain(view),
        Reply::Uninstalled {
            bpffs,
            removed,
            pid,
            ports,
        } => format!(
            "the agent (pid {pid}) removed {removed} pinned object(s) under {bpffs}; ports are no longer protected: {}\n",
            ports.join(", ")
        ),
        Reply::Locked { lock, revoked } => {
            let mut out = format!("locked {}\n", lock_line(lock));
            for g in revoked {
                out.push_str(&format!(
                    "revoked {}\n",
                    grant_line(g).trim_start_matches("grant ")
                ));
            }
            out
        }
        Reply::Unlocked { lock } => format!("unlocked {}\n", lock.identity),
        // The records of a stream are printed by `super::stream`.
        Reply::Stream { .. } => String::new(),
        Reply::FleetGranted { grant } => format!("{}\n", super::fleet::grant_line(grant)),
        Reply::FleetRevoked(v) => super::fleet::render_revoked(v),
        Reply::FleetList { grants, locks } => super::fleet::render_list(grants, locks),
        Reply::FleetLocked(v) => super::fleet::render_locked(v),
        Reply::FleetRequest(r) => super::fleet::render_request(r),
        Reply::FleetStatus(s) => super::fleet::render_status(s),
        Reply::Debug {
            on,
            dropped,
            lines_per_sec,
        } => format!(
            "kernel debug lines are {} (target portcullis::kernel, at most {lines_per_sec} a second per CPU; {dropped} dropped by that limit since the programs were loaded)\n",
            if *on { "on" } else { "off" }
        ),
    }
}

/// A `status` reply whose kernel check found enforcement incomplete.
/// Also while the agent cannot write its journal (it refuses grants then).
pub(super) fn not_enforcing(reply: &Reply) -> bool {
    matches!(reply, Reply::Status(s) if s.enforcement.as_ref().is_some_and(|e| !e.ok) || s.journal_failing.is_some())
}

fn lock_line(l: &LockView) -> String {
    format!(
        "{}: {} (by {} at {}{}{})",
        l.identity,
        l.reason,
        l.actor,
        l.created_at,
        l.expires_at
            .as_ref()
            .map(|e| format!(", until {e}"))
            .unwrap_or_default(),
        if l.include_standing {
            ", standing allows suspended"
        } else {
            ""
        }
    )
}

fn render_locks(locks: &[LockView]) -> String {
    locks
        .iter()
        .map(|l| format!("LOCKED {}\n", lock_line(l)))
        .collect()
}

/// Whether a reply is a "no" that scripts test with the exit code:
/// `status` while the kernel lacks part of the enforcement, `explain`
/// when the answer is DENY (as `kubectl auth can-i` exits 1 on "no"; a
/// segment in audit mode lets the connection through, so its WOULD DENY
/// exits 0).
pub(super) fn exits_one(reply: &Reply) -> bool {
    not_enforcing(reply)
        // A fleet revoke some targeted host has not acknowledged yet.
        || matches!(reply, Reply::FleetRevoked(v) if v.acknowledged < v.hosts.len())
        || matches!(reply, Reply::FleetLocked(v) if v.acknowledged < v.hosts.len())
        || matches!(reply, Reply::Explained(v) if !v.allowed && v.mode.as_deref() != Some("audit"))
}

fn render_list(l: &ListView) -> String {
    let mut out = render_locks(&l.locks);
    if l.standing.is_empty() && l.grants.is_empty() && l.pending.is_empty() {
        out.push_str("no standing allows, no grants and no pending requests\n");
        return out;
    }
    if !l.standing.is_empty() {
        let rows: Vec<Vec<String>> = l
            .standing
            .iter()
            .map(|a| {
                vec![
                    a.segment.clone(),
                    a.identity.clone(),
                    a.ports.join(","),
                    a.mode.clone(),
                    a.unresolved
                        .clone()
                        .map(|u| format!("not resolved: {u}"))
                        .unwrap_or_else(|| "standing".into()),
                ]
            })
            .collect();
        out.push_str(&table(
            &["SEGMENT", "IDENTITY", "PORTS", "MODE", "ACCESS"],
            &rows,
        ));
    }
    if !l.grants.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        let rows: Vec<Vec<String>> = l
            .grants
            .iter()
            .map(|g| {
                vec![
                    g.id.to_string(),
                    g.segment.clone(),
                    g.identity.clone(),
                    match &g.suspended_until {
                        Some(_) => format!("{} (suspended)", left(g.remaining_secs)),
                        None => left(g.remaining_secs),
                    },
                    g.actor.clone(),
                    g.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ID", "SEGMENT", "IDENTITY", "LEFT", "GRANTED BY", "REASON"],
            &rows,
        ));
    }
    if !l.pending.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&jit::pending_table(&l.pending));
    }
    out
}

fn render_status(s: &StatusView) -> String {
    let enforcing = match &s.enforcement {
        Some(e) if !e.ok => "NOT FULLY ENFORCING",
        _ => "enforcing",
    };
    let mut out = render_locks(&s.locks);
    out += &format!(
        "portcullis {} {enforcing} on cgroup {}\nprograms (as the kernel has them): {}\npins: {}\npolicy: {} ({} file(s))\ngrants: {} live, {} map entries of {}; peer capacity {}\nlocal addresses: {}\n",
        s.version,
        s.cgroup,
        s.programs.join(", "),
        s.pin_dir,
        &s.policy_digest[..s.policy_digest.len().min(12)],
        s.policy_files.len(),
        s.grants,
        s.grant_entries,
        s.grant_capacity,
        s.peer_capacity,
        s.local_addresses,
    );
    for f in &s.peer_filters {
        out.push_str(&format!("peer filter on {}: {}\n", f.iface, f.mode));
    }
    if let Some(e) = &s.enforcement {
        for m in &e.missing {
            out.push_str(&format!("MISSING in the kernel: {m}\n"));
        }
        if let Some(r) = &e.last_repair {
            out.push_str(&format!(
                "enforcement repaired {} time(s); last at {}{}: {}\n",
                e.repairs,
                r.at,
                if r.ok { "" } else { " (FAILED)" },
                r.missing.join("; ")
            ));
        }
        if let Some(at) = &e.cgroup_recreated_at {
            out.push_str(&format!(
                "attach cgroup was removed and recreated; programs re-attached to the new one at {at}\n"
            ));
        }
    }
    match &s.audit_failing {
        Some(why) => out.push_str(&format!(
            "audit log: {} CANNOT BE WRITTEN ({why}); new grants and approvals are refused until it can, revocations still work\n",
            s.audit_log
        )),
        None => out.push_str(&format!("audit log: {}\n", s.audit_log)),
    }
    if let Some(why) = &s.journal_failing {
        out.push_str(&format!(
            "journal: {} CANNOT BE WRITTEN ({why}); new grants, requests and approvals are refused until it can, revocations still work\n",
            s.journal
        ));
    } else if !s.journal.is_empty() {
        out.push_str(&format!("journal: {}\n", s.journal));
    }
    if let Some(d) = &s.deny_log {
        out.push_str(&format!(
            "deny log: {} ({} denies read, {} logged, {} suppressed by the rate limit)\n",
            d.path, d.received, d.logged, d.suppressed
        ));
        if d.write_failures > 0 {
            out.push_str(&format!(
                "WARNING: the deny log could not be written {} time(s): those denies are counted (metrics) but not logged; check that {} is writable\n",
                d.write_failures, d.path
            ));
        }
    }
    if let Some(r) = &s.last_reload {
        out.push_str(&format!(
            "last reload: {} {}\n",
            r.at,
            if r.ok {
                "ok".to_string()
            } else {
                format!("FAILED:\n  {}", r.errors.join("\n  "))
            }
        ));
    }
    for w in &s.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .segments
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.ports.join(","),
                g.mode.clone(),
                g.standing.to_string(),
                g.grants.to_string(),
                g.allowed.to_string(),
                g.denied.to_string(),
                g.would_deny.to_string(),
                g.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SEGMENT",
            "PORTS",
            "MODE",
            "STANDING",
            "GRANTS",
            "ALLOWED",
            "DENIED",
            "WOULD_DENY",
            "DESCRIPTION",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
