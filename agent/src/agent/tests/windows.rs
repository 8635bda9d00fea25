//! Access windows of a jit table over the fake kernel maps: requests and
//! grants only inside a window, a grant's kernel expiry cut at its end;
//! `check` errors at their line.
use super::*;
use crate::clock;

/// `HH:MM` of now plus `minutes` (UTC).
fn hhmm(minutes: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(minutes);
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%H:%M")
        .to_string()
}

fn windowed(from: i64, to: i64) -> String {
    format!(
        r#"
[segment.db]
ports = ["5432/tcp"]
allow = []
[segment.db.jit]
max_ttl = "8h"
default_ttl = "4h"
approvers = ["uid:41001"]
require_reason = false
windows = ["Mon-Sun {}-{}"]
timezone = "UTC"
"#,
        hhmm(from),
        hhmm(to)
    )
}

#[test]
fn a_grant_inside_a_window_ends_in_the_kernel_at_the_window_end() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(&windowed(-1, 3));
    let seg = db_id(&f.kernel);
    a.grant(&cred(ROOT), "db", "uid:41050", Some(ttl("4h")), None)
        .unwrap();
    let expiry = f.kernel.maps().grants[&uid_key(seg, 41050)];
    let left = Duration::from_nanos(expiry.saturating_sub(clock::boot_ns()));
    // Asked for 4h; the window closes within 3 minutes.
    assert!(left <= Duration::from_secs(3 * 60), "{left:?}");
    assert!(left > Duration::ZERO);
}

#[test]
fn outside_every_window_requests_grants_and_approvals_are_refused_naming_the_next() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(&windowed(10, 20));
    for e in [
        a.grant(&cred(ROOT), "db", "uid:41050", None, None)
            .unwrap_err(),
        a.request(&cred(USER), "db", None, None).unwrap_err(),
    ] {
        assert_eq!(e.code, RefusalCode::Invalid);
        assert!(e.message.contains("the next opens at"), "{}", e.message);
        assert!(e.message.contains(&hhmm(10)), "{}", e.message);
    }
    assert!(f.kernel.maps().grants.is_empty());
}

#[test]
fn check_names_the_line_of_a_bad_window_or_zone() {
    let text = "[segment.db]\nports = [\"5432/tcp\"]\n[segment.db.jit]\nmax_ttl = \"1h\"\nwindows = [\"Mon-Fri 08:00-18:00\", \"Funday 08:00-09:00\"]\ntimezone = \"Mars/Olympus\"\n";
    let e = policy::parse_str(Path::new("/test/w.toml"), text).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("/test/w.toml:5:"), "{text}");
    assert!(text.contains("Funday"), "{text}");
    assert!(text.contains("/test/w.toml:6:"), "{text}");
    assert!(
        text.contains("unknown time zone \"Mars/Olympus\""),
        "{text}"
    );
}

/// `HH:MM:SS` of now plus `secs` (UTC).
fn hhmmss(secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%H:%M:%S")
        .to_string()
}

/// Segment db with a plain allow (uid 41100) and a windowed allow of uid
/// 41200 from `from` to `to` (`HH:MM:SS`, UTC, every day).
fn windowed_allow(from: &str, to: &str) -> String {
    format!(
        r#"
[segment.db]
ports = ["5432/tcp"]
allow = ["uid:41100", {{ identity = "uid:41200", windows = ["Mon-Sun {from}-{to}"], timezone = "UTC" }}]
"#
    )
}

fn windowed_list(a: &Agent) -> crate::control::WindowView {
    let Reply::List(l) = a.list() else {
        panic!("a list")
    };
    l.standing
        .iter()
        .find(|s| s.identity == "uid:41200")
        .and_then(|s| s.window.clone())
        .expect("the windowed allow is listed with its window")
}

