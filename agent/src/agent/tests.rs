//! The fast tier: the core over the fake kernel maps, without privileges.
//!
//! Each test builds an agent on a [`FakeKernel`], a policy parsed from
//! text, an audit log and a state directory in a temporary directory, and
//! a resolver over a cgroup mount that does not exist (only `uid:`
//! identities are used, which need neither NSS nor the cgroup tree).
use std::{path::Path, time::Duration};

use agent_common::{kind, GrantKey, Proto};

use super::{Agent, Paths};
use crate::{
    audit::{AuditEvent, AuditLog},
    cgroupfs::Hierarchy,
    control::{PeerCred, RefusalCode, Reply},
    kernel::{FakeKernel, Write},
    policy::{self, Policy},
    resolve::{members::TableDirectory, Resolver},
};

const ROOT: u32 = 0;
/// The segment's approver (not root).
const APPROVER: u32 = 41001;
/// Neither root nor an approver.
const USER: u32 = 41002;
const OTHER: u32 = 41003;

const POLICY: &str = r#"
[segment.db]
ports = ["5432/tcp"]
allow = ["uid:41100"]
[segment.db.jit]
max_ttl = "1h"
default_ttl = "15m"
approvers = ["uid:41001"]
require_reason = false
"#;

fn parse(text: &str) -> Policy {
    let file = Path::new("/test/policy.toml");
    let segments = policy::parse_str(file, text).expect("test policy parses");
    Policy {
        segments: segments.into_iter().map(|s| (s.name.clone(), s)).collect(),
        files: vec![file.into()],
        digest: format!("{:x}", text.len()),
        allow_empty: false,
    }
}

fn cred(uid: u32) -> PeerCred {
    PeerCred {
        uid,
        gid: uid,
        pid: Some(1),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    kernel: FakeKernel,
    /// The groups the agent sees (its NSS), edited by the tests.
    groups: TableDirectory,
}

impl Fixture {
    fn new(kernel: FakeKernel) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            kernel,
            groups: TableDirectory::default(),
        }
    }

    fn start(&self, policy: &str) -> Agent {
        self.start_in(policy, "state")
    }

    fn start_in(&self, policy: &str, state: &str) -> Agent {
        let audit = AuditLog::open(&self.dir.path().join("audit.jsonl")).unwrap();
        let hierarchy = Hierarchy {
            mount: self.dir.path().join("no-cgroup-mount"),
        };
        Agent::start(
            parse(policy),
            Box::new(self.kernel.clone()),
            Resolver::with_directory(hierarchy, std::sync::Arc::new(self.groups.clone())),
            audit,
            Paths {
                journal: crate::startup::JournalOpening::spawn(self.dir.path().join(state))
                    .unwrap(),
            },
            Duration::from_secs(60),
            None,
        )
        .expect("agent starts over the fake kernel")
    }

    /// The audit log's records, read back as events.
    fn events(&self) -> Vec<AuditEvent> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit lines are events"))
            .collect()
    }
}

fn uid_key(segment: u32, uid: u32) -> GrantKey {
    GrantKey {
        kind: kind::UID,
        segment,
        id: uid as u64,
    }
}

fn db_id(k: &FakeKernel) -> u32 {
    k.maps().ports[&(Proto::Tcp, 5432)]
}

fn granted_id(r: Reply) -> u64 {
    match r {
        Reply::Granted { grant } => grant.id,
        Reply::Approved { grant, .. } => grant.id,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn request_id(r: Reply) -> u64 {
    match r {
        Reply::Requested { request } => request.id,
        other => panic!("expected a request, got {other:?}"),
    }
}

#[test]
fn start_writes_ports_and_standing_allows() {
    let f = Fixture::new(FakeKernel::default());
    let _a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    assert!(seg != 0);
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, 41100)));
}

#[test]
fn root_and_approvers_may_grant_others_may_not() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    let e = a
        .grant(&cred(USER), "db", "uid:41050", None, None)
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, 41050)));
    a.grant(&cred(APPROVER), "db", "uid:41050", None, None)
        .unwrap();
    a.grant(&cred(ROOT), "db", "uid:41051", None, None).unwrap();
    let m = f.kernel.maps();
    assert!(m.grants.contains_key(&uid_key(seg, 41050)));
    assert!(m.grants.contains_key(&uid_key(seg, 41051)));
    drop(m);
    assert!(f.events().iter().any(|e| matches!(e,
        AuditEvent::Refused { op, code: RefusalCode::Forbidden, .. } if op == "grant")));
}

