//! The journal through the core: what a restart keeps, what a crash at
//! each step leaves, and what the agent does when it cannot remember.
use super::*;
use crate::{
    clock,
    journal::{Journal, Op},
    state::{Actor, Grant},
};

fn grants(a: &Agent) -> Vec<crate::control::GrantView> {
    match a.list() {
        Reply::List(l) => l.grants,
        other => panic!("{other:?}"),
    }
}

impl Fixture {
    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// The audit chain's head, as the log on disk has it.
    fn audit_head(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        last["hash"].as_str().unwrap().to_string()
    }

    /// Appends `op` to the journal of a stopped agent, as a crash would leave it.
    fn journal(&self, op: Op) {
        let (mut j, _) = Journal::open(&self.state()).unwrap();
        j.append(&op).unwrap();
    }

    fn ends_of(&self, id: u64) -> Vec<AuditEvent> {
        self.events()
            .into_iter()
            .filter(|e| match e {
                AuditEvent::Revoke { grant_id, .. }
                | AuditEvent::Expire { grant_id, .. }
                | AuditEvent::GrantFailed { grant_id, .. } => *grant_id == id,
                _ => false,
            })
            .collect()
    }
}

fn grant_by_hand(id: u64, expires_boot_ns: u64) -> Grant {
    Grant {
        id,
        segment: "db".into(),
        identity: "uid:41002".parse().unwrap(),
        created_unix_ms: 1,
        expires_unix_ms: 2,
        expires_boot_ns,
        boot_id: crate::name::Name::from(crate::state::boot_id()),
        actor: Actor::from_uid(0, Some(1)),
        reason: Some("by hand".into()),
        request_id: None,
        fleet: None,
    }
}

#[test]
fn a_restart_keeps_ids_reasons_and_identities_as_written() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let first = granted_id(
        a.grant(&cred(ROOT), "db", "uid:41002", None, Some("ticket 1"))
            .unwrap(),
    );
    let second = granted_id(
        a.grant(&cred(ROOT), "db", "user:root", None, Some("ticket 2"))
            .unwrap(),
    );
    drop(a);
    let mut a = f.start(POLICY);
    let g = grants(&a);
    let ids: Vec<u64> = g.iter().map(|g| g.id).collect();
    assert_eq!(ids, vec![first, second]);
    assert_eq!(g[1].identity, "user:root");
    assert_eq!(g[1].reason.as_deref(), Some("ticket 2"));
    assert!(g[0].actor.contains("uid 0"), "{}", g[0].actor);
    let third = granted_id(a.grant(&cred(ROOT), "db", "uid:41003", None, None).unwrap());
    assert!(third > second);
    assert!(f
        .events()
        .iter()
        .all(|e| !matches!(e, AuditEvent::GrantRecovered { .. })));
}

#[test]
fn a_grant_journaled_but_never_audited_fails_at_start_and_keeps_its_id() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let before = granted_id(a.grant(&cred(ROOT), "db", "uid:41003", None, None).unwrap());
    drop(a);
    // The crash: journaled at the audit head, nothing audited after.
    let id = before + 1;
    f.journal(Op::Grant {
        grant: grant_by_hand(id, clock::boot_ns() + 600_000_000_000),
        audit_prev: Some(f.audit_head()),
    });
    let mut a = f.start(POLICY);
    assert!(grants(&a).iter().all(|g| g.id != id));
    let seg = db_id(&f.kernel);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
    let ends = f.ends_of(id);
    assert!(
        matches!(ends.as_slice(), [AuditEvent::GrantFailed { error, .. }] if error.contains("never enforced")),
        "{ends:?}"
    );
    let next = granted_id(a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap());
    assert!(next > id, "id {id} is never handed out again");
    // A journaled grant whose record was written is kept.
    drop(a);
    let a = f.start(POLICY);
    assert!(grants(&a).iter().any(|g| g.id == next));
    assert_eq!(f.ends_of(id).len(), 1);
}

#[test]
fn an_end_record_a_crash_kept_from_the_audit_log_is_written_at_start() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let id = granted_id(a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap());
    drop(a);
    let event = AuditEvent::Revoke {
        grant_id: id,
        segment: "db".into(),
        identity: "uid:41002".into(),
        ports: None,
        actor: Actor::from_uid(0, Some(1)),
        expires_at: "2030-01-01T00:00:00Z".into(),
        request_id: None,
        why: None,
        suspended: None,
        while_down: None,
        usage: None,
    };
    f.journal(Op::End {
        grant_id: id,
        audit_prev: Some(f.audit_head()),
        event: Some(Box::new(event)),
    });
    let a = f.start(POLICY);
    assert!(grants(&a).is_empty());
    assert!(matches!(
        f.ends_of(id).as_slice(),
        [AuditEvent::Revoke { .. }]
    ));
    drop(a);
    let _a = f.start(POLICY);
    assert_eq!(f.ends_of(id).len(), 1, "written once");
}

