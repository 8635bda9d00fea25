//! Shared helpers: the workspace's paths, running commands with errors that
//! name the command, and reading the mount table.

use std::{
    cell::OnceCell,
    collections::VecDeque,
    env,
    ffi::{OsStr, OsString},
    fmt::Write as _,
    fs,
    io::{self, BufRead, BufReader, IsTerminal, Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

/// How many lines of a failed command's stderr an error quotes.
const TAIL_LINES: usize = 20;

/// The workspace and the environment child processes run in.
pub(crate) struct Workspace {
    /// The workspace root (the parent of `xtask/`).
    pub root: PathBuf,
    /// `$CARGO_HOME`, default `~/.cargo`; `cargo install` puts binaries in its `bin/`.
    pub cargo_home: PathBuf,
    /// The cargo that runs us (`$CARGO`), so children use the same toolchain.
    cargo: OsString,
    /// `PATH` for children: ours with `$CARGO_HOME/bin` first.
    path: OsString,
    target_dir: OnceCell<PathBuf>,
}

impl Workspace {
    pub(crate) fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_path_buf();
        let cargo_home = match env::var_os("CARGO_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?)
                .join(".cargo"),
        };
        let cargo_bin = cargo_home.join("bin");
        let inherited = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&inherited).collect();
        if !dirs.contains(&cargo_bin) {
            dirs.insert(0, cargo_bin);
        }
        let path = env::join_paths(dirs).context("a PATH entry contains ':'")?;
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Self {
            root,
            cargo_home,
            cargo,
            path,
            target_dir: OnceCell::new(),
        })
    }

    /// A command run in the workspace root with the children's `PATH` and no stdin.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root)
            .env("PATH", &self.path)
            .stdin(Stdio::null());
        cmd
    }

    /// `cargo` with the toolchain that runs xtask.
    pub(crate) fn cargo(&self) -> Command {
        let mut cmd = self.command(&self.cargo);
        // Our stderr pipe (see `run`) would turn cargo's colours off.
        if env::var_os("CARGO_TERM_COLOR").is_none() && io::stderr().is_terminal() {
            cmd.env("CARGO_TERM_COLOR", "always");
        }
        cmd
    }

    /// The first executable called `name` in the children's `PATH`.
    pub(crate) fn which(&self, name: &str) -> Option<PathBuf> {
        env::split_paths(&self.path)
            .map(|dir| dir.join(name))
            .find(|file| is_executable(file))
    }

    /// Cargo's target directory (honours `CARGO_TARGET_DIR` and config).
    pub(crate) fn target_dir(&self) -> Result<&Path> {
        if let Some(dir) = self.target_dir.get() {
            return Ok(dir);
        }
        let json = output(
            self.cargo()
                .args(["metadata", "--format-version", "1", "--no-deps"]),
        )?;
        let meta: serde_json::Value =
            serde_json::from_str(&json).context("`cargo metadata` printed invalid JSON")?;
        let dir = meta["target_directory"]
            .as_str()
            .context("`cargo metadata` printed no target_directory")?;
        Ok(self.target_dir.get_or_init(|| PathBuf::from(dir)))
    }
}

fn is_executable(file: &Path) -> bool {
    fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The command as a shell line, with the environment variables set on it
/// (except `PATH`) in front.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut line = String::new();
    let envs = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH" && *k != "CARGO_TERM_COLOR");
    for (key, value) in envs {
        if let Some(value) = value {
            let _ = write!(line, "{}={} ", key.to_string_lossy(), quote(value));
        }
    }
    // `$CARGO` is a full path into the toolchain: show it as `cargo`.
    let program = Path::new(cmd.get_program());
    if program.file_name() == Some(OsStr::new("cargo")) {
        line.push_str("cargo");
    } else {
        line.push_str(&quote(program.as_os_str()));
    }
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs a long command with its output shown live. Its stderr also goes
/// through a buffer so that a failure can quote its error lines.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let tee = thread::spawn(move || tee(stderr));
    let status = child
        .wait()
        .with_context(|| format!("could not wait for `{line}`"))?;
    let summary = tee.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let mut msg = format!("command `{line}` failed ({status})");
    summary.append_to(&mut msg);
    Err(anyhow!(msg))
}

/// Copies `from` to our stderr and returns a summary of it.
fn tee(from: impl Read) -> StderrSummary {
    let mut reader = BufReader::new(from);
    let mut summary = StderrSummary::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = strip_ansi(&String::from_utf8_lossy(&buf));
                if !is_replayed_progress(&line) {
                    let _ = io::stderr().lock().write_all(&buf);
                }
                summary.push(line);
            }
        }
    }
    summary
}

/// Whether `line` is the eBPF build's cargo progress replayed by aya-build
/// as a build-script warning (`warning: portcullis@0.1.0:    Compiling
/// agent-ebpf ...`): 40-80 lines of noise on every build. They are not
/// shown (a failure still quotes them in its summary); real warnings are.
fn is_replayed_progress(line: &str) -> bool {
    const PROGRESS: [&str; 9] = [
        "Compiling",
        "Finished",
        "Fresh",
        "Checking",
        "Downloading",
        "Downloaded",
        "Updating",
        "Locking",
        "Blocking",
    ];
    let Some(rest) = line.strip_prefix("warning: ") else {
        return false;
    };
    let Some((package, said)) = rest.split_once(": ") else {
        return false;
    };
    package.contains('@')
        && !package.contains(' ')
        && PROGRESS.iter().any(|p| said.trim_start().starts_with(p))
}