#[test]
fn approvers_may_not_grant_to_themselves_root_may() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let e = a
        .grant(&cred(APPROVER), "db", "uid:41001", None, None)
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    assert!(e.message.contains("themselves"), "{}", e.message);
    a.grant(&cred(ROOT), "db", "uid:0", None, None).unwrap();
}

#[test]
fn ttl_bounds_are_the_segments() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let e = a
        .grant(&cred(ROOT), "db", "uid:41050", Some(ttl("2h")), None)
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Invalid);
    assert!(e.message.contains("max_ttl"), "{}", e.message);
    // A TTL that is not a duration ("soon") is refused when the request is
    // decoded (duration::Ttl), before it reaches the core.
    // Exactly the maximum is allowed.
    a.grant(&cred(ROOT), "db", "uid:41050", Some(ttl("1h")), None)
        .unwrap();
    let e = a
        .grant(&cred(ROOT), "nope", "uid:1", None, None)
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::NotFound);
    assert!(e.message.contains("db"), "{}", e.message);
}

#[test]
fn nobody_approves_their_own_request_and_only_approvers_approve() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let mine = request_id(a.request(&cred(APPROVER), "db", None, None).unwrap());
    let e = a.approve(&cred(APPROVER), mine, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    assert!(e.message.contains("your own"), "{}", e.message);

    let theirs = request_id(
        a.request(&cred(USER), "db", Some(ttl("30m")), None)
            .unwrap(),
    );
    let e = a.approve(&cred(OTHER), theirs, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    let e = a.deny(&cred(OTHER), theirs, "no").unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    let seg = db_id(&f.kernel);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
    a.approve(&cred(APPROVER), theirs, None).unwrap();
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
}

#[test]
fn approve_may_shorten_never_lengthen() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let id = request_id(
        a.request(&cred(USER), "db", Some(ttl("10m")), None)
            .unwrap(),
    );
    let e = a
        .approve(&cred(APPROVER), id, Some(ttl("20m")))
        .unwrap_err();
    assert_eq!(e.code, RefusalCode::Invalid);
    assert!(e.message.contains("never lengthen"), "{}", e.message);
    a.approve(&cred(APPROVER), id, Some(ttl("5m"))).unwrap();
    let approved = f.events().into_iter().find_map(|e| match e {
        AuditEvent::Approve {
            ttl_secs,
            requested_ttl_secs,
            ..
        } => Some((ttl_secs, requested_ttl_secs)),
        _ => None,
    });
    assert_eq!(approved, Some((300, 600)));
}

#[test]
fn approvers_deny_with_a_reason() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let id = request_id(a.request(&cred(USER), "db", None, None).unwrap());
    assert_eq!(
        a.deny(&cred(APPROVER), id, "  ").unwrap_err().code,
        RefusalCode::Invalid
    );
    a.deny(&cred(APPROVER), id, "not now").unwrap();
    assert!(f
        .events()
        .iter()
        .any(|e| matches!(e, AuditEvent::Deny { reason, .. } if reason == "not now")));
}

#[test]
fn the_grantee_may_revoke_their_own_grant_others_may_not() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    let id = granted_id(a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap());
    let e = a.revoke(&cred(OTHER), Some(id), None, None).unwrap_err();
    assert_eq!(e.code, RefusalCode::Forbidden);
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
    a.revoke(&cred(USER), Some(id), None, None).unwrap();
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, USER)));
    assert!(f
        .events()
        .iter()
        .any(|e| matches!(e, AuditEvent::Revoke { grant_id, .. } if *grant_id == id)));
}

