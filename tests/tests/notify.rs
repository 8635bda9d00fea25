//! Notifications to approvers (issue 18, item 1), end to end: the real
//! agent with `[notify]` in its agent.toml, a real user asking for access,
//! root approving, and sinks started by the test: webhook receivers on
//! 127.0.0.1 (`portcullis_tests::webhook`) and a command. What a person
//! relies on: the request and the approval arrive with who, what, where,
//! how long, why and the command that approves; a webhook that accepts
//! and never answers holds up nothing (the approval completes and the
//! grant works while it hangs); a webhook that is down gets the event once
//! it is up; a command gets the event on stdin; Slack gets plain text.
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    time::Duration,
};

use portcullis_tests::{
    ran::Ran,
    users::TestUser,
    webhook::{free_port, Delivery, Receiver},
    *,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// An agent with `[notify]` `notify` in its configuration, guarding one
/// segment that alice may request and root approves.
struct World {
    agent: Agent,
    server: EchoServer,
    cg: TestCgroup,
    alice: TestUser,
    config_dir: PathBuf,
}

impl World {
    fn new(notify: &str, extra: &[&str]) -> Self {
        let cg = TestCgroup::new();
        let server = EchoServer::tcp("127.0.0.1:0");
        let alice = TestUser::new();
        let config_dir = std::env::temp_dir().join(unique("notify-config"));
        fs::create_dir_all(&config_dir).unwrap();
        let config = config_dir.join("agent.toml");
        fs::write(&config, format!("[notify]\n{notify}\n")).unwrap();
        let policy = format!(
            "[segment.db]\nports = [\"{}/tcp\"]\n\n[segment.db.jit]\nmax_ttl = \"10m\"\n\
             approvers = [\"uid:0\"]\nrequire_reason = true\n",
            server.port()
        );
        let mut b = Agent::builder(&policy, &cg.path)
            .arg("--config")
            .arg(config.to_str().unwrap())
            .arg("--socket-mode")
            .arg("666");
        for a in extra {
            b = b.arg(a);
        }
        let agent = b.start();
        fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            agent,
            server,
            cg,
            alice,
            config_dir,
        }
    }

    /// alice asks for db with `reason`; the request id.
    fn request(&self, reason: &str) -> u64 {
        let v = Ran::of(self.agent.cli_as(
            self.alice.uid,
            self.alice.gid,
            &["request", "db", "--ttl", "5m", "--reason", reason, "--json"],
        ))
        .ok()
        .json();
        v["ok"]["request"]["id"].as_u64().expect("request id")
    }

    /// root approves; the grant id.
    fn approve(&self, id: u64) -> u64 {
        let v = Ran::of(self.agent.cli(&["approve", &id.to_string(), "--json"]))
            .ok()
            .json();
        v["ok"]["grant"]["id"].as_u64().expect("grant id")
    }

    fn alice_connects(&self) -> Outcome {
        As::user(&self.cg.path, self.alice.uid, self.alice.gid).tcp(self.server.addr)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.config_dir);
    }
}

fn is(d: &Delivery, event: &str, id: u64) -> bool {
    d.body["event"] == event && d.body["request_id"] == id
}

