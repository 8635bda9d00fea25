//! Tampering with enforcement (issue 12): a second agent on the same pins,
//! state or audit log is refused and the first keeps enforcing; a pin
//! directory an ordinary user created is refused; links detached behind the
//! agent's back and an attach cgroup removed and recreated are repaired
//! within a heartbeat and audited; `uninstall` honours the configuration,
//! asks (or needs `--yes`), goes through a running agent so the audit chain
//! stays valid, and fails on a directory with nothing pinned.
use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use portcullis_tests::{users::TestUser, *};

/// A deadline for what must happen within one 2 s heartbeat (with slack for
/// a loaded machine); not a timing threshold.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(8);

fn policy(port: u16) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n"
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Paths for an agent started by hand (not by the harness, whose clean-up
/// would uninstall the pins this agent shares with another).
struct Other {
    dir: PathBuf,
}

impl Other {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("pc-other"));
        fs::create_dir_all(dir.join("policies")).unwrap();
        Self { dir }
    }
}

impl Drop for Other {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `portcullis agent` with the given paths and waits (bounded) for it
/// to exit. Panics if it becomes ready instead (it was not refused).
fn run_agent(
    policy: &str,
    cgroup: &Path,
    other: &Other,
    bpffs: &Path,
    state_dir: &Path,
    audit_log: &Path,
) -> Output {
    fs::write(other.dir.join("policies/test.toml"), policy).unwrap();
    let socket = other.dir.join("control.sock");
    let mut child = Command::new(portcullis_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("agent")
        .arg("--policies")
        .arg(other.dir.join("policies"))
        .arg("--bpffs")
        .arg(bpffs)
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--audit-log")
        .arg(audit_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if socket.exists() || Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            // It took over: lift what it pinned, then fail.
            let _ = Command::new(portcullis_bin())
                .args(["uninstall", "--yes", "--bpffs"])
                .arg(bpffs)
                .output();
            panic!(
                "the second agent was not refused (it started):\n{}",
                text(&out)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn audit_verify(agent: &Agent) -> Output {
    agent.cli(&["audit", "verify", agent.audit_log.to_str().unwrap()])
}

fn events(agent: &Agent, event: &str) -> Vec<serde_json::Value> {
    agent
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused_and_the_first_keeps_enforcing() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port()), &cg.path);
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());

    // Same pins; its own state, audit log and socket; a policy that would
    // leave the port open (it protects another one).
    let other = Other::new();
    let out = run_agent(
        &policy(server.port().wrapping_add(1).max(1)),
        &cg.path,
        &other,
        &agent.bpffs,
        &other.dir.join("state"),
        &other.dir.join("audit.jsonl"),
    );
    let msg = text(&out);
    println!("second agent: {msg}");
    assert!(!out.status.success(), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", agent.pid()))
            && msg.contains(agent.socket.to_str().unwrap())
            && msg.contains("already running"),
        "the refusal does not name the running agent: {msg}"
    );
    assert!(
        !other.dir.join("audit.jsonl").exists(),
        "the refused agent wrote an audit log"
    );
    // The first keeps enforcing, its status is clean, its chain intact.
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());
    assert!(agent.cli(&["status"]).status.success());
    assert_eq!(events(&agent, "agent_start").len(), 1);
    let v = audit_verify(&agent);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn a_second_agent_on_the_same_state_dir_and_audit_log_is_refused_and_changes_nothing() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port()), &cg.path);
    agent.grant("db", "uid:40200", "30m");
    let audit_before = fs::read(&agent.audit_log).unwrap();

    let other = Other::new();
    let own_pins = PathBuf::from("/sys/fs/bpf").join(unique("pc-other-pins"));
    // Same state directory (and audit log), other pins.
    let out = run_agent(
        &policy(server.port()),
        &cg.path,
        &other,
        &own_pins,
        &agent.state_dir,
        &other.dir.join("audit.jsonl"),
    );
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(
        msg.contains("state directory") && msg.contains(&format!("pid {}", agent.pid())),
        "{msg}"
    );
    // Same audit log, other pins and state.
    let out = run_agent(
        &policy(server.port()),
        &cg.path,
        &other,
        &own_pins,
        &other.dir.join("state"),
        &agent.audit_log,
    );
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(
        msg.contains("audit log") && msg.contains(&format!("pid {}", agent.pid())),
        "{msg}"
    );
    assert!(
        !own_pins.exists(),
        "a refused agent created {}",
        own_pins.display()
    );
    assert_eq!(
        fs::read(&agent.audit_log).unwrap(),
        audit_before,
        "a refused agent wrote to the audit log"
    );
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());
    let v = audit_verify(&agent);
    assert!(v.status.success(), "{}", text(&v));
    let _ = fs::remove_dir_all(&own_pins);
}

