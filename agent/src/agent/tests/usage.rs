//! Usage through the core, over the fake kernel: what `list` pages carry,
//! what the end records say, that a revoked entry's count is forgotten,
//! and idle timeouts.
use super::*;
use crate::{
    agent::ListCursor,
    clock,
    control::{GrantView, Record},
    usage::Totals,
};

const IDLE_POLICY: &str = r#"
[segment.db]
ports = ["5432/tcp"]
allow = ["uid:41100", "uid:41101"]
[segment.db.jit]
max_ttl = "1h"
require_reason = false
idle_timeout = "1s"
"#;

fn used(connections: u64, last: u64) -> Totals {
    Totals {
        connections,
        first_boot_ns: Some(last.saturating_sub(10)),
        last_boot_ns: Some(last),
    }
}

/// Every record of a `list`, page by page (one record per page).
fn records(a: &Agent) -> Vec<Record> {
    let mut at = ListCursor::Start;
    let mut out = Vec::new();
    for _ in 0..100 {
        let (page, next) = a.list_page(&at, 1);
        out.extend(page);
        match next {
            Some(n) => at = n,
            None => return out,
        }
    }
    panic!("list did not end within 100 pages");
}

fn listed_grant(a: &Agent, id: u64) -> Option<GrantView> {
    records(a).into_iter().find_map(|r| match r {
        Record::Grant(g) if g.id == id => Some(g),
        _ => None,
    })
}

#[test]
fn list_pages_carry_each_grants_and_allows_use_and_the_revoke_record_too() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    let id = granted_id(a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap());
    let now = clock::boot_ns();
    f.kernel
        .maps()
        .usage
        .insert(uid_key(seg, USER), used(3, now));
    f.kernel
        .maps()
        .usage
        .insert(uid_key(seg, 41100), used(9, now));

    let g = listed_grant(&a, id).expect("grant listed");
    assert_eq!(g.usage.as_ref().map(|u| u.connections), Some(3));
    assert!(g.usage.as_ref().unwrap().last_use.is_some());
    let allow = records(&a)
        .into_iter()
        .find_map(|r| match r {
            Record::Standing(s) => Some(s),
            _ => None,
        })
        .expect("the standing allow is listed");
    assert_eq!(allow.usage.map(|u| u.connections), Some(9));

    a.revoke(&cred(ROOT), Some(id), None, None).unwrap();
    let usage = f.events().into_iter().find_map(|e| match e {
        AuditEvent::Revoke {
            grant_id, usage, ..
        } if grant_id == id => usage,
        _ => None,
    });
    assert_eq!(usage.map(|u| u.connections), Some(3));
    // The revoked entry's count is gone; the allow's stays.
    assert!(!f.kernel.maps().usage.contains_key(&uid_key(seg, USER)));
    assert!(f.kernel.maps().usage.contains_key(&uid_key(seg, 41100)));
}

#[test]
fn an_idle_grant_lapses_as_an_idle_expiry_and_a_used_one_stays() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(IDLE_POLICY);
    let seg = db_id(&f.kernel);
    let idle = granted_id(a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap());
    let busy = granted_id(a.grant(&cred(ROOT), "db", "uid:41003", None, None).unwrap());
    // Wait (bounded) for the idle grant to lapse; the busy one is "used"
    // just before each look.
    let mut lapsed = Vec::new();
    for _ in 0..50 {
        f.kernel
            .maps()
            .usage
            .insert(uid_key(seg, OTHER), used(1, clock::boot_ns()));
        lapsed = a.expire();
        if !lapsed.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids: Vec<u64> = lapsed.iter().map(|g| g.id).collect();
    assert_eq!(ids, vec![idle]);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, OTHER)));
    let reason = f.events().into_iter().find_map(|e| match e {
        AuditEvent::Expire {
            grant_id, reason, ..
        } if grant_id == idle => reason,
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("idle"));
    assert!(listed_grant(&a, busy).is_some());
    assert!(a.next_deadline().is_some());
}
