//! What the bench creates on the host, each behind a guard that removes it
//! on drop (also when a measurement fails): a child cgroup pair, network
//! namespaces joined by veth pairs, a TCP server on loopback and on those
//! links; plus the start-up sweep of whatever a crashed run left behind,
//! the one-bench-at-a-time lock, and Ctrl-C handling that lets the guards
//! run.
//!
//! Every name starts with `pcbench` (`PCBENCH` for the iptables chain), so
//! nothing of the host's own is ever touched. Addresses come from
//! TEST-NET-3 (203.0.113.0/24) and exist only on the bench's veth pairs.
use std::{
    fs,
    io::{self, ErrorKind},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::util;

/// Prefix of every object the bench names.
pub(super) const PREFIX: &str = "pcbench";
pub(super) const BPFFS_ROOT: &str = "/sys/fs/bpf";
const LOCK_FILE: &str = "/run/lock/portcullis-bench.lock";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that the measurement loops check,
/// so that an interrupted bench unwinds through its guards.
pub(super) fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// An error once SIGINT or SIGTERM arrived.
pub(super) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; removing what the bench created");
    }
    Ok(())
}

/// Sleeps in small steps, returning early with an error when interrupted.
pub(super) fn sleep(d: Duration) -> Result<()> {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        check_interrupted()?;
        let now = left.min(step);
        thread::sleep(now);
        left -= now;
    }
    check_interrupted()
}

/// Held for the whole run: a second bench would fight over the same names.
pub(super) struct BenchLock(#[allow(dead_code)] fs::File);

impl BenchLock {
    pub(super) fn acquire() -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .with_context(|| format!("opening {LOCK_FILE}"))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("another `cargo xtask bench` is running (it holds {LOCK_FILE})");
        }
        Ok(Self(file))
    }
}

/// How a child process starts: in which cgroup, as which uid and gid. It
/// always dies with the bench (PR_SET_PDEATHSIG), so a killed bench leaves
/// no client or agent running.
pub(super) fn confine(cmd: &mut Command, cgroup: Option<&Path>, ids: Option<(u32, u32)>) {
    let procs = cgroup.map(|c| {
        std::ffi::CString::new(c.join("cgroup.procs").as_os_str().as_encoded_bytes())
            .expect("cgroup paths have no NUL")
    });
    // SAFETY: only async-signal-safe calls (open, write, close, setgroups,
    // setgid, setuid, prctl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = ids {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // After setuid, which clears it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs the child on the host's last CPU only: BPF_PROG_TEST_RUN times
/// the program on the CPU it is called from, and CPUs of a shared machine
/// differ by up to a quarter, which would otherwise show up as differences
/// between grant counts.
pub(super) fn pin_to_last_cpu(cmd: &mut Command) {
    let cpu = thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    // SAFETY: sched_setaffinity on the child itself, with a cpu_set_t built
    // on the stack; async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `/sys/fs/cgroup/pcbench-PID/{filtered,plain}`: the agent attaches to
/// `filtered`; `plain` is the unfiltered twin for the baseline runs.
pub(super) struct Cgroups {
    pub root: PathBuf,
    pub filtered: PathBuf,
    pub plain: PathBuf,
}

/// Where cgroup2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hosts with the hybrid layout).
pub(super) fn cgroup2_root() -> Result<PathBuf> {
    util::mounts()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .context("no cgroup2 filesystem is mounted; `cargo xtask setup` mounts one")
}

impl Cgroups {
    pub(super) fn create() -> Result<Self> {
        let root = cgroup2_root()?.join(format!("{PREFIX}-{}", std::process::id()));
        let me = Self {
            filtered: root.join("filtered"),
            plain: root.join("plain"),
            root,
        };
        for dir in [&me.root, &me.filtered, &me.plain] {
            fs::create_dir(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        Ok(me)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.root);
    }
}

/// Kills whatever is left in a cgroup tree and removes it (bounded wait).
fn remove_cgroup_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("bench: warning: could not remove cgroup {}", path.display());
}

/// Unpins everything under a bpffs directory: links first (which detaches
/// their programs), then maps, then the directories.
pub(super) fn remove_pins(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        for e in fs::read_dir(&dirs[i])? {
            let e = e?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            } else {
                files.push(e.path());
            }
        }
        i += 1;
    }
    files.sort_by_key(|p| !p.components().any(|c| c.as_os_str() == "links"));
    for f in files {
        fs::remove_file(&f)?;
    }
    for d in dirs.iter().rev() {
        fs::remove_dir(d)?;
    }
    Ok(())
}

/// A peer host: a network namespace joined to the host by a veth pair.
pub(super) struct Netns {
    pub name: String,
    /// The veth end on the host (where XDP or nft's ingress hook goes).
    pub host_if: String,
    pub host_addr: Ipv4Addr,
    pub peer_addr: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<()> {
    util::output(Command::new("ip").args(args)).map(drop)
}

impl Netns {
    /// `tag` tells the pairs of one run apart; `subnet` is the /30's index in 203.0.113.0/24.
    pub(super) fn create(tag: char, subnet: u8) -> Result<Self> {
        let pid = std::process::id();
        let base = subnet * 4;
        let me = Self {
            name: format!("{PREFIX}-{pid}-{tag}"),
            host_if: format!("pcb{tag}{pid}"),
            host_addr: Ipv4Addr::new(203, 0, 113, base + 1),
            peer_addr: Ipv4Addr::new(203, 0, 113, base + 2),
        };
        let peer_if = format!("{}n", me.host_if);
        ip(&["netns", "add", &me.name])?;
        ip(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &me.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", me.host_addr),
            "dev",
            &me.host_if,
        ])?;
        ip(&["link", "set", &me.host_if, "up"])?;
        let n = ["-n", me.name.as_str()];
        ip(&[
            &n[..],
            &[
                "addr",
                "add",
                &format!("{}/30", me.peer_addr),
                "dev",
                &peer_if,
            ],
        ]
        .concat())?;
        ip(&[&n[..], &["link", "set", &peer_if, "up"]].concat())?;
        ip(&[&n[..], &["link", "set", "lo", "up"]].concat())?;
        Ok(me)
    }

