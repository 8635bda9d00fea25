//! An ordinary user flooding the control socket: a python3 client that
//! holds N connections open and re-opens each one the agent closes.
use std::{
    fs,
    io::Read,
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

/// Opens N connections to SOCKET as the calling user and keeps them open:
/// whenever the agent closes one, it is opened again, for SECS seconds.
/// Prints `ready CONNECTED` once the first round is done, then at the end
/// `done reconnects R refusal TEXT`.
const FLOODER: &str = r#"
import socket, sys, time, selectors
path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sel = selectors.DefaultSelector()
refusal = ""
def opened():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
    except OSError:
        s.close()
        return None
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    return s
live = 0
for _ in range(n):
    if opened() is not None:
        live += 1
print("ready", live, flush=True)
reconnects = 0
end = time.time() + secs
while time.time() < end:
    for key, _ in sel.select(timeout=0.05):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if data and not refusal:
            refusal = data.decode(errors="replace").strip()
        sel.unregister(s)
        s.close()
        if opened() is not None:
            reconnects += 1
print("done reconnects", reconnects, "refusal", refusal, flush=True)
"#;

pub fn start_flood(socket: &Path, uid: u32, n: usize, secs: u32) -> Child {
    // prlimit (as root) lets the flooder hold more descriptors than the
    // agent's 1024; setpriv then drops to the ordinary user.
    Command::new("prlimit")
        .args(["--nofile=8192:8192", "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "/usr/bin/python3", "-c", FLOODER])
        .arg(socket)
        .arg(n.to_string())
        .arg(secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the flooder (python3, setpriv, prlimit)")
}

/// How many descriptors process `pid` holds.
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits (bounded) for a flooder's `ready` line.
/// Returns the rest of its output and the `ready` line.
pub fn wait_ready(flood: &mut Child) -> (ChildStdout, String) {
    let mut out = flood.stdout.take().unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !buf.ends_with(b"\n") {
        assert!(Instant::now() < deadline, "the flooder never got ready");
        if out.read(&mut byte).unwrap() == 0 {
            panic!("the flooder exited: {}", String::from_utf8_lossy(&buf));
        }
        buf.push(byte[0]);
    }
    (out, String::from_utf8_lossy(&buf).to_string())
}
