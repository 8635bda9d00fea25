//! `extend`: a live grant's later expiry, written in place (puts, never a
//! delete), bounded by max_ttl from the grant's start, for root and
//! approvers only, journaled and audited.
use super::*;
use crate::{
    clock,
    journal::{Journal, Op},
    ledger::EntryKey,
};

fn grant(a: &mut Agent, by: u32, to: u32, ttl_text: &str) -> u64 {
    granted_id(
        a.grant(
            &cred(by),
            "db",
            &format!("uid:{to}"),
            Some(ttl(ttl_text)),
            None,
        )
        .unwrap(),
    )
}

fn expiry(f: &Fixture, uid: u32) -> u64 {
    let seg = db_id(&f.kernel);
    f.kernel.maps().grants[&uid_key(seg, uid)]
}

#[test]
fn extend_lengthens_the_kernel_expiry_in_place() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let id = grant(&mut a, APPROVER, USER, "5m");
    let before = expiry(&f, USER);
    let writes = f.kernel.maps().writes.len();
    match a.extend(&cred(APPROVER), id, ttl("30m"), Some("INC-2 still open")) {
        Ok(Reply::Extended { grant }) => assert_eq!(grant.id, id),
        other => panic!("{other:?}"),
    }
    let after = expiry(&f, USER);
    assert!(
        after >= before + ttl("25m").as_nanos() as u64,
        "{before} -> {after}"
    );
    let new_writes = f.kernel.maps().writes[writes..].to_vec();
    let seg = db_id(&f.kernel);
    assert_eq!(
        new_writes,
        vec![Write::Put(EntryKey::Local(uid_key(seg, USER)))],
        "one update of the same key, no delete"
    );
    // The deadline the agent keeps moved too: no early expiry.
    assert!(a.next_deadline().unwrap() >= clock::deadline_after(ttl("25m")));
    let extend = f.events().into_iter().find_map(|e| match e {
        AuditEvent::Extend {
            grant_id,
            ttl_secs,
            reason,
            actor,
            ..
        } => Some((grant_id, ttl_secs, reason, actor.uid)),
        _ => None,
    });
    assert_eq!(
        extend,
        Some((id, 1800, Some("INC-2 still open".to_string()), APPROVER))
    );
}

#[test]
fn extend_is_bounded_by_max_ttl_from_the_grants_start_and_never_shortens() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let id = grant(&mut a, ROOT, USER, "30m");
    // max_ttl is 1h from the start: 59m from now fits, 61m does not.
    let e = a.extend(&cred(ROOT), id, ttl("61m"), None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Invalid);
    assert!(
        e.message.contains("at most 1h from the grant's start"),
        "{}",
        e.message
    );
    let e = a.extend(&cred(ROOT), id, ttl("10m"), None).unwrap_err();
    assert!(e.message.contains("never an earlier one"), "{}", e.message);
    a.extend(&cred(ROOT), id, ttl("59m"), None).unwrap();
    // Extending again cannot reset the clock: still counted from the start.
    let e = a.extend(&cred(ROOT), id, ttl("1h"), None).unwrap_err();
    assert!(e.message.contains("at most 1h"), "{}", e.message);
}

#[test]
fn only_root_and_approvers_extend_and_not_for_themselves() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let id = grant(&mut a, ROOT, USER, "5m");
    let before = expiry(&f, USER);
    let e = a.extend(&cred(OTHER), id, ttl("30m"), None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    // The grantee files a request instead (see tests/breakglass.rs).
    assert!(matches!(
        a.extend(&cred(USER), id, ttl("30m"), None),
        Ok(Reply::Requested { .. })
    ));
    // An approver may not keep a segment open to themselves: asks too.
    let mine = grant(&mut a, ROOT, APPROVER, "5m");
    assert!(matches!(
        a.extend(&cred(APPROVER), mine, ttl("30m"), None),
        Ok(Reply::Requested { .. })
    ));
    assert_eq!(expiry(&f, USER), before);
    let e = a.extend(&cred(ROOT), 999, ttl("30m"), None).unwrap_err();
    assert_eq!(e.code, RefusalCode::NotFound);
    assert!(f
        .events()
        .iter()
        .all(|e| !matches!(e, AuditEvent::Extend { .. })));
}

#[test]
fn an_extension_survives_a_restart_and_an_unaudited_one_is_taken_back() {
    let f = Fixture::new(FakeKernel::default());
    let id = {
        let mut a = f.start(POLICY);
        let id = grant(&mut a, ROOT, USER, "5m");
        a.extend(&cred(ROOT), id, ttl("40m"), None).unwrap();
        id
    };
    let extended = expiry(&f, USER);
    let a = f.start(POLICY);
    let g = match a.list() {
        Reply::List(l) => l.grants.into_iter().find(|g| g.id == id).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(g.remaining_secs > 35 * 60, "{g:?}");
    assert_eq!(expiry(&f, USER), extended);
    drop(a);

    // A crash after journaling an extension, before its audit record.
    let head = {
        let text = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        last["hash"].as_str().unwrap().to_string()
    };
    {
        let (mut j, _) = Journal::open(&f.dir.path().join("state")).unwrap();
        j.append(&Op::Extend {
            grant_id: id,
            expires_unix_ms: u64::MAX / 2,
            expires_boot_ns: u64::MAX / 2,
            previous_unix_ms: 1,
            previous_boot_ns: 1,
            boot_id: crate::state::boot_id(),
            audit_prev: Some(head),
        })
        .unwrap();
    }
    let mut a = f.start(POLICY);
    // Its previous expiry (long past here) stands: the grant is over.
    a.expire();
    let live = match a.list() {
        Reply::List(l) => l.grants.iter().any(|g| g.id == id),
        other => panic!("{other:?}"),
    };
    assert!(!live, "an unaudited extension is not kept");
}
