//! The fleet table's store: one real `etcd` on loopback (its own data
//! directory and ports), and the few calls the bench makes to it through
//! etcd's JSON gateway (`/v3/kv/put`, `/v3/kv/deleterange`, `/health`)
//! over plain HTTP/1.0 on the client port: no client library, so the
//! bench times the store's own commit and nothing of the agent's code.
//! Killed on drop (and by PR_SET_PDEATHSIG if the bench dies).
use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench::host;

/// How long etcd may take to answer `/health` after it starts.
const START_LIMIT: Duration = Duration::from_secs(30);
/// One call's limit (connect, write, read).
const CALL_LIMIT: Duration = Duration::from_secs(5);

pub(in crate::bench) struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    pub client: SocketAddrV4,
    peer: SocketAddrV4,
}

/// A port nothing listens on now (bound, then released).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl Etcd {
    /// Starts etcd with its data in `work/etcd` and waits until it is healthy.
    pub(in crate::bench) fn start(work: &Path) -> Result<Self> {
        let mut me = Self {
            child: None,
            dir: work.join("etcd"),
            client: SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port()?),
            peer: SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port()?),
        };
        fs::create_dir_all(&me.dir)?;
        me.spawn()?;
        Ok(me)
    }

    /// The URL agents are given.
    pub(in crate::bench) fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// (Re)starts the process on the same ports and data; returns when healthy.
    pub(in crate::bench) fn spawn(&mut self) -> Result<Duration> {
        let peer = format!("http://{}", self.peer);
        let client = self.endpoint();
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg("pcbench")
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
            .arg(format!("pcbench={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("etcd.log"))?);
        host::confine(&mut cmd, None, None);
        let started = Instant::now();
        self.child = Some(
            cmd.spawn()
                .context("starting etcd (`cargo xtask setup` installs etcd-server)")?,
        );
        loop {
            if self.healthy() {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.child.as_mut().expect("just started").try_wait()? {
                bail!(
                    "etcd exited while starting ({status}); see {}",
                    self.dir.join("etcd.log").display()
                );
            }
            if started.elapsed() > START_LIMIT {
                bail!("etcd was not healthy within {START_LIMIT:?}");
            }
            host::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the process (SIGKILL: a crash, not a goodbye).
    pub(in crate::bench) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn healthy(&self) -> bool {
        self.call("GET", "/health", "")
            .is_ok_and(|b| b.contains("\"health\":\"true\""))
    }

    /// Puts `value` at `key`; returns the store revision of the commit.
    pub(in crate::bench) fn put(&self, key: &str, value: &str) -> Result<u64> {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(key.as_bytes()),
            base64(value.as_bytes())
        );
        revision(&self.call("POST", "/v3/kv/put", &body)?)
    }

    /// Deletes `key`; returns the store revision of the commit.
    pub(in crate::bench) fn delete(&self, key: &str) -> Result<u64> {
        let body = format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()));
        revision(&self.call("POST", "/v3/kv/deleterange", &body)?)
    }

    fn call(&self, method: &str, path: &str, body: &str) -> Result<String> {
        let mut s = TcpStream::connect_timeout(&self.client.into(), CALL_LIMIT)?;
        s.set_read_timeout(Some(CALL_LIMIT))?;
        s.set_write_timeout(Some(CALL_LIMIT))?;
        // HTTP/1.0: one request, the answer not chunked, closed after.
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.client,
            body.len()
        )?;
        let mut answer = String::new();
        s.take(1 << 20).read_to_string(&mut answer)?;
        let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP body")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!(
                "etcd answered {method} {path} with {:?}",
                head.lines().next()
            );
        }
        Ok(body.to_string())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `header.revision` of a gateway answer (a JSON string of digits).
fn revision(body: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_str(body).context("etcd's answer is not JSON")?;
    v["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("no revision in {body}"))
}

/// Standard base64 with padding (what the gateway expects for bytes).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"/portcullis/v1/grants/fleet/x"),
            "L3BvcnRjdWxsaXMvdjEvZ3JhbnRzL2ZsZWV0L3g="
        );
    }

    #[test]
    fn the_revision_is_read_from_the_header() {
        let body =
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"42","raft_term":"3"}}"#;
        assert_eq!(revision(body).unwrap(), 42);
        assert!(revision("{}").is_err());
    }
}