#[test]
fn a_pin_directory_created_by_an_ordinary_user_is_refused() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let user = TestUser::new();
    let pins = PathBuf::from("/sys/fs/bpf").join(unique("pc-user-pins"));
    // Where bpffs is mounted without mode= (1777), any user can do this.
    // If this host's bpffs is 0700, create it as root and hand it over.
    let made = As::user(&cg.path, user.uid, user.gid)
        .command("mkdir")
        .arg(&pins)
        .output()
        .unwrap();
    if !made.status.success() {
        fs::create_dir(&pins).unwrap();
        chown(&pins, user.uid, user.gid);
    }
    let other = Other::new();
    let out = run_agent(
        &policy(server.port()),
        &cg.path,
        &other,
        &pins,
        &other.dir.join("state"),
        &other.dir.join("audit.jsonl"),
    );
    let msg = text(&out);
    println!("agent on a user's pin directory: {msg}");
    assert!(!out.status.success(), "{msg}");
    assert!(
        msg.contains(&format!("owned by uid {}", user.uid))
            && msg.contains("mode=0700")
            && msg.contains("let the agent create it"),
        "the refusal does not say how to fix it: {msg}"
    );
    // Nothing was pinned there or attached.
    assert_eq!(fs::read_dir(&pins).unwrap().count(), 0);
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::Ok);
    let _ = fs::remove_dir_all(&pins);
}