#[test]
fn reload_writes_every_put_before_any_delete() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let before = f.kernel.maps().writes.len();
    let next = POLICY.replace(
        r#"allow = ["uid:41100"]"#,
        r#"allow = ["uid:41101", "uid:41102"]"#,
    );
    a.apply_policy(parse(&next)).unwrap();
    let writes = f.kernel.maps().writes[before..].to_vec();
    let first_delete = writes
        .iter()
        .position(|w| matches!(w, Write::Delete(_)))
        .expect("the old allow is deleted");
    let last_put = writes
        .iter()
        .rposition(|w| matches!(w, Write::Put(_)))
        .expect("the new allows are put");
    assert!(last_put < first_delete, "{writes:?}");
}

#[test]
fn a_reload_refused_for_capacity_leaves_the_maps_as_they_were() {
    let f = Fixture::new(FakeKernel::with_capacity(2, 16));
    let mut a = f.start(POLICY);
    let mut snapshot = f.kernel.maps().clone();
    let next = POLICY.replace(
        r#"allow = ["uid:41100"]"#,
        r#"allow = ["uid:41101", "uid:41102", "uid:41103"]"#,
    );
    assert!(a.apply_policy(parse(&next)).is_err());
    let mut after = f.kernel.maps().clone();
    snapshot.writes.clear();
    after.writes.clear();
    assert_eq!(after, snapshot);
    assert_eq!(a.policy().digest, parse(POLICY).digest);
}

#[test]
fn grants_are_recovered_from_the_maps_without_a_state_file() {
    let f = Fixture::new(FakeKernel::default());
    {
        let mut a = f.start(POLICY);
        a.grant(&cred(ROOT), "db", "uid:41050", Some(ttl("30m")), None)
            .unwrap();
    }
    // A new agent over the same maps, with no state file.
    let a = f.start_in(POLICY, "fresh-state");
    match a.list() {
        Reply::List(l) => {
            assert_eq!(l.grants.len(), 1, "{:?}", l.grants);
            assert_eq!(l.grants[0].identity, "uid:41050");
        }
        other => panic!("{other:?}"),
    }
    assert!(f.events().iter().any(
        |e| matches!(e, AuditEvent::GrantRecovered { identity, .. } if identity == "uid:41050")
    ));
}

#[test]
fn the_next_deadline_is_the_earliest_grant() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    assert_eq!(a.next_deadline(), None);
    let long = granted_id(
        a.grant(&cred(ROOT), "db", "uid:41050", Some(ttl("50m")), None)
            .unwrap(),
    );
    let short = granted_id(
        a.grant(&cred(ROOT), "db", "uid:41051", Some(ttl("5m")), None)
            .unwrap(),
    );
    let seg = db_id(&f.kernel);
    let m = f.kernel.maps();
    let (l, s) = (
        m.grants[&uid_key(seg, 41050)],
        m.grants[&uid_key(seg, 41051)],
    );
    drop(m);
    assert!(s < l && long < short);
    assert_eq!(a.next_deadline(), Some(s));
    a.revoke(&cred(ROOT), Some(short), None, None).unwrap();
    assert_eq!(a.next_deadline(), Some(l));
}

/// A TTL as the decoded request carries it.
fn ttl(text: &str) -> Duration {
    text.parse::<crate::duration::Ttl>()
        .expect("a valid TTL")
        .get()
}