    /// `program args...` inside the namespace.
    pub(super) fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .output();
    }
}

/// A TCP server that accepts and immediately closes, on one port of
/// several addresses, until dropped.
pub(super) struct Server {
    pub port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Pending connections a listener holds (the default 128 overflows under a
/// tight connect loop, and an overflow costs the client a 1 s SYN retry).
const BACKLOG: i32 = 4096;

impl Server {
    pub(super) fn start(addrs: &[Ipv4Addr]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = Self {
            port: 0,
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for addr in addrs {
            let listener = TcpListener::bind(SocketAddrV4::new(*addr, me.port))
                .with_context(|| format!("binding the bench server to {addr}:{}", me.port))?;
            me.port = listener.local_addr()?.port();
            listener.set_nonblocking(true)?;
            // SAFETY: listen(2) on a socket we own; raising the backlog of a listening socket is allowed.
            if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
                return Err(io::Error::last_os_error()).context("listen");
            }
            let stop = stop.clone();
            me.threads
                .push(thread::spawn(move || accept_loop(&listener, &stop)));
        }
        Ok(me)
    }
}

pub(super) fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        loop {
            match listener.accept() {
                Ok((stream, _)) => drop(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // The client reset first (ECONNABORTED) or a transient error.
                Err(_) => break,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The loopback server of the connection-rate, revocation and rollout
/// tables: `cargo xtask bench serve` (the same accept-and-close loop as
/// [`Server`]) in its own process, started in a cgroup, so that for
/// Portcullis the server's side of each flow is under the attach point as
/// it is in production (`filtered`), and outside it for the unfiltered
/// twin (`plain`). Killed on drop (and by PR_SET_PDEATHSIG if the bench dies).
pub(super) struct LoopServer {
    child: std::process::Child,
}

impl LoopServer {
    pub(super) fn start(xtask: &Path, cgroup: &Path, addr: SocketAddrV4) -> Result<Self> {
        use std::io::BufRead;
        let mut cmd = Command::new(xtask);
        cmd.args(["bench", "serve", "--addr"])
            .arg(addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        confine(&mut cmd, Some(cgroup), None);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the loopback server on {addr}"))?;
        let mut line = String::new();
        let out = child.stdout.take().context("no stdout")?;
        io::BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "listening" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the loopback server on {addr} did not start (it printed {line:?})");
        }
        Ok(Self { child })
    }
}

impl Drop for LoopServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo xtask bench serve`: accepts and closes on `addr` until stdin
/// closes; prints `listening` once bound.
pub(super) fn serve(addr: SocketAddrV4) -> Result<()> {
    use std::io::Read;
    let listener =
        TcpListener::bind(addr).with_context(|| format!("binding the bench server to {addr}"))?;
    listener.set_nonblocking(true)?;
    // SAFETY: listen(2) on a socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error()).context("listen");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = stop.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while matches!(io::stdin().read(&mut buf), Ok(n) if n > 0) {}
        watcher.store(true, Ordering::Relaxed);
    });
    println!("listening");
    io::Write::flush(&mut io::stdout())?;
    accept_loop(&listener, &stop);
    Ok(())
}

/// A copy of an executable that any uid may run (the bench's clients run
/// as uids that may not traverse the workspace's directories).
pub(super) fn world_executable(from: &Path, dir: &Path) -> Result<PathBuf> {
    let to = dir.join(from.file_name().context("executable without a name")?);
    fs::copy(from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
    Ok(to)
}

/// Removes what a crashed or killed earlier run left: agents' pins,
/// cgroups, namespaces. (The firewall's leftovers are `firewall`'s.) Only
/// called with the lock held, so nothing named `pcbench` belongs to a
/// running bench.
pub(super) fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let ours = |name: &str| name.starts_with(&format!("{PREFIX}-"));
    for entry in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if ours(&name) && fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(entry.path().display().to_string());
        }
    }
    for entry in fs::read_dir(BPFFS_ROOT).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if ours(&name) && remove_pins(&entry.path()).is_ok() {
            removed.push(entry.path().display().to_string());
        }
    }
    let cgroups = cgroup2_root().map(fs::read_dir);
    for entry in cgroups.into_iter().flatten().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if ours(&name) && entry.path().is_dir() {
            remove_cgroup_tree(&entry.path());
            removed.push(entry.path().display().to_string());
        }
    }
    if let Ok(list) = util::output(Command::new("ip").args(["netns", "list"])) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ours(name) {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
                removed.push(format!("netns {name}"));
            }
        }
    }
    removed
}

/// `nft list ruleset`, to show at the end that the host's rules are as they were.
pub(super) fn ruleset() -> Result<String> {
    util::output(Command::new("nft").args(["list", "ruleset"]))
}
