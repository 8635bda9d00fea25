//! Issue 18 items 3-5 over the fake kernel: break-glass opens at once,
//! capped and audited, and is refused without its conditions; a grantee's
//! `extend` is a request whose approval extends the grant in place, bounded
//! by max_ttl from the approval; `request show` tells a request's history,
//! from the book and, once the book forgot it, from the audit log.
use super::*;
use crate::{
    clock,
    ledger::EntryKey,
    requests::{Now, KEEP_DECIDED},
};

const GLASS: &str = r#"
[segment.db]
ports = ["5432/tcp"]
[segment.db.jit]
max_ttl = "1h"
default_ttl = "15m"
approvers = ["uid:41001"]
require_reason = false
break_glass = true
break_glass_max_ttl = "20m"

[segment.cache]
ports = ["6379/tcp"]
[segment.cache.jit]
max_ttl = "1h"
approvers = ["uid:41001"]
break_glass = true
break_glass_max_ttl = "5m"
break_glass_by = ["uid:41003"]
"#;

fn expiry(f: &Fixture, uid: u32) -> Option<u64> {
    let seg = db_id(&f.kernel);
    f.kernel.maps().grants.get(&uid_key(seg, uid)).copied()
}

#[test]
fn break_glass_opens_at_once_capped_and_audited() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(GLASS);
    let before = clock::boot_ns();
    let g = match a.break_glass(&cred(USER), "db", None, " INC-7: primary down ") {
        Ok(Reply::BrokeGlass { grant }) => grant,
        other => panic!("{other:?}"),
    };
    assert_eq!(g.identity, format!("uid:{USER}"));
    // Open in the kernel, for break_glass_max_ttl (the default), no more.
    let deadline = expiry(&f, USER).expect("the kernel entry");
    let cap = ttl("20m").as_nanos() as u64;
    assert!(deadline >= before + cap, "{deadline} < {before} + 20m");
    assert!(deadline <= clock::boot_ns() + cap, "longer than the cap");
    // Audited as break_glass, then the grant itself, same id.
    let events = f.events();
    let at = events
        .iter()
        .position(|e| {
            matches!(e, AuditEvent::BreakGlass { grant_id, reason, ttl_secs, .. }
            if *grant_id == g.id && reason == "INC-7: primary down" && *ttl_secs == 1200)
        })
        .expect("a break_glass record");
    assert!(
        matches!(&events[at + 1], AuditEvent::Grant { grant_id, .. } if *grant_id == g.id),
        "{:?}",
        &events[at..]
    );
    // A shorter --ttl is taken as asked.
    let e = a
        .break_glass(&cred(OTHER), "db", Some(ttl("21m")), "INC-7")
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Invalid);
    assert!(e.message.contains("at most 20m"), "{}", e.message);
    a.break_glass(&cred(OTHER), "db", Some(ttl("1m")), "INC-7")
        .unwrap();
    let d = expiry(&f, OTHER).unwrap();
    assert!(d <= clock::boot_ns() + ttl("1m").as_nanos() as u64);
}

#[test]
fn break_glass_is_refused_without_its_conditions() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(GLASS);
    // No reason.
    for reason in ["", "   "] {
        let e = a.break_glass(&cred(USER), "db", None, reason).unwrap_err();
        assert_eq!(e.code, RefusalCode::Invalid);
        assert!(e.message.contains("needs a reason"), "{}", e.message);
    }
    // Not someone break_glass_by names.
    let e = a
        .break_glass(&cred(USER), "cache", None, "INC-7")
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden, "{}", e.message);
    assert!(e.message.contains("break_glass_by"), "{}", e.message);
    a.break_glass(&cred(OTHER), "cache", None, "INC-7").unwrap();
    // A locked user.
    a.lock(&cred(ROOT), &format!("uid:{USER}"), "incident", None, false)
        .unwrap();
    let e = a.break_glass(&cred(USER), "db", None, "INC-7").unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    assert!(e.message.contains("is locked"), "{}", e.message);
    assert_eq!(expiry(&f, USER), None, "nothing opened");
    // A segment without break_glass.
    let g = Fixture::new(FakeKernel::default());
    let mut b = g.start(POLICY);
    let e = b.break_glass(&cred(USER), "db", None, "INC-7").unwrap_err();
    assert!(
        e.message.contains("does not allow break-glass"),
        "{}",
        e.message
    );
    assert!(g
        .events()
        .iter()
        .all(|e| !matches!(e, AuditEvent::BreakGlass { .. } | AuditEvent::Grant { .. })));
    // Each refusal audited once, as break_glass.
    let refused = f
        .events()
        .iter()
        .filter(|e| matches!(e, AuditEvent::Refused { op, .. } if op == "break_glass"))
        .count();
    assert_eq!(refused, 4);
}