/// Issue 14 item 5: `list` goes out in pages taken one at a time under the
/// lock. Read page by page at any page size, it is the whole list, in the
/// same order; a cursor left behind by a change between pages still resumes.
#[test]
fn list_pages_resume_where_they_stopped_and_make_up_the_whole_list() {
    use super::ListCursor;
    use crate::control::Record;
    let policy = r#"
[segment.a]
ports = ["5000/tcp", "5001/tcp"]
allow = ["uid:1", "uid:2", "uid:3"]
[segment.b]
ports = ["6000/tcp"]
allow = ["uid:4"]
[segment.db]
ports = ["5432/tcp"]
allow = ["uid:41100"]
[segment.db.jit]
max_ttl = "1h"
approvers = ["uid:41001"]
require_reason = false
"#;
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(policy);
    for i in 0..25 {
        a.grant(
            &cred(ROOT),
            "db",
            &format!("uid:{}", 50_000 + i),
            Some(ttl("30m")),
            None,
        )
        .unwrap();
    }
    a.request(&cred(USER), "db", Some(ttl("10m")), None)
        .unwrap();
    let Reply::List(whole) = a.list() else {
        panic!("list")
    };
    let mut expected: Vec<Record> = whole.standing.into_iter().map(Record::Standing).collect();
    expected.extend(whole.grants.into_iter().map(Record::Grant));
    expected.extend(whole.pending.into_iter().map(Record::Pending));
    assert_eq!(expected.len(), 5 + 25 + 1);
    for budget in [1, 2, 3, 7, 1000] {
        let mut got = Vec::new();
        let mut at = ListCursor::Start;
        let mut pages = 0;
        loop {
            let (page, next) = a.list_page(&at, budget);
            assert!(
                !page.is_empty() || next.is_none(),
                "an empty page before the end"
            );
            got.extend(page);
            pages += 1;
            assert!(pages <= expected.len() + 1, "pages do not advance");
            match next {
                Some(n) => at = n,
                None => break,
            }
        }
        assert_eq!(got, expected, "budget {budget}");
    }
    // A page is full once its weight (one per record and per port) reaches
    // the budget: segment a's allows weigh 3 each.
    let (page, next) = a.list_page(&ListCursor::Start, 4);
    assert_eq!(page.len(), 2);
    assert_eq!(
        next,
        Some(ListCursor::Standing {
            segment: "a".into(),
            next: 2
        })
    );
    // A cursor into a segment that went away resumes at the next one; a
    // cursor at a revoked grant resumes at the next grant.
    let (page, _) = a.list_page(
        &ListCursor::Standing {
            segment: "aa".into(),
            next: 7,
        },
        1,
    );
    assert!(matches!(&page[0], Record::Standing(s) if s.segment == "b"));
    let Record::Grant(third) = &expected[5 + 2] else {
        panic!("a grant")
    };
    a.revoke(&cred(ROOT), Some(third.id), None, None).unwrap();
    let (page, _) = a.list_page(&ListCursor::Grant { next_id: third.id }, 1);
    assert!(matches!(&page[0], Record::Grant(g) if g.id > third.id));
}

/// The metrics page comes from what the agent published and the kernel's
/// counters read on their own: a scrape while the agent's lock is held
/// (a grant writing the audit log, say) does not wait for it.
#[test]
fn a_scrape_needs_no_agent_lock_and_shows_the_last_published_state() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    a.grant(
        &cred(ROOT),
        "db",
        "uid:41200",
        Some(Duration::from_secs(60)),
        None,
    )
    .unwrap();
    a.publish();
    let seg = db_id(&f.kernel);
    f.kernel.maps().counters.insert(
        seg,
        agent_common::SegmentCounters {
            allowed: 7,
            denied: 3,
            would_deny: 0,
        },
    );
    f.kernel.maps().usage.insert(
        GrantKey {
            kind: kind::UID,
            segment: seg,
            id: 41200,
        },
        crate::usage::Totals {
            connections: 5,
            first_boot_ns: Some(1),
            last_boot_ns: Some(2),
        },
    );
    let board = a.board();
    let counters = a.kernel().counters_reader().unwrap();
    let usage = a.kernel().usage_reader().unwrap();
    let shared = std::sync::Mutex::new(a);
    let held = shared.lock().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(crate::observe::scrape(
            &board,
            Some(&counters),
            Some(&usage),
            None,
        ));
    });
    let page = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the scrape waited for the agent's lock");
    drop(held);
    assert!(page.contains("portcullis_grants_live 1\n"), "{page}");
    assert!(
        page.contains("portcullis_map_entries{map=\"grants\"} 2\n"),
        "{page}"
    );
    assert!(
        page.contains("portcullis_segment_denied_total{segment=\"db\"} 3\n"),
        "{page}"
    );
    assert!(
        page.contains("portcullis_segment_allowed_total{segment=\"db\"} 7\n"),
        "{page}"
    );
    assert!(
        page.contains("portcullis_segment_usage_connections{segment=\"db\"} 5\n"),
        "{page}"
    );
}
mod approvals;
mod breakglass;
mod extend;
mod fastpath;
mod first_use;
mod freshness;
mod groups;
mod journal;
mod locks;
mod usage;
mod windows;
