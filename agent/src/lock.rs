//! One agent per pin directory, state directory, audit log and control
//! socket: exclusive `flock(2)` locks on lock files, taken before anything
//! touches the kernel, the state or the audit log.
//!
//! Owns the lock files, where they live and what they say about their
//! holder (pid, control socket), so that a second agent can name the one
//! already running and exit without changing anything. The kernel drops a
//! flock when its holder exits (also on SIGKILL), so a restarting agent
//! takes over from its predecessor as soon as that one is gone.
//!
//! Where the locks are:
//! - pins: `/run/portcullis/locks/pins-<path>.lock` (bpffs holds no regular
//!   files, so the lock of a pin directory lives in the runtime directory);
//! - state: `<state_dir>/agent.lock`;
//! - audit log: `<audit_log>.lock` (also taken by `portcullis uninstall`
//!   when no agent runs, so the hash chain has one writer at a time);
//! - control socket: `<socket>.lock`.
use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Where the locks of pin directories live.
pub(crate) const LOCK_DIR: &str = "/run/portcullis/locks";

#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error("{what} {path} belongs to a Portcullis agent that is already running ({holder}); this one changes nothing and exits: stop that one first, or give this one its own {flag}")]
    Held {
        what: &'static str,
        path: PathBuf,
        holder: Holder,
        flag: &'static str,
    },
    #[error("cannot open lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("flock on {path} failed")]
    Flock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Who holds a lock, as it wrote itself into the lock file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Holder {
    pub pid: u32,
    /// The holder's control socket (`None` for `portcullis uninstall`).
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pid, &self.socket) {
            (0, _) => write!(f, "pid unknown: it is still starting"),
            (pid, Some(s)) => write!(f, "pid {pid}, socket {}", s.display()),
            (pid, None) => write!(f, "pid {pid}, `portcullis uninstall`"),
        }
    }
}

/// A held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub(crate) struct Lock {
    _file: Flock<File>,
}

/// What a lock protects, for messages.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Pins,
    State,
    Audit,
    Socket,
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Pins => "pin directory",
            Kind::State => "state directory",
            Kind::Audit => "audit log",
            Kind::Socket => "control socket",
        }
    }
    fn flag(self) -> &'static str {
        match self {
            Kind::Pins => "--bpffs (config: bpffs)",
            Kind::State => "--state-dir (config: state_dir)",
            Kind::Audit => "--audit-log (config: audit_log)",
            Kind::Socket => "--socket (config: socket)",
        }
    }
}

/// The lock file of `path` for `kind`.
pub(crate) fn lock_path(kind: Kind, path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match kind {
        Kind::Pins => {
            // One flat file name per pin directory: escape `%` and `/`.
            let name = path
                .to_string_lossy()
                .replace('%', "%25")
                .replace('/', "%2F");
            Path::new(LOCK_DIR).join(format!("pins-{name}.lock"))
        }
        Kind::State => path.join("agent.lock"),
        Kind::Audit | Kind::Socket => {
            let mut s = path.into_os_string();
            s.push(".lock");
            PathBuf::from(s)
        }
    }
}

fn open(kind: Kind, path: &Path) -> Result<File, LockError> {
    let err = |source| LockError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            // Parents as anyone creates them (the runtime directory also
            // holds the socket others may use); the pin-lock directory and
            // the state directory are root's alone.
            if let Some(up) = dir.parent() {
                fs::create_dir_all(up).map_err(err)?;
            }
            let mode = match kind {
                Kind::Pins | Kind::State => 0o700,
                Kind::Audit | Kind::Socket => 0o755,
            };
            match fs::DirBuilder::new().mode(mode).create(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err(e)),
                _ => {}
            }
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(err)
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    serde_json::from_str(text.trim()).unwrap_or_default()
}

