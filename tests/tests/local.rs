//! Local workloads: default deny on protected ports, grants by cgroup, uid
//! and gid, kernel-enforced expiry, revocation, and what the CLI says.
//! Each test runs the real agent attached to its own child cgroup and real
//! clients inside that cgroup.
use std::{net::SocketAddr, thread, time::Duration};

use portcullis_tests::*;

fn policy(segment: &str, ports: &[String], allow: &[&str]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{p:?}")).collect();
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[segment.{segment}]\nports = [{}]\nallow = [{}]\n\n[segment.{segment}.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"10m\"\nrequire_reason = false\n",
        ports.join(", "),
        allow.join(", ")
    )
}

fn tcp_policy(port: u16) -> String {
    policy("db", &[format!("{port}/tcp")], &[])
}

#[test]
fn tcp_is_denied_until_granted_and_again_after_revoke() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    let client = As::root_in(&cg.path);

    // Root inside the cgroup gets no exception.
    assert_eq!(client.tcp(server.addr), Outcome::eperm());
    // The test process is outside the agent's cgroup: untouched.
    assert!(connect_outside(server.addr));

    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    assert_eq!(client.tcp(server.addr), Outcome::Ok);

    let out = agent.ok(&["revoke", &id.to_string()]);
    assert!(out.contains(&format!("revoked {id}")), "{out}");
    assert_eq!(client.tcp(server.addr), Outcome::eperm());
}

#[test]
fn unprotected_ports_are_never_touched() {
    let cg = TestCgroup::new();
    let protected = EchoServer::tcp("127.0.0.1:0");
    let other = EchoServer::tcp("127.0.0.1:0");
    let udp_other = EchoServer::udp("127.0.0.1:0");
    let _agent = Agent::start(&tcp_policy(protected.port()), &cg.path);
    let client = As::root_in(&cg.path);
    assert_eq!(client.tcp(protected.addr), Outcome::eperm());
    assert_eq!(client.tcp(other.addr), Outcome::Ok);
    assert_eq!(client.udp(udp_other.addr), Outcome::Ok);
}

#[test]
fn expiry_is_enforced_by_the_kernel_even_with_the_agent_dead() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let mut agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    let client = As::root_in(&cg.path);

    agent.grant("db", &format!("cgroup:{}", cg.rel), "3s");
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    // No agent from here on: only the kernel can close the door.
    agent.kill();
    assert_eq!(
        client.tcp(server.addr),
        Outcome::Ok,
        "grant must outlive the agent"
    );
    thread::sleep(Duration::from_millis(3300));
    assert_eq!(
        client.tcp(server.addr),
        Outcome::eperm(),
        "expired grant still honoured"
    );
}

#[test]
fn expiry_with_agent_running_is_cleaned_up_and_audited() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    let client = As::root_in(&cg.path);
    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "2s");
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    assert!(eventually(Duration::from_secs(6), || client
        .tcp(server.addr)
        == Outcome::eperm()));
    assert!(
        eventually(Duration::from_secs(3), || agent
            .audit_records()
            .iter()
            .any(|r| r["event"] == "expire" && r["grant_id"] == id)),
        "no expire record for grant {id}"
    );
    let list = agent.ok(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v["ok"]["grants"].as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn uid_and_gid_grants_cover_exactly_that_uid_and_gid() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    let alice = As::user(&cg.path, 40001, 40001);
    let bob = As::user(&cg.path, 40002, 40002);
    let carol_in_group = As::user(&cg.path, 40003, 40100);

    assert_eq!(alice.tcp(server.addr), Outcome::eperm());
    agent.grant("db", "uid:40001", "10m");
    assert_eq!(alice.tcp(server.addr), Outcome::Ok);
    assert_eq!(bob.tcp(server.addr), Outcome::eperm());

    assert_eq!(carol_in_group.tcp(server.addr), Outcome::eperm());
    agent.grant("db", "gid:40100", "10m");
    assert_eq!(carol_in_group.tcp(server.addr), Outcome::Ok);
    assert_eq!(bob.tcp(server.addr), Outcome::eperm());
}

#[test]
fn user_and_group_names_resolve_to_ids() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    // `nobody`/`nogroup` exist on every Debian host (65534).
    let nobody = As::user(&cg.path, 65534, 65534);
    assert_eq!(nobody.tcp(server.addr), Outcome::eperm());
    let id = agent.grant("db", "user:nobody", "10m");
    assert_eq!(nobody.tcp(server.addr), Outcome::Ok);
    agent.ok(&["revoke", &id.to_string()]);
    assert_eq!(nobody.tcp(server.addr), Outcome::eperm());
    // `group:` is the group's members (issue 17): nobody, whose passwd
    // group is nogroup, is one; a process that only holds gid 65534 is not.
    agent.grant("db", "group:nogroup", "10m");
    assert_eq!(nobody.tcp(server.addr), Outcome::Ok);
    assert_eq!(
        As::user(&cg.path, 40005, 65534).tcp(server.addr),
        Outcome::eperm()
    );
}