#[test]
fn grants_that_ended_while_the_agent_was_down_get_one_end_record() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let gone = granted_id(a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap());
    let kept = granted_id(a.grant(&cred(ROOT), "db", "uid:41003", None, None).unwrap());
    drop(a);
    // One expired (journaled with a deadline in the past), one deleted from the maps.
    f.journal(Op::Grant {
        grant: grant_by_hand(kept + 1, 1),
        audit_prev: None,
    });
    let seg = db_id(&f.kernel);
    f.kernel.maps().grants.remove(&uid_key(seg, USER));
    let a = f.start(POLICY);
    let live: Vec<u64> = grants(&a).iter().map(|g| g.id).collect();
    assert_eq!(live, vec![kept]);
    assert!(
        matches!(
            f.ends_of(gone).as_slice(),
            [AuditEvent::Revoke {
                while_down: Some(true),
                why: Some(_),
                ..
            }]
        ),
        "{:?}",
        f.ends_of(gone)
    );
    assert!(
        matches!(
            f.ends_of(kept + 1).as_slice(),
            [AuditEvent::Expire {
                while_down: Some(true),
                expired_at: Some(_),
                ..
            }]
        ),
        "{:?}",
        f.ends_of(kept + 1)
    );
    drop(a);
    let _a = f.start(POLICY);
    assert_eq!(f.ends_of(gone).len(), 1);
    assert_eq!(f.ends_of(kept + 1).len(), 1);
}

#[test]
fn an_unwritable_journal_refuses_grants_and_requests_but_still_revokes() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    let id = granted_id(a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap());
    let log = f.state().join(crate::journal::LOG_FILE);
    let kept = f.dir.path().join("kept");
    std::fs::rename(&log, &kept).unwrap();
    std::fs::create_dir(&log).unwrap();

    let e = a
        .grant(&cred(ROOT), "db", "uid:41003", None, None)
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Unavailable);
    assert!(e.message.contains("journal"), "{}", e.message);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, OTHER)));
    let e = a.request(&cred(USER), "db", None, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Unavailable);
    match a.status() {
        Reply::Status(s) => assert!(s.journal_failing.is_some()),
        other => panic!("{other:?}"),
    }
    assert!(a.journal_health().0.is_some());

    a.revoke(&cred(ROOT), Some(id), None, None).unwrap();
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
    assert_eq!(a.journal_health().1, 1, "the end waits in memory");

    std::fs::remove_dir(&log).unwrap();
    std::fs::rename(&kept, &log).unwrap();
    a.retry_audit();
    assert_eq!(a.journal_health(), (None, 0));
    granted_id(a.grant(&cred(ROOT), "db", "uid:41003", None, None).unwrap());
    drop(a);
    let a = f.start(POLICY);
    assert!(grants(&a).iter().all(|g| g.id != id));
    assert_eq!(f.ends_of(id).len(), 1);
}

/// A restart reconciles the pinned map with the journal exactly: an entry
/// no grant or allow claims goes, a journaled grant's entry stays as it
/// is, one the kernel holds with another value is written again, a grant
/// whose entry the kernel lost ends (revoked while down), and the standing
/// allow's entry stays.
#[test]
fn a_restart_deletes_what_nothing_claims_and_keeps_or_rewrites_what_grants_claim() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let ids: Vec<u64> = ["uid:41002", "uid:41003", "uid:41004"]
        .iter()
        .map(|uid| granted_id(a.grant(&cred(ROOT), "db", uid, None, None).unwrap()))
        .collect();
    drop(a);
    let seg = db_id(&f.kernel);
    let before = f.kernel.maps().grants.clone();
    let (kept, changed, lost) = (
        uid_key(seg, 41002),
        uid_key(seg, 41003),
        uid_key(seg, 41004),
    );
    let (stray, stray_too) = (uid_key(seg, 45555), uid_key(seg, 41000));
    {
        // While the agent was down.
        let mut maps = f.kernel.maps();
        maps.grants.insert(stray, before[&kept]);
        maps.grants.insert(stray_too, before[&kept]);
        maps.grants.insert(changed, before[&changed] - 1);
        maps.grants.remove(&lost);
    }
    let _a = f.start(POLICY);
    let maps = f.kernel.maps();
    assert!(!maps.grants.contains_key(&stray));
    assert!(!maps.grants.contains_key(&stray_too));
    assert_eq!(maps.grants[&kept], before[&kept]);
    assert_eq!(maps.grants[&changed], before[&changed]);
    assert!(!maps.grants.contains_key(&lost));
    assert!(maps.grants.contains_key(&uid_key(seg, 41100)));
    assert_eq!(maps.grants.len(), before.len() - 1);
    drop(maps);
    assert!(matches!(
        f.ends_of(ids[2]).as_slice(),
        [AuditEvent::Revoke {
            while_down: Some(true),
            ..
        }]
    ));
}