#[test]
fn a_windowed_allow_opens_with_the_window_end_as_kernel_expiry_and_closes_at_it() {
    let f = Fixture::new(FakeKernel::default());
    // Open now, for two more seconds.
    let mut a = f.start(&windowed_allow(&hhmmss(-60), &hhmmss(2)));
    let seg = db_id(&f.kernel);
    let expiry = f.kernel.maps().grants[&uid_key(seg, 41200)];
    assert!(expiry != agent_common::NEVER, "a window's end, not never");
    let left = Duration::from_nanos(expiry.saturating_sub(clock::boot_ns()));
    assert!(left <= Duration::from_secs(3), "{left:?}");
    // The plain allow is open at all times.
    assert_eq!(
        f.kernel.maps().grants[&uid_key(seg, 41100)],
        agent_common::NEVER
    );
    assert!(f
        .events()
        .iter()
        .any(|e| matches!(e, AuditEvent::WindowOpen { identity, .. } if identity == "uid:41200")));
    let w = windowed_list(&a);
    assert!(w.open && w.closes_at.is_some(), "{w:?}");
    // The expiry timer's deadline is the window's end.
    let deadline = a.next_deadline().expect("a deadline");
    assert!(deadline <= expiry, "{deadline} {expiry}");
    assert!(!a.turn_windows(), "nothing is due before the end");
    for _ in 0..100 {
        if clock::boot_ns() >= a.next_deadline().unwrap() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(a.turn_windows(), "due at the end: closed");
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, 41200)));
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, 41100)));
    assert!(f.events().iter().any(|e| matches!(e,
        AuditEvent::WindowClose { identity, next_open: Some(_), why: None, .. } if identity == "uid:41200")));
    let w = windowed_list(&a);
    assert!(!w.open && w.opens_at.is_some(), "{w:?}");
    // The next deadline is the next opening, a day ahead: no busy loop.
    let next = a.next_deadline().unwrap();
    assert!(clock::remaining(next) > Duration::from_secs(3600));
}

#[test]
fn a_closed_windowed_allow_opens_nothing_and_explain_names_its_next_opening() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(&windowed_allow(&hhmmss(3600), &hhmmss(7200)));
    let seg = db_id(&f.kernel);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, 41200)));
    // First seen closed: nothing happened, nothing audited.
    assert!(!f.events().iter().any(|e| matches!(
        e,
        AuditEvent::WindowClose { .. } | AuditEvent::WindowOpen { .. }
    )));
    let w = windowed_list(&a);
    assert!(!w.open && w.opens_at.is_some(), "{w:?}");
    let Reply::Explained(v) = a
        .explain(&cred(ROOT), Some("uid:41200"), None, "5432/tcp")
        .unwrap()
    else {
        panic!("explained")
    };
    assert!(!v.allowed);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("windowed allow uid:41200") && n.contains("opens next at")),
        "{:?}",
        v.notes
    );
}

#[test]
fn a_restart_or_reload_inside_a_window_opens_it_at_once_until_its_end() {
    let f = Fixture::new(FakeKernel::default());
    let closed = windowed_allow(&hhmmss(3600), &hhmmss(7200));
    let open = windowed_allow(&hhmmss(-60), &hhmmss(600));
    let mut a = f.start(&closed);
    let seg = db_id(&f.kernel);
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, 41200)));
    a.apply_policy(parse(&open)).unwrap();
    let expiry = f.kernel.maps().grants[&uid_key(seg, 41200)];
    let left = clock::remaining(expiry);
    assert!(
        left > Duration::from_secs(500) && left <= Duration::from_secs(600),
        "{left:?}"
    );
    let Reply::Explained(v) = a
        .explain(&cred(ROOT), Some("uid:41200"), None, "5432/tcp")
        .unwrap()
    else {
        panic!("explained")
    };
    assert!(v.allowed);
    assert!(
        v.decided_by.contains("windowed") && v.decided_by.contains("open until"),
        "{}",
        v.decided_by
    );
    drop(a);
    // A restart (same state directory) inside the window: open at once.
    f.kernel.maps().grants.clear();
    let _a = f.start(&open);
    let again = f.kernel.maps().grants[&uid_key(seg, 41200)];
    assert!(clock::remaining(again) <= Duration::from_secs(600));
    assert!(again != agent_common::NEVER);
}

#[test]
fn a_lock_with_standing_keeps_a_window_closed_and_says_why() {
    let f = Fixture::new(FakeKernel::default());
    let mut a = f.start(&windowed_allow(&hhmmss(-60), &hhmmss(600)));
    let seg = db_id(&f.kernel);
    assert!(f.kernel.maps().grants.contains_key(&uid_key(seg, 41200)));
    a.lock(&cred(ROOT), "uid:41200", "left", None, true)
        .unwrap();
    assert!(!f.kernel.maps().grants.contains_key(&uid_key(seg, 41200)));
    let w = windowed_list(&a);
    assert!(
        !w.open && w.why.as_deref().is_some_and(|y| y.contains("locked")),
        "{w:?}"
    );
    assert!(f.events().iter().any(|e| matches!(e,
        AuditEvent::WindowClose { why: Some(why), .. } if why.contains("locked"))));
}
