//! Harness for Portcullis' privileged end-to-end tests.
//!
//! Every test gets its own child cgroup (the agent attaches there, never to
//! the root), its own bpffs directory, socket, state directory and audit
//! log, and real servers on loopback. Every guard cleans up on drop, also
//! when the test panics, so a failed test never leaves a port closed.
//!
//! Tests need root; they panic with a message that says so otherwise.
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

pub mod etcd;
pub mod flood;
pub mod frames;
pub mod netns;
pub mod ran;
pub mod session;
pub mod traffic;
pub mod units;
pub mod users;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the end-to-end tests load eBPF programs and need root; run `cargo xtask test` as root"
    );
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    for line in info.lines() {
        if let Some((left, right)) = line.split_once(" - ") {
            if right.split_whitespace().next() == Some("cgroup2") {
                return PathBuf::from(left.split_whitespace().nth(4).expect("mount point"));
            }
        }
    }
    panic!("no cgroup2 filesystem mounted");
}

/// The `portcullis` binary under test.
pub fn portcullis_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test>-<hash> → target/<profile>/portcullis
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("portcullis");
    assert!(
        p.exists(),
        "{} not built; run `cargo xtask test` (or set PORTCULLIS_BIN)",
        p.display()
    );
    p
}

/// The probe client, built beside the test binaries.
pub fn probe_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("pc-probe");
    assert!(
        p.exists(),
        "{} not built; run `cargo xtask test`",
        p.display()
    );
    p
}

/// A cgroup created for one test; removed (with its children) on drop.
pub struct TestCgroup {
    /// Filesystem path.
    pub path: PathBuf,
    /// Path relative to the cgroup2 mount, with a leading `/`.
    pub rel: String,
}

impl TestCgroup {
    pub fn new() -> Self {
        let name = unique("pc-test");
        let path = cgroup2_mount().join(&name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self {
            path,
            rel: format!("/{name}"),
        }
    }

    /// A child cgroup below this one (removed with it).
    pub fn child(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

fn remove_cgroup_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    // Kill stragglers, then wait (bounded) for the cgroup to empty.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: could not remove cgroup {}", path.display());
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.path);
    }
}

/// What a probe reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Err(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
    pub fn eperm() -> Self {
        Outcome::Err("EPERM".into())
    }
}

/// How to start a process under test: in which cgroup, as which uid/gid.
#[derive(Clone, Debug)]
pub struct As {
    pub cgroup: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

impl As {
    pub fn root_in(cgroup: &Path) -> Self {
        Self {
            cgroup: cgroup.to_path_buf(),
            uid: 0,
            gid: 0,
        }
    }
    pub fn user(cgroup: &Path, uid: u32, gid: u32) -> Self {
        Self {
            cgroup: cgroup.to_path_buf(),
            uid,
            gid,
        }
    }

