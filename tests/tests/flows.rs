//! Established flows of local workloads: a revoked or expired grant stops
//! an open session at its next packet (cgroup_skb), and the client sees an
//! error at once (the agent destroys the socket), not when TCP gives up.
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::channel,
    thread,
    time::{Duration, Instant},
};

use portcullis_tests::{session::Session, *};

fn policy(port: u16, proto: &str) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/{proto}\"]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n"
    )
}

fn hold(client: &As, kind: &str, addr: std::net::SocketAddr) -> Session {
    let mut cmd = client.command(probe_bin());
    cmd.args([kind, &addr.to_string(), "100", "600"]);
    Session::start(cmd)
}

#[test]
fn revoke_cuts_an_open_tcp_session_at_its_next_packet() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port(), "tcp"), &cg.path);
    let client = As::root_in(&cg.path);
    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    let session = hold(&client, "hold", server.addr);
    session.wait_round_trips(3, Duration::from_secs(10));

    let start = Instant::now();
    agent.ok(&["revoke", &id.to_string()]);
    let (err, trips, _) = session.wait_failure(Duration::from_secs(10));
    let took = start.elapsed();
    println!("tcp session cut {took:?} after revoke, {trips} round trip(s) in flight, error {err}");
    assert!(trips <= 1, "{trips} round trips succeeded after the revoke");
    // The socket was destroyed (ECONNABORTED), not left to time out.
    assert_eq!(err, "ECONNABORTED");
}

#[test]
fn expiry_cuts_an_open_tcp_session_even_with_the_agent_dead() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let mut agent = Agent::start(&policy(server.port(), "tcp"), &cg.path);
    let client = As::root_in(&cg.path);
    agent.grant("db", &format!("cgroup:{}", cg.rel), "3s");
    let session = hold(&client, "hold", server.addr);
    session.wait_round_trips(2, Duration::from_secs(5));
    // Only the kernel is left: the packet after the deadline is dropped, and
    // with no agent to destroy the socket the client times out on its read.
    agent.kill();
    let (err, trips, took) = session.wait_failure(Duration::from_secs(15));
    println!("tcp session cut by expiry with the agent dead after {took:?} ({trips} more round trips), error {err}");
    assert_eq!(err, "TIMEOUT");
}

#[test]
fn expiry_with_the_agent_running_aborts_the_session() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port(), "tcp"), &cg.path);
    let client = As::root_in(&cg.path);
    agent.grant("db", &format!("cgroup:{}", cg.rel), "2s");
    let session = hold(&client, "hold", server.addr);
    session.wait_round_trips(2, Duration::from_secs(5));
    let (err, _, took) = session.wait_failure(Duration::from_secs(15));
    println!("tcp session cut by expiry after {took:?}, error {err}");
    assert_eq!(err, "ECONNABORTED");
}

#[test]
fn revoke_cuts_a_connected_udp_flow() {
    let cg = TestCgroup::new();
    let server = EchoServer::udp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port(), "udp"), &cg.path);
    let client = As::root_in(&cg.path);
    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    let session = hold(&client, "udp-hold", server.addr);
    session.wait_round_trips(3, Duration::from_secs(10));
    agent.ok(&["revoke", &id.to_string()]);
    let (err, trips, took) = session.wait_failure(Duration::from_secs(10));
    println!("udp flow cut {took:?} after revoke ({trips} in flight), error {err}");
    assert!(trips <= 1);
    // The next send is refused by the egress program, or the sweep after
    // the revoke destroyed the socket first: a destroyed UDP socket is
    // disconnected (its next send: EDESTADDRREQ; a pending receive:
    // ECONNABORTED).
    assert!(
        err == "EPERM" || err == "ECONNABORTED" || err == "EDESTADDRREQ",
        "{err}"
    );
}

#[test]
fn a_session_allowed_by_a_standing_allow_survives_revoking_an_extra_grant() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let p = format!(
        "[segment.db]\nports = [\"{}/tcp\"]\nallow = [\"cgroup:{}\"]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n",
        server.port(),
        cg.rel
    );
    let agent = Agent::start(&p, &cg.path);
    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");
    let session = hold(&As::root_in(&cg.path), "hold", server.addr);
    session.wait_round_trips(2, Duration::from_secs(5));
    agent.ok(&["revoke", &id.to_string()]);
    // Still allowed: five more round trips go through.
    session.wait_round_trips(5, Duration::from_secs(5));
}

/// A PostgreSQL server started for one test in a temporary directory.
struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed by `cargo xtask setup`")
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = std::env::temp_dir().join(unique("pc-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("runuser");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let data = dir.join("data");
        run(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=off",
            dir.display()
        );
        run(&[
            bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            dir.join("log").to_str().unwrap(),
            "-w",
            "-t",
            "30",
            "start",
        ]);
        Self { dir, bin, port }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn psql_path(pg: &Path) -> PathBuf {
    pg.join("psql")
}

#[test]
fn revoke_stops_a_live_psql_session_at_its_next_query() {
    let pg = Postgres::start();
    let cg = TestCgroup::new();
    let agent = Agent::start(&policy(pg.port, "tcp"), &cg.path);
    let client = As::root_in(&cg.path);
    let id = agent.grant("db", &format!("cgroup:{}", cg.rel), "10m");

    let mut psql = client
        .command(psql_path(&pg.bin))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql");
    let mut stdin = psql.stdin.take().unwrap();
    let (tx, rx) = channel::<String>();
    for stream in [
        Box::new(psql.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(psql.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut query = |q: &str| {
        writeln!(stdin, "{q}").unwrap();
        stdin.flush().unwrap();
    };
    query("select 'first-query';");
    let first = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("psql answers");
    assert_eq!(first, "first-query");

    agent.ok(&["revoke", &id.to_string()]);
    let start = Instant::now();
    query("select 'second-query';");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line == "second-query" => break false,
            Ok(line) => {
                let done = line.contains("connection") || line.contains("abort");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => panic!("psql said nothing within 15 s after revoke; lines: {seen:?}"),
        }
    };
    let took = start.elapsed();
    println!("psql's next query failed {took:?} after revoke: {seen:?}");
    assert!(failed, "the query after revoke succeeded");
    let _ = psql.kill();
    let _ = psql.wait();
}