/// What a failure quotes of a command's stderr: its error lines (cargo's
/// `error...` with the ` --> file` line after, apt's `E: ...`) if it printed
/// any, else its last lines.
#[derive(Default)]
struct StderrSummary {
    tail: VecDeque<String>,
    errors: Vec<String>,
    more_errors: usize,
    last_was_error: bool,
}

impl StderrSummary {
    fn push(&mut self, line: String) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            return;
        }
        let is_error = trimmed.starts_with("error") || trimmed.starts_with("E: ");
        let is_location = self.last_was_error && trimmed.starts_with("-->");
        if is_error || is_location {
            if self.errors.len() < TAIL_LINES {
                self.errors.push(line.clone());
            } else if is_error {
                self.more_errors += 1;
            }
        }
        self.last_was_error = is_error;
        self.tail.push_back(line);
        if self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
        }
    }

    fn append_to(&self, msg: &mut String) {
        let lines = if !self.errors.is_empty() {
            msg.push_str("; its errors:");
            &self.errors
        } else if !self.tail.is_empty() {
            msg.push_str("; last lines of its stderr:");
            &Vec::from(self.tail.clone())
        } else {
            msg.push_str("; it printed nothing on stderr");
            return;
        };
        for line in lines {
            msg.push_str("\n  ");
            msg.push_str(line);
        }
        if self.more_errors > 0 {
            let _ = write!(msg, "\n  ... and {} more error lines", self.more_errors);
        }
    }
}

/// Removes colour escape sequences (`ESC [ ... letter`) and the line end.
pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.trim_end().chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs a quick command and returns its stdout; a failure quotes its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut msg = format!("command `{line}` failed ({})", out.status);
        let mut summary = StderrSummary::default();
        stderr.lines().for_each(|l| summary.push(strip_ansi(l)));
        summary.append_to(&mut msg);
        bail!(msg);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn euid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::geteuid() }
}

/// One line of `/proc/self/mountinfo`.
pub(crate) struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
}

pub(crate) fn mounts() -> Result<Vec<Mount>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    Some(Mount {
        mount_point: PathBuf::from(unescape_octal(fields.get(4)?)),
        fstype: fields.get(sep + 1)?.to_string(),
    })
}

/// The kernel writes space, tab, newline and backslash as `\040` and so on.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' && digits.is_some_and(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
        {
            let d = digits.unwrap();
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pid holding a write-conflicting fcntl lock on `file`, if any (how apt
/// and dpkg lock). Needs root to open the lock files.
pub(crate) fn lock_holder(file: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .ok()?;
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    // SAFETY: the fd is open for the duration of the call and `lock` is a valid flock.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut lock) };
    (rc == 0 && i32::from(lock.l_type) != libc::F_UNLCK).then_some(lock.l_pid)
}

/// "1m05s" or "3.2s".
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ebpf_builds_replayed_progress_is_quiet_and_real_warnings_are_not() {
        for line in [
            "warning: portcullis@0.1.0:    Compiling agent-ebpf v0.1.0 (/w/agent-ebpf)",
            "warning: portcullis@0.1.0:     Finished `release` profile [optimized] target(s) in 2.01s",
        ] {
            assert!(is_replayed_progress(line), "{line}");
        }
        for line in [
            "warning: unused import: `Human`",
            "warning: portcullis@0.1.0: error: linking with bpf-linker failed",
            "   Compiling portcullis v0.1.0 (/w/agent)",
            "warning: `portcullis` (lib) generated 2 warnings",
        ] {
            assert!(!is_replayed_progress(line), "{line}");
        }
    }

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo_line(
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw",
        )
        .unwrap();
        assert_eq!(m.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(m.fstype, "cgroup2");
        let m = parse_mountinfo_line("50 1 0:40 / /mnt/a\\040b rw - bpf bpf rw").unwrap();
        assert_eq!(m.mount_point, Path::new("/mnt/a b"));
        assert_eq!(m.fstype, "bpf");
    }

    #[test]
    fn describes_commands() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/tmp/p")
            .env("PATH", "/x")
            .args(["install", "a b"]);
        assert_eq!(describe(&cmd), "LLVM_PREFIX=/tmp/p cargo install 'a b'");
    }

    #[test]
    fn summarises_stderr() {
        let mut s = StderrSummary::default();
        for l in [
            "   Compiling a",
            "error[E0425]: nope",
            "  --> src/lib.rs:1:2",
            "   |",
            "x",
        ] {
            s.push(l.to_string());
        }
        let mut msg = String::new();
        s.append_to(&mut msg);
        assert_eq!(
            msg,
            "; its errors:\n  error[E0425]: nope\n    --> src/lib.rs:1:2"
        );
        let mut s = StderrSummary::default();
        s.push("warning: w".into());
        let mut msg = String::new();
        s.append_to(&mut msg);
        assert_eq!(msg, "; last lines of its stderr:\n  warning: w");
    }

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[1m\u{1b}[31merror\u{1b}[0m: x\n"),
            "error: x"
        );
    }
}
