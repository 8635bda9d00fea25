//! Access windows (issue 17, part 3): a segment's jit table takes requests
//! and grants only inside its windows, and a grant's kernel expiry is the
//! end of the window it was made in, so it closes on time even with the
//! agent down. A windowed standing allow opens at its window's start and
//! closes at its end, in the kernel, agent or no agent.
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

/// `HH:MM:SS` (UTC) of a unix time.
fn hhmmss(unix: u64) -> String {
    let day = unix % 86_400;
    format!("{}:{:02}", hhmm(unix), day % 60)
}

/// A segment whose only allow is uid `uid`, from `start` to `end` (unix
/// seconds, UTC) every day.
fn windowed_allow(port: u16, uid: u32, start: u64, end: u64) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nallow = [{{ identity = \"uid:{uid}\", windows = [\"Mon-Sun {}-{}\"], timezone = \"UTC\" }}]\n",
        hhmmss(start),
        hhmmss(end)
    )
}

/// Sleeps until the unix clock has passed `t` (bounded).
fn sleep_past(t: u64) {
    for _ in 0..1200 {
        if unix_now() > t {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("the clock did not pass {t} within two minutes");
}

#[test]
fn a_windowed_standing_allow_opens_and_closes_on_time() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let uid = 40918;
    let now = unix_now();
    // Opens in 15 s (room for a slow start), for 8 s.
    let (start, end) = (now + 15, now + 23);
    let agent = Agent::start(&windowed_allow(server.port(), uid, start, end), &cg.path);
    let client = As::user(&cg.path, uid, uid);
    let before = client.tcp(server.addr);
    // Only meaningful if the attempt ended before the window opened.
    if unix_now() < start {
        assert_eq!(before, Outcome::eperm(), "refused before the window opens");
        let list = agent.ok(&["list", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&list).unwrap();
        let w = &v["ok"]["standing"][0]["window"];
        assert_eq!(w["open"], false, "{v}");
        assert!(
            w["opens_at"].as_str().unwrap().contains(&hhmmss(start)),
            "{v}"
        );
        let out = agent.cli(&[
            "explain",
            &format!("uid:{uid}"),
            &format!("{}/tcp", server.port()),
        ]);
        assert!(text(&out).contains("opens next at"), "{}", text(&out));
    }
    sleep_past(start);
    assert!(
        eventually(Duration::from_secs(10), || client.tcp(server.addr)
            == Outcome::Ok),
        "let in once the window opened"
    );
    let opened = agent
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "window_open")
        .expect("a window_open record");
    assert_eq!(opened["identity"], format!("uid:{uid}"));
    assert!(
        opened["until_local"]
            .as_str()
            .unwrap()
            .contains(&hhmmss(end)),
        "{opened}"
    );
    if unix_now() < end {
        let list = agent.ok(&["list"]);
        assert!(list.contains("windowed: open until"), "{list}");
        let out = agent.cli(&[
            "explain",
            &format!("uid:{uid}"),
            &format!("{}/tcp", server.port()),
        ]);
        assert!(text(&out).contains("open until"), "{}", text(&out));
    }
    sleep_past(end);
    // The kernel entry expired at the end: refused at once, not eventually.
    assert_eq!(
        client.tcp(server.addr),
        Outcome::eperm(),
        "closed at the window's end"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            agent
                .audit_records()
                .iter()
                .any(|r| r["event"] == "window_close" && r["next_open"].is_string())
        }),
        "a window_close record naming the next opening"
    );
}

#[test]
fn a_windowed_allow_open_at_start_closes_in_the_kernel_with_the_agent_down() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let uid = 40919;
    let now = unix_now();
    // Inside the window at start: opened at once, until its end.
    let end = now + 20;
    let mut agent = Agent::start(
        &windowed_allow(server.port(), uid, now - 120, end),
        &cg.path,
    );
    let client = As::user(&cg.path, uid, uid);
    if unix_now() < end {
        assert_eq!(
            client.tcp(server.addr),
            Outcome::Ok,
            "open at start, mid-window"
        );
    }
    // The kernel closes it, not the agent.
    agent.kill();
    sleep_past(end);
    assert_eq!(
        client.tcp(server.addr),
        Outcome::eperm(),
        "closed at the window's end with the agent down"
    );
}
