//! Issue 20's fast tests over the fake kernel: pending requests of a
//! segment that left the policy, and what `status` shows.
use super::*;

/// Issue 20: a pending request for a segment that left the policy stayed
/// listed forever. A reload ends it, journaled and audited; a request for
/// a segment that stays is untouched.
#[test]
fn a_reload_drops_the_pending_requests_of_a_segment_that_left() {
    let f = Fixture::new(FakeKernel::default());
    let both = format!(
        "{POLICY}{}",
        POLICY
            .replace("segment.db", "segment.web")
            .replace("5432", "8080")
    );
    let mut a = f.start(&both);
    let gone = request_id(a.request(&cred(USER), "db", None, None).unwrap());
    let stays = request_id(a.request(&cred(USER), "web", None, None).unwrap());
    let pending = |a: &mut Agent| match a.pending() {
        Reply::Pending { requests } => requests.iter().map(|r| r.id).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(pending(&mut a), vec![gone, stays]);
    let web_only = POLICY
        .replace("segment.db", "segment.web")
        .replace("5432", "8080");
    a.apply_policy(parse(&web_only)).unwrap();
    assert_eq!(pending(&mut a), vec![stays]);
    let dropped: Vec<_> = f
        .events()
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::RequestDropped {
                request_id, why, ..
            } => Some((request_id, why)),
            _ => None,
        })
        .collect();
    assert_eq!(
        dropped,
        vec![(gone, "segment db left the policy".to_string())]
    );
    // The journal has it too: a restart does not bring it back.
    drop(a);
    let mut again = f.start(&web_only);
    assert_eq!(pending(&mut again), vec![stays]);
}

/// Issue 20: `status` says per segment what is protected and for whom,
/// and warns where coverage is narrower than one would assume.
#[test]
fn status_shows_each_segments_ports_mode_allows_grants_and_the_warnings() {
    let f = Fixture::new(FakeKernel::default());
    let text = POLICY.replace(
        "[segment.db]\n",
        "[segment.db]\ndescription = \"PostgreSQL\"\n",
    );
    let mut a = f.start(&text);
    a.grant(&cred(ROOT), "db", "uid:41002", None, None).unwrap();
    a.set_metrics_addr(Some("127.0.0.1:5432".parse().unwrap()));
    let Reply::Status(s) = a.status() else {
        panic!("not a status")
    };
    let db = &s.segments[0];
    assert_eq!(db.ports, vec!["5432/tcp".to_string()]);
    assert_eq!(db.description.as_deref(), Some("PostgreSQL"));
    assert_eq!(
        (db.mode.as_str(), db.standing, db.grants),
        ("enforce", 1, 1)
    );
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(
        s.warnings[0].contains("not the cgroup2 root"),
        "{:?}",
        s.warnings
    );
    assert_eq!(
        s.warnings[1],
        "the metrics endpoint 127.0.0.1:5432 is on port 5432/tcp of segment db: scrapers need an allow or a grant there"
    );
    a.set_metrics_addr(Some("127.0.0.1:9464".parse().unwrap()));
    let Reply::Status(s) = a.status() else {
        panic!("not a status")
    };
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
}
