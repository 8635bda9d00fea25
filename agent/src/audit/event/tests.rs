use serde_json::{json, Map, Value};

use super::*;

fn map(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn docs_audit_md_lists_every_kind() {
    let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/audit.md"));
    for kind in AuditEvent::KINDS {
        assert!(
            docs.contains(&format!("`{kind}`")),
            "docs/audit.md does not describe the audit event kind `{kind}`"
        );
    }
}

fn actor() -> Actor {
    Actor {
        uid: 1000,
        user: Some("alice".into()),
        pid: Some(42),
    }
}

/// One event of every kind, every optional field set.
fn one_of_each() -> Vec<AuditEvent> {
    let s = |t: &str| t.to_string();
    let ports = vec![s("5432/tcp")];
    vec![
        AuditEvent::AgentStart {
            version: s("0.1.0"),
            cgroup: s("/sys/fs/cgroup"),
            policy_digest: s("ab"),
            pid: 7,
        },
        AuditEvent::AgentStop { pid: 7 },
        AuditEvent::Grant {
            grant_id: 1,
            segment: s("db"),
            identity: s("user:alice"),
            ports: ports.clone(),
            ttl_secs: 600,
            expires_at: s("T"),
            reason: Some(s("INC-1")),
            actor: actor(),
            request_id: Some(2),
            fleet: Some(s("h1-1")),
        },
        AuditEvent::GrantFailed {
            grant_id: 1,
            segment: s("db"),
            identity: s("uid:1"),
            actor: actor(),
            request_id: Some(2),
            error: s("full"),
        },
        AuditEvent::Request {
            request_id: 2,
            segment: s("db"),
            identity: s("uid:1"),
            ports: ports.clone(),
            ttl_secs: 60,
            reason: Some(s("r")),
            expires_at: s("T"),
            actor: actor(),
        },
        AuditEvent::Approve {
            request_id: 2,
            grant_id: 1,
            segment: s("db"),
            identity: s("uid:1"),
            ttl_secs: 30,
            requested_ttl_secs: 60,
            requested_by: actor(),
            actor: actor(),
        },
        AuditEvent::Approval {
            request_id: 2,
            segment: s("db"),
            identity: s("uid:1"),
            approvals: 1,
            required: 2,
            ttl_secs: 60,
            requested_by: actor(),
            actor: actor(),
        },
        AuditEvent::Extend {
            grant_id: 1,
            segment: s("db"),
            identity: s("uid:1"),
            ttl_secs: 60,
            expires_at: s("T2"),
            previous_expires_at: s("T1"),
            reason: Some(s("r")),
            actor: actor(),
        },
        AuditEvent::Deny {
            request_id: 2,
            segment: s("db"),
            identity: s("uid:1"),
            reason: s("no"),
            requested_by: actor(),
            actor: actor(),
        },
        AuditEvent::RequestExpire {
            request_id: 2,
            segment: s("db"),
            identity: s("uid:1"),
            requested_by: actor(),
            expired_at: s("T"),
        },
        AuditEvent::RequestDropped {
            request_id: 2,
            segment: s("db"),
            identity: s("uid:1"),
            requested_by: actor(),
            why: s("segment db left the policy"),
        },
        AuditEvent::Revoke {
            grant_id: 1,
            segment: s("db"),
            identity: s("uid:1"),
            ports: Some(ports.clone()),
            actor: actor(),
            expires_at: s("T"),
            request_id: Some(2),
            why: Some(s("gone")),
            suspended: Some(true),
            while_down: Some(true),
            usage: Some(crate::usage::Record {
                connections: 3,
                first_use: Some(s("F")),
                last_use: Some(s("L")),
            }),
        },
        AuditEvent::Expire {
            grant_id: 1,
            segment: s("db"),
            identity: s("uid:1"),
            ports: Some(ports.clone()),
            actor: actor(),
            request_id: None,
            expired_at: Some(s("T")),
            cleaned_at: Some(s("U")),
            expires_at: Some(s("T")),
            why: Some(s("w")),
            while_down: Some(true),
            reason: Some(s("idle")),
            usage: Some(crate::usage::Record {
                connections: 0,
                first_use: None,
                last_use: None,
            }),
        },
        AuditEvent::MembershipRevoke {
            segment: s("db"),
            identity: s("group:oncall"),
            uid: 1001,
            user: Some(s("alice")),
            grant_id: Some(1),
            reason: s("membership"),
            actor: actor(),
        },
        AuditEvent::MembershipAdd {
            segment: s("db"),
            identity: s("group:oncall"),
            uid: 1001,
            user: Some(s("alice")),
            grant_id: None,
            actor: actor(),
        },
        AuditEvent::Lock {
            identity: s("user:mallory"),
            reason: s("left the company"),
            include_standing: true,
            expires_at: Some(s("T")),
            actor: actor(),
        },
        AuditEvent::Unlock {
            identity: s("user:mallory"),
            actor: actor(),
            why: Some(s("ttl")),
        },
        AuditEvent::GrantSuspended {
            grant_id: 1,
            segment: s("db"),
            identity: s("uid:1"),
            why: s("w"),
            grace_secs: 60,
            until: s("T"),
            expires_at: s("T"),
            actor: actor(),
        },
        AuditEvent::GrantResumed {
            grant_id: 1,
            segment: s("db"),
            identity: s("uid:1"),
            ports: ports.clone(),
            expires_at: s("T"),
            actor: actor(),
        },
        AuditEvent::GrantRecovered {
            grant_id: 1,
            segment: s("db"),
            identity: s("uid:1"),
            ports: ports.clone(),
            actor: actor(),
            expires_at: s("T"),
            reason: s("r"),
        },
        AuditEvent::Refused {
            op: s("grant"),
            segment: s("db"),
            actor: actor(),
            why: s("w"),
            code: RefusalCode::Forbidden,
        },
        AuditEvent::PolicyReload {
            ok: false,
            digest: Some(s("d")),
            errors: Some(vec![s("e")]),
            trigger: Some(s("SIGHUP")),
            actor: Some(actor()),
        },
        AuditEvent::StateCorrupt {
            why: s("w"),
            moved_to: s("/x"),
        },
        AuditEvent::EnforcementRepaired {
            missing: vec![s("a")],
            ok: true,
            still_missing: vec![],
            cgroup: s("/c"),
            actor: actor(),
        },
        AuditEvent::Uninstall {
            actor: actor(),
            bpffs: s("/sys/fs/bpf/x"),
            via: s("cli"),
            ports: ports.clone(),
        },
        AuditEvent::Rotate {
            previous_file: s("a.1"),
        },
        AuditEvent::RecordsLost {
            count: 3,
            why: s("full"),
        },
    ]
}

#[test]
fn every_kind_round_trips_through_a_log_line() {
    let events = one_of_each();
    let kinds: Vec<&str> = events.iter().map(AuditEvent::kind).collect();
    assert_eq!(kinds, AuditEvent::KINDS, "one sample per kind, in order");
    for ev in events {
        let (kind, mut fields) = ev.clone().into_fields();
        assert_eq!(kind, ev.kind());
        // As a log line has it: the envelope around the fields.
        fields.insert("event".into(), Value::String(kind.clone()));
        fields.insert("ts".into(), json!("2026-01-01T00:00:00.000Z"));
        fields.insert("prev".into(), json!("00"));
        fields.insert("hash".into(), json!("11"));
        let line = serde_json::to_string(&fields).unwrap();
        let back = AuditEvent::from_record(&map(serde_json::from_str(&line).unwrap()));
        assert_eq!(back, ev, "{kind} did not read back as itself from {line}");
        assert_eq!(back.name(), kind);
    }
}

#[test]
fn a_known_kind_missing_a_field_is_kept_whole_as_other() {
    // An old or hand-edited `grant` without its ids: not a `Grant`, but
    // nothing of it is lost and its name is still `grant`.
    let rec = map(
        json!({"event": "grant", "identity": "uid:1", "segment": "db",
        "actor": {"uid": 0, "user": "root"}, "ts": "T"}),
    );
    let ev = AuditEvent::from_record(&rec);
    assert_eq!(ev, AuditEvent::Other(rec.clone()));
    assert_eq!((ev.kind(), ev.name()), ("other", "grant"));
    assert_eq!((ev.segment(), ev.identity()), (Some("db"), Some("uid:1")));
    assert_eq!(ev.actor(), None);
    // Not even an event name, or not as text: still a record.
    let odd = map(json!({"event": 7, "x": [1]}));
    assert_eq!(
        AuditEvent::from_record(&odd),
        AuditEvent::Other(odd.clone())
    );
    assert_eq!(AuditEvent::from_record(&odd).name(), "");
    // And it writes back as it was read.
    let (kind, fields) = AuditEvent::Other(rec.clone()).into_fields();
    assert_eq!(kind, "grant");
    let mut without = rec;
    without.remove("event");
    assert_eq!(fields, without);
}

/// The docs' sample `grant` line (from a test run of the old json!()
/// writer): the typed event writes the same fields, nulls included.
#[test]
fn a_grant_writes_the_fields_the_old_records_had() {
    let line = r#"{"actor":{"pid":15351,"uid":0,"user":"root"},"event":"grant","expires_at":"2026-11-22T16:11:56Z","grant_id":1,"hash":"86d7","identity":"uid:40001","ports":["45061/tcp"],"prev":"b577","reason":"e2e test","request_id":null,"segment":"db","ts":"2026-11-22T16:01:56.762Z","ttl_secs":600}"#;
    let mut rec = map(serde_json::from_str(line).unwrap());
    let ev = AuditEvent::from_record(&rec);
    let (kind, fields) = ev.into_fields();
    assert_eq!(kind, "grant");
    for k in ["event", "hash", "prev", "ts"] {
        rec.remove(k);
    }
    assert_eq!(fields, rec);
}

#[test]
fn optional_fields_are_absent_or_null_as_before() {
    let (_, f) = AuditEvent::PolicyReload {
        ok: true,
        digest: Some("d".into()),
        errors: None,
        trigger: Some("SIGHUP".into()),
        actor: None,
    }
    .into_fields();
    assert_eq!(
        f,
        map(json!({"ok": true, "digest": "d", "trigger": "SIGHUP"}))
    );
    let actor = Actor {
        uid: 0,
        user: None,
        pid: None,
    };
    let (_, f) = AuditEvent::GrantFailed {
        grant_id: 4,
        segment: "db".into(),
        identity: "uid:1".into(),
        actor,
        request_id: None,
        error: "full".into(),
    }
    .into_fields();
    assert_eq!(f["request_id"], Value::Null);
    assert_eq!(f["actor"], json!({"uid": 0, "user": null, "pid": null}));
}

#[test]
fn records_from_newer_versions_and_late_records_still_read() {
    let newer = map(json!({"event": "quorum_reached", "ts": "x", "votes": 3}));
    let ev = AuditEvent::from_record(&newer);
    assert_eq!(ev, AuditEvent::Other(newer.clone()));
    assert_eq!(ev.name(), "quorum_reached");
    let late = map(
        json!({"event": "agent_stop", "pid": 7, "recorded_late": true,
        "happened_at": "x", "ts": "y", "prev": "0", "hash": "1"}),
    );
    assert_eq!(
        AuditEvent::from_record(&late),
        AuditEvent::AgentStop { pid: 7 }
    );
}
