//! Access windows (issue 17, part 3): a segment's jit table takes requests
//! and grants only inside its windows, and a grant's kernel expiry is the
//! end of the window it was made in, so it closes on time even with the
//! agent down.
use std::{
    process::Output,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use portcullis_tests::{users::TestUser, *};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `HH:MM` (UTC) of a unix time.
fn hhmm(unix: u64) -> String {
    let day = unix % 86_400;
    format!("{:02}:{:02}", day / 3600, day % 3600 / 60)
}

fn policy(port: u16, start: u64, end: u64) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nallow = []\n\n[segment.db.jit]\nmax_ttl = \"8h\"\nrequire_reason = false\nwindows = [\"Mon-Sun {}-{}\"]\ntimezone = \"UTC\"\n",
        hhmm(start),
        hhmm(end)
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_grant_made_in_a_window_expires_in_the_kernel_at_its_end_agent_down() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let now = unix_now();
    // The window ends at the next minute boundary at least 5 s ahead.
    let mut end = now - now % 60 + 60;
    if end - now < 5 {
        end += 60;
    }
    let mut agent = Agent::start(&policy(server.port(), end - 180, end), &cg.path);
    let out = agent.ok(&["grant", "db", "uid:40917", "--ttl", "4h", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let left = v["ok"]["grant"]["remaining_secs"].as_u64().unwrap();
    assert!(
        left <= end - now,
        "asked 4h, the window ends in {}s: {left}s",
        end - now
    );
    let client = As::user(&cg.path, 40917, 40917);
    assert_eq!(client.tcp(server.addr), Outcome::Ok);
    // The kernel closes it, not the agent.
    agent.kill();
    while unix_now() <= end {
        assert!(unix_now() < end + 120, "bounded wait");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        client.tcp(server.addr),
        Outcome::eperm(),
        "closed at the window's end"
    );
}

#[test]
fn a_request_outside_every_window_is_refused_with_the_next_opening() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let user = TestUser::new();
    let now = unix_now();
    let start = now - now % 60 + 600;
    let agent = Agent::builder(&policy(server.port(), start, start + 600), &cg.path)
        .arg("--socket-mode")
        .arg("666")
        .start();
    let out = agent.cli_as(user.uid, user.gid, &["request", "db"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("the next opens at"), "{}", text(&out));
    assert!(text(&out).contains(&hhmm(start)), "{}", text(&out));
    let out = agent.cli(&["grant", "db", &user.identity(), "--ttl", "5m"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(agent
        .audit_records()
        .iter()
        .any(|r| r["event"] == "refused" && r["op"] == "request"));
}
