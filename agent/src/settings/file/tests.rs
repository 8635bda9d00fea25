//! Inline-TOML tests of the configuration file's parser.
use super::*;
use crate::notifications::{EventClass, NotifyConfig, Sink, Target};

const FILE: &str = "/etc/portcullis/agent.toml";

fn parse(text: &str) -> Result<AgentConfig, Diagnostics> {
    AgentConfig::parse(Path::new(FILE), text)
}

/// The diagnostics of a text that must be refused, as displayed.
fn errors(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("must be refused")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn an_empty_file_means_every_default() {
    assert_eq!(parse("").unwrap(), AgentConfig::default());
    assert_eq!(parse("# nothing\n").unwrap(), AgentConfig::default());
}

#[test]
fn the_shipped_example_states_exactly_the_defaults() {
    // packaging/agent.toml documents the defaults by writing them out;
    // if a default changes, the shipped file must change with it. The one
    // exception is the socket's group, which the package creates
    // (packaging/debian/postinst) and the shipped file names.
    let text = include_str!("../../../../packaging/agent.toml");
    let shipped = parse(text).unwrap();
    assert_eq!(shipped.socket_group.as_deref(), Some(PACKAGE_GROUP));
    assert_eq!(
        AgentConfig {
            socket_group: None,
            ..shipped
        },
        AgentConfig::default()
    );
}

/// The group the package creates for the control socket.
const PACKAGE_GROUP: &str = "portcullis";

#[test]
fn the_package_creates_the_group_the_shipped_file_names() {
    let postinst = include_str!("../../../../packaging/debian/postinst");
    assert!(
        postinst.contains(&format!("groupadd --system {PACKAGE_GROUP}")),
        "postinst must create the socket group:\n{postinst}"
    );
    assert!(
        postinst.contains(&format!("getent group {PACKAGE_GROUP}")),
        "postinst must create the group only when it is missing:\n{postinst}"
    );
}

#[test]
fn the_documented_example_parses_to_what_it_says() {
    let doc = include_str!("../../../../docs/config.md");
    let start = doc
        .find("```toml\n")
        .expect("a toml block in docs/config.md")
        + 8;
    let len = doc[start..].find("```").expect("closed block");
    let c = parse(&doc[start..start + len]).unwrap();
    assert_eq!(c.xdp_ifaces, vec!["eth0".to_string(), "eth1".to_string()]);
    assert_eq!(c.socket_group.as_deref(), Some("portcullis"));
    assert_eq!(c.cgroup, Some(PathBuf::from("/sys/fs/cgroup")));
    assert_eq!(c.request_expiry, Duration::from_secs(30 * 60));
}

#[test]
fn every_key_is_read() {
    let three: std::collections::BTreeSet<EventClass> = [
        EventClass::Request,
        EventClass::Approve,
        EventClass::BreakGlass,
    ]
    .into_iter()
    .collect();
    let c = parse(
        r#"
policy_dir = "/srv/policies"
socket = "/run/pc/control.sock"
socket_mode = "0600"
socket_group = "secops"
xdp_ifaces = ["eth0", "bond0.100"]
audit_log = "/var/log/pc/audit.jsonl"
state_dir = "/var/lib/pc"
bpffs = "/sys/fs/bpf/pc"
cgroup = "/sys/fs/cgroup/system.slice"
max_grants = 1024
max_peers = 64
request_expiry = "2h"
identity_rescan = "1m"
group_refresh = "10s"
lock_admins = ["group:secops", "uid:0"]
audit_max_bytes = "1M"
audit_keep = 3
deny_log = "/var/log/pc/denies.jsonl"
deny_burst = 20
deny_window = "5m"
metrics_addr = "9464"
grant_grace = "5m"
policy_symlinks_outside = true
mode = "audit"
discovery = false
peer_filter = "tc"

[notify]
webhooks = ["https://hooks.example.com/pc", { url = "https://hooks.slack.example/T/B/X", slack = true, events = ["request"] }]
commands = ["/usr/local/bin/page"]
events = ["request", "approve", "break_glass"]
"#,
    )
    .unwrap();
    assert_eq!(
        c,
        AgentConfig {
            policy_dir: "/srv/policies".into(),
            socket: "/run/pc/control.sock".into(),
            socket_mode: 0o600,
            socket_group: Some("secops".into()),
            xdp_ifaces: vec!["eth0".into(), "bond0.100".into()],
            audit_log: "/var/log/pc/audit.jsonl".into(),
            state_dir: "/var/lib/pc".into(),
            bpffs: "/sys/fs/bpf/pc".into(),
            cgroup: Some("/sys/fs/cgroup/system.slice".into()),
            max_grants: 1024,
            max_peers: 64,
            request_expiry: Duration::from_secs(7200),
            identity_rescan: Duration::from_secs(60),
            group_refresh: Duration::from_secs(10),
            lock_admins: vec!["group:secops".parse().unwrap(), "uid:0".parse().unwrap()],
            audit_max_bytes: 1 << 20,
            audit_keep: 3,
            deny_log: Some("/var/log/pc/denies.jsonl".into()),
            deny_burst: 20,
            deny_window: Duration::from_secs(300),
            metrics_addr: Some("127.0.0.1:9464".parse().unwrap()),
            grant_grace: Duration::from_secs(300),
            policy_symlinks_outside: true,
            mode: Some(crate::policy::Mode::Audit),
            discovery: false,
            peer_filter: crate::dataplane::Placement::Tc,
            notify: NotifyConfig {
                sinks: vec![
                    Sink {
                        target: Target::Webhook {
                            url: "https://hooks.example.com/pc".into(),
                            slack: false
                        },
                        events: three.clone(),
                    },
                    Sink {
                        target: Target::Webhook {
                            url: "https://hooks.slack.example/T/B/X".into(),
                            slack: true
                        },
                        events: [EventClass::Request].into_iter().collect(),
                    },
                    Sink {
                        target: Target::Command {
                            path: "/usr/local/bin/page".into()
                        },
                        events: three,
                    },
                ],
            },
            fleet: None,
        }
    );
    assert_eq!(KEYS.len(), 28, "KEYS lists every field");
}

#[test]
fn an_unknown_key_is_an_error_at_its_place_with_a_hint() {
    let e = errors("socket_mode = \"0660\"\npolicies_dir = \"/x\"\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!("error: {FILE}:2:1: unknown field `policies_dir`")),
        "{e:?}"
    );
    assert!(e[0].contains("did you mean `policy_dir`?"), "{e:?}");
}

#[test]
fn a_wrong_type_is_located_at_the_value() {
    let e = errors("max_grants = \"lots\"\n");
    assert!(
        e[0].starts_with(&format!("error: {FILE}:1:14: invalid type")),
        "{e:?}"
    );
    let e = errors("xdp_ifaces = \"eth0\"\n");
    assert!(e[0].contains(":1:14: invalid type"), "{e:?}");
}

#[test]
fn a_syntax_error_is_located() {
    let e = errors("socket = /run/x.sock\n");
    assert!(e[0].starts_with(&format!("error: {FILE}:1:10:")), "{e:?}");
}

#[test]
fn every_bad_value_is_reported_with_its_line() {
    let e = errors(
        r#"policy_dir = "policies"
socket_mode = "0999"
socket_group = ""
xdp_ifaces = ["eth0", "a/b", "much-too-long-ifname"]
max_grants = 0
max_peers = -1
request_expiry = "0s"
identity_rescan = "soon"
cgroup = "sys/fs/cgroup"
peer_filter = "generic"
"#,
    );
    let at = |line: usize, needle: &str| {
        assert!(
            e.iter()
                .any(|d| d.contains(&format!("{FILE}:{line}:")) && d.contains(needle)),
            "no error on line {line} mentioning {needle:?} in {e:#?}"
        )
    };
    at(1, "policy_dir \"policies\" is not an absolute path");
    at(2, "socket_mode \"0999\" is not an octal file mode");
    at(3, "socket_group is empty");
    at(4, "\"a/b\" is not a network interface name");
    at(
        4,
        "\"much-too-long-ifname\" is not a network interface name",
    );
    at(5, "max_grants 0 is out of range");
    at(6, "max_peers -1 is out of range");
    at(7, "request_expiry");
    at(8, "identity_rescan \"soon\" is not a duration");
    at(9, "cgroup \"sys/fs/cgroup\" is not an absolute path");
    at(10, "`generic` is not a peer filter placement");
    assert_eq!(e.len(), 11, "{e:#?}");
    assert!(e.iter().all(|d| d.contains("\n  help: ")), "{e:#?}");
}

#[test]
fn a_numeric_mode_is_refused_with_how_to_write_it() {
    let e = errors("socket_mode = 660\n");
    assert!(e[0].contains(":1:15: socket_mode 660 is a number"), "{e:?}");
    assert!(e[0].contains("socket_mode = \"0660\""), "{e:?}");
    assert_eq!(parse("socket_mode = \"660\"\n").unwrap().socket_mode, 0o660);
}

#[test]
fn a_missing_default_file_means_defaults_but_a_named_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("agent.toml");
    assert_eq!(
        AgentConfig::load(&missing, false).unwrap(),
        AgentConfig::default()
    );
    let e = AgentConfig::load(&missing, true).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    assert!(e.to_string().contains("agent.toml"), "{e}");
    // A file that exists is read either way.
    std::fs::write(&missing, "max_peers = 7\n").unwrap();
    assert_eq!(AgentConfig::load(&missing, false).unwrap().max_peers, 7);
    std::fs::write(&missing, "max_peers = 0\n").unwrap();
    let e = AgentConfig::load(&missing, false).unwrap_err().to_string();
    assert!(e.contains("agent.toml:1:13: max_peers 0"), "{e}");
}

