//! Usage counted by the kernel, end to end: `list --usage` counts a
//! grant's connections (and not those of other identities), `report
//! unused` lists an allow nobody used and not one that was used, usage of
//! standing allows survives an agent restart, the end records of grants
//! carry their use, and an idle grant lapses after its segment's
//! `idle_timeout` (audited with reason `idle`) while a grant in use does not.
use std::{thread, time::Duration};

use portcullis_tests::*;
use serde_json::Value;

/// Segment `db` on `port`, with standing allows and a jit table.
fn policy(port: u16, allow: &[&str], idle_timeout: Option<&str>) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    let mut s = format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nallow = [{}]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\ndefault_ttl = \"10m\"\nrequire_reason = false\n",
        allow.join(", ")
    );
    if let Some(t) = idle_timeout {
        s.push_str(&format!("idle_timeout = \"{t}\"\n"));
    }
    s
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn list(agent: &Agent) -> Value {
    json(&agent.ok(&["list", "--json"]))
}

fn allow_usage(l: &Value, identity: &str) -> Value {
    l["ok"]["standing"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["identity"] == identity)
        .unwrap_or_else(|| panic!("no allow {identity} in {l}"))["usage"]
        .clone()
}

/// The usage a listed grant carries; `None` if the grant is not listed.
fn grant_usage(l: &Value, id: u64) -> Option<Value> {
    l["ok"]["grants"]
        .as_array()?
        .iter()
        .find(|g| g["id"] == id)
        .map(|g| g["usage"].clone())
}

/// The audit record of event `event` for grant `id`, waiting (bounded) for it.
fn record(agent: &Agent, event: &str, id: u64, within: Duration) -> Option<Value> {
    let mut found = None;
    eventually(within, || {
        found = agent
            .audit_records()
            .into_iter()
            .find(|r| r["event"] == event && r["grant_id"] == id);
        found.is_some()
    });
    found
}

#[test]
fn list_usage_counts_a_grants_connections_and_report_unused_lists_the_unused_allow() {
    require_root();
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let mut agent = Agent::start(
        &policy(server.port(), &["uid:40111", "uid:40112"], None),
        &cg.path,
    );
    let used = As::user(&cg.path, 40111, 40111);
    let grantee = As::user(&cg.path, 40113, 40113);
    let stranger = As::user(&cg.path, 40114, 40114);
    let id = agent.grant("db", "uid:40113", "10m");

    for _ in 0..3 {
        assert_eq!(grantee.tcp(server.addr), Outcome::Ok);
    }
    for _ in 0..2 {
        assert_eq!(used.tcp(server.addr), Outcome::Ok);
    }
    // Refused connections of others never count towards the grant.
    assert_eq!(stranger.tcp(server.addr), Outcome::eperm());

    let l = list(&agent);
    let g = grant_usage(&l, id).expect("grant listed");
    assert_eq!(g["connections"], 3, "{l}");
    assert!(
        g["last_use"].is_string() && g["first_use"].is_string(),
        "{l}"
    );
    assert_eq!(allow_usage(&l, "uid:40111")["connections"], 2, "{l}");
    let never = allow_usage(&l, "uid:40112");
    assert_eq!(never["connections"], 0, "{l}");
    assert!(never.get("last_use").is_none(), "{l}");

    let table = agent.ok(&["list", "--usage"]);
    assert!(table.contains("CONNECTIONS"), "{table}");
    let row = table
        .lines()
        .find(|r| r.contains("uid:40113"))
        .unwrap_or_else(|| panic!("no grant row in {table}"));
    assert!(
        row.contains(&format!("grant {id}")) && row.contains(" 3 "),
        "{row}"
    );

    let report = json(&agent.ok(&["report", "unused", "--since", "1h", "--json"]));
    let unused: Vec<&str> = report["unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["identity"].as_str().unwrap())
        .collect();
    assert_eq!(unused, vec!["uid:40112"], "{report}");
    let text = agent.ok(&["report", "unused"]);
    assert!(
        text.contains("uid:40112") && !text.contains("uid:40111"),
        "{text}"
    );

    // Usage of standing allows lives in the pinned map: a restart keeps it.
    agent.kill();
    agent.spawn(&[]);
    let l = list(&agent);
    assert_eq!(allow_usage(&l, "uid:40111")["connections"], 2, "{l}");

    // The revoke record says how much the grant was used.
    agent.ok(&["revoke", &id.to_string()]);
    let r = record(&agent, "revoke", id, Duration::from_secs(5)).expect("revoke record");
    assert_eq!(r["usage"]["connections"], 3, "{r}");
    assert!(r["usage"]["last_use"].is_string(), "{r}");
    // A new grant of the same identity starts from zero.
    let again = agent.grant("db", "uid:40113", "10m");
    let l = list(&agent);
    assert_eq!(grant_usage(&l, again).unwrap()["connections"], 0, "{l}");
}

#[test]
fn the_expire_record_carries_the_grants_usage() {
    require_root();
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port(), &[], None), &cg.path);
    let client = As::user(&cg.path, 40121, 40121);
    let id = agent.grant("db", "uid:40121", "3s");
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    let r = record(&agent, "expire", id, Duration::from_secs(15)).expect("expire record");
    assert_eq!(r["reason"], "ttl", "{r}");
    assert_eq!(r["usage"]["connections"], 2, "{r}");
}

#[test]
fn an_idle_grant_lapses_and_one_in_use_does_not() {
    require_root();
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port(), &[], Some("4s")), &cg.path);
    let idle = As::user(&cg.path, 40131, 40131);
    let busy = As::user(&cg.path, 40132, 40132);
    let idle_id = agent.grant("db", "uid:40131", "10m");
    let busy_id = agent.grant("db", "uid:40132", "10m");
    assert_eq!(idle.tcp(server.addr), Outcome::Ok);

    // Keep one grant in use (every 500 ms) until the other lapses; bounded.
    let mut lapsed = None;
    for _ in 0..60 {
        assert_eq!(busy.tcp(server.addr), Outcome::Ok, "the busy grant lapsed");
        lapsed = agent
            .audit_records()
            .into_iter()
            .find(|r| r["event"] == "expire" && r["grant_id"] == idle_id);
        if lapsed.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let r = lapsed.expect("the idle grant did not lapse within 30 s");
    assert_eq!(r["reason"], "idle", "{r}");
    assert_eq!(r["usage"]["connections"], 1, "{r}");

    assert_eq!(idle.tcp(server.addr), Outcome::eperm());
    assert_eq!(busy.tcp(server.addr), Outcome::Ok);
    let l = list(&agent);
    assert!(grant_usage(&l, idle_id).is_none(), "{l}");
    assert!(grant_usage(&l, busy_id).is_some(), "{l}");
    assert!(
        !agent
            .audit_records()
            .iter()
            .any(|r| r["event"] == "expire" && r["grant_id"] == busy_id),
        "the grant in use was expired"
    );
}
