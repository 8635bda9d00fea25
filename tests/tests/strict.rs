//! Strict grants in the kernel (issue 19), proven without the agent: the
//! agent is stopped (SIGSTOP: hung, its pins in place) and the test plays
//! the part of the last word from the fleet store by writing the pinned
//! maps itself (bpftool): a grant entry made strict, and `PC_FRESH`. The
//! kernel alone must then refuse a strict entry's connects once "fresh
//! until" is behind, let them through while it is ahead, and stop an open
//! flow's packets when the instant its mark cached passes; a plain entry
//! beside it must keep working all along. The fleet end-to-end test (a
//! host cut off from etcd) is in `fleet.rs`.
use std::{path::Path, process::Command, time::Duration};

use agent_common::{expiry, kind, map_names, port_index, Proto, LAYOUT_VERSION};
use portcullis_tests::{session::Session, *};

const STRICT_UID: u32 = 41_591;
const PLAIN_UID: u32 = 41_592;

fn policy(port: u16) -> String {
    format!(
        "[segment.db]\nports = [\"{port}/tcp\"]\nallow = []\n\n[segment.db.jit]\nmax_ttl = \"1h\"\nrequire_reason = false\n"
    )
}

/// CLOCK_BOOTTIME now, in ns (the clock the programs read).
fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bpftool(args: &[String]) -> String {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value bytes of `key` in the pinned map `map`.
fn lookup(map: &Path, key: &[u8]) -> Vec<u8> {
    let mut args: Vec<String> = ["-j", "map", "lookup", "pinned"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(map.display().to_string());
    args.push("key".into());
    args.push("hex".into());
    args.extend(hex(key));
    let v: serde_json::Value = serde_json::from_str(&bpftool(&args)).expect("bpftool JSON");
    v["value"]
        .as_array()
        .expect("raw value bytes")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect()
}

fn update(map: &Path, key: &[u8], value: &[u8]) {
    let mut args: Vec<String> = ["map", "update", "pinned"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(map.display().to_string());
    args.push("key".into());
    args.push("hex".into());
    args.extend(hex(key));
    args.push("value".into());
    args.push("hex".into());
    args.extend(hex(value));
    bpftool(&args);
}

fn grant_key(segment: u32, uid: u32) -> Vec<u8> {
    let mut k = kind::UID.to_le_bytes().to_vec();
    k.extend(segment.to_le_bytes());
    k.extend((uid as u64).to_le_bytes());
    k
}

/// Stops (or resumes) the agent process: a hung agent.
fn signal(agent: &Agent, sig: i32) {
    // SAFETY: kill(2) on the agent process this test started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, sig) }, 0);
}

#[test]
fn a_strict_entry_works_only_until_fresh_until_with_the_agent_hung_and_a_plain_one_keeps_working() {
    let cg = TestCgroup::new();
    let server = EchoServer::tcp("127.0.0.1:0");
    let agent = Agent::start(&policy(server.port()), &cg.path);
    agent.grant("db", &format!("uid:{STRICT_UID}"), "1h");
    agent.grant("db", &format!("uid:{PLAIN_UID}"), "1h");
    let strict = As::user(&cg.path, STRICT_UID, STRICT_UID);
    let plain = As::user(&cg.path, PLAIN_UID, PLAIN_UID);
    assert!(strict.tcp(server.addr).is_ok());

    // From here on the agent does nothing at all.
    signal(&agent, libc::SIGSTOP);
    let pins = agent.bpffs.join(format!("v{LAYOUT_VERSION}")).join("maps");
    let (grants, fresh, ports) = (
        pins.join(map_names::GRANTS),
        pins.join(map_names::FRESH),
        pins.join(map_names::PORTS),
    );
    let entry = lookup(&ports, &port_index(Proto::Tcp, server.port()).to_le_bytes());
    let segment = u32::from_le_bytes(entry[..4].try_into().unwrap());
    let key = grant_key(segment, STRICT_UID);
    let at = u64::from_le_bytes(lookup(&grants, &key)[..8].try_into().unwrap());
    update(&grants, &key, &expiry::strict(at).to_le_bytes());

    // Never heard from the store (0): refused, though the deadline is an hour away.
    update(&fresh, &[0; 4], &0u64.to_le_bytes());
    assert_eq!(strict.tcp(server.addr), Outcome::eperm(), "stale: refused");
    assert!(
        plain.tcp(server.addr).is_ok(),
        "a plain entry ignores freshness"
    );

    // Fresh for a minute: allowed.
    update(&fresh, &[0; 4], &(boot_ns() + 60_000_000_000).to_le_bytes());
    assert!(strict.tcp(server.addr).is_ok(), "fresh: allowed");

    // Fresh for two more seconds; a flow opened now is marked with that
    // instant and must stop passing packets when the clock reaches it,
    // with no agent to bump the epoch or destroy the socket.
    update(&fresh, &[0; 4], &(boot_ns() + 2_000_000_000).to_le_bytes());
    let mut cmd = strict.command(probe_bin());
    cmd.args(["hold", &server.addr.to_string(), "50", "2000"])
        .env("PC_PROBE_TIMEOUT_MS", "1000");
    let session = Session::start(cmd);
    session.wait_round_trips(2, Duration::from_secs(10));
    let (err, trips, took) = session.wait_failure(Duration::from_secs(30));
    println!("strict flow stopped {took:?} after it was open ({trips} more round trips): {err}");
    assert_eq!(
        strict.tcp(server.addr),
        Outcome::eperm(),
        "stale again: refused"
    );
    assert!(
        plain.tcp(server.addr).is_ok(),
        "the plain entry still works"
    );

    signal(&agent, libc::SIGCONT);
}
