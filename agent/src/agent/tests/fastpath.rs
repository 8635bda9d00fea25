//! The core's writes keep the kernel's policy epoch: a grant leaves it, a
//! revoke, an expiry and a reload move it (after their deletes).
use super::*;

#[test]
fn a_grant_keeps_the_epoch_a_revoke_and_a_reload_move_it_after_their_writes() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    let e0 = f.kernel.maps().epoch;
    let id = granted_id(a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap());
    assert_eq!(f.kernel.maps().epoch, e0, "a grant ends no allow");
    a.revoke(&cred(ROOT), Some(id), None, None).unwrap();
    let e1 = f.kernel.maps().epoch;
    assert!(e1 > e0, "a revoke moves the epoch");
    let del = f
        .kernel
        .maps()
        .writes
        .iter()
        .position(|w| *w == Write::Delete(crate::ledger::EntryKey::Local(uid_key(seg, USER))))
        .expect("the revoke deleted the entry");
    assert!(
        f.kernel.maps().epoch_writes.last().unwrap().0 > del,
        "epoch written before the delete"
    );
    // A reload that removes the standing allow.
    let next = POLICY.replace(r#"allow = ["uid:41100"]"#, r#"allow = ["uid:41101"]"#);
    a.apply_policy(parse(&next)).unwrap();
    assert!(f.kernel.maps().epoch > e1, "a reload moves the epoch");
}
