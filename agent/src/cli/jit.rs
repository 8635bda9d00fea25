//! The client side of the just-in-time workflow: `request --wait` (poll the
//! agent until the request is decided), the arguments of `explain`, and how
//! requests and explanations look to people.
use std::{
    path::Path,
    process::ExitCode,
    thread,
    time::{Duration, Instant, SystemTime},
};

use super::{fail, left, refused, table, unreachable};
use crate::{
    control::{self, Reply, Request, RequestView, Response},
    explain::{self, ExplainView},
    identity::Identity,
    termtext::escaped,
};

/// How often `request --wait` asks the agent.
const POLL: Duration = Duration::from_millis(200);
/// How long past the request's own expiry `--wait` keeps asking, for the
/// agent's expiry timer to fire and be seen.
const GRACE: Duration = Duration::from_secs(5);

/// "3m 10s ago" / "in 59m" for an RFC 3339 time; the time itself if unparsable.
fn relative(rfc3339: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339(rfc3339) else {
        return rfc3339.to_string();
    };
    let now = SystemTime::now();
    match t.duration_since(now) {
        Ok(ahead) => format!("in {}", left(ahead.as_secs())),
        Err(behind) if behind.duration().as_secs() == 0 => "just now".into(),
        Err(behind) => format!("{} ago", left(behind.duration().as_secs())),
    }
}

fn request_line(r: &RequestView) -> String {
    let mut s = format!(
        "request {}: {} → {} ({}) for {}",
        r.id,
        r.identity,
        r.segment,
        r.ports.join(", "),
        left(r.ttl_secs)
    );
    if let Some(g) = r.extends {
        s.push_str(&format!(" more on grant {g}"));
    }
    match r.state.as_str() {
        "pending" if r.approvals_required > 1 => s.push_str(&format!(
            ", pending with {}; lapses {} unless decided (`portcullis approve {}` or `portcullis deny {} --reason TEXT`)",
            approvals_of(r),
            relative(&r.expires_at),
            r.id,
            r.id
        )),
        "pending" => s.push_str(&format!(
            ", pending; lapses {} unless decided (`portcullis approve {}` or `portcullis deny {} --reason TEXT`)",
            relative(&r.expires_at),
            r.id,
            r.id
        )),
        _ => {
            s.push_str(": ");
            s.push_str(&r.outcome);
        }
    }
    s
}

/// "1 of 2 approvals (alice (uid 1001))".
fn approvals_of(r: &RequestView) -> String {
    let mut s = format!(
        "{} of {} approvals",
        r.approvals.len(),
        r.approvals_required
    );
    if !r.approvals.is_empty() {
        let who: Vec<&str> = r.approvals.iter().map(|a| a.by.as_str()).collect();
        s.push_str(&format!(" ({})", who.join(", ")));
    }
    s
}

/// The final word of a decided request, for the requester.
fn outcome_line(r: &RequestView) -> String {
    match (r.state.as_str(), r.grant_id) {
        ("approved", Some(g)) => format!(
            "request {} approved by {}: grant {g} opens {} ({}) for {}",
            r.id,
            r.decided_by.as_deref().unwrap_or("?"),
            r.segment,
            r.ports.join(", "),
            left(r.granted_ttl_secs.unwrap_or(r.ttl_secs))
        ),
        ("denied", _) => format!(
            "request {} denied by {}: {}",
            r.id,
            r.decided_by.as_deref().unwrap_or("?"),
            r.decision_reason.as_deref().unwrap_or("")
        ),
        _ => format!("request {} {}", r.id, r.outcome),
    }
}

pub(super) fn render_requested(r: &RequestView) -> String {
    format!("{}\n", request_line(r))
}

pub(super) fn render_decided(r: &RequestView) -> String {
    format!("{}\n", outcome_line(r))
}

pub(super) fn render_request(r: &RequestView) -> String {
    format!("{}\n", request_line(r))
}

/// The table of pending requests (empty string when there are none).
pub(super) fn pending_table(requests: &[RequestView]) -> String {
    if requests.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.segment.clone(),
                r.identity.clone(),
                left(r.ttl_secs),
                relative(&r.created_at),
                relative(&r.expires_at),
                format!("{} of {}", r.approvals.len(), r.approvals_required),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "REQUEST",
            "SEGMENT",
            "IDENTITY",
            "TTL",
            "ASKED",
            "LAPSES",
            "APPROVALS",
            "REASON",
        ],
        &rows,
    )
}

