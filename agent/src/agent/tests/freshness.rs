//! Strict fleet grants (issue 19): the agent moves "fresh until" forward
//! only when it hears from the store, only in fleet mode, never back; it
//! notices going stale once, and wakes for it.
use super::*;
use crate::clock;

#[test]
fn hearing_from_the_store_moves_fresh_until_only_in_fleet_mode_and_only_forward() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    a.heard_from_store().unwrap();
    assert!(f.kernel.maps().fresh_writes.is_empty(), "not in fleet mode");
    assert!(!a.check_freshness());

    a.set_strict_after(Some(Duration::from_secs(30)));
    let before = clock::boot_ns();
    a.heard_from_store().unwrap();
    let after = clock::boot_ns();
    let at = f.kernel.maps().fresh_until;
    let limit = 30_000_000_000;
    assert!(
        at >= before + limit && at <= after + limit,
        "now + strict_after"
    );
    assert_eq!(a.next_deadline(), Some(at), "the loop wakes at fresh until");

    // A shorter limit later does not move it back.
    a.set_strict_after(Some(Duration::from_secs(1)));
    a.heard_from_store().unwrap();
    assert_eq!(f.kernel.maps().fresh_until, at);
}

#[test]
fn going_stale_is_noticed_once_so_one_sweep_is_asked_for() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    // A limit of zero: stale as soon as it is written.
    a.set_strict_after(Some(Duration::ZERO));
    a.heard_from_store().unwrap();
    assert!(f.kernel.maps().fresh_until > 0);
    assert!(a.check_freshness(), "stale: a sweep is due");
    assert!(!a.check_freshness(), "asked once");
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn a_restarted_agent_keeps_the_pinned_fresh_until() {
    let k = FakeKernel::default();
    let far = clock::boot_ns() + 3_600_000_000_000;
    k.maps().fresh_until = far;
    let f = Fixture::new(k);
    let mut a = f.start(POLICY);
    a.set_strict_after(Some(Duration::from_secs(30)));
    a.heard_from_store().unwrap();
    assert_eq!(f.kernel.maps().fresh_until, far, "not moved back");
    assert!(f.kernel.maps().fresh_writes.is_empty());
}

#[test]
fn a_strict_fleet_grant_reaches_the_kernel_flagged_strict_and_a_plain_one_does_not() {
    use agent_common::expiry;
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(POLICY);
    let seg = db_id(&f.kernel);
    for (uid, strict) in [(USER, true), (OTHER, false)] {
        let id = format!("h2-{uid}");
        a.fleet_apply(crate::agent::IncomingGrant {
            id: &id,
            segment: "db",
            identity: format!("uid:{uid}").parse().unwrap(),
            ttl: Duration::from_secs(600),
            reason: None,
            actor_uid: 0,
            actor_user: None,
            origin_host: "h2",
            revision: 5,
            strict,
        })
        .unwrap();
    }
    let m = f.kernel.maps();
    let strict = m.grants[&uid_key(seg, USER)];
    assert!(expiry::is_strict(strict), "strict grant flagged");
    assert!(expiry::deadline(strict) > clock::boot_ns());
    assert!(
        !expiry::is_strict(m.grants[&uid_key(seg, OTHER)]),
        "plain grant not flagged"
    );
}
