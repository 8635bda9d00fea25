//! One file at a time: every rule `schema` enforces, each with its message
//! and the line:column it points at.
use std::{path::Path, time::Duration};

use super::parse_file;
use crate::{
    identity::Identity,
    policy::{parse_str, Diagnostic, Severity},
};

const FILE: &str = "policies/test.toml";

fn check(text: &str) -> Vec<Diagnostic> {
    parse_file(Path::new(FILE), text).1 .0
}

/// The single diagnostic `text` produces.
fn only(text: &str) -> Diagnostic {
    let mut found = check(text);
    assert_eq!(found.len(), 1, "expected one diagnostic, got {found:#?}");
    found.remove(0)
}

/// 1-based line and character column of the first `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Asserts an error at the first `needle` in `text` with this message.
#[track_caller]
fn assert_error(d: &Diagnostic, text: &str, needle: &str, message: &str) {
    assert_eq!(d.severity, Severity::Error, "{d}");
    let location = d.location.as_ref().expect("diagnostic has a location");
    assert_eq!(location.file, Path::new(FILE));
    assert_eq!(
        (location.line, location.column),
        position(text, needle),
        "{d}"
    );
    assert_eq!(d.message, message, "{d}");
    assert!(d.help.is_some(), "every error says how to fix it: {d}");
}

fn help(d: &Diagnostic) -> &str {
    d.help.as_deref().unwrap_or_default()
}

#[test]
fn a_full_segment_parses_with_its_defaults() {
    let text = r#"
[segment.payments-db]
description = "PostgreSQL for the payments service"
ports = ["5432/tcp", "6432/tcp"]
allow = ["unit:payments-api.service", "peer:10.20.0.0/16", "user:postgres"]

[segment.payments-db.jit]
max_ttl = "1h"
approvers = ["group:secops"]

[segment.cache]
ports = ["6379/tcp"]
jit = { max_ttl = "5m", default_ttl = "2m", require_reason = false }
"#;
    let segments = parse_str(Path::new(FILE), text).unwrap();
    assert_eq!(segments.len(), 2);
    let db = &segments[0];
    assert_eq!(db.name, "payments-db");
    assert_eq!(
        db.description.as_deref(),
        Some("PostgreSQL for the payments service")
    );
    assert_eq!(db.ports.len(), 2);
    assert_eq!(
        db.allow[1],
        "peer:10.20.0.0/16".parse::<Identity>().unwrap()
    );
    assert_eq!(
        (db.origin.line, db.origin.column),
        position(text, "payments-db]")
    );
    let jit = db.jit.as_ref().unwrap();
    assert_eq!(jit.max_ttl, Duration::from_secs(3600));
    assert_eq!(jit.default_ttl, Duration::from_secs(15 * 60));
    assert!(jit.require_reason);
    assert_eq!(jit.approvers, vec![Identity::Group("secops".into())]);

    let cache = &segments[1];
    assert!(cache.allow.is_empty());
    let jit = cache.jit.as_ref().unwrap();
    assert_eq!(jit.default_ttl, Duration::from_secs(120));
    assert!(!jit.require_reason);
    assert!(jit.approvers.is_empty());
}

#[test]
fn default_ttl_is_capped_by_max_ttl() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\nmax_ttl = \"5m\"\n";
    let segments = parse_str(Path::new(FILE), text).unwrap();
    assert_eq!(
        segments[0].jit.as_ref().unwrap().default_ttl,
        Duration::from_secs(300)
    );
}

#[test]
fn toml_syntax_error() {
    let text = "[segment.a]\nports = [\"5432/tcp\"\nallow = []\n";
    let d = only(text);
    let location = d.location.as_ref().unwrap();
    assert_eq!((location.line, location.column), (3, 1), "{d}");
    assert!(d.message.starts_with("TOML syntax error: "), "{d}");
    assert!(!d.message.contains('\n'), "one line: {d}");
}

#[test]
fn unknown_keys_at_every_level() {
    let text = r#"
version = 2
[segment.a]
pots = ["5432/tcp"]
ports = ["5432/tcp"]
[segment.a.jit]
max-ttl = "1h"
max_ttl = "1h"
[payments]
ports = ["1/tcp"]
"#;
    let found = check(text);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert_error(
        &found[0],
        text,
        "version",
        "unknown top-level key `version`",
    );
    assert_error(&found[1], text, "pots", "unknown key `pots` in segment `a`");
    assert_eq!(help(&found[1]), "did you mean `ports`?");
    assert_error(
        &found[2],
        text,
        "max-ttl",
        "unknown key `max-ttl` in [segment.a.jit]",
    );
    assert_eq!(help(&found[2]), "did you mean `max_ttl`?");
    assert_error(
        &found[3],
        text,
        "payments",
        "unknown top-level key `payments`",
    );
    assert_eq!(
        help(&found[3]),
        "segments are tables named [segment.NAME]: write [segment.payments]"
    );
}

