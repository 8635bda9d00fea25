//! Unit tests of `explain` over the fake kernel maps.
use super::*;
use crate::kernel::FakeKernel;
use agent_common::v4_mapped;

const NOW: u64 = 1_000_000_000_000;

fn uid_key(uid: u64) -> GrantKey {
    GrantKey {
        kind: kind::UID,
        segment: 3,
        id: uid,
    }
}

fn resolved(probes: Vec<Probe>) -> Resolved {
    Resolved {
        subject: "test".into(),
        probes,
        notes: vec![],
    }
}

fn uid(u: u64) -> Probe {
    Probe {
        label: format!("uid {u}"),
        lookup: Lookup::Local {
            kind: kind::UID,
            id: u,
        },
    }
}

fn run(k: &FakeKernel, l: &Ledger, r: &Resolved, port: u16) -> ExplainView {
    evaluate(
        k,
        l,
        r,
        (Proto::Tcp, port),
        NOW,
        &|id| (id == 3).then(|| "db".to_string()),
        &|s| match s {
            Source::Grant(id) => format!("grant {id}"),
            Source::Standing { identity, .. } => format!("standing allow {identity}"),
        },
    )
    .unwrap()
}

#[test]
fn unprotected_ports_are_allowed() {
    let v = run(
        &FakeKernel::default(),
        &Ledger::new(),
        &resolved(vec![uid(1)]),
        80,
    );
    assert!(v.allowed);
    assert_eq!(v.segment, None);
    assert!(v.checks.is_empty());
}

#[test]
fn a_live_grant_allows_and_is_traced_to_its_source() {
    let k = FakeKernel::default();
    k.maps().ports.insert((Proto::Tcp, 5432), 3);
    let expiry = NOW + 90 * 1_000_000_000;
    k.maps().grants.insert(uid_key(1000), expiry);
    let mut l = Ledger::new();
    l.set(Source::Grant(7), &[EntryKey::Local(uid_key(1000))], expiry);
    let v = run(&k, &l, &resolved(vec![uid(1000), uid(1001)]), 5432);
    assert!(v.allowed);
    assert_eq!(v.segment.as_deref(), Some("db"));
    assert_eq!(v.remaining_secs, Some(90));
    assert_eq!(v.decided_by, "grant 7, matched as uid 1000");
    assert_eq!(v.checks[0].sources, vec!["grant 7"]);
    assert!(!v.checks[1].in_kernel);
}

#[test]
fn an_expired_entry_still_in_the_map_denies() {
    let k = FakeKernel::default();
    k.maps().ports.insert((Proto::Tcp, 5432), 3);
    // The kernel stops honouring an entry at its instant, before the agent sweeps it.
    k.maps().grants.insert(uid_key(1000), NOW);
    let v = run(&k, &Ledger::new(), &resolved(vec![uid(1000)]), 5432);
    assert!(!v.allowed);
    assert!(v.checks[0].in_kernel && !v.checks[0].live);
    assert!(v.checks[0].sources[0].starts_with("no source known"));
}

#[test]
fn a_standing_allow_wins_over_a_shorter_grant_and_disagreements_are_noted() {
    let k = FakeKernel::default();
    k.maps().ports.insert((Proto::Tcp, 5432), 3);
    k.maps().grants.insert(uid_key(5), NOW + 10);
    k.maps().grants.insert(uid_key(6), NEVER);
    let mut l = Ledger::new();
    l.set(
        Source::Standing {
            segment: "db".into(),
            identity: "uid:6".into(),
        },
        &[EntryKey::Local(uid_key(6))],
        NEVER,
    );
    // The ledger believes uid 7 is open; the kernel disagrees and wins.
    l.set(Source::Grant(9), &[EntryKey::Local(uid_key(7))], NOW + 100);
    let v = run(&k, &l, &resolved(vec![uid(5), uid(6), uid(7)]), 5432);
    assert!(v.allowed);
    assert_eq!(v.remaining_secs, None);
    assert!(
        v.decided_by.starts_with("standing allow uid:6"),
        "{}",
        v.decided_by
    );
    assert!(v.checks[1].never);
    assert!(v
        .notes
        .iter()
        .any(|n| n.contains("grant 9") && n.contains("no entry")));
}

#[test]
fn peers_match_by_longest_prefix() {
    let k = FakeKernel::default();
    k.maps().ports.insert((Proto::Tcp, 5432), 3);
    let net = v4_mapped([10, 1, 0, 0]);
    k.maps().peers.push((3, net, 96 + 16, NEVER));
    let mut l = Ledger::new();
    l.set(
        Source::Standing {
            segment: "db".into(),
            identity: "peer:10.1.0.0/16".into(),
        },
        &[EntryKey::Peer {
            segment: 3,
            addr: net,
            prefix: 112,
        }],
        NEVER,
    );
    let inside = resolved(vec![Probe {
        label: "peer 10.1.2.3".into(),
        lookup: Lookup::Peer(v4_mapped([10, 1, 2, 3])),
    }]);
    let v = run(&k, &l, &inside, 5432);
    assert!(v.allowed);
    assert_eq!(v.checks[0].sources, vec!["standing allow peer:10.1.0.0/16"]);
    let outside = resolved(vec![Probe {
        label: "peer 10.2.0.1".into(),
        lookup: Lookup::Peer(v4_mapped([10, 2, 0, 1])),
    }]);
    assert!(!run(&k, &l, &outside, 5432).allowed);
}

#[test]
fn proc_status_gives_real_ids() {
    let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t100\t0\t0\t0\nGroups:\t4 24\n";
    assert_eq!(status_ids(status), Some((1000, 100)));
    assert_eq!(status_ids("Name: x\n"), None);
}

#[test]
fn cgroup_chains_start_at_the_root() {
    assert_eq!(cgroup_chain("/"), vec!["/"]);
    assert_eq!(cgroup_chain("/a/b"), vec!["/", "/a", "/a/b"]);
}

#[test]
fn ports_are_single() {
    assert_eq!(parse_port("5432/tcp").unwrap(), (Proto::Tcp, 5432));
    assert_eq!(parse_port("53/udp").unwrap(), (Proto::Udp, 53));
    assert!(parse_port("8000-8001/tcp").is_err());
    assert!(parse_port("5432").is_err());
}
