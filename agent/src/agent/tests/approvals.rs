//! `approvals_required`: distinct approvers, never the requester, each
//! approval audited and journaled (it survives a restart, and a crash
//! before its audit record takes it back).
use super::*;
use crate::{
    journal::{Journal, Op},
    requests::Approval,
    state::Actor,
};

/// A second approver of the two-approval segment.
const APPROVER2: u32 = 41004;

const TWO: &str = r#"
[segment.db]
ports = ["5432/tcp"]
[segment.db.jit]
max_ttl = "1h"
default_ttl = "15m"
approvers = ["uid:41001", "uid:41004", "uid:41002"]
require_reason = false
approvals_required = 2
"#;

fn pending(a: &mut Agent) -> Vec<crate::control::RequestView> {
    match a.pending() {
        Reply::Pending { requests } => requests,
        other => panic!("{other:?}"),
    }
}

fn approvals_audited(f: &Fixture) -> Vec<(u32, u32, u32)> {
    f.events()
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::Approval {
                approvals,
                required,
                actor,
                ..
            } => Some((actor.uid, approvals, required)),
            _ => None,
        })
        .collect()
}

#[test]
fn two_distinct_approvers_are_needed_and_the_requester_never_counts() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(TWO);
    let seg = db_id(&f.kernel);
    // USER (41002) is an approver of this segment too, and asks for itself.
    let id = request_id(
        a.request(&cred(USER), "db", Some(ttl("30m")), None)
            .unwrap(),
    );
    let e = a.approve(&cred(USER), id, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden, "{}", e.message);

    // The first approval is recorded, nothing opens.
    match a.approve(&cred(APPROVER), id, Some(ttl("20m"))).unwrap() {
        Reply::Request { request } => {
            assert_eq!(request.state, "pending");
            assert_eq!(request.approvals.len(), 1);
            assert_eq!(request.approvals[0].uid, APPROVER);
            assert_eq!(request.approvals_required, 2);
        }
        other => panic!("expected the pending request, got {other:?}"),
    }
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
    assert_eq!(pending(&mut a)[0].approvals.len(), 1);
    assert_eq!(approvals_audited(&f), vec![(APPROVER, 1, 2)]);

    // The same approver again does not count twice; neither does the requester.
    let e = a.approve(&cred(APPROVER), id, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Invalid);
    assert!(e.message.contains("already approved"), "{}", e.message);
    let e = a.approve(&cred(USER), id, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));

    // A second, distinct approver grants, for the shortest TTL allowed.
    match a.approve(&cred(APPROVER2), id, None).unwrap() {
        Reply::Approved { request, grant } => {
            assert_eq!(request.state, "approved");
            let who: Vec<u32> = request.approvals.iter().map(|a| a.uid).collect();
            assert_eq!(who, vec![APPROVER, APPROVER2]);
            assert_eq!(request.granted_ttl_secs, Some(1200));
            assert_eq!(grant.identity, format!("uid:{USER}"));
        }
        other => panic!("expected the grant, got {other:?}"),
    }
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
    assert_eq!(
        approvals_audited(&f).len(),
        1,
        "the last one is the approve"
    );
    let approve = f.events().into_iter().find_map(|e| match e {
        AuditEvent::Approve {
            ttl_secs, actor, ..
        } => Some((ttl_secs, actor.uid)),
        _ => None,
    });
    assert_eq!(approve, Some((1200, APPROVER2)));
    assert!(pending(&mut a).is_empty());
}

#[test]
fn root_counts_as_one_approver_and_one_approval_still_grants_by_default() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(TWO);
    let id = request_id(a.request(&cred(OTHER), "db", None, None).unwrap());
    assert!(matches!(
        a.approve(&cred(ROOT), id, None).unwrap(),
        Reply::Request { .. }
    ));
    assert!(matches!(
        a.approve(&cred(ROOT), id, None).unwrap_err().code,
        RefusalCode::Invalid
    ));
    assert!(matches!(
        a.approve(&cred(APPROVER), id, None).unwrap(),
        Reply::Approved { .. }
    ));
    // Without approvals_required, one approval grants, as before.
    let g = Fixture::new(FakeKernel::default());
    let mut b = g.start(POLICY);
    let id = request_id(b.request(&cred(USER), "db", None, None).unwrap());
    assert!(matches!(
        b.approve(&cred(APPROVER), id, None).unwrap(),
        Reply::Approved { .. }
    ));
}

#[test]
fn a_partial_approval_survives_a_restart() {
    let f = Fixture::new(FakeKernel::default());
    let id = {
        let mut a = f.start(TWO);
        let id = request_id(a.request(&cred(OTHER), "db", None, None).unwrap());
        a.approve(&cred(APPROVER), id, None).unwrap();
        id
    };
    let mut a = f.start(TWO);
    let p = pending(&mut a);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].approvals.len(), 1, "{p:?}");
    assert_eq!(p[0].approvals[0].uid, APPROVER);
    // Still counted once after the restart.
    assert!(a.approve(&cred(APPROVER), id, None).is_err());
    assert!(matches!(
        a.approve(&cred(APPROVER2), id, None).unwrap(),
        Reply::Approved { .. }
    ));
}

#[test]
fn an_approval_journaled_but_never_audited_is_taken_back_at_start() {
    let f = Fixture::new(FakeKernel::default());
    let id = {
        let mut a = f.start(TWO);
        request_id(a.request(&cred(OTHER), "db", None, None).unwrap())
    };
    // A crash after the journal record, before the audit record.
    let head = {
        let text = std::fs::read_to_string(f.dir.path().join("audit.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        last["hash"].as_str().unwrap().to_string()
    };
    {
        let (mut j, _) = Journal::open(&f.dir.path().join("state")).unwrap();
        j.append(&Op::Approval {
            request_id: id,
            approval: Approval {
                by: Actor::from_uid(APPROVER, Some(1)),
                at_unix_ms: 1,
                ttl_secs: 900,
            },
            audit_prev: Some(head),
        })
        .unwrap();
    }
    let mut a = f.start(TWO);
    let p = pending(&mut a);
    assert_eq!(p.len(), 1, "the request itself stands");
    assert!(p[0].approvals.is_empty(), "{p:?}");
    // And it stays taken back across a further restart.
    drop(a);
    let mut a = f.start(TWO);
    assert!(pending(&mut a)[0].approvals.is_empty());
}
