//! Loading policy directories: files and their order, rules across files,
//! host checks, and the properties that must hold for any input.
use std::{
    fs,
    path::{Path, PathBuf},
};

use proptest::prelude::*;

use super::*;

/// A host that knows exactly the names it is given.
#[derive(Default)]
struct FakeHost {
    users: Vec<&'static str>,
    groups: Vec<&'static str>,
    units: Vec<&'static str>,
}

impl HostDirectory for FakeHost {
    fn user_exists(&self, name: &str) -> bool {
        self.users.contains(&name)
    }
    fn group_exists(&self, name: &str) -> bool {
        self.groups.contains(&name)
    }
    fn unit_exists(&self, name: &str) -> bool {
        self.units.contains(&name)
    }
}

/// A directory holding `files` (name, contents).
fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn load(dir: &Path, host: &FakeHost, host_check: HostCheck) -> (Option<Policy>, Diagnostics) {
    load_paths(&[dir.to_owned()], host, host_check)
}

const DB: &str = r#"
[segment.payments-db]
ports = ["5432/tcp", "6432/tcp"]
allow = ["user:postgres", "unit:payments-api.service"]

[segment.payments-db.jit]
max_ttl = "1h"
approvers = ["group:secops"]
"#;

const WEB: &str = r#"
[segment.internal-http]
ports = ["8000-8099/tcp"]
allow = ["peer:10.20.0.0/16"]

[segment.statsd]
ports = ["8125/udp"]
"#;

fn everyone() -> FakeHost {
    FakeHost {
        users: vec!["postgres", "root"],
        groups: vec!["secops", "adm"],
        units: vec!["payments-api.service"],
    }
}

#[test]
fn loads_a_directory_in_name_order_ignoring_other_files() {
    let dir = policy_dir(&[
        ("web.toml", WEB),
        ("db.toml", DB),
        (".db.toml.swp", "not toml at all ["),
        ("README.md", "# policies"),
        ("notes.toml.bak", "["),
    ]);
    fs::create_dir(dir.path().join("old.toml")).unwrap();
    let (policy, diagnostics) = load(dir.path(), &everyone(), HostCheck::Error);
    assert!(diagnostics.is_empty(), "{diagnostics}");
    let policy = policy.unwrap();
    assert_eq!(
        policy.files,
        vec![dir.path().join("db.toml"), dir.path().join("web.toml")]
    );
    let names: Vec<&str> = policy.segments.keys().map(String::as_str).collect();
    assert_eq!(names, ["internal-http", "payments-db", "statsd"]);
    assert_eq!(policy.digest.len(), 64);
}

#[test]
fn digest_follows_the_text_and_nothing_else() {
    let one = policy_dir(&[("db.toml", DB), ("web.toml", WEB)]);
    let digest = |dir: &Path| load(dir, &everyone(), HostCheck::Warn).0.unwrap().digest;
    let first = digest(one.path());
    assert_eq!(
        first,
        digest(one.path()),
        "loading twice gives the same digest"
    );
    fs::write(one.path().join("web.toml"), format!("{WEB}\n# a comment\n")).unwrap();
    assert_ne!(first, digest(one.path()), "any edit changes the digest");
}

#[test]
fn missing_directory_names_the_path_and_the_os_error() {
    let path = PathBuf::from("/nonexistent/portcullis/policies");
    let (policy, diagnostics) = load(&path, &everyone(), HostCheck::Error);
    assert!(policy.is_none());
    let d = &diagnostics.0[0];
    assert_eq!(d.location, None);
    assert_eq!(
        d.message,
        "cannot read policy path `/nonexistent/portcullis/policies`: No such file or directory (os error 2)"
    );
}

#[test]
fn unreadable_file_names_the_path_and_the_os_error() {
    let dir = policy_dir(&[("db.toml", DB)]);
    std::os::unix::fs::symlink("/nonexistent/target.toml", dir.path().join("gone.toml")).unwrap();
    let (policy, diagnostics) = load(dir.path(), &everyone(), HostCheck::Error);
    assert!(policy.is_none());
    let errors: Vec<_> = diagnostics.errors().collect();
    assert_eq!(errors.len(), 1, "{diagnostics}");
    let gone = dir.path().join("gone.toml");
    assert_eq!(
        errors[0].message,
        format!(
            "cannot read policy file `{}`: No such file or directory (os error 2)",
            gone.display()
        )
    );
}

