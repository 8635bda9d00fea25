//! `group:NAME` is its members, kept current: the core rules over the fake
//! kernel maps, with the groups from a table the tests edit.
use super::*;

const ONCALL_GID: u32 = 41500;
const ALICE: u32 = 41201;
const BOB: u32 = 41202;
const CAROL: u32 = 41203;

const GROUP_POLICY: &str = r#"
[segment.db]
ports = ["5432/tcp"]
allow = ["group:oncall"]
[segment.db.jit]
max_ttl = "1h"
default_ttl = "15m"
approvers = ["group:leads"]
require_reason = false
"#;

fn gid_key(segment: u32, gid: u32) -> GrantKey {
    GrantKey {
        kind: kind::GID,
        segment,
        id: gid as u64,
    }
}

fn membership_revokes(f: &Fixture) -> Vec<(String, u32, Option<u64>, String)> {
    f.events()
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::MembershipRevoke {
                identity,
                uid,
                grant_id,
                reason,
                ..
            } => Some((identity, uid, grant_id, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_group_allow_opens_every_member_by_uid_and_never_the_gid() {
    let f = Fixture::new(FakeKernel::default());
    f.groups.set("oncall", ONCALL_GID, &[ALICE, BOB]);
    let _a = f.start(GROUP_POLICY);
    let seg = db_id(&f.kernel);
    let m = f.kernel.maps();
    assert!(m.grants.contains_key(&uid_key(seg, ALICE)));
    assert!(m.grants.contains_key(&uid_key(seg, BOB)));
    assert!(!m.grants.contains_key(&uid_key(seg, CAROL)));
    // `sg oncall` by a non-member gives it nothing.
    assert!(!m.grants.contains_key(&gid_key(seg, ONCALL_GID)));
}

#[test]
fn a_member_who_leaves_loses_the_standing_allow_audited_as_membership() {
    let f = Fixture::new(FakeKernel::default());
    f.groups.set("oncall", ONCALL_GID, &[ALICE, BOB]);
    let mut a = f.start(GROUP_POLICY);
    let seg = db_id(&f.kernel);
    assert!(!a.refresh_groups().unwrap(), "nothing changed yet");
    assert!(membership_revokes(&f).is_empty());

    f.groups.set("oncall", ONCALL_GID, &[BOB]);
    assert!(a.refresh_groups().unwrap(), "a member left: sweep");
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, ALICE)));
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, BOB)));
    assert_eq!(
        membership_revokes(&f),
        vec![("group:oncall".into(), ALICE, None, "membership".into())]
    );

    // A member added gets in without a reload, and it is recorded.
    f.groups.set("oncall", ONCALL_GID, &[BOB, CAROL]);
    assert!(!a.refresh_groups().unwrap(), "nobody left");
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, CAROL)));
    assert!(f.events().iter().any(|e| matches!(e,
        AuditEvent::MembershipAdd { uid, identity, .. } if *uid == CAROL && identity == "group:oncall")));

    // The group deleted: nobody is let in through it.
    f.groups.remove("oncall");
    assert!(a.refresh_groups().unwrap());
    let m = f.kernel.maps();
    assert!(!m.grants.contains_key(&uid_key(seg, BOB)));
    assert!(!m.grants.contains_key(&uid_key(seg, CAROL)));
}

#[test]
fn a_grant_to_a_group_follows_its_members_and_names_the_grant() {
    let f = Fixture::new(FakeKernel::default());
    f.groups.set("oncall", ONCALL_GID, &[]);
    f.groups.set("dba", 41501, &[ALICE, BOB]);
    let mut a = f.start(GROUP_POLICY);
    let seg = db_id(&f.kernel);
    let id = granted_id(a.grant(&cred(ROOT), "db", "group:dba", None, None).unwrap());
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, ALICE)));
    f.groups.set("dba", 41501, &[ALICE]);
    assert!(a.refresh_groups().unwrap());
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, BOB)));
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, ALICE)));
    assert_eq!(
        membership_revokes(&f),
        vec![("group:dba".into(), BOB, Some(id), "membership".into())]
    );
}

#[test]
fn approvers_named_by_group_are_its_current_members() {
    let f = Fixture::new(FakeKernel::default());
    f.groups.set("oncall", ONCALL_GID, &[]);
    f.groups.set("leads", 41502, &[APPROVER]);
    let mut a = f.start(GROUP_POLICY);
    let r1 = request_id(a.request(&cred(USER), "db", None, None).unwrap());
    a.approve(&cred(APPROVER), r1, None).unwrap();
    // Out of the group, out of the approvers, at once.
    f.groups.set("leads", 41502, &[]);
    let r2 = request_id(a.request(&cred(OTHER), "db", None, None).unwrap());
    let e = a.approve(&cred(APPROVER), r2, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    // A lead may not grant to a group they are in.
    f.groups.set("leads", 41502, &[APPROVER]);
    f.groups.set("dba", 41501, &[APPROVER, BOB]);
    let e = a
        .grant(&cred(APPROVER), "db", "group:dba", None, None)
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    assert!(e.message.contains("belong to"), "{}", e.message);
}

#[test]
fn explain_says_through_which_group() {
    let f = Fixture::new(FakeKernel::default());
    f.groups.set("oncall", ONCALL_GID, &[ALICE]);
    let mut a = f.start(GROUP_POLICY);
    let Reply::Explained(view) = a
        .explain(&cred(ROOT), Some(&format!("uid:{ALICE}")), None, "5432/tcp")
        .unwrap()
    else {
        panic!("not an explanation")
    };
    assert!(view.allowed, "{view:?}");
    assert!(
        view.decided_by
            .contains("through membership of group oncall"),
        "{}",
        view.decided_by
    );
}