#[test]
fn a_grant_on_a_parent_cgroup_covers_its_children() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    let team = cg.child("team.slice");
    let svc = cg.child("team.slice/api.service");
    let other = cg.child("other.slice");
    let in_svc = As::root_in(&svc);

    assert_eq!(in_svc.tcp(server.addr), Outcome::eperm());
    agent.grant("db", &format!("cgroup:{}/team.slice", cg.rel), "10m");
    assert_eq!(in_svc.tcp(server.addr), Outcome::Ok);
    assert_eq!(As::root_in(&team).tcp(server.addr), Outcome::Ok);
    assert_eq!(As::root_in(&other).tcp(server.addr), Outcome::eperm());
}

#[test]
fn unit_identity_matches_the_units_cgroup() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let unit = format!("{}.service", unique("pc-unit"));
    let svc = cg.child(&format!("system.slice/{unit}"));
    // systemd says which cgroup is the unit's (a stand-in here).
    let systemd = units::FakeSystemd::new();
    systemd.start_unit(&unit, &format!("{}/system.slice/{unit}", cg.rel));
    let agent = systemd.agent(&tcp_policy(server.port()), &cg.path).start();
    assert_eq!(As::root_in(&svc).tcp(server.addr), Outcome::eperm());
    agent.grant("db", &format!("unit:{unit}"), "10m");
    assert_eq!(As::root_in(&svc).tcp(server.addr), Outcome::Ok);
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());
}

#[test]
fn standing_allows_from_policy_apply_at_start() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let allowed = cg.child("allowed.service");
    let denied = cg.child("denied.service");
    let allow = format!("cgroup:{}/allowed.service", cg.rel);
    let agent = Agent::start(
        &policy(
            "db",
            &[format!("{}/tcp", server.port())],
            &[&allow, "uid:40010"],
        ),
        &cg.path,
    );
    assert_eq!(As::root_in(&allowed).tcp(server.addr), Outcome::Ok);
    assert_eq!(As::root_in(&denied).tcp(server.addr), Outcome::eperm());
    assert_eq!(
        As::user(&denied, 40010, 40010).tcp(server.addr),
        Outcome::Ok
    );
    let list = agent.ok(&["list"]);
    assert!(list.contains(&allow) && list.contains("standing"), "{list}");
}

#[test]
fn ipv6_loopback_and_v4_mapped_addresses_are_protected() {
    let cg = TestCgroup::new();
    // A dual-stack listener: reachable at ::1 and, v4-mapped, at 127.0.0.1.
    let server = EchoServer::tcp("[::]:0");
    let port = server.port();
    let agent = Agent::start(&tcp_policy(port), &cg.path);
    let client = As::root_in(&cg.path);
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{port}").parse().unwrap();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let any6: SocketAddr = format!("[::]:{port}").parse().unwrap();
    let any4: SocketAddr = format!("0.0.0.0:{port}").parse().unwrap();
    for addr in [v6, mapped, v4, any6, any4] {
        assert_eq!(client.tcp(addr), Outcome::eperm(), "{addr}");
    }
    agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    for addr in [v6, mapped, v4] {
        assert_eq!(client.tcp(addr), Outcome::Ok, "{addr}");
    }
}

#[test]
fn udp_datagrams_and_connected_udp_are_protected() {
    let cg = TestCgroup::new();
    let server = EchoServer::udp("127.0.0.1:0");
    let server6 = EchoServer::udp("[::1]:0");
    let p = policy(
        "dns",
        &[
            format!("{}/udp", server.port()),
            format!("{}/udp", server6.port()),
        ],
        &[],
    );
    let agent = Agent::start(&p, &cg.path);
    let client = As::root_in(&cg.path);
    assert_eq!(client.udp(server.addr), Outcome::eperm());
    assert_eq!(client.udp_connect(server.addr), Outcome::eperm());
    assert_eq!(client.udp(server6.addr), Outcome::eperm());
    agent.grant("dns", &format!("cgroup:{}", cg.rel), "10m");
    assert_eq!(client.udp(server.addr), Outcome::Ok);
    assert_eq!(client.udp_connect(server.addr), Outcome::Ok);
    assert_eq!(client.udp(server6.addr), Outcome::Ok);
}

#[test]
fn tcp_and_udp_on_the_same_number_are_separate() {
    let cg = TestCgroup::new();
    let tcp = EchoServer::tcp("127.0.0.1:0");
    // Bind UDP on the same number as the TCP server.
    let udp = EchoServer::udp(&format!("127.0.0.1:{}", tcp.port()));
    let _agent = Agent::start(&tcp_policy(tcp.port()), &cg.path);
    let client = As::root_in(&cg.path);
    assert_eq!(client.tcp(tcp.addr), Outcome::eperm());
    assert_eq!(client.udp(udp.addr), Outcome::Ok);
}