pub(super) fn render_pending(requests: &[RequestView]) -> String {
    if requests.is_empty() {
        "no pending requests\n".into()
    } else {
        pending_table(requests)
    }
}

pub(super) fn render_explain(v: &ExplainView) -> String {
    let mut out = match &v.segment {
        None if v.segment_id == 0 => format!("{}: in no segment, not protected\n", v.port),
        None => format!(
            "{}: segment id {} (unknown to the agent)\n",
            v.port, v.segment_id
        ),
        Some(s) => format!("{}: segment {s} (id {})\n", v.port, v.segment_id),
    };
    out.push_str(&format!("subject: {}\n", v.subject));
    if !v.checks.is_empty() {
        let rows: Vec<Vec<String>> = v
            .checks
            .iter()
            .map(|c| {
                let entry = match (c.in_kernel, c.live, c.never, c.remaining_secs) {
                    (false, ..) => "none".to_string(),
                    (true, true, true, _) => "live, never expires".to_string(),
                    (true, true, false, Some(s)) => format!("live, {} left", left(s)),
                    (true, true, false, None) => "live".to_string(),
                    (true, false, ..) => "expired (not yet swept)".to_string(),
                };
                vec![c.key.clone(), entry, c.sources.join("; ")]
            })
            .collect();
        out.push_str(&table(&["KEY", "KERNEL ENTRY", "SOURCE"], &rows));
    }
    let audit = v.mode.as_deref() == Some("audit");
    let verdict = match (v.allowed, audit) {
        (true, _) => "ALLOW",
        (false, false) => "DENY",
        (false, true) => "WOULD DENY (segment in audit mode: let through, logged)",
    };
    if let Some(mode) = &v.mode {
        out.push_str(&format!("mode: {mode}\n"));
    }
    match v.remaining_secs {
        Some(s) => out.push_str(&format!("{verdict} for {}: {}\n", left(s), v.decided_by)),
        None => out.push_str(&format!("{verdict}: {}\n", v.decided_by)),
    }
    for n in &v.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}

/// Builds the `explain` request from `[IDENTITY] PORT/PROTO` and `--pid`.
pub(super) fn explain_request(args: Vec<String>, pid: Option<u32>) -> Result<Request, String> {
    let (identity, port) = match (pid, args.as_slice()) {
        (Some(_), [port]) => (None, port.clone()),
        (Some(_), _) => return Err("with --pid, explain takes only PORT/PROTO".into()),
        (None, [identity, port]) => {
            identity
                .parse::<Identity>()
                .map_err(|e| format!("identity {identity:?}: {e}"))?;
            (Some(identity.clone()), port.clone())
        }
        (None, _) => {
            return Err("explain takes IDENTITY PORT/PROTO, or --pid PID PORT/PROTO".into())
        }
    };
    explain::parse_port(&port).map_err(|e| e.to_string())?;
    Ok(Request::Explain {
        identity,
        pid,
        port,
    })
}

fn print_json(response: &Response) {
    println!(
        "{}",
        serde_json::to_string_pretty(response).expect("serializes")
    );
}

