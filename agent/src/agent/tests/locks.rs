//! Locks over the fake kernel maps: what a lock revokes, refuses and
//! suspends, across a restart, until unlock.
use super::*;

const LOCKED: u32 = 41050;

fn locked(r: Result<(Reply, Vec<crate::state::Grant>), crate::control::Refusal>) -> Vec<u64> {
    match r.expect("locked").0 {
        Reply::Locked { revoked, .. } => revoked.iter().map(|g| g.id).collect(),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn a_lock_revokes_refuses_survives_a_restart_and_unlock_restores() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    // A pending request by the user, made before the lock.
    let pending = request_id(a.request(&cred(LOCKED), "db", None, None).unwrap());
    let gid = granted_id(
        a.grant(&cred(ROOT), "db", &format!("uid:{LOCKED}"), None, None)
            .unwrap(),
    );
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, LOCKED)));

    let e = a
        .lock(&cred(USER), &format!("uid:{LOCKED}"), "left", None, false)
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden, "only root or lock_admins");
    let revoked = locked(a.lock(
        &cred(ROOT),
        &format!("uid:{LOCKED}"),
        "left the company",
        None,
        false,
    ));
    assert_eq!(revoked, vec![gid]);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, LOCKED)));
    assert!(f.events().iter().any(|e| matches!(e,
        AuditEvent::Revoke { grant_id, why: Some(w), .. } if *grant_id == gid && w.contains("left the company"))));
    assert!(f
        .events()
        .iter()
        .any(|e| matches!(e, AuditEvent::Lock { .. })));

    let e = a
        .grant(&cred(ROOT), "db", &format!("uid:{LOCKED}"), None, None)
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    assert!(e.message.contains("locked"), "{}", e.message);
    let e = a.approve(&cred(APPROVER), pending, None).unwrap_err();
    assert!(e.message.contains("locked"), "{}", e.message);
    let e = a.request(&cred(LOCKED), "db", None, None).unwrap_err();
    assert!(e.message.contains("locked"), "{}", e.message);
    drop(a);

    // The lock is remembered across a restart.
    let mut a = f.start(POLICY);
    let e = a
        .grant(&cred(ROOT), "db", &format!("uid:{LOCKED}"), None, None)
        .unwrap_err();
    assert!(e.message.contains("locked"), "{}", e.message);
    match a.status() {
        Reply::Status(s) => assert_eq!(s.locks.len(), 1),
        other => panic!("{other:?}"),
    }
    a.unlock(&cred(ROOT), &format!("uid:{LOCKED}")).unwrap();
    // The request made before the lock waited; it can be approved now.
    a.approve(&cred(APPROVER), pending, None)
        .expect("approvals are taken again");
    assert!(f
        .events()
        .iter()
        .any(|e| matches!(e, AuditEvent::Unlock { .. })));
}

#[test]
fn include_standing_suspends_standing_allows_until_unlock() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    locked(a.lock(&cred(ROOT), "uid:41100", "incident", None, false));
    assert!(
        f.kernel.maps().grants.contains_key(&uid_key(seg, 41100)),
        "without --include-standing the standing allow stays"
    );
    a.unlock(&cred(ROOT), "uid:41100").unwrap();
    locked(a.lock(&cred(ROOT), "uid:41100", "incident", None, true));
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, 41100)));
    a.unlock(&cred(ROOT), "uid:41100").unwrap();
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, 41100)));
}

#[test]
fn a_locked_user_is_left_out_of_group_grants() {
    let f = Fixture::new(FakeKernel::default());
    f.groups.set("dba", 41501, &[LOCKED, 41051]);
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    a.grant(&cred(ROOT), "db", "group:dba", None, None).unwrap();
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, LOCKED)));
    locked(a.lock(
        &cred(ROOT),
        &format!("uid:{LOCKED}"),
        "stolen laptop",
        None,
        false,
    ));
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, LOCKED)));
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, 41051)));
    a.unlock(&cred(ROOT), &format!("uid:{LOCKED}")).unwrap();
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, LOCKED)));
}
