use super::{render::render_map, *};
use crate::clock;
use serde_json::json;

fn rec(v: Value) -> Record {
    Record::read(v.as_object().unwrap().clone())
}

fn filter(args: &[&str]) -> Filter {
    use clap::Parser;
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        q: QueryArgs,
    }
    let mut argv = vec!["t"];
    argv.extend_from_slice(args);
    Filter::new(&T::parse_from(argv).q).unwrap()
}

#[test]
fn records_render_on_one_readable_line() {
    let r = rec(json!({
        "ts": "2026-05-09T10:00:00.000Z", "event": "grant", "grant_id": 7,
        "identity": "user:alice", "segment": "db", "ports": ["5432/tcp", "6432/tcp"],
        "ttl_secs": 1800, "reason": "INC-1 lag", "prev": "00", "hash": "11",
        "actor": {"uid": 0, "user": "root", "pid": 42}
    }));
    assert_eq!(
        render(&r),
        "2026-05-09T10:00:00.000Z  grant           user:alice → db  by root(0)/pid 42  grant_id=7 ports=5432/tcp,6432/tcp reason=\"INC-1 lag\" ttl=30m"
    );
}

#[test]
fn denies_render_what_was_refused_and_who() {
    let d = rec(
        json!({"ts": "T", "event": "deny", "identity": "cgroup:/a", "segment": "db",
        "hook": "connect6", "addr": "::1", "port": 5432, "proto": "tcp", "cgroup": "/a",
        "cgroup_id": 9, "uid": 0, "user": "root", "gid": 0, "group": "root", "segment_id": 1}),
    );
    assert_eq!(
        render(&d),
        "T  deny            cgroup:/a → db  connect6 [::1]:5432/tcp, uid 0 (root) gid 0 (root)"
    );
    let p = rec(
        json!({"ts": "T", "event": "deny", "identity": "peer:10.0.0.9", "segment": "db",
        "hook": "xdp", "addr": "10.0.0.1", "port": 5432, "proto": "tcp", "peer": "10.0.0.9:4000"}),
    );
    assert_eq!(
        render(&p),
        "T  deny            peer:10.0.0.9 → db  xdp 10.0.0.1:5432/tcp from 10.0.0.9:4000"
    );
    let w = rec(
        json!({"ts": "T", "event": "would_deny", "identity": "peer:10.0.0.9", "segment": "db",
        "hook": "skb_ingress", "addr": "10.0.0.1", "port": 5432, "proto": "tcp", "peer": "10.0.0.9:4000"}),
    );
    assert_eq!(
        render(&w),
        "T  would_deny      peer:10.0.0.9 → db  skb_ingress 10.0.0.1:5432/tcp from 10.0.0.9:4000"
    );
    let s = rec(
        json!({"ts": "T", "event": "suppressed", "identity": "cgroup:/a", "segment": "db",
        "suppressed": 97, "window_secs": 2.0, "uid": 0, "user": "root", "gid": 0, "group": "root"}),
    );
    assert_eq!(
        render(&s),
        "T  suppressed      cgroup:/a → db  97 more denies in 2.0s, uid 0 (root) gid 0 (root)"
    );
}

#[test]
fn filters_by_time_segment_event_and_identity() {
    let now = clock::rfc3339_millis(SystemTime::now());
    let old = "2000-01-01T00:00:00.000Z";
    let grant =
        rec(json!({"ts": now, "event": "grant", "identity": "user:alice", "segment": "db"}));
    let deny = rec(
        json!({"ts": now, "event": "deny", "identity": "cgroup:/a/b.service",
        "cgroup": "/a/b.service", "uid": 1000, "user": "alice", "gid": 100, "segment": "db"}),
    );
    let peer =
        rec(json!({"ts": old, "event": "deny", "identity": "peer:10.1.2.3", "segment": "web"}));
    assert!(filter(&["--since", "1h"]).matches(&grant));
    assert!(!filter(&["--since", "1h"]).matches(&peer));
    assert!(filter(&["--segment", "web"]).matches(&peer));
    assert!(!filter(&["--segment", "web"]).matches(&grant));
    assert!(filter(&["--event", "grant"]).matches(&grant));
    assert!(filter(&["--identity", "user:alice"]).matches(&grant));
    assert!(filter(&["--identity", "user:alice"]).matches(&deny));
    assert!(!filter(&["--identity", "user:bob"]).matches(&grant));
    assert!(filter(&["--identity", "cgroup:/a"]).matches(&deny));
    assert!(!filter(&["--identity", "cgroup:/ab"]).matches(&deny));
    assert!(filter(&["--identity", "unit:b.service"]).matches(&deny));
    assert!(filter(&["--identity", "uid:1000"]).matches(&deny));
    assert!(filter(&["--identity", "gid:100"]).matches(&deny));
    assert!(filter(&["--identity", "peer:10.0.0.0/8"]).matches(&peer));
    assert!(!filter(&["--identity", "peer:192.168.0.0/16"]).matches(&peer));
}