#[test]
fn non_utf8_file_is_located() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("a.toml"),
        b"[segment.a]\nports = [\"\xff\"]\n",
    )
    .unwrap();
    let (_, diagnostics) = load(dir.path(), &everyone(), HostCheck::Error);
    let d = &diagnostics.0[0];
    assert_eq!(d.message, "policy files must be UTF-8 text");
    let location = d.location.as_ref().unwrap();
    assert_eq!((location.line, location.column), (2, 11));
}

#[test]
fn empty_directory_is_a_warning() {
    let dir = policy_dir(&[]);
    let (policy, diagnostics) = load(dir.path(), &everyone(), HostCheck::Error);
    assert!(policy.unwrap().segments.is_empty());
    assert!(!diagnostics.has_errors());
    assert!(diagnostics.0[0].message.ends_with("has no *.toml files"));
}

#[test]
fn a_port_in_two_segments_names_both() {
    let other = "[segment.analytics-db]\nports = [\"5400-5499/tcp\"]\n";
    let dir = policy_dir(&[("a.toml", DB), ("b.toml", other)]);
    let (policy, diagnostics) = load(dir.path(), &everyone(), HostCheck::Error);
    assert!(policy.is_none());
    let d = &diagnostics.0[0];
    assert_eq!(diagnostics.0.len(), 1, "{diagnostics}");
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.toml");
    assert_eq!(
        d.to_string(),
        format!(
            "error: {}:2:10: `5400-5499/tcp` in segment `analytics-db` overlaps `5432/tcp` of \
             segment `payments-db` at {}:3:10\n  help: a port belongs to at most one segment: \
             remove it from one of them, or merge the segments",
            b.display(),
            a.display()
        )
    );
}

#[test]
fn the_same_port_twice_across_files() {
    let dir = policy_dir(&[
        ("a.toml", "[segment.one]\nports = [\"6379/tcp\"]\n"),
        (
            "b.toml",
            "[segment.two]\nports = [\"6379/udp\", \"6379/tcp\"]\n",
        ),
    ]);
    let (_, diagnostics) = load(dir.path(), &everyone(), HostCheck::Error);
    assert_eq!(diagnostics.0.len(), 1, "{diagnostics}");
    assert_eq!(
        diagnostics.0[0].message,
        format!(
            "`6379/tcp` is in segment `two` and also in segment `one` at {}:2:10",
            dir.path().join("a.toml").display()
        )
    );
}

#[test]
fn duplicate_segment_names_across_files_name_both_files() {
    let dir = policy_dir(&[("a.toml", DB), ("b.toml", DB)]);
    let (policy, diagnostics) = load(dir.path(), &everyone(), HostCheck::Error);
    assert!(policy.is_none());
    assert_eq!(diagnostics.0.len(), 1, "{diagnostics}");
    let d = &diagnostics.0[0];
    assert_eq!(d.location.as_ref().unwrap().file, dir.path().join("b.toml"));
    assert_eq!(
        d.message,
        format!(
            "segment `payments-db` is defined again; it is first defined at {}:2:10",
            dir.path().join("a.toml").display()
        )
    );
}

#[test]
fn the_same_file_given_twice_is_read_once() {
    let dir = policy_dir(&[("db.toml", DB)]);
    let paths = [dir.path().to_owned(), dir.path().join("db.toml")];
    let (policy, diagnostics) = load_paths(&paths, &everyone(), HostCheck::Error);
    assert!(diagnostics.is_empty(), "{diagnostics}");
    assert_eq!(policy.unwrap().files.len(), 1);
}