#[test]
fn unknown_key_far_from_any_known_key_lists_the_keys() {
    let d = only("[segment.a]\nports = [\"1/tcp\"]\nowner = \"dba\"\n");
    assert_eq!(
        help(&d),
        "the keys of segment `a` are description, ports, allow, jit, mode"
    );
}

#[test]
fn port_out_of_range() {
    let text = "[segment.a]\nports = [\"5432/tcp\", \"70000/tcp\"]\n";
    let d = only(text);
    assert_error(
        &d,
        text,
        "\"70000",
        "port 70000 in `70000/tcp` is out of range",
    );
    assert_eq!(help(&d), "ports are 1-65535");
    assert_eq!(
        d.to_string(),
        "error: policies/test.toml:2:22: port 70000 in `70000/tcp` is out of range\n  help: ports are 1-65535"
    );
}

#[test]
fn port_zero() {
    let text = "[segment.a]\nports = [\"0-10/udp\"]\n";
    assert_error(
        &only(text),
        text,
        "\"0-10",
        "port 0 in `0-10/udp` is not a port",
    );
}

#[test]
fn bad_protocol() {
    let text = "[segment.a]\nports = [\"5432/sctp\"]\n";
    let d = only(text);
    assert_error(
        &d,
        text,
        "\"5432/sctp",
        "unknown protocol `sctp` in `5432/sctp`: protocols are tcp and udp",
    );
}

#[test]
fn missing_protocol() {
    let text = "[segment.a]\nports = [\"5432\"]\n";
    let d = only(text);
    assert_error(&d, text, "\"5432", "`5432` has no protocol");
    assert_eq!(help(&d), "write `5432/tcp` or `5432/udp`");
}

#[test]
fn overlapping_ranges_within_a_segment() {
    let text =
        "[segment.a]\nports = [\"8000-8099/tcp\", \"8050/tcp\", \"8050/udp\", \"8000-8099/tcp\"]\n";
    let found = check(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_error(
        &found[0],
        text,
        "\"8050/tcp",
        "`8050/tcp` overlaps `8000-8099/tcp` (at policies/test.toml:2:10) in segment `a`",
    );
    let location = found[1].location.as_ref().unwrap();
    assert_eq!((location.line, location.column), (2, 51));
    assert_eq!(
        found[1].message,
        "`8000-8099/tcp` is listed twice in segment `a` (first at policies/test.toml:2:10)"
    );
}

#[test]
fn unknown_identity_kind() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\nallow = [\"ip:10.0.0.1\"]\n";
    let d = only(text);
    assert_error(
        &d,
        text,
        "\"ip:",
        "`ip:10.0.0.1` has unknown identity kind `ip`: identities are unit:NAME.service, \
         cgroup:/PATH, user:NAME, uid:N, group:NAME, gid:N or peer:CIDR",
    );
    assert_eq!(help(&d), "write `peer:10.0.0.1`");
}

#[test]
fn malformed_cidr() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\nallow = [\"peer:10.0.0/8\"]\n";
    let d = only(text);
    assert_error(
        &d,
        text,
        "\"peer:",
        "`peer:10.0.0/8` is not a network: `10.0.0/8` is not an IP address",
    );
}

#[test]
fn cidr_with_host_bits_set() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\nallow = [\"peer:10.20.1.0/16\"]\n";
    let d = only(text);
    assert_error(
        &d,
        text,
        "\"peer:",
        "`peer:10.20.1.0/16` is not a network: `10.20.1.0/16` has host bits set beyond the /16 prefix",
    );
    assert_eq!(
        help(&d),
        "use the network address `10.20.0.0/16`, or `10.20.1.0` for that single host"
    );
}

#[test]
fn default_ttl_longer_than_max_ttl() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"2h\"\n";
    let d = only(text);
    assert_error(
        &d,
        text,
        "\"2h\"",
        "default_ttl 2h is longer than max_ttl 1h",
    );
}

