//! A long-lived client session (`pc-probe hold` / `udp-hold`) whose round
//! trips are read as they happen, so a test can cut it and see the very
//! next round trip fail.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{channel, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

/// One line the session printed: a completed round trip or the error that ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    RoundTrip(u32),
    Failed(String),
}

pub struct Session {
    child: Child,
    lines: Receiver<Event>,
}

impl Session {
    /// Starts `cmd` (a pc-probe hold command) with its stdout captured.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start session");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let ev = if let Some(rest) = line.strip_prefix("ok ") {
                    Event::RoundTrip(
                        rest.split_whitespace()
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0),
                    )
                } else if let Some(e) = line.strip_prefix("err ") {
                    Event::Failed(e.to_string())
                } else {
                    continue;
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
        Self { child, lines: rx }
    }

    /// Waits (bounded) for `n` successful round trips.
    pub fn wait_round_trips(&self, n: u32, within: Duration) {
        let deadline = Instant::now() + within;
        let mut seen = 0;
        while seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Event::RoundTrip(_)) => seen += 1,
                Ok(Event::Failed(e)) => panic!("session failed after {seen} round trips: {e}"),
                Err(_) => panic!("only {seen} of {n} round trips within {within:?}"),
            }
        }
    }

    /// Drains events until the session fails; returns the error, how many
    /// round trips completed first, and how long it took. Bounded by `within`.
    pub fn wait_failure(&self, within: Duration) -> (String, u32, Duration) {
        let start = Instant::now();
        let mut trips = 0;
        loop {
            let left = within.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(Event::RoundTrip(_)) => trips += 1,
                Ok(Event::Failed(e)) => return (e, trips, start.elapsed()),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("session still alive {within:?} after the cut ({trips} round trips)")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("session ended without reporting an error")
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