#[test]
fn host_check_warn_reports_missing_names_as_warnings() {
    let dir = policy_dir(&[("db.toml", DB)]);
    let (policy, diagnostics) = load(dir.path(), &FakeHost::default(), HostCheck::Warn);
    assert!(policy.is_some(), "{diagnostics}");
    let messages: Vec<(Severity, &str)> = diagnostics
        .iter()
        .map(|d| (d.severity, d.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            (
                Severity::Warning,
                "user `postgres` does not exist on this host"
            ),
            (
                Severity::Warning,
                "unit `payments-api.service` is not found on this host"
            ),
            (
                Severity::Warning,
                "group `secops` does not exist on this host"
            ),
        ]
    );
    let user = &diagnostics.0[0];
    let location = user.location.as_ref().unwrap();
    assert_eq!((location.line, location.column), (4, 10));
    assert!(help_of(user).ends_with("The agent refuses a policy naming a user it cannot resolve"));
}

#[test]
fn host_check_error_refuses_users_and_groups_but_not_units() {
    let dir = policy_dir(&[("db.toml", DB)]);
    let (policy, diagnostics) = load(dir.path(), &FakeHost::default(), HostCheck::Error);
    assert!(policy.is_none());
    let severities: Vec<Severity> = diagnostics.iter().map(|d| d.severity).collect();
    assert_eq!(
        severities,
        [Severity::Error, Severity::Warning, Severity::Error]
    );

    // With the users and groups present, a unit that has not started yet
    // does not stop the agent.
    let host = FakeHost {
        users: vec!["postgres"],
        groups: vec!["secops"],
        units: vec![],
    };
    let (policy, diagnostics) = load(dir.path(), &host, HostCheck::Error);
    assert!(policy.is_some(), "{diagnostics}");
    assert_eq!(diagnostics.warnings().count(), 1);
}

fn help_of(d: &Diagnostic) -> &str {
    d.help.as_deref().unwrap_or_default()
}

#[test]
fn segment_for_and_summary_lines() {
    let dir = policy_dir(&[("db.toml", DB), ("web.toml", WEB)]);
    let policy = load(dir.path(), &everyone(), HostCheck::Error).0.unwrap();
    let name = |port, proto| policy.segment_for(port, proto).map(|s| s.name.as_str());
    assert_eq!(name(6432, Protocol::Tcp), Some("payments-db"));
    assert_eq!(name(8099, Protocol::Tcp), Some("internal-http"));
    assert_eq!(name(8100, Protocol::Tcp), None);
    assert_eq!(name(8125, Protocol::Udp), Some("statsd"));
    assert_eq!(name(8125, Protocol::Tcp), None);
    assert_eq!(
        policy.summary_lines(),
        [
            "internal-http: 8000-8099/tcp; 1 standing allow; no jit",
            "payments-db: 5432/tcp, 6432/tcp; 2 standing allows; jit max 1h, approvers group:secops",
            "statsd: 8125/udp; no standing allows; no jit",
        ]
    );
}

/// The shipped examples must load on a stock Debian host with the agent's
/// strict check: they only name `root` and `adm`, which always exist.
#[test]
fn example_policies_load_on_a_stock_host() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let debian = FakeHost {
        users: vec!["root"],
        groups: vec!["root", "adm", "sudo"],
        units: vec![],
    };
    let (policy, diagnostics) = load(&examples, &debian, HostCheck::Error);
    assert!(!diagnostics.has_errors(), "{diagnostics}");
    let policy = policy.unwrap();
    assert!(policy.files.len() >= 2);
    // Never protect ports a developer's machine needs (ssh, dns, mdns).
    for (port, proto) in [
        (22, Protocol::Tcp),
        (53, Protocol::Udp),
        (53, Protocol::Tcp),
        (5353, Protocol::Udp),
    ] {
        assert!(policy.segment_for(port, proto).is_none(), "{port}/{proto}");
    }
}