fn host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_webhook_receives_the_request_and_the_approval_with_the_documented_fields() {
    let rx = Receiver::start();
    let w = World::new(&format!("webhooks = [{:?}]", rx.url("/hook")), &[]);
    let id = w.request("INC-42 \"quoted\" <b>");
    let d = rx
        .wait_for(WAIT, |d| is(d, "request", id))
        .expect("the request reaches the webhook");
    assert_eq!(d.path, "/hook");
    assert_eq!(d.content_type.as_deref(), Some("application/json"));
    let e = &d.body;
    assert_eq!(e["version"], 1, "{e}");
    assert_eq!(e["audit_event"], "request", "{e}");
    assert_eq!(e["host"], host(), "{e}");
    assert_eq!(e["actor"]["uid"], w.alice.uid, "{e}");
    assert_eq!(e["actor"]["user"], w.alice.name.as_str(), "{e}");
    assert_eq!(e["identity"], w.alice.identity(), "{e}");
    assert_eq!(e["segment"], "db", "{e}");
    assert_eq!(
        e["ports"],
        serde_json::json!([format!("{}/tcp", w.server.port())]),
        "{e}"
    );
    assert_eq!(e["ttl_secs"], 300, "{e}");
    assert_eq!(e["reason"], "INC-42 \"quoted\" <b>", "{e}");
    assert_eq!(
        e["approve_command"],
        format!("portcullis approve {id}"),
        "{e}"
    );
    assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
    // The approve command works as written.
    let gid = w.approve(id);
    assert_eq!(w.alice_connects(), Outcome::Ok);
    let d = rx
        .wait_for(WAIT, |d| {
            is(d, "approve", id) && d.body["audit_event"] == "approve"
        })
        .expect("the approval reaches the webhook");
    let e = &d.body;
    assert_eq!(e["grant_id"], gid, "{e}");
    assert_eq!(e["actor"]["uid"], 0, "{e}");
    assert_eq!(e["identity"], w.alice.identity(), "{e}");
    assert_eq!(e["segment"], "db", "{e}");
    assert_eq!(e["ttl_secs"], 300, "{e}");
    assert_eq!(e["approve_command"], Value::Null, "decided: {e}");
    // The grant the approval opened is its own event, with its ports.
    let g = rx
        .wait_for(WAIT, |d| {
            d.body["event"] == "grant" && d.body["grant_id"] == gid
        })
        .expect("the grant reaches the webhook");
    assert_eq!(g.body["request_id"], id);
    // Every notification was written to the audit log first.
    let audited = w.agent.audit_records();
    for d in rx.deliveries() {
        let kind = &d.body["audit_event"];
        assert!(
            audited
                .iter()
                .any(|r| &r["event"] == kind && r["request_id"] == d.body["request_id"]),
            "{kind} notified without its audit record"
        );
    }
}

#[test]
fn a_webhook_that_never_answers_delays_no_approval_and_gets_its_events_once_it_answers() {
    let rx = Receiver::start();
    rx.hold();
    let w = World::new(&format!("webhooks = [{:?}]", rx.url("/stuck")), &[]);
    let id = w.request("INC-1");
    // The agent's delivery is stuck on the receiver, unanswered.
    assert!(
        eventually(WAIT, || rx.waiting() >= 1),
        "the request is delivered to the receiver, which holds it"
    );
    // Decisions go on meanwhile: approve returns, the grant works.
    let gid = w.approve(id);
    assert_eq!(w.alice_connects(), Outcome::Ok);
    let v = Ran::of(w.agent.cli(&["list", "--json"])).ok().json();
    assert!(v.to_string().contains(&format!("\"id\":{gid}")), "{v}");
    assert!(rx.waiting() >= 1, "the receiver still holds a request");
    assert!(
        rx.deliveries().is_empty(),
        "nothing was answered while the receiver held"
    );
    // Once it answers, the queued events follow, in order.
    rx.release();
    rx.wait_for(WAIT, |d| is(d, "approve", id))
        .expect("the approval, queued behind the stuck request, arrives");
    let order: Vec<String> = rx
        .deliveries()
        .iter()
        .map(|d| d.body["audit_event"].as_str().unwrap_or("").to_string())
        .collect();
    let first = |k: &str| order.iter().position(|o| o == k).unwrap();
    assert!(
        first("request") < first("grant") && first("grant") < first("approve"),
        "{order:?}"
    );
}