#[test]
fn revoke_by_identity_removes_every_grant_of_it() {
    let cg = TestCgroup::new();
    let a = EchoServer::tcp("127.0.0.1:0");
    let b = EchoServer::tcp("127.0.0.1:0");
    let p = format!(
        "{}\n{}",
        policy("one", &[format!("{}/tcp", a.port())], &[]),
        policy("two", &[format!("{}/tcp", b.port())], &[])
    );
    let agent = Agent::start(&p, &cg.path);
    let alice = As::user(&cg.path, 40020, 40020);
    agent.grant("one", "uid:40020", "10m");
    agent.grant("two", "uid:40020", "10m");
    agent.grant("two", "uid:40021", "10m");
    assert_eq!(alice.tcp(a.addr), Outcome::Ok);
    assert_eq!(alice.tcp(b.addr), Outcome::Ok);

    let out = agent.ok(&["revoke", "--identity", "uid:40020", "--segment", "one"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(alice.tcp(a.addr), Outcome::eperm());
    assert_eq!(alice.tcp(b.addr), Outcome::Ok);

    agent.ok(&["revoke", "--identity", "uid:40020"]);
    assert_eq!(alice.tcp(b.addr), Outcome::eperm());
    // The other identity's grant is untouched.
    assert_eq!(As::user(&cg.path, 40021, 40021).tcp(b.addr), Outcome::Ok);
}

#[test]
fn a_grant_and_a_standing_allow_on_one_key_are_independent() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(
        &policy("db", &[format!("{}/tcp", server.port())], &["uid:40030"]),
        &cg.path,
    );
    let u = As::user(&cg.path, 40030, 40030);
    let id = agent.grant("db", "uid:40030", "10m");
    agent.ok(&["revoke", &id.to_string()]);
    // Revoking the grant must not take away the standing allow.
    assert_eq!(u.tcp(server.addr), Outcome::Ok);
}

#[test]
fn list_shows_grants_with_time_left() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    let id = agent.grant("db", "uid:40040", "30m");
    let human = agent.ok(&["list"]);
    assert!(
        human.contains("uid:40040") && human.contains("29m") || human.contains("30m"),
        "{human}"
    );
    let v: serde_json::Value = serde_json::from_str(&agent.ok(&["list", "--json"])).unwrap();
    let g = &v["ok"]["grants"][0];
    assert_eq!(g["id"], id);
    assert_eq!(g["identity"], "uid:40040");
    let left = g["remaining_secs"].as_u64().unwrap();
    assert!((1700..=1800).contains(&left), "{left}");
}

#[test]
fn cli_mistakes_get_clear_errors_and_change_nothing() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    let check = |args: &[&str], code: i32, needle: &str| {
        let out = agent.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
    };
    check(
        &["grant", "nope", "uid:1", "--ttl", "1m"],
        1,
        "unknown segment \"nope\"",
    );
    check(
        &["grant", "db", "uid:1", "--ttl", "0s"],
        2,
        "greater than zero",
    );
    check(&["grant", "db", "uid:1", "--ttl", "soon"], 2, "soon");
    check(
        &["grant", "db", "user:no-such-user-pc", "--ttl", "1m"],
        1,
        "no user named \"no-such-user-pc\"",
    );
    check(
        &["grant", "db", "unit:no-such-unit-pc.service", "--ttl", "1m"],
        1,
        "no-such-unit-pc.service has no cgroup",
    );
    check(&["grant", "db", "badkind:x", "--ttl", "1m"], 2, "badkind");
    check(&["grant", "db", "uid:1", "--ttl", "2h"], 1, "max_ttl");
    check(&["revoke", "999999"], 1, "no live grant with id 999999");
    check(&["revoke"], 2, "revoke needs");
    let v: serde_json::Value = serde_json::from_str(&agent.ok(&["list", "--json"])).unwrap();
    assert_eq!(v["ok"]["grants"].as_array().unwrap().len(), 0);
}

#[test]
fn cli_says_when_the_agent_is_not_there() {
    let out = std::process::Command::new(portcullis_bin())
        .args(["--socket", "/nonexistent/pc.sock", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist: is the agent running?"),
        "{err}"
    );
}

#[test]
fn a_malformed_policy_stops_the_agent_before_the_kernel_with_file_and_line() {
    let cg = TestCgroup::new();
    let out = Agent::builder("[segment.db]\nports = [\"70000/tcp\"]\n", &cg.path)
        .start_expecting_failure();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("test.toml:2:"), "{err}");
    assert!(err.contains("70000"), "{err}");
}

#[test]
fn grants_and_revocations_are_audited_with_actor() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&tcp_policy(server.port()), &cg.path);
    let id = agent.grant("db", "uid:40050", "5m");
    agent.ok(&["revoke", &id.to_string()]);
    let recs = agent.audit_records();
    let grant = recs
        .iter()
        .find(|r| r["event"] == "grant")
        .expect("grant record");
    assert_eq!(grant["grant_id"], id);
    assert_eq!(grant["identity"], "uid:40050");
    assert_eq!(grant["actor"]["uid"], 0);
    assert_eq!(grant["ttl_secs"], 300);
    let revoke = recs
        .iter()
        .find(|r| r["event"] == "revoke")
        .expect("revoke record");
    assert_eq!(revoke["grant_id"], id);
    assert!(recs.iter().any(|r| r["event"] == "agent_start"));
}