/// Generates documents shaped like policies, with right and wrong keys,
/// types and values in right and wrong places.
fn tomlish_document() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("db".to_owned()),
        Just("web".to_owned()),
        "[a-zA-Z0-9_.\"-]{0,8}",
    ];
    let header = prop_oneof![
        name.clone().prop_map(|n| format!("[segment.{n}]")),
        name.clone().prop_map(|n| format!("[segment.{n}.jit]")),
        name.clone().prop_map(|n| format!("[{n}]")),
        Just("[[segment]]".to_owned()),
        Just("[segment]".to_owned()),
    ];
    let scalar = prop_oneof![
        prop::sample::select(vec![
            "5432/tcp",
            "8000-8099/tcp",
            "0/udp",
            "70000/tcp",
            "9-1/tcp",
            "53",
            "1h",
            "0s",
            "15m",
            "soon",
            "user:root",
            "group:adm",
            "peer:10.0.0.0/8",
            "peer:10.0.0.1/8",
            "unit:a.service",
            "cgroup:/",
            "x:y",
            "",
            "é",
        ])
        .prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "\"[ -~]{0,12}\"".prop_map(|s| s.replace('\\', "\\\\")),
    ];
    let value = prop_oneof![
        scalar.clone(),
        prop::collection::vec(scalar.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        prop::collection::vec(("[a-z_]{1,12}", scalar), 0..3).prop_map(|kv| {
            let kv: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", kv.join(", "))
        }),
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "ports",
            "allow",
            "description",
            "jit",
            "max_ttl",
            "default_ttl",
            "approvers",
            "require_reason",
            "segment.db.ports",
            "jit.max_ttl",
        ])
        .prop_map(str::to_owned),
        "[a-z_-]{1,10}",
    ];
    let line = prop_oneof![
        header,
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        Just("# comment".to_owned()),
        Just(String::new()),
    ];
    let block = prop_oneof![segment_block(), line];
    prop::collection::vec(block, 0..12).prop_map(|blocks| blocks.join("\n"))
}