/// Every sample line of docs/audit.md (taken from test runs): an audit
/// record reads as its typed kind, and renders exactly as the line's
/// own fields do (the untyped rendering `portcullis audit` had before).
#[test]
fn typed_records_render_as_their_lines_do() {
    let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/audit.md"));
    let mut typed = 0;
    for line in docs.lines().filter(|l| l.starts_with("{\"")) {
        let Value::Object(map) = serde_json::from_str(line).unwrap() else {
            panic!("not an object: {line}")
        };
        let record = Record::read(map.clone());
        let deny_log = map.contains_key("hook") || map["event"] == "suppressed";
        let other = matches!(record.event, AuditEvent::Other(_));
        assert!(
            !deny_log || other,
            "a deny-log line is no audit event: {line}"
        );
        // The one change: a denied request was shown as a kernel deny.
        if !other && map["event"] != "deny" {
            typed += 1;
            assert_eq!(render(&record), render_map(&map), "{line}");
        }
    }
    // (The `grant_recovered` sample predates its `actor` and `ports`.)
    assert!(typed >= 14, "only {typed} typed samples in docs/audit.md");
}

#[test]
fn a_typed_grant_renders_with_late_and_newer_fields() {
    let r = rec(json!({
        "ts": "2026-05-09T10:00:00.000Z", "event": "grant", "grant_id": 7,
        "identity": "user:alice", "segment": "db", "ports": ["5432/tcp"],
        "ttl_secs": 1800, "reason": "INC-1", "prev": "00", "hash": "11",
        "expires_at": "E", "request_id": null, "recorded_late": true,
        "happened_at": "H", "zone": "eu\u{1b}[2K",
        "actor": {"uid": 1000, "user": "al\u{1b}ice", "pid": 42}
    }));
    assert!(
        matches!(r.event, AuditEvent::Grant { grant_id: 7, .. }),
        "{r:?}"
    );
    assert_eq!(
        render(&r),
        "2026-05-09T10:00:00.000Z  grant           user:alice → db  by al\\u{1b}ice(1000)/pid 42  expires_at=E grant_id=7 happened_at=H ports=5432/tcp reason=INC-1 recorded_late=true ttl=30m zone=eu\\u{1b}[2K"
    );
}

#[test]
fn kinds_from_newer_versions_are_shown_and_filtered_by_their_fields() {
    let r = rec(
        json!({"ts": "T", "event": "quorum_reached", "segment": "db",
        "identity": "uid:5", "votes": 3, "by": ["a", "b\u{7}"]}),
    );
    assert!(matches!(r.event, AuditEvent::Other(_)));
    assert_eq!(
        render(&r),
        "T  quorum_reached  uid:5 → db  by=a,b\\u{7} votes=3"
    );
    assert!(filter(&["--event", "quorum_reached"]).matches(&r));
    assert!(filter(&["--segment", "db", "--identity", "uid:5"]).matches(&r));
    // Not even an event name: one line still.
    let odd = rec(json!({"event": 7, "x": {"y": 1}}));
    assert_eq!(render(&odd), format!("{:18}x={{\"y\":1}}", ""));
    assert!(!filter(&["--event", "grant"]).matches(&odd));
}