/// Takes the lock of `path` for `kind` without waiting, and writes `holder`
/// into it. Fails with [`LockError::Held`] naming the holder when another
/// process has it.
pub(crate) fn take(kind: Kind, path: &Path, holder: &Holder) -> Result<Lock, LockError> {
    let lock_file = lock_path(kind, path);
    let file = open(kind, &lock_file)?;
    let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::Error::EWOULDBLOCK)) => {
            return Err(LockError::Held {
                what: kind.what(),
                path: path.to_path_buf(),
                holder: read_holder(&mut file),
                flag: kind.flag(),
            })
        }
        Err((_, source)) => {
            return Err(LockError::Flock {
                path: lock_file,
                source,
            })
        }
    };
    let text = serde_json::to_string(holder).expect("holder serializes");
    let written = locked
        .set_len(0)
        .and_then(|()| locked.rewind())
        .and_then(|()| writeln!(locked, "{text}"));
    if let Err(source) = written {
        return Err(LockError::Open {
            path: lock_file,
            source,
        });
    }
    Ok(Lock { _file: locked })
}

/// Who holds the lock of `path` for `kind` right now, if anyone.
pub(crate) fn holder(kind: Kind, path: &Path) -> Option<Holder> {
    let lock_file = lock_path(kind, path);
    let file = File::open(&lock_file).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((mut file, nix::Error::EWOULDBLOCK)) => Some(read_holder(&mut file)),
        Err(_) => None,
    }
}

/// The locks an agent holds for its whole life.
#[derive(Debug)]
pub(crate) struct AgentLocks {
    _locks: Vec<Lock>,
}

/// Takes the agent's four locks (pins, state, audit log, socket), or none.
pub(crate) fn take_agent_locks(
    bpffs: &Path,
    state_dir: &Path,
    audit_log: &Path,
    socket: &Path,
) -> Result<AgentLocks, LockError> {
    let holder = Holder {
        pid: std::process::id(),
        socket: Some(std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf())),
    };
    let mut locks = Vec::new();
    for (kind, path) in [
        (Kind::Pins, bpffs),
        (Kind::State, state_dir),
        (Kind::Audit, audit_log),
        (Kind::Socket, socket),
    ] {
        // On failure the locks taken so far drop with `locks`.
        locks.push(take(kind, path, &holder)?);
    }
    Ok(AgentLocks { _locks: locks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_lock_names_are_flat_and_distinct() {
        let a = lock_path(Kind::Pins, Path::new("/sys/fs/bpf/a_b"));
        let b = lock_path(Kind::Pins, Path::new("/sys/fs/bpf/a/b"));
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new(LOCK_DIR)));
        assert_eq!(
            lock_path(Kind::Audit, Path::new("/var/log/p/audit.jsonl")),
            Path::new("/var/log/p/audit.jsonl.lock")
        );
    }

    #[test]
    fn a_second_taker_is_told_who_holds_the_lock() {
        let dir = std::env::temp_dir().join(format!("pc-lock-{}", std::process::id()));
        let me = Holder {
            pid: 42,
            socket: Some("/run/x.sock".into()),
        };
        let first = take(Kind::State, &dir, &me).unwrap();
        assert_eq!(holder(Kind::State, &dir), Some(me.clone()));
        match take(Kind::State, &dir, &Holder::default()) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, me),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert_eq!(holder(Kind::State, &dir), None);
        take(Kind::State, &dir, &me).unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_socket_lock_leaves_its_directory_reachable_and_a_state_lock_does_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pc-lockdir-{}", std::process::id()));
        let me = Holder::default();
        let _s = take(Kind::Socket, &dir.join("run/control.sock"), &me).unwrap();
        let _t = take(Kind::State, &dir.join("state"), &me).unwrap();
        let mode = |p: &str| fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        // Others must still reach a socket beside the lock (umask permitting).
        let umask = fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            .unwrap();
        assert_eq!(mode("run"), 0o755 & !umask);
        assert_eq!(mode("state"), 0o700);
        let _ = fs::remove_dir_all(&dir);
    }
}