/// `request --wait`: files the request, then asks the agent every
/// [`POLL`] until it is decided or its own expiry (plus [`GRACE`]) has
/// passed. Exit 0 when approved, 1 when denied, expired or refused.
pub(super) fn request_and_wait(socket: &Path, request: Request, json: bool) -> ExitCode {
    let first = match control::call(socket, &request) {
        Ok(r) => r,
        Err(e) => return unreachable(e, json),
    };
    let filed = match first {
        Response::Ok(Reply::Requested { request }) => request,
        Response::Error(refusal) if !json => return refused(&refusal),
        other => {
            print_json(&other);
            return ExitCode::from(1);
        }
    };
    if !json {
        print!("{}", render_requested(&escaped(&*filed)));
        eprintln!(
            "portcullis: waiting for a decision on request {}…",
            filed.id
        );
    }
    let deadline = Instant::now() + Duration::from_secs(filed.remaining_secs) + GRACE;
    let mut unreachable_said = false;
    loop {
        thread::sleep(POLL);
        match control::call(socket, &Request::ShowRequest { id: filed.id }) {
            Ok(Response::Ok(Reply::Request { request })) if request.state != "pending" => {
                let approved = request.state == "approved";
                if json {
                    print_json(&Response::Ok(Reply::Request { request }));
                } else {
                    print!("{}", render_decided(&escaped(&*request)));
                }
                return if approved {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                };
            }
            Ok(Response::Ok(_)) => {}
            // Too many connections from this user right now (see
            // connlimit): ask again at the next poll.
            Ok(Response::Error(refusal)) if refusal.code == control::RefusalCode::Unavailable => {}
            Ok(Response::Error(refusal)) => {
                if json {
                    print_json(&Response::Error(refusal));
                    return ExitCode::from(1);
                }
                return refused(&refusal);
            }
            // The agent may be restarting: keep asking until the deadline.
            Err(e) if !unreachable_said => {
                eprintln!("portcullis: {e}; still waiting");
                unreachable_said = true;
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return fail(
                1,
                format!(
                    "request {} was still not decided at its expiry ({})",
                    filed.id, filed.expires_at
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: &str) -> RequestView {
        RequestView {
            id: 4,
            segment: "db".into(),
            identity: "user:alice".into(),
            ports: vec!["5432/tcp".into()],
            requester: "alice (uid 1000)".into(),
            ttl_secs: 1800,
            reason: Some("INC-1".into()),
            created_at: "2000-01-01T00:00:00Z".into(),
            expires_at: "2026-01-01T01:00:00Z".into(),
            remaining_secs: 0,
            state: state.into(),
            outcome: "denied by bob (uid 1001): not now".into(),
            grant_id: None,
            granted_ttl_secs: None,
            decided_by: Some("bob (uid 1001)".into()),
            decided_at: None,
            decision_reason: Some("not now".into()),
            approvals: Vec::new(),
            approvals_required: 1,
            extends: None,
        }
    }

    #[test]
    fn a_pending_request_that_needs_two_approvals_says_how_many_it_has() {
        let mut r = view("pending");
        r.approvals_required = 2;
        r.approvals.push(control::ApprovalView {
            by: "bob (uid 1001)".into(),
            uid: 1001,
            at: "2026-01-01T00:10:00Z".into(),
            ttl_secs: 1800,
        });
        assert!(
            request_line(&r).contains(", pending with 1 of 2 approvals (bob (uid 1001)); lapses"),
            "{}",
            request_line(&r)
        );
        let t = pending_table(&[r]);
        let mut lines = t.lines();
        assert!(lines.next().unwrap().contains("APPROVALS"), "{t}");
        assert!(lines.next().unwrap().contains("  1 of 2  "), "{t}");
        // One approval needed: the line reads as before.
        assert!(!request_line(&view("pending")).contains("approvals"));
    }

    #[test]
    fn explain_arguments() {
        let r = explain_request(vec!["user:alice".into(), "5432/tcp".into()], None).unwrap();
        assert!(matches!(
            r,
            Request::Explain {
                identity: Some(_),
                pid: None,
                ..
            }
        ));
        let r = explain_request(vec!["5432/tcp".into()], Some(7)).unwrap();
        assert!(matches!(
            r,
            Request::Explain {
                identity: None,
                pid: Some(7),
                ..
            }
        ));
        assert!(explain_request(vec!["5432/tcp".into()], None).is_err());
        assert!(explain_request(vec!["user:alice".into(), "5432".into()], None).is_err());
        assert!(explain_request(vec!["bad".into(), "5432/tcp".into()], None).is_err());
    }

    #[test]
    fn outcomes_read_as_sentences() {
        assert_eq!(
            outcome_line(&view("denied")),
            "request 4 denied by bob (uid 1001): not now"
        );
        let mut approved = view("approved");
        approved.grant_id = Some(5);
        approved.granted_ttl_secs = Some(600);
        assert_eq!(
            outcome_line(&approved),
            "request 4 approved by bob (uid 1001): grant 5 opens db (5432/tcp) for 10m"
        );
    }

    #[test]
    fn pending_table_has_a_row_per_request() {
        let t = pending_table(&[view("pending")]);
        assert!(t.starts_with("REQUEST"), "{t}");
        assert!(
            t.contains("user:alice") && t.contains("30m") && t.contains("ago"),
            "{t}"
        );
        assert_eq!(render_pending(&[]), "no pending requests\n");
    }
}
