//! A webhook receiver for the notification tests: a small HTTP/1.1 server
//! on 127.0.0.1 that records each POST (path, content type, body) and
//! answers 200, or holds every request unanswered while told to (a sink
//! that accepts but never answers). Stops on drop; every wait is bounded.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// One request the receiver answered.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub path: String,
    pub content_type: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct State {
    got: Mutex<Vec<Delivery>>,
    hold: AtomicBool,
    /// Requests read and not answered (while holding).
    waiting: AtomicUsize,
    stop: AtomicBool,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
}

/// The longest a held request is kept before it is answered anyway.
const MAX_HOLD: Duration = Duration::from_secs(120);

/// A loopback port nothing listens on right now (bound, then released), for
/// a receiver that comes up later.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Receiver {
    pub fn start() -> Self {
        Self::start_on(0)
    }

    /// Listens on 127.0.0.1:`port` (0: any free port).
    pub fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the webhook receiver");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let s = state.clone();
        thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        thread::spawn(move || serve(conn, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// From now on, requests are read and left unanswered.
    pub fn hold(&self) {
        self.state.hold.store(true, Ordering::Relaxed);
    }

    /// Held requests are answered (and recorded); new ones too.
    pub fn release(&self) {
        self.state.hold.store(false, Ordering::Relaxed);
    }

    /// Requests read and waiting for an answer now.
    pub fn waiting(&self) -> usize {
        self.state.waiting.load(Ordering::Relaxed)
    }

    /// Requests answered so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.got.lock().unwrap().clone()
    }

    /// Waits (bounded) for a delivery whose body satisfies `f`.
    pub fn wait_for(&self, within: Duration, f: impl Fn(&Delivery) -> bool) -> Option<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(d) = self.deliveries().into_iter().find(|d| f(d)) {
                return Some(d);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.state.hold.store(false, Ordering::Relaxed);
    }
}

fn serve(conn: TcpStream, s: &State) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reader = BufReader::new(&conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let (mut length, mut content_type) = (0usize, None);
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    if s.hold.load(Ordering::Relaxed) {
        s.waiting.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + MAX_HOLD;
        while s.hold.load(Ordering::Relaxed) && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        s.waiting.fetch_sub(1, Ordering::Relaxed);
    }
    let _ = (&conn).write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.got.lock().unwrap().push(Delivery {
        path,
        content_type,
        body,
    });
}