fn chown(path: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `bpftool link show pinned PATH` → the link id.
fn link_id(pin: &Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("run bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("bpftool link show: {}", text(&out)));
    v["id"].as_u64().expect("link id")
}

#[test]
fn links_detached_behind_the_agents_back_are_reattached_within_a_heartbeat() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port()), &cg.path);
    let stranger = As::root_in(&cg.path);
    assert_eq!(stranger.tcp(server.addr), Outcome::eperm());
    let links = agent
        .bpffs
        .join(format!("v{}/links", agent_common::LAYOUT_VERSION));
    let pins: Vec<PathBuf> = fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    // Six cgroup links and the cgroup_mkdir tracepoint (the cgroup cover).
    assert_eq!(pins.len(), 7, "{pins:?}");
    // A perf (tracepoint) link cannot be detached (EOPNOTSUPP): the six
    // cgroup links are what this test tampers with.
    let pins: Vec<PathBuf> = pins
        .into_iter()
        .filter(|p| !p.ends_with(agent_common::program_names::CGROUP_MKDIR))
        .collect();
    // What an intruder with root would do: unpin every link and detach it.
    for pin in &pins {
        let id = link_id(pin);
        fs::remove_file(pin).unwrap();
        let out = Command::new("bpftool")
            .args(["link", "detach", "id", &id.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool link detach: {}", text(&out));
    }
    assert!(
        eventually(HEARTBEAT_DEADLINE, || {
            stranger.tcp(server.addr) == Outcome::eperm()
                && !events(&agent, "enforcement_repaired").is_empty()
        }),
        "enforcement was not repaired within a heartbeat"
    );
    let rec = &events(&agent, "enforcement_repaired")[0];
    println!("audited: {rec}");
    let missing = rec["missing"].to_string();
    assert!(
        missing.contains("pc_connect4") && missing.contains("link pin"),
        "{missing}"
    );
    assert_eq!(rec["ok"], true);
    for pin in &pins {
        assert!(pin.exists(), "{} not re-pinned", pin.display());
    }
    let status = agent.cli(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("repaired 1 time"),
        "{}",
        text(&status)
    );
    let v = audit_verify(&agent);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn an_attach_cgroup_removed_and_recreated_gets_the_programs_again() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let slice = cg.child("app.slice");
    let agent = Agent::start(&policy(server.port()), &slice);
    assert_eq!(As::root_in(&slice).tcp(server.addr), Outcome::eperm());
    // What systemd does with a slice: remove it ...
    fs::remove_dir(&slice).unwrap();
    // ... (meanwhile nothing can be attached: `status` says so and fails) ...
    assert!(
        eventually(HEARTBEAT_DEADLINE, || {
            let out = agent.cli(&["status"]);
            !out.status.success() && text(&out).contains("MISSING")
        }),
        "status kept saying enforcing without the attach cgroup"
    );
    // ... and recreate it.
    fs::create_dir(&slice).unwrap();
    let stranger = As::root_in(&slice);
    assert!(
        eventually(HEARTBEAT_DEADLINE, || stranger.tcp(server.addr)
            == Outcome::eperm()),
        "nothing attached to the recreated cgroup within a heartbeat"
    );
    // The agent attaches first and audits the repair after: wait for it.
    let repaired = |recs: &[serde_json::Value]| {
        recs.iter()
            .any(|r| r["missing"].to_string().contains("removed and recreated"))
    };
    eventually(HEARTBEAT_DEADLINE, || {
        repaired(&events(&agent, "enforcement_repaired"))
    });
    let recs = events(&agent, "enforcement_repaired");
    assert!(repaired(&recs), "{recs:?}");
    let status = agent.cli(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("removed and recreated"),
        "{}",
        text(&status)
    );
}

/// `portcullis uninstall ARGS` with stdin not a terminal.
fn uninstall(args: &[&str]) -> Output {
    Command::new(portcullis_bin())
        .arg("uninstall")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn uninstall_honours_the_configured_bpffs_and_needs_yes_without_a_terminal() {
    let cg_a = TestCgroup::new();
    let cg_b = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let a = Agent::start(&policy(server.port()), &cg_a.path);
    let mut b = Agent::start(&policy(server.port()), &cg_b.path);
    b.stop();
    let config = b.dir.join("agent.toml");
    fs::write(
        &config,
        format!(
            "bpffs = {:?}\naudit_log = {:?}\n",
            b.bpffs.to_str().unwrap(),
            b.audit_log.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();

    let out = uninstall(&["--config", cfg]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    assert!(
        b.bpffs
            .join(format!("v{}/links", agent_common::LAYOUT_VERSION))
            .exists(),
        "removed without --yes"
    );
    assert_eq!(As::root_in(&cg_b.path).tcp(server.addr), Outcome::eperm());

    let out = uninstall(&["--config", cfg, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{}/tcp", server.port())),
        "does not say which ports opened: {}",
        text(&out)
    );
    assert!(!b.bpffs.exists());
    // The kernel frees unpinned links a moment later (deferred work).
    assert!(eventually(Duration::from_secs(5), || As::root_in(
        &cg_b.path
    )
    .tcp(server.addr)
    .is_ok()));
    // The other agent's pins are untouched and it still enforces.
    assert!(a
        .bpffs
        .join(format!("v{}/links", agent_common::LAYOUT_VERSION))
        .exists());
    assert_eq!(As::root_in(&cg_a.path).tcp(server.addr), Outcome::eperm());
    assert!(a.cli(&["status"]).status.success());
    // Recorded in the configured audit log, chained.
    assert_eq!(events(&b, "uninstall").len(), 1);
    let v = audit_verify(&b);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn uninstall_with_an_agent_running_goes_through_it_and_the_chain_stays_valid() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port()), &cg.path);
    agent.grant("db", "uid:40300", "30m");
    // Not as an ordinary user: the pin directory is root's alone.
    let out = Command::new(portcullis_bin())
        .args(["uninstall", "--yes", "--bpffs"])
        .arg(&agent.bpffs)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("needs root"), "{}", text(&out));
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());
    let out = uninstall(&[
        "--yes",
        "--bpffs",
        agent.bpffs.to_str().unwrap(),
        "--audit-log",
        agent.audit_log.to_str().unwrap(),
    ]);
    println!("{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("pid {}", agent.pid())),
        "{}",
        text(&out)
    );
    // The agent records its own stop after the uninstall, and exits.
    assert!(
        eventually(Duration::from_secs(10), || !events(&agent, "agent_stop")
            .is_empty()),
        "the agent did not stop after uninstall"
    );
    let records = agent.audit_records();
    let at = |e: &str| records.iter().position(|r| r["event"] == e).unwrap();
    assert!(at("uninstall") < at("agent_stop"));
    assert_eq!(records[at("uninstall")]["via"], "agent");
    assert!(eventually(Duration::from_secs(5), || As::root_in(&cg.path)
        .tcp(server.addr)
        .is_ok()));
    let v = audit_verify(&agent);
    assert!(v.status.success(), "chain forked: {}", text(&v));
}

#[test]
fn uninstall_of_a_directory_with_nothing_pinned_fails() {
    let empty = PathBuf::from("/sys/fs/bpf").join(unique("pc-empty"));
    fs::create_dir(&empty).unwrap();
    let out = uninstall(&["--yes", "--bpffs", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nothing is pinned"), "{}", text(&out));
    let _ = fs::remove_dir_all(&empty);
    let out = uninstall(&["--yes", "--bpffs", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn a_peer_filter_link_detached_behind_the_agents_back_is_replaced_within_a_heartbeat() {
    let peer = netns::PeerHost::new();
    let cg = TestCgroup::new();
    let server = EchoServer::tcp(&peer.host_addr(false, 0).to_string());
    let agent = Agent::builder(&policy(server.port()), &cg.path)
        .arg("--xdp-iface")
        .arg(&peer.host_if)
        .start();
    let target = server.addr.to_string();
    let refused = || peer.probe(&["tcp", &target], 700) == Outcome::Err("TIMEOUT".into());
    assert!(refused(), "ungranted peer got through");
    let pin = agent
        .bpffs
        .join(format!("v{}/links", agent_common::LAYOUT_VERSION))
        // A veth: the peer filter is a tcx link (issue 15).
        .join(format!("tcx_{}", peer.host_if));
    let id = link_id(&pin);
    let out = Command::new("bpftool")
        .args(["link", "detach", "id", &id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool link detach: {}", text(&out));
    assert!(
        eventually(HEARTBEAT_DEADLINE, || !events(
            &agent,
            "enforcement_repaired"
        )
        .is_empty()),
        "the detached tcx link was not noticed within a heartbeat"
    );
    let rec = &events(&agent, "enforcement_repaired")[0];
    assert!(
        rec["missing"]
            .to_string()
            .contains("pc_tc_peer is not attached"),
        "{rec}"
    );
    assert_eq!(rec["ok"], true, "{rec}");
    assert_ne!(link_id(&pin), id, "no new peer-filter link pinned");
    assert!(refused(), "the peer got through after the repair");
    assert!(agent.cli(&["status"]).status.success());
}

/// `portcullis uninstall ARGS` on a terminal (a pty from script(1)), with
/// `answer` typed at the prompt.
fn uninstall_on_a_terminal(args: &str, answer: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} uninstall {args}",
            portcullis_bin().to_str().unwrap()
        ))
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script(1)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn uninstall_on_a_terminal_asks_and_a_no_changes_nothing() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let mut agent = Agent::start(&policy(server.port()), &cg.path);
    agent.stop();
    let args = format!(
        "--bpffs {} --audit-log {}",
        agent.bpffs.display(),
        agent.audit_log.display()
    );
    let out = uninstall_on_a_terminal(&args, "n\n");
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("[y/N]") && said.contains(&format!("{}/tcp", server.port())),
        "the question does not say which ports open: {said}"
    );
    assert!(said.contains("not confirmed"), "{said}");
    assert!(agent
        .bpffs
        .join(format!("v{}/links", agent_common::LAYOUT_VERSION))
        .exists());
    assert_eq!(As::root_in(&cg.path).tcp(server.addr), Outcome::eperm());
    assert!(events(&agent, "uninstall").is_empty());

    let out = uninstall_on_a_terminal(&args, "y\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!agent.bpffs.exists());
    assert!(eventually(Duration::from_secs(5), || As::root_in(&cg.path)
        .tcp(server.addr)
        .is_ok()));
    assert_eq!(events(&agent, "uninstall").len(), 1);
}