    /// A command that joins the cgroup, then drops to uid/gid, then execs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let procs =
            std::ffi::CString::new(self.cgroup.join("cgroup.procs").to_str().unwrap()).unwrap();
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: only async-signal-safe calls (open, write, close, setgroups,
        // setgid, setuid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if ok != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs pc-probe with `args` and returns what it saw.
    pub fn probe(&self, args: &[&str]) -> Outcome {
        let out = self
            .command(probe_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pc-probe");
        outcome_of(&out, args)
    }

    pub fn tcp(&self, addr: SocketAddr) -> Outcome {
        self.probe(&["tcp", &addr.to_string()])
    }
    pub fn udp(&self, addr: SocketAddr) -> Outcome {
        self.probe(&["udp", &addr.to_string()])
    }
    pub fn udp_connect(&self, addr: SocketAddr) -> Outcome {
        self.probe(&["udp-connect", &addr.to_string()])
    }
}

/// What a finished pc-probe run reported.
pub fn outcome_of(out: &Output, args: &[&str]) -> Outcome {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("").trim().to_string();
    if out.status.success() && last == "ok" {
        Outcome::Ok
    } else if let Some(e) = last.strip_prefix("err ") {
        Outcome::Err(e.to_string())
    } else {
        panic!(
            "pc-probe {args:?}: unexpected output {text:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A TCP echo server on loopback, running until dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    /// Binds `bind` (e.g. "127.0.0.1:0" or "[::]:0").
    pub fn tcp(bind: &str) -> Self {
        let listener = TcpListener::bind(bind).expect("bind echo server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).ok();
                        thread::spawn(move || {
                            conn.set_read_timeout(Some(Duration::from_secs(60))).ok();
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop }
    }

    /// A UDP echo server.
    pub fn udp(bind: &str) -> Self {
        let sock = UdpSocket::bind(bind).expect("bind udp echo");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Self { addr, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A running `portcullis agent` with its own everything; stopped and
/// uninstalled on drop.
pub struct Agent {
    pub dir: PathBuf,
    pub policies: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub audit_log: PathBuf,
    pub cgroup: PathBuf,
    child: Option<Child>,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// Extra environment for the agent process (kept across restarts).
    pub env: Vec<(String, String)>,
    /// A command the agent is started under (e.g. `setpriv ...`), if any.
    pub wrapper: Vec<String>,
}

pub struct AgentBuilder {
    policy: String,
    cgroup: PathBuf,
    extra: Vec<String>,
    audit_log: Option<PathBuf>,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    bpffs: Option<PathBuf>,
}

impl AgentBuilder {
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_string());
        self
    }

    /// Pins under `path` instead of a fresh directory in /sys/fs/bpf.
    pub fn bpffs(mut self, path: &Path) -> Self {
        self.bpffs = Some(path.to_path_buf());
        self
    }

    /// Sets an environment variable for the agent process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the agent under `program args...` (which then runs the agent).
    pub fn wrap(mut self, program_and_args: &[&str]) -> Self {
        self.wrapper = program_and_args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Writes the audit log at `path` instead of the agent's own directory.
    pub fn audit_log(mut self, path: &Path) -> Self {
        self.audit_log = Some(path.to_path_buf());
        self
    }

    pub fn start(self) -> Agent {
        let agent = Agent::prepare(&self.policy, &self.cgroup);
        let mut agent = agent;
        if let Some(p) = self.audit_log {
            agent.audit_log = p;
        }
        agent.env = self.env;
        agent.wrapper = self.wrapper;
        agent.spawn(&self.extra);
        agent
    }

    /// Starts the agent and returns its exit output instead of waiting for readiness
    /// (for tests of start-up failures).
    pub fn start_expecting_failure(self) -> Output {
        let mut agent = Agent::prepare(&self.policy, &self.cgroup);
        agent.env = self.env;
        agent.wrapper = self.wrapper;
        if let Some(b) = self.bpffs {
            agent.bpffs = b;
        }
        let out = agent
            .command(&self.extra)
            .stdin(Stdio::null())
            .output()
            .expect("run agent");
        drop(agent);
        out
    }
}

impl Agent {
    /// An agent attached to `cgroup`, with `policy` as its only policy file.
    pub fn builder(policy: &str, cgroup: &Path) -> AgentBuilder {
        require_root();
        AgentBuilder {
            policy: policy.to_string(),
            cgroup: cgroup.to_path_buf(),
            extra: vec![],
            audit_log: None,
            env: Vec::new(),
            wrapper: Vec::new(),
            bpffs: None,
        }
    }

    pub fn start(policy: &str, cgroup: &Path) -> Agent {
        Self::builder(policy, cgroup).start()
    }

    fn prepare(policy: &str, cgroup: &Path) -> Agent {
        let name = unique("pc-agent");
        let dir = std::env::temp_dir().join(&name);
        let policies = dir.join("policies");
        fs::create_dir_all(&policies).unwrap();
        fs::write(policies.join("test.toml"), policy).unwrap();
        Agent {
            socket: dir.join("control.sock"),
            state_dir: dir.join("state"),
            audit_log: dir.join("audit.jsonl"),
            bpffs: PathBuf::from("/sys/fs/bpf").join(&name),
            policies,
            dir,
            cgroup: cgroup.to_path_buf(),
            child: None,
            log: Arc::new(std::sync::Mutex::new(Vec::new())),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    fn command(&self, extra: &[String]) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(portcullis_bin());
                c
            }
            None => Command::new(portcullis_bin()),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("agent")
            .arg("--policies")
            .arg(&self.policies)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--audit-log")
            .arg(&self.audit_log)
            .args(extra)
            .env("PORTCULLIS_LOG", "info");
        cmd
    }

    /// Starts the agent process and waits (bounded) until its socket answers.
    pub fn spawn(&mut self, extra: &[String]) {
        let mut child = self
            .command(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "agent exited during start-up with {status}:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            if self.socket.exists() && self.cli(&["status"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not become ready in 30 s"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `portcullis ARGS` against this agent's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(portcullis_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run portcullis")
    }

    /// Runs the CLI as another user (for authorization tests).
    pub fn cli_as(&self, uid: u32, gid: u32, args: &[&str]) -> Output {
        Command::new(portcullis_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .output()
            .expect("run portcullis")
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "portcullis {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `grant ... --json` and returns the grant id.
    pub fn grant(&self, segment: &str, identity: &str, ttl: &str) -> u64 {
        let out = self.ok(&[
            "grant", segment, identity, "--ttl", ttl, "--reason", "e2e test", "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("grant --json");
        v["ok"]["grant"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no grant id in {out}"))
    }

    /// Sends SIGKILL and waits: the agent dies without any clean-up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("agent did not stop within 10 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    /// Audit records, parsed.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        // Unpinning releases the links and maps: nothing stays attached.
        let _ = Command::new(portcullis_bin())
            .arg("uninstall")
            .arg("--yes")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--audit-log")
            .arg(&self.audit_log)
            .output();
        let _ = fs::remove_dir_all(&self.bpffs);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 20 ms until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Connects from the test process itself (outside any test cgroup).
pub fn connect_outside(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// The agent's journal in `state_dir`: the snapshot's state and the log's
/// records, each frame (`len u32 LE | crc32 u32 LE | JSON`) parsed.
pub fn read_journal(state_dir: &Path) -> (Option<serde_json::Value>, Vec<serde_json::Value>) {
    let frames = |bytes: &[u8]| {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if at + 8 + len > bytes.len() {
                break;
            }
            out.push(serde_json::from_slice(&bytes[at + 8..at + 8 + len]).expect("journal JSON"));
            at += 8 + len;
        }
        out
    };
    let snap = fs::read(state_dir.join("journal.snap"))
        .ok()
        .and_then(|b| frames(&b).into_iter().next());
    let log = fs::read(state_dir.join("journal.log"))
        .map(|b| frames(&b))
        .unwrap_or_default();
    (snap, log)
}

/// Rewrites the journal's log as `records`, each with a valid checksum: what
/// someone who can write the state directory (root) could do.
pub fn write_journal_log(state_dir: &Path, records: &[serde_json::Value]) {
    let mut bytes = Vec::new();
    for r in records {
        let payload = serde_json::to_vec(r).unwrap();
        bytes.extend((payload.len() as u32).to_le_bytes());
        bytes.extend(crc32fast::hash(&payload).to_le_bytes());
        bytes.extend(payload);
    }
    fs::write(state_dir.join("journal.log"), bytes).unwrap();
}

/// Audit records, parsed; lines that are not JSON (a write torn by a
/// SIGKILL) are counted, not parsed.
pub fn audit_records_lenient(agent: &Agent) -> (Vec<serde_json::Value>, usize) {
    let mut torn = 0;
    let recs = fs::read_to_string(&agent.audit_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(v) => Some(v),
            Err(_) => {
                torn += 1;
                None
            }
        })
        .collect();
    (recs, torn)
}