#[test]
fn notify_defaults_to_no_sink_and_every_event() {
    let c = parse("[notify]\nslack = true\n").unwrap();
    assert!(c.notify.sinks.is_empty());
    let c = parse("[notify]\nwebhooks = [\"http://127.0.0.1:9/h\"]\n").unwrap();
    assert_eq!(c.notify.sinks[0].events, EventClass::all());
    // The table's `slack` is the default of URL entries; an entry's wins.
    let c = parse(
        "[notify]\nslack = true\nwebhooks = [\"https://a.example/x\", { url = \"https://b.example/y\", slack = false }]\n",
    )
    .unwrap();
    let slack: Vec<bool> = c
        .notify
        .sinks
        .iter()
        .map(|s| matches!(s.target, Target::Webhook { slack: true, .. }))
        .collect();
    assert_eq!(slack, vec![true, false]);
    // A secret URL kept in a file of its own, read when the agent starts.
    let c = parse(
        "[notify]\nwebhooks = [{ url_file = \"/etc/portcullis/slack.url\", slack = true }]\n",
    )
    .unwrap();
    assert_eq!(
        c.notify.sinks[0].target,
        Target::WebhookFile {
            path: "/etc/portcullis/slack.url".into(),
            slack: true
        }
    );
    let e = errors("[notify]\nwebhooks = [{ url_file = \"slack.url\" }, { url = \"https://a.example/\", url_file = \"/x\" }]\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("url_file \"slack.url\" is not an absolute path"),
        "{e:?}"
    );
    assert!(
        e[1].contains("needs one url string or one url_file path"),
        "{e:?}"
    );
}