#[test]
fn a_grantees_extend_is_a_request_whose_approval_extends_in_place() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(GLASS);
    let id = granted_id(
        a.grant(
            &cred(ROOT),
            "db",
            &format!("uid:{USER}"),
            Some(ttl("30m")),
            None,
        )
        .unwrap(),
    );
    let before = expiry(&f, USER).unwrap();
    // Longer than max_ttl: refused as a request would be.
    let e = a.extend(&cred(USER), id, ttl("61m"), None).unwrap_err();
    assert!(e.message.contains("max_ttl"), "{}", e.message);
    let rid = match a.extend(&cred(USER), id, ttl("1h"), Some("INC-8")) {
        Ok(Reply::Requested { request }) => request.id,
        other => panic!("{other:?}"),
    };
    assert_eq!(expiry(&f, USER), Some(before), "nothing extended yet");
    assert!(f.events().iter().any(
        |e| matches!(e, AuditEvent::Request { request_id, extends: Some(g), .. } if *request_id == rid && *g == id)
    ));
    // Nobody approves their own request.
    let e = a.approve(&cred(USER), rid, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    // Root extending directly is bounded by max_ttl from the grant's start...
    let e = a.extend(&cred(ROOT), id, ttl("1h"), None).unwrap_err();
    assert!(
        e.message.contains("from the grant's start"),
        "{}",
        e.message
    );
    // ...an approved request is a re-approval: up to max_ttl from now.
    let writes = f.kernel.maps().writes.len();
    match a.approve(&cred(APPROVER), rid, None) {
        Ok(Reply::Approved { grant, request }) => {
            assert_eq!(grant.id, id, "the same grant");
            assert_eq!(request.grant_id, Some(id));
        }
        other => panic!("{other:?}"),
    }
    let after = expiry(&f, USER).unwrap();
    assert!(
        after >= before + ttl("29m").as_nanos() as u64,
        "{before} -> {after}"
    );
    let seg = db_id(&f.kernel);
    assert_eq!(
        f.kernel.maps().writes[writes..].to_vec(),
        vec![Write::Put(EntryKey::Local(uid_key(seg, USER)))],
        "one update of the same key, no delete: no gap"
    );
    assert!(f.events().iter().any(|e| matches!(e,
        AuditEvent::Extend { grant_id, request_id: Some(r), actor, .. }
            if *grant_id == id && *r == rid && actor.uid == APPROVER)));
    // Only one grant: the extension opened nothing new.
    match a.list() {
        Reply::List(l) => assert_eq!(l.grants.len(), 1, "{:?}", l.grants),
        other => panic!("{other:?}"),
    }
}

fn history(
    a: &mut Agent,
    f: &Fixture,
    who: u32,
    id: u64,
) -> Result<crate::control::RequestHistoryView, crate::control::Refusal> {
    let records = crate::audit::history::records_of(&f.dir.path().join("audit.jsonl"), id);
    a.request_history(&cred(who), id, records).map(|r| match r {
        Reply::RequestHistory(v) => *v,
        other => panic!("{other:?}"),
    })
}

#[test]
fn request_show_tells_the_history_from_the_book_then_from_the_audit_log() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(GLASS);
    let rid = request_id(
        a.request(&cred(USER), "db", Some(ttl("30m")), Some("INC-9"))
            .unwrap(),
    );
    let gid = granted_id(a.approve(&cred(APPROVER), rid, None).unwrap());
    // Who may see it: the requester, the segment's approvers, root.
    for who in [USER, APPROVER, ROOT] {
        let v = history(&mut a, &f, who, rid).unwrap();
        assert_eq!(v.source, "agent");
        assert_eq!(v.request.state, "approved");
    }
    let e = history(&mut a, &f, OTHER, rid).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden, "{}", e.message);
    let e = a.show_request(&cred(OTHER), rid).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden, "{}", e.message);

    let v = history(&mut a, &f, USER, rid).unwrap();
    let events: Vec<&str> = v.history.iter().map(|h| h.event.as_str()).collect();
    assert_eq!(events, ["request", "grant", "approve"], "{v:?}");
    assert_eq!(v.grant.as_ref().map(|g| g.id), Some(gid));
    assert!(v.grant.unwrap().usage.is_some(), "the kernel's count");

    // The book forgets a decided request after KEEP_DECIDED; the log does not.
    let later = Now::current();
    let later = Now {
        unix_ms: later.unix_ms + KEEP_DECIDED.as_millis() as u64 + 1000,
        boot_ns: later.boot_ns + KEEP_DECIDED.as_nanos() as u64 + 1_000_000_000,
    };
    a.requests.expire_due(later);
    assert!(a.requests.get(rid).is_none(), "forgotten by the book");
    a.revoke(&cred(ROOT), Some(gid), None, None).unwrap();
    let v = history(&mut a, &f, USER, rid).unwrap();
    assert_eq!(v.source, "audit log");
    assert_eq!(v.request.state, "approved");
    assert_eq!(v.request.grant_id, Some(gid));
    assert_eq!(v.request.reason.as_deref(), Some("INC-9"));
    assert_eq!(v.request.approvals.len(), 1);
    assert_eq!(v.request.approvals[0].uid, APPROVER);
    let events: Vec<&str> = v.history.iter().map(|h| h.event.as_str()).collect();
    assert_eq!(events, ["request", "grant", "approve", "revoke"], "{v:?}");
    let end = v.grant_end.expect("the grant's end");
    assert_eq!(end.event, "revoke");
    assert!(end.usage.is_some(), "{end:?}");
    let e = history(&mut a, &f, OTHER, rid).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    let e = history(&mut a, &f, USER, 9999).unwrap_err();
    assert_eq!(e.code, RefusalCode::NotFound);
}