/// An audit `deny` is a request denied by an approver (typed), not the
/// deny log's kernel refusal, and is shown as such.
#[test]
fn a_denied_request_is_not_shown_as_a_kernel_deny() {
    let r = rec(
        json!({"ts": "T", "event": "deny", "request_id": 4, "segment": "db",
        "identity": "user:nobody", "reason": "not now",
        "requested_by": {"pid": 2, "uid": 65534, "user": "nobody"},
        "actor": {"pid": 1, "uid": 0, "user": "root"}}),
    );
    assert!(matches!(r.event, AuditEvent::Deny { .. }));
    assert_eq!(
        render(&r),
        "T  deny (request)  user:nobody → db  by root(0)/pid 1  reason=\"not now\" request_id=4 requested_by={\"pid\":2,\"uid\":65534,\"user\":\"nobody\"}"
    );
    // The same line read untyped (as a record from the deny-log reader
    // would be) is not taken for a kernel deny either.
    let Value::Object(map) = json!({"ts": "T", "event": "deny", "request_id": 4, "segment": "db",
        "identity": "user:nobody", "reason": "not now",
        "requested_by": {"pid": 2, "uid": 65534, "user": "nobody"},
        "actor": {"pid": 1, "uid": 0, "user": "root"}})
    else {
        unreachable!()
    };
    assert_eq!(render_map(&map), render(&r));
}

#[test]
fn partial_lines_are_left_for_later() {
    let data = b"{\"event\":\"a\",\"ts\":\"x\"}\n{\"event\":\"b\"";
    let mut out = Vec::new();
    let n = print_lines(&data[..], &filter(&[]), true, &mut out).unwrap();
    assert_eq!(n, 23);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"event\":\"a\",\"ts\":\"x\"}\n"
    );
}

/// `audit --event grnt` used to print nothing and exit 0 (issue 20).
#[test]
fn an_unknown_event_kind_is_an_error_listing_the_kinds() {
    let q = |event: &str, denies: bool| QueryArgs {
        event: Some(event.into()),
        denies,
        ..QueryArgs::default()
    };
    let e = Filter::new(&q("grnt", false)).err().expect("refused");
    assert!(
        e.starts_with("--event \"grnt\" is not a kind of the audit log; did you mean \"grant\"?; kinds: agent_start, agent_stop, grant, "),
        "{e}"
    );
    let e = Filter::new(&q("deni", true)).err().expect("refused");
    assert_eq!(
        e,
        "--event \"deni\" is not a kind of the deny log; did you mean \"deny\"?; kinds: deny, would_deny, suppressed"
    );
    assert!(Filter::new(&q("would_deny", true)).is_ok());
    assert!(Filter::new(&q("revok", false)).is_err());
    // Far from every kind: perhaps a newer version's; a note, not an error.
    assert_eq!(
        check_event("quorum_reached", false).unwrap().unwrap(),
        format!(
            "--event \"quorum_reached\" is not a kind this version writes (a newer agent's?); kinds: {}",
            AuditEvent::KINDS.join(", ")
        )
    );
    for kind in AuditEvent::KINDS {
        assert!(Filter::new(&q(kind, false)).is_ok(), "{kind}");
    }
}

/// `audit -n 2`: the last two matching records, not the whole history.
#[test]
fn the_last_n_matching_records() {
    let data = b"{\"event\":\"grant\",\"grant_id\":1}\n{\"event\":\"revoke\",\"grant_id\":1}\n\
{\"event\":\"grant\",\"grant_id\":2}\n{\"event\":\"grant\",\"grant_id\":3}\n{\"event\":\"revoke\",\"grant_id\":3}\n";
    let mut window = LastLines::new(2);
    print_lines(&data[..], &filter(&["--event", "grant"]), true, &mut window).unwrap();
    let shown: Vec<String> = window
        .lines
        .iter()
        .map(|l| String::from_utf8(l.clone()).unwrap())
        .collect();
    assert_eq!(
        shown,
        [
            "{\"event\":\"grant\",\"grant_id\":2}\n",
            "{\"event\":\"grant\",\"grant_id\":3}\n"
        ]
    );
    let mut none = LastLines::new(0);
    print_lines(&data[..], &filter(&[]), true, &mut none).unwrap();
    assert!(none.lines.is_empty());
}
