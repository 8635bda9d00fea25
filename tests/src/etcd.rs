//! A real etcd for the fleet tests: one member on loopback (random free
//! ports), its own data directory under /tmp/fleet-etcd-*, killed and
//! removed on drop; stoppable and restartable on the same data. The test
//! itself talks to it through etcd's JSON gateway (`/v3/kv/...`), so the
//! test crate needs no gRPC client: writing a hostile value, reading the
//! revision and compacting are three small HTTP calls.
use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

pub struct Etcd {
    pub client_port: u16,
    peer_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd and waits (bounded) until it answers.
    pub fn start() -> Self {
        assert!(
            Command::new("etcd").arg("--version").output().is_ok(),
            "etcd is not installed: run `cargo xtask setup` (Debian package etcd-server)"
        );
        let dir = PathBuf::from(format!("/tmp/fleet-etcd-{}", crate::unique("data")));
        fs::create_dir_all(&dir).unwrap();
        let mut e = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            child: None,
        };
        e.resume();
        e
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (again) on the same ports and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name")
            .arg("fleet-test")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("fleet-test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.revision_opt().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 30 s; its log: {}",
                fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills etcd (the agents see it unreachable); `resume` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A JSON gateway call; the reply's JSON, or `None` if etcd did not answer.
    pub fn call(&self, path: &str, body: &serde_json::Value) -> Option<serde_json::Value> {
        let body = body.to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.client_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, rest) = reply.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        // The gateway may answer chunked: take the JSON object inside.
        let start = rest.find('{')?;
        let end = rest.rfind('}')?;
        serde_json::from_str(&rest[start..=end]).ok()
    }

    fn revision_opt(&self) -> Option<i64> {
        let v = self.call("/v3/kv/range", &serde_json::json!({"key": b64(b"/")}))?;
        v["header"]["revision"].as_str()?.parse().ok()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.revision_opt().expect("etcd answers")
    }

    /// Writes `value` at `key` as is (a hostile writer's view).
    pub fn put(&self, key: &str, value: &[u8]) {
        self.call(
            "/v3/kv/put",
            &serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value)}),
        )
        .expect("etcd put");
    }

    /// Compacts the history up to the current revision.
    pub fn compact(&self) {
        let rev = self.revision();
        self.call(
            "/v3/kv/compaction",
            &serde_json::json!({"revision": rev.to_string(), "physical": true}),
        )
        .expect("etcd compaction");
    }

    /// Values under `prefix`, decoded: (key, value).
    pub fn list(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let v = self
            .call(
                "/v3/kv/range",
                &serde_json::json!({"key": b64(prefix.as_bytes()), "range_end": b64(&end)}),
            )
            .expect("etcd range");
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        (
                            String::from_utf8(unb64(kv["key"].as_str().unwrap())).unwrap(),
                            kv["value"].as_str().map(unb64).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unb64(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips() {
        for s in [&b""[..], b"a", b"ab", b"abc", b"/portcullis/v1/grants/"] {
            assert_eq!(super::unb64(&super::b64(s)), s);
        }
        assert_eq!(super::b64(b"ab"), "YWI=");
    }
}
