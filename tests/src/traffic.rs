//! Traffic that runs while something changes: a listener that takes
//! thousands of connects, and a client that connects in a loop (as a given
//! user, in a given cgroup) and adds up what it saw. Used to prove that a
//! reload or a redeploy never refuses an allowed client nor lets a stranger
//! through, not even once.
use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use crate::{probe_bin, As, Outcome};

/// A TCP listener that accepts and drops connections as fast as they come,
/// for clients that connect thousands of times (the echo server's polling
/// accept lets the backlog overflow, and a dropped SYN stalls a client for
/// a second).
pub struct Sink {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Sink {
    pub fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                drop(conn);
            }
        });
        Sink { addr, stop }
    }
}

impl Default for Sink {
    fn default() -> Self {
        Self::new()
    }
}

/// One connect (no data: a [`Sink`] answers none), as `pc-probe loop` sees it.
pub fn connect_once(who: &As, addr: SocketAddr) -> Outcome {
    let out = who
        .command(probe_bin())
        .args(["loop", &addr.to_string(), "1"])
        .output()
        .expect("run pc-probe loop");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "loop ok 1 eperm 0 other 0" => Outcome::Ok,
        "loop ok 0 eperm 1 other 0" => Outcome::eperm(),
        other => Outcome::Err(other.to_string()),
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so that the thread sees `stop`.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Runs `pc-probe loop` in `who`'s place until `stop`, batch after batch
/// (at most `max_batches`), and adds up what it saw.
pub fn probe_loop(
    who: As,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    max_batches: usize,
) -> thread::JoinHandle<(u64, u64, u64, Vec<String>)> {
    thread::spawn(move || {
        let (mut ok, mut eperm, mut other) = (0, 0, 0);
        let mut errors = Vec::new();
        for _ in 0..max_batches {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let out = who
                .command(probe_bin())
                .args(["loop", &addr.to_string(), "1000"])
                .env("PC_PROBE_TIMEOUT_MS", "2000")
                .stdin(Stdio::null())
                .output()
                .expect("run pc-probe loop");
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<&str> = text.split_whitespace().collect();
            assert!(
                f.len() >= 7 && f[0] == "loop",
                "pc-probe loop said {text:?}"
            );
            ok += f[2].parse::<u64>().unwrap();
            eperm += f[4].parse::<u64>().unwrap();
            other += f[6].parse::<u64>().unwrap();
            if let Some(e) = f.get(7) {
                errors.push(e.to_string());
            }
        }
        (ok, eperm, other, errors)
    })
}