#[test]
fn notify_problems_are_located_and_unknown_events_get_the_nearest_name() {
    let e = errors("[notify]\nevents = [\"request\", \"aprove\"]\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!(
            "error: {FILE}:2:22: notify: unknown event \"aprove\": did you mean \"approve\"?"
        )),
        "{e:?}"
    );
    let e = errors("[notify]\nwebhooks = [\"ftp://x.example/\", { url = \"https://ok.example/\", slak = true }]\ncommands = [\"page.sh\", { path = \"/bin/true\", events = [\"grnat\"] }]\nevents = []\n");
    let all = e.join("\n");
    assert_eq!(e.len(), 5, "{all}");
    assert!(
        all.contains(":2:13: notify.webhooks: ftp://x.example is not an http(s) URL"),
        "{all}"
    );
    assert!(
        all.contains("unknown webhook key `slak`") && all.contains("did you mean `slack`?"),
        "{all}"
    );
    assert!(
        all.contains(":3:13: notify.commands: \"page.sh\" is not an absolute path"),
        "{all}"
    );
    assert!(all.contains("did you mean \"grant\"?"), "{all}");
    assert!(all.contains(":4:10: notify.events is empty"), "{all}");
    // A key of the table misspelt: serde stops there, with the nearest key.
    let e = errors("[notify]\nwebhook = []\n");
    assert!(e[0].contains("did you mean `webhooks`?"), "{e:?}");
    // No secret of a URL in a problem about it.
    let e = errors("[notify]\nwebhooks = [\"https://hooks.example/T0/s3cret x\"]\n");
    assert!(!e.join("").contains("s3cret"), "{e:?}");
}