#[test]
fn zero_and_unparsable_ttls() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\nmax_ttl = \"0s\"\ndefault_ttl = \"soon\"\n";
    let found = check(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_error(
        &found[0],
        text,
        "\"0s\"",
        "bad max_ttl: TTL must be greater than zero",
    );
    let d = &found[1];
    assert_eq!(d.location.as_ref().unwrap().line, 5);
    assert!(
        d.message
            .starts_with("bad default_ttl: `soon` is not a duration: "),
        "{d}"
    );
}

#[test]
fn ttl_written_as_a_number() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\njit = { max_ttl = 3600 }\n";
    let d = only(text);
    assert_error(
        &d,
        text,
        "3600",
        "`max_ttl` must be a string, not an integer",
    );
    assert_eq!(
        help(&d),
        r#"TTLs are strings with a unit: write max_ttl = "3600s" or max_ttl = "60m""#
    );
}

#[test]
fn jit_without_max_ttl() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\napprovers = []\n";
    assert_error(&only(text), text, "jit]", "[segment.a.jit] has no max_ttl");
}

#[test]
fn segment_without_ports() {
    let text = "[segment.empty]\ndescription = \"nothing yet\"\n";
    assert_error(&only(text), text, "empty]", "segment `empty` has no ports");
}

#[test]
fn segment_with_an_empty_ports_list() {
    let text = "[segment.a]\nports = []\n";
    assert_error(
        &only(text),
        text,
        "[]",
        "segment `a` has an empty ports list",
    );
}

#[test]
fn non_people_cannot_approve() {
    let text = r#"[segment.a]
ports = ["1/tcp"]
[segment.a.jit]
max_ttl = "1h"
approvers = ["peer:10.0.0.0/8", "unit:ops.service", "cgroup:/ops.slice", "group:secops"]
"#;
    let found = check(text);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_error(
        &found[0],
        text,
        "\"peer:",
        "`peer:10.0.0.0/8` cannot approve: approvers are user:NAME, uid:N, group:NAME or gid:N",
    );
    assert_error(
        &found[1],
        text,
        "\"unit:",
        "`unit:ops.service` cannot approve: approvers are user:NAME, uid:N, group:NAME or gid:N",
    );
    assert_error(
        &found[2],
        text,
        "\"cgroup:",
        "`cgroup:/ops.slice` cannot approve: approvers are user:NAME, uid:N, group:NAME or gid:N",
    );
}