/// A segment written the way people write them, mostly valid, so that
/// accepted policies (not just rejected ones) are exercised.
fn segment_block() -> impl Strategy<Value = String> {
    fn list(items: &[&'static str], len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(items.to_vec()), len)
            .prop_map(|items| format!("{items:?}"))
    }
    let name = prop_oneof![
        prop::sample::select(vec!["db", "web", "cache"]).prop_map(str::to_owned),
        "[a-z][a-z0-9-]{0,6}",
    ];
    let ports = list(
        &[
            "5432/tcp",
            "6432/tcp",
            "8000-8099/tcp",
            "8050/tcp",
            "8125/udp",
            "1-65535/udp",
        ],
        1..3,
    );
    let allow = list(
        &[
            "user:root",
            "uid:0",
            "group:adm",
            "unit:a.service",
            "cgroup:/system.slice",
            "peer:10.0.0.0/8",
            "peer:::1",
        ],
        0..3,
    );
    let ttl = prop::sample::select(vec!["1h", "30m", "8h", "15m", "2h", "5m"]);
    let jit = (
        ttl.clone(),
        prop::option::of(ttl),
        list(&["group:adm", "uid:0", "user:root", "peer:10.0.0.0/8"], 0..2),
        any::<bool>(),
    )
        .prop_map(|(max, default, approvers, reason)| {
            let default = default.map_or(String::new(), |d| format!("default_ttl = \"{d}\"\n"));
            format!("max_ttl = \"{max}\"\n{default}approvers = {approvers}\nrequire_reason = {reason}\n")
        });
    (name, ports, allow, prop::option::of(jit)).prop_map(|(name, ports, allow, jit)| {
        let jit = jit.map_or(String::new(), |jit| format!("[segment.{name}.jit]\n{jit}"));
        format!("[segment.{name}]\nports = {ports}\nallow = {allow}\n{jit}")
    })
}

/// What must hold of any parse: nothing panics, every location is inside
/// the file, and an accepted policy obeys the documented invariants.
fn check_any(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("fuzz.toml");
    match parse_str(file, text) {
        Ok(segments) => {
            for segment in &segments {
                prop_assert!(!segment.ports.is_empty());
                if let Some(jit) = &segment.jit {
                    prop_assert!(jit.default_ttl <= jit.max_ttl);
                    prop_assert!(jit
                        .approvers
                        .iter()
                        .all(|a| a.is_local()
                            && !matches!(a, Identity::Unit(_) | Identity::Cgroup(_))));
                }
            }
        }
        Err(diagnostics) => {
            prop_assert!(diagnostics.has_errors());
            let lines = text.lines().count().max(1) + 1;
            for d in &diagnostics {
                if let Some(location) = &d.location {
                    prop_assert!(location.line >= 1 && location.line <= lines, "{}", d);
                    prop_assert!(location.column >= 1, "{}", d);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn parse_str_never_panics_on_any_string(text in any::<String>()) {
        check_any(&text)?;
    }

    #[test]
    fn parse_str_never_panics_on_tomlish_documents(text in tomlish_document()) {
        check_any(&text)?;
    }
}

// ---- reloads that look like a rewrite in progress ---------------------------

fn loaded(files: &[(&str, &str)]) -> Policy {
    let dir = policy_dir(files);
    let (policy, d) = load(dir.path(), &FakeHost::default(), HostCheck::Warn);
    policy.unwrap_or_else(|| panic!("{d}"))
}

const ONE: &str = "[segment.one]\nports = [\"1000/tcp\"]\n";
const TWO: &str = "[segment.two]\nports = [\"2000/tcp\"]\n";

#[test]
fn an_emptied_policy_or_file_is_suspicious_unless_declared() {
    let old = loaded(&[("a.toml", ONE), ("b.toml", TWO)]);
    // Everything gone: refused.
    let none = loaded(&[]);
    assert!(suspicious_shrink(&old, &none)
        .unwrap()
        .contains("protects nothing"));
    // One file emptied (same path, no segments): refused. Tempdirs differ,
    // so compare within one directory.
    let dir = policy_dir(&[("a.toml", ONE), ("b.toml", TWO)]);
    let host = FakeHost::default();
    let before = load(dir.path(), &host, HostCheck::Warn).0.unwrap();
    fs::write(dir.path().join("b.toml"), "").unwrap();
    let after = load(dir.path(), &host, HostCheck::Warn).0.unwrap();
    let why = suspicious_shrink(&before, &after).unwrap();
    assert!(
        why.contains("b.toml") && why.contains("now defines none"),
        "{why}"
    );
    // Declared on purpose: accepted.
    fs::write(dir.path().join("b.toml"), "allow_empty = true\n").unwrap();
    let declared = load(dir.path(), &host, HostCheck::Warn).0.unwrap();
    assert!(declared.allow_empty);
    assert_eq!(suspicious_shrink(&before, &declared), None);
    // A file removed is an intent.
    fs::remove_file(dir.path().join("b.toml")).unwrap();
    let removed = load(dir.path(), &host, HostCheck::Warn).0.unwrap();
    assert_eq!(suspicious_shrink(&before, &removed), None);
}

#[test]
fn allow_empty_must_be_a_boolean() {
    let dir = policy_dir(&[("a.toml", "allow_empty = \"yes\"\n")]);
    let (policy, d) = load(dir.path(), &FakeHost::default(), HostCheck::Warn);
    assert!(policy.is_none());
    assert!(
        d.to_string().contains("`allow_empty` must be a boolean"),
        "{d}"
    );
}

/// `check` used to pass a policy the agent then refused at apply
/// (issue 20): more segments than the port map can number.
#[test]
fn more_segments_than_the_kernel_can_number_are_refused() {
    let text = |n: usize| -> String {
        (1..=n)
            .map(|i| format!("[segment.s{i}]\nports = [\"{i}/tcp\"]\n"))
            .collect()
    };
    let dir = policy_dir(&[("many.toml", &text(validate::MAX_POLICY_SEGMENTS))]);
    let (policy, diags) = load(dir.path(), &everyone(), HostCheck::Error);
    assert_eq!(policy.expect("4,095 fit").segments.len(), 4095, "{diags}");
    let dir = policy_dir(&[("many.toml", &text(validate::MAX_POLICY_SEGMENTS + 1))]);
    let (policy, diags) = load(dir.path(), &everyone(), HostCheck::Error);
    assert!(policy.is_none());
    let d = diags
        .iter()
        .find(|d| d.message.contains("fit the kernel's port map"))
        .expect("refused");
    assert_eq!(
        d.message,
        "4096 segments; at most 4095 fit the kernel's port map, and this is number 4096"
    );
    assert_eq!(d.location.as_ref().unwrap().line, 2 * 4095 + 1);
}