#[test]
fn a_webhook_that_is_down_is_retried_and_gets_the_event_once_it_is_up() {
    let port = free_port();
    let w = World::new(
        &format!("webhooks = [\"http://127.0.0.1:{port}/late\"]\nevents = [\"request\"]"),
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let metrics = metrics_addr(&w.agent);
    let id = w.request("INC-2");
    // The first try found nothing listening: a retry is counted.
    assert!(
        eventually(WAIT, || {
            metric(metrics, "portcullis_notification_retries_total") >= 1.0
        }),
        "a failed delivery is retried"
    );
    let rx = Receiver::start_on(port);
    let d = rx
        .wait_for(Duration::from_secs(60), |d| is(d, "request", id))
        .expect("the event arrives once the receiver is up");
    assert_eq!(d.body["reason"], "INC-2");
    assert!(eventually(WAIT, || metric(
        metrics,
        "portcullis_notifications_total{outcome=\"sent\"}"
    ) >= 1.0));
    assert_eq!(
        metric(
            metrics,
            "portcullis_notifications_total{outcome=\"failed\"}"
        ),
        0.0
    );
    // Only what was asked for: the approval is not sent to this sink.
    w.approve(id);
    assert!(eventually(WAIT, || metric(
        metrics,
        "portcullis_notifications_queued"
    ) == 0.0));
    assert!(rx.deliveries().iter().all(|d| d.body["event"] == "request"));
}

#[test]
fn a_command_gets_the_event_as_json_on_stdin_and_slack_gets_escaped_text() {
    let slack = Receiver::start();
    let dir = std::env::temp_dir().join(unique("notify-cmd"));
    fs::create_dir_all(&dir).unwrap();
    let out = dir.join("events.jsonl");
    let script = dir.join("sink.sh");
    fs::write(
        &script,
        format!("#!/bin/sh\n{{ cat; echo; }} >> {}\n", out.display()),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let w = World::new(
        &format!(
            "commands = [{{ path = {:?}, events = [\"request\"] }}]\n\
             webhooks = [{{ url = {:?}, slack = true }}]",
            script.to_str().unwrap(),
            slack.url("/services/T0/B0/secret"),
        ),
        &[],
    );
    let hostile = "<!channel> see <https://evil.example|here> & more";
    let id = w.request(hostile);
    let mut event = None;
    assert!(
        eventually(WAIT, || {
            event = fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["request_id"] == id);
            event.is_some()
        }),
        "the command received the request"
    );
    let e = event.unwrap();
    assert_eq!(e["event"], "request");
    assert_eq!(e["reason"], hostile, "JSON keeps the text as data");
    assert_eq!(e["approve_command"], format!("portcullis approve {id}"));
    let d = slack
        .wait_for(WAIT, |d| {
            d.body["text"]
                .as_str()
                .is_some_and(|t| t.contains(&format!("request {id}")))
        })
        .expect("the Slack webhook receives the request");
    let body = d.body.as_object().unwrap();
    assert_eq!(body.len(), 1, "only text: {body:?}");
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("&lt;!channel&gt; see &lt;https://evil.example|here&gt; &amp; more"),
        "{text}"
    );
    assert!(!text.contains('<') && !text.contains('>'), "{text}");
    assert!(text.contains(&format!("portcullis approve {id}")), "{text}");
    // The command was asked for requests only.
    w.approve(id);
    slack
        .wait_for(WAIT, |d| {
            d.body["text"]
                .as_str()
                .is_some_and(|t| t.contains("] approve:"))
        })
        .expect("the Slack webhook receives the approval");
    let lines = fs::read_to_string(&out).unwrap();
    assert!(
        lines
            .lines()
            .filter(|l| !l.is_empty())
            .all(|l| l.contains("\"event\":\"request\"")),
        "{lines}"
    );
    // The webhook's secret path never reaches the agent's log.
    assert!(!w.agent.log.lock().unwrap().join("\n").contains("secret"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_notify_table_stops_the_agent_with_the_place_and_the_nearest_name() {
    let cg = TestCgroup::new();
    let dir = std::env::temp_dir().join(unique("notify-bad"));
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    fs::write(&config, "[notify]\nevents = [\"aprove\"]\n").unwrap();
    let out = Agent::builder("[segment.db]\nports = [\"1/tcp\"]\n", &cg.path)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start_expecting_failure();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "agent.toml:2:11: notify: unknown event \"aprove\": did you mean \"approve\"?"
        ),
        "{err}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// The metrics endpoint's address, from the agent's log.
fn metrics_addr(agent: &Agent) -> SocketAddr {
    let mut addr = None;
    assert!(eventually(WAIT, || {
        addr = agent.log.lock().unwrap().iter().find_map(|l| {
            let url = l.split("http://").nth(1)?;
            url.split("/metrics").next()?.parse::<SocketAddr>().ok()
        });
        addr.is_some()
    }));
    addr.unwrap()
}

/// One sample's value (0 when absent), as written on the metrics page.
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