#[test]
fn bad_segment_names() {
    let text =
        "[segment.Payments_DB]\nports = [\"1/tcp\"]\n[segment.\"-x\"]\nports = [\"2/tcp\"]\n";
    let found = check(text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_error(
        &found[0],
        text,
        "Payments_DB",
        "bad segment name `Payments_DB`",
    );
    assert!(
        help(&found[0]).ends_with("e.g. `payments_db`"),
        "{}",
        found[0]
    );
    assert_error(&found[1], text, "\"-x\"", "bad segment name `-x`");
    let long = format!("[segment.{}]\nports = [\"1/tcp\"]\n", "a".repeat(64));
    assert_eq!(
        only(&long).message,
        format!("bad segment name `{}`", "a".repeat(64))
    );
    let ok = format!("[segment.{}]\nports = [\"1/tcp\"]\n", "a".repeat(63));
    assert!(check(&ok).is_empty());
}

#[test]
fn wrong_types_say_what_to_write() {
    let text = r#"segment.a.ports = "5432/tcp"
segment.b.ports = [5432]
segment.c.ports = ["1/tcp"]
segment.c.description = 5
segment.c.jit = "1h"
segment.d.ports = ["2/tcp"]
segment.d.jit = { max_ttl = "1h", require_reason = "false" }
"#;
    let found = check(text);
    assert_eq!(found.len(), 5, "{found:#?}");
    assert_error(
        &found[0],
        text,
        "\"5432/tcp\"",
        "`ports` must be a list of strings, not a string",
    );
    assert_eq!(help(&found[0]), r#"write ports = ["5432/tcp"]"#);
    assert_error(
        &found[1],
        text,
        "5432]",
        "entries of `ports` are strings, not an integer",
    );
    assert_eq!(help(&found[1]), r#"write "5432/tcp" or "5432/udp""#);
    assert_error(
        &found[2],
        text,
        "5\n",
        "`description` must be a string, not an integer",
    );
    assert_error(
        &found[3],
        text,
        "jit =",
        "`jit` of segment `c` must be a table, not a string",
    );
    assert_error(
        &found[4],
        text,
        "\"false\"",
        "`require_reason` must be true or false, not a string",
    );
    assert_eq!(
        help(&found[4]),
        "write require_reason = false, without quotes"
    );
}

#[test]
fn segment_must_be_a_table_of_tables() {
    let text = "segment = 5\n";
    assert_error(
        &only(text),
        text,
        "segment",
        "`segment` must be a table of named segments, not an integer",
    );
    let text = "[[segment]]\nports = [\"1/tcp\"]\n";
    assert_error(
        &only(text),
        text,
        "segment",
        "`segment` must be a table of named segments, not an array of tables",
    );
    let text = "[[segment.a]]\nports = [\"1/tcp\"]\n";
    assert_error(
        &only(text),
        text,
        "a]",
        "segment `a` must be a table, not an array of tables",
    );
}

#[test]
fn a_file_without_segments_is_a_warning() {
    let d = only("# nothing here yet\n");
    assert_eq!(d.severity, Severity::Warning);
    assert_eq!(d.message, "this file defines no segments");
    assert_eq!(parse_str(Path::new(FILE), "").unwrap(), vec![]);
}

#[test]
fn duplicate_identities_are_a_warning() {
    let text = "[segment.a]\nports = [\"1/tcp\"]\nallow = [\"uid:0\", \"uid:00\"]\n";
    let d = only(text);
    assert_eq!(d.severity, Severity::Warning);
    assert_eq!(d.message, "`uid:0` is listed twice in `allow`");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = r#"
[segment.a]
ports = ["70000/tcp", "80/sctp"]
allow = ["bob", "peer:10.0.0.1/8"]
colour = "red"

[segment.B]
ports = []

[segment.c.jit]
max_ttl = "0m"
approvers = ["peer:10.0.0.0/8"]
"#;
    let found = check(text);
    let lines: Vec<usize> = found
        .iter()
        .map(|d| d.location.as_ref().unwrap().line)
        .collect();
    // colour (5) is found while reading segment a's keys, before its ports.
    assert_eq!(lines, vec![5, 3, 3, 4, 4, 7, 8, 10, 11, 12], "{found:#?}");
    assert!(found.iter().all(|d| d.severity == Severity::Error));
}

#[test]
fn mode_is_enforce_by_default_audit_when_asked_and_checked() {
    use crate::policy::Mode;
    let segs = parse_str(Path::new(FILE), "[segment.a]\nports = [\"1/tcp\"]\n").unwrap();
    assert_eq!(segs[0].mode, Mode::Enforce);
    let segs = parse_str(
        Path::new(FILE),
        "[segment.a]\nports = [\"1/tcp\"]\nmode = \"audit\"\n",
    )
    .unwrap();
    assert_eq!(segs[0].mode, Mode::Audit);
    let text = "[segment.a]\nports = [\"1/tcp\"]\nmode = \"log\"\n";
    assert_error(
        &only(text),
        text,
        "\"log\"",
        "unknown mode `log`: write \"enforce\" or \"audit\"",
    );
    let text = "[segment.a]\nports = [\"1/tcp\"]\nmode = true\n";
    assert_error(
        &only(text),
        text,
        "true",
        "`mode` must be a string, not a boolean",
    );
}

#[test]
fn idle_timeout_is_a_bounded_duration() {
    let ok = "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\nmax_ttl = \"1h\"\nidle_timeout = \"15m\"\n";
    let segments = parse_str(Path::new(FILE), ok).unwrap();
    assert_eq!(
        segments[0].jit.as_ref().unwrap().idle_timeout,
        Some(Duration::from_secs(15 * 60))
    );
    let none = "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\nmax_ttl = \"1h\"\n";
    let segments = parse_str(Path::new(FILE), none).unwrap();
    assert_eq!(segments[0].jit.as_ref().unwrap().idle_timeout, None);

    let short = "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\nmax_ttl = \"1h\"\nidle_timeout = \"500ms\"\n";
    let d = only(short);
    assert_error(
        &d,
        short,
        "\"500ms\"",
        "bad idle_timeout: `500ms` is not a duration: `ms` is shorter than a second; the smallest unit is `s`",
    );
    let long = "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\nmax_ttl = \"1h\"\nidle_timeout = \"400d\"\n";
    let d = only(long);
    assert_error(
        &d,
        long,
        "\"400d\"",
        "bad idle_timeout: idle timeout `400d` is longer than the maximum of 366 days",
    );
    let number =
        "[segment.a]\nports = [\"1/tcp\"]\n[segment.a.jit]\nmax_ttl = \"1h\"\nidle_timeout = 60\n";
    let d = only(number);
    assert_error(
        &d,
        number,
        "60",
        "`idle_timeout` must be a string, not an integer",
    );
}
