//! The README's "Using it" and "Asking for access" stories, run as written
//! against the real agent with the shipped example policy
//! (policies/databases.toml) and the packaged configuration's socket
//! settings (packaging/agent.toml: mode 0660, group `portcullis`).
//!
//! The package is not installed on the test machine: the test creates its
//! own socket group in place of `portcullis` and its own users, and runs
//! their CLI the way a login does (`setpriv --init-groups`: the user's
//! supplementary groups from NSS), so that "alice is in the group" means
//! what it means after `usermod -aG portcullis alice`.
use std::{
    fs,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::Path,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use portcullis_tests::{
    users::{TestGroup, TestUser},
    *,
};

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `portcullis --socket S ARGS` as `user`, with the user's own groups.
fn as_login(agent: &Agent, user: &TestUser, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.name))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(portcullis_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn run(agent: &Agent, user: &TestUser, args: &[&str]) -> Output {
    as_login(agent, user, args).output().expect("run setpriv")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (bounded) for a background CLI to finish.
fn finish(mut child: Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`request --wait` still running after {within:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn pending(agent: &Agent) -> Vec<u64> {
    let v: serde_json::Value =
        serde_json::from_str(&agent.ok(&["list", "--pending", "--json"])).expect("list --json");
    v["ok"]["requests"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// The example policy with its ports moved onto this test's servers and
/// its approvers group replaced by the test's.
fn example_policy(pg: u16, bouncer: u16, approvers: &TestGroup) -> String {
    let shipped = repo_file("policies/databases.toml");
    for needle in ["\"5432/tcp\"", "\"6432/tcp\"", "\"group:adm\""] {
        assert!(
            shipped.contains(needle),
            "policies/databases.toml no longer has {needle}: update this test with the README"
        );
    }
    shipped
        .replace("\"5432/tcp\"", &format!("\"{pg}/tcp\""))
        .replace("\"6432/tcp\"", &format!("\"{bouncer}/tcp\""))
        .replace("\"group:adm\"", &format!("\"group:{}\"", approvers.name))
}

/// packaging/agent.toml with its socket group replaced by the test's
/// (every other key stays as shipped; the harness's flags move the paths).
fn packaged_config(dir: &Path, group: &TestGroup) -> std::path::PathBuf {
    let shipped = repo_file("packaging/agent.toml");
    let line = "\nsocket_group = \"portcullis\"\n";
    assert!(
        shipped.contains(line) && shipped.contains("\nsocket_mode = \"0660\"\n"),
        "packaging/agent.toml must give the socket mode 0660 and the group portcullis"
    );
    let path = dir.join("agent.toml");
    fs::write(
        &path,
        shipped.replace(line, &format!("\nsocket_group = \"{}\"\n", group.name)),
    )
    .unwrap();
    path
}

#[test]
fn the_readme_request_story_works_with_the_packaged_socket_group() {
    let cg = TestCgroup::new();
    let pg = EchoServer::tcp("127.0.0.1:0");
    let bouncer = EchoServer::tcp("127.0.0.1:0");
    let socket_group = TestGroup::new();
    let approvers = TestGroup::new();
    let alice = TestUser::new();
    let bob = TestUser::new();
    let mallory = TestUser::new();
    alice.join(&socket_group);
    bob.join(&socket_group);
    bob.join(&approvers);

    let config_dir = std::env::temp_dir().join(unique("details-config"));
    fs::create_dir_all(&config_dir).unwrap();
    let config = packaged_config(&config_dir, &socket_group);
    let agent = Agent::builder(
        &example_policy(pg.port(), bouncer.port(), &approvers),
        &cg.path,
    )
    .arg("--config")
    .arg(config.to_str().unwrap())
    .start();
    // The package's socket lives in /run/portcullis (0755); here the
    // agent's own directory stands in for it.
    fs::set_permissions(&agent.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let meta = fs::metadata(&agent.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the packaged socket mode");
    assert_eq!(meta.gid(), socket_group.gid, "the packaged socket group");

    let (pg_port, bouncer_port) = (pg.port(), bouncer.port());
    let ports = format!("{pg_port}/tcp, {bouncer_port}/tcp");
    let alice_client = As::user(&cg.path, alice.uid, alice.gid);
    assert_eq!(
        alice_client.tcp(pg.addr),
        Outcome::eperm(),
        "closed at first"
    );

    // "Using it": root grants, lists, revokes.
    let granted = agent.ok(&[
        "grant",
        "payments-db",
        &alice.identity(),
        "--ttl",
        "30m",
        "--reason",
        "INC-4411 replication lag",
    ]);
    assert!(
        granted.starts_with("grant ")
            && granted.contains(&format!(
                ": {} → payments-db ({ports}) for 30m, until ",
                alice.identity()
            )),
        "{granted}"
    );
    assert!(alice_client.tcp(pg.addr).is_ok());
    let id: u64 = granted["grant ".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let list = agent.ok(&["list"]);
    assert!(
        list.contains("INC-4411 replication lag") && list.contains("standing"),
        "{list}"
    );
    agent.ok(&["revoke", &id.to_string()]);
    assert_eq!(alice_client.tcp(pg.addr), Outcome::eperm());
    agent.ok(&["status"]);
    // `check` needs no root and no agent.
    ok(Command::new(portcullis_bin())
        .arg("check")
        .arg(&agent.policies)
        .uid(mallory.uid)
        .gid(mallory.gid)
        .output()
        .unwrap());

    // Not in the group: the socket refuses, and says which group to join.
    let out = run(
        &agent,
        &mallory,
        &["request", "payments-db", "--reason", "curious"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "portcullis: permission denied on {}: run as root or as a member of the group {g} \
             (`usermod -aG {g} $USER`, then log in again so the membership applies)",
            agent.socket.display(),
            g = socket_group.name
        ),
        "{}",
        text(&out)
    );

    // "Asking for access": alice asks and waits; bob approves for less.
    let waiting = as_login(
        &agent,
        &alice,
        &[
            "request",
            "payments-db",
            "--ttl",
            "30m",
            "--reason",
            "INC-4411",
            "--wait",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn request --wait");
    let mut ids = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            ids = pending(&agent);
            ids.len() == 1
        }),
        "no pending request: {ids:?}"
    );
    let req = ids[0];
    let listed = ok(run(&agent, &bob, &["list", "--pending"]));
    assert!(listed.contains(&alice.name), "{listed}");
    let approved = ok(run(
        &agent,
        &bob,
        &["approve", &req.to_string(), "--ttl", "15m"],
    ));
    assert!(
        approved.starts_with(&format!(
            "request {req} approved by {} (uid {}): grant ",
            bob.name, bob.uid
        )) && approved.contains(&format!(" opens payments-db ({ports}) for 15m")),
        "{approved}"
    );
    let waited = finish(waiting, Duration::from_secs(15));
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited));
    let waited_out = String::from_utf8_lossy(&waited.stdout);
    assert!(
        waited_out.starts_with(&format!(
            "request {req}: {} → payments-db ({ports}) for 30m, pending; lapses in ",
            alice.identity()
        )),
        "{waited_out}"
    );
    assert!(alice_client.tcp(pg.addr).is_ok());
    assert!(alice_client.tcp(bouncer.addr).is_ok());
    let explained = agent.ok(&["explain", &alice.identity(), &format!("{pg_port}/tcp")]);
    assert!(explained.contains("ALLOW"), "{explained}");

    // A second request, denied with a reason: `--wait` exits 1.
    let waiting = as_login(
        &agent,
        &alice,
        &["request", "payments-db", "--reason", "again", "--wait"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn request --wait");
    assert!(
        eventually(Duration::from_secs(10), || {
            ids = pending(&agent);
            ids.len() == 1
        }),
        "no second pending request: {ids:?}"
    );
    ok(run(
        &agent,
        &bob,
        &["deny", &ids[0].to_string(), "--reason", "use the replica"],
    ));
    let waited = finish(waiting, Duration::from_secs(15));
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    assert!(
        text(&waited).contains("use the replica"),
        "{}",
        text(&waited)
    );
    drop(agent);
    let _ = fs::remove_dir_all(&config_dir);
}
