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
