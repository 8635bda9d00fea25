//! The cgroup v2 hierarchy: where it is mounted, cgroup ids, which cgroup a
//! process is in, and where a systemd unit's cgroup is.
//!
//! A cgroup's id (what `bpf_get_current_cgroup_id` returns) is the inode
//! number of its directory in cgroupfs. Owns no state; callers re-resolve
//! when the hierarchy changes.
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error("cannot read /proc/self/mountinfo")]
    MountInfo(#[source] io::Error),
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`")]
    NotMounted,
    #[error("cgroup {path} does not exist")]
    Missing { path: String },
    #[error("cannot read cgroup {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} cannot stand for a system identity: {why}")]
    Untrusted { path: String, why: String },
    #[error("asking systemd for unit {unit}'s cgroup failed: {why}")]
    Systemd { unit: String, why: String },
    #[error("process {pid} not found or has no cgroup v2 entry")]
    NoProcess { pid: u32 },
    #[error("the cgroup to attach to, {path}, {why}; give a directory of the cgroup2 tree under {mount} (--cgroup or `cgroup` in the configuration; unset, the agent covers the whole host from {mount})", path = path.display(), mount = mount.display())]
    AttachPoint {
        path: PathBuf,
        mount: PathBuf,
        why: &'static str,
    },
}

/// Checks that `path` is a directory of the cgroup2 filesystem, so that a
/// wrong `--cgroup` is named for what it is (a file, cgroup v1, not a
/// cgroup at all) instead of failing later as a kernel refusal to attach.
pub(crate) fn check_attach_point(path: &Path, mount: &Path) -> Result<(), CgroupError> {
    let err = |why| CgroupError::AttachPoint {
        path: path.to_path_buf(),
        mount: mount.to_path_buf(),
        why,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(err("does not exist")),
        Err(e) => {
            return Err(CgroupError::Io {
                path: path.display().to_string(),
                source: e,
            })
        }
    };
    if !meta.is_dir() {
        return Err(err("is a file, not a cgroup directory"));
    }
    use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    let magic = nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type())
        .map_err(|e| CgroupError::Io {
            path: path.display().to_string(),
            source: e.into(),
        })?;
    match magic {
        CGROUP2_SUPER_MAGIC => Ok(()),
        CGROUP_SUPER_MAGIC => Err(err(
            "is on a cgroup v1 hierarchy; the programs attach only to cgroup v2",
        )),
        _ => Err(err("is not on a cgroup filesystem")),
    }
}

/// The mount point of the cgroup2 filesystem, from /proc/self/mountinfo.
pub(crate) fn mount_point() -> Result<PathBuf, CgroupError> {
    let mounts = crate::mounts::mounts().map_err(CgroupError::MountInfo)?;
    crate::mounts::first_of_type(&mounts, "cgroup2").ok_or(CgroupError::NotMounted)
}

/// A cgroup hierarchy rooted at its mount point.
#[derive(Clone, Debug)]
pub(crate) struct Hierarchy {
    pub mount: PathBuf,
}

impl Hierarchy {
    pub(crate) fn discover() -> Result<Self, CgroupError> {
        Ok(Self {
            mount: mount_point()?,
        })
    }

    /// Absolute filesystem path of a cgroup path like `/system.slice/x.service`.
    pub(crate) fn fs_path(&self, cgroup: &str) -> PathBuf {
        self.mount.join(cgroup.trim_start_matches('/'))
    }

    /// The id of the cgroup at `cgroup` (a path relative to the mount, with a leading `/`).
    pub(crate) fn id_of(&self, cgroup: &str) -> Result<u64, CgroupError> {
        let path = self.fs_path(cgroup);
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(m.ino()),
            Ok(_) => Err(CgroupError::Missing {
                path: cgroup.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CgroupError::Missing {
                path: cgroup.to_string(),
            }),
            Err(source) => Err(CgroupError::Io {
                path: cgroup.to_string(),
                source,
            }),
        }
    }

    /// The cgroup path (relative to the mount) of a cgroup directory.
    pub(crate) fn relative(&self, fs_path: &Path) -> String {
        match fs_path.strip_prefix(&self.mount) {
            Ok(rel) if rel.as_os_str().is_empty() => "/".to_string(),
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => fs_path.display().to_string(),
        }
    }

    /// The id of `cgroup` if a system unit may own it: the directory and
    /// every ancestor up to the mount are owned by root, and no ancestor
    /// above it is delegated (systemd marks a delegated cgroup, such as
    /// `user@UID.service`, with the `trusted.delegate` xattr; whoever it is
    /// delegated to may create any directory below it). A cgroup that fails
    /// this is one an unprivileged user could have made, so it never stands
    /// for a system unit's or a `cgroup:` identity.
    pub(crate) fn trusted_id(&self, cgroup: &str) -> Result<u64, CgroupError> {
        let id = self.id_of(cgroup)?;
        let target = self.fs_path(cgroup);
        // The directory and its ancestors up to the mount, nearest first.
        let mut chain = vec![target.clone()];
        let mut dir = target.clone();
        while dir != self.mount && dir.pop() && dir.starts_with(&self.mount) {
            chain.push(dir.clone());
        }
        // Delegation first: it names the cause (whose subtree this is).
        if let Some(d) = chain.iter().skip(1).find(|d| is_delegated(d)) {
            return Err(CgroupError::Untrusted {
                path: cgroup.to_string(),
                why: format!(
                    "it is below {}, a cgroup delegated to its owner (trusted.delegate)",
                    self.relative(d)
                ),
            });
        }
        for d in &chain {
            let meta = fs::metadata(d).map_err(|source| CgroupError::Io {
                path: self.relative(d),
                source,
            })?;
            if meta.uid() != 0 {
                return Err(CgroupError::Untrusted {
                    path: cgroup.to_string(),
                    why: format!(
                        "{} is owned by uid {}, not root",
                        self.relative(d),
                        meta.uid()
                    ),
                });
            }
        }
        Ok(id)
    }

    /// Whether a cgroup created at `cgroup` (a path relative to the mount)
    /// may be covered by the kernel's `cgroup_mkdir` hook before the agent
    /// sees it: only root can create it there. Its parent and every
    /// ancestor up to the mount exist, are owned by root, are writable by
    /// no one else (no group or other write bit), and none is delegated.
    /// The cgroup itself may be absent (that is the point).
    pub(crate) fn coverable(&self, cgroup: &str) -> bool {
        let target = self.fs_path(cgroup);
        if target == self.mount || !target.starts_with(&self.mount) {
            return false;
        }
        if cgroup.split('/').any(|c| c == ".." || c == ".") {
            return false;
        }
        let mut dir = target;
        while dir.pop() && dir.starts_with(&self.mount) {
            match fs::metadata(&dir) {
                Ok(m) if m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0 => {}
                _ => return false,
            }
            if dir != self.mount && is_delegated(&dir) {
                return false;
            }
            if dir == self.mount {
                return true;
            }
        }
        false
    }

    /// The path of the cgroup with id `id`, searched breadth-first. `None`
    /// when it no longer exists.
    pub(crate) fn path_of_id(&self, id: u64) -> Option<String> {
        let mut queue = std::collections::VecDeque::from([self.mount.clone()]);
        let mut visited = 0usize;
        while let Some(dir) = queue.pop_front() {
            visited += 1;
            if visited > 100_000 {
                return None;
            }
            if fs::metadata(&dir).map(|m| m.ino()).ok() == Some(id) {
                return Some(self.relative(&dir));
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        queue.push_back(e.path());
                    }
                }
            }
        }
        None
    }
}

/// Whether systemd marked the cgroup directory `dir` as delegated (the
/// `trusted.delegate` xattr, systemd ≥ 251; reading trusted.* needs
/// CAP_SYS_ADMIN, which root has; without it the attribute reads as absent).
pub(crate) fn is_delegated(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 8];
    // SAFETY: both strings are NUL-terminated; the buffer is ours and its
    // length is passed, so the kernel writes at most that much.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"trusted.delegate".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    // systemd writes "1"; any value (or one too long for the buffer) counts.
    n >= 0 || io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE)
}

/// The program asked for units' cgroups: `systemctl`, or the one named by
/// `PORTCULLIS_SYSTEMCTL` (set by whoever starts the agent, i.e. root; the
/// end-to-end tests use it to stand in for systemd on hosts without it).
fn systemctl() -> std::ffi::OsString {
    std::env::var_os("PORTCULLIS_SYSTEMCTL").unwrap_or_else(|| "systemctl".into())
}

/// How long systemctl may take to answer before the unit counts as unresolved.
const SYSTEMCTL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The cgroup systemd created for `unit` (its `ControlGroup` property, a
/// path relative to the cgroup2 mount), or `None` when the unit is not
/// running. Only systemd is asked: a directory of the same name elsewhere
/// in the hierarchy means nothing.
pub(crate) fn unit_control_group(unit: &str) -> Result<Option<String>, CgroupError> {
    use std::process::{Command, Stdio};
    let fail = |why: String| CgroupError::Systemd {
        unit: unit.to_string(),
        why,
    };
    let program = systemctl();
    // sd_booted(3): without systemd as init no unit is running (unless the
    // one asked is a stand-in named by PORTCULLIS_SYSTEMCTL).
    if std::env::var_os("PORTCULLIS_SYSTEMCTL").is_none()
        && !Path::new("/run/systemd/system").is_dir()
    {
        return Ok(None);
    }
    // `--` because unit names may start with `-` (`-.slice`).
    let mut child = Command::new(program)
        .args(["show", "--property=ControlGroup", "--value", "--", unit])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run systemctl: {e}")))?;
    let deadline = std::time::Instant::now() + SYSTEMCTL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "systemctl did not answer within {SYSTEMCTL_TIMEOUT:?}"
                )));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        let first = err.lines().next().unwrap_or("").escape_debug().to_string();
        return Err(fail(format!("systemctl exited with {status}: {first}")));
    }
    let path = out.trim();
    if path.is_empty() {
        return Ok(None);
    }
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(fail(format!(
            "unexpected ControlGroup {:?}",
            path.escape_debug().to_string()
        )));
    }
    Ok(Some(path.to_string()))
}

/// The unit a cgroup path looks like it belongs to: its last component,
/// when that is named like a service (`/system.slice/redis.service` →
/// `redis.service`). A look only: anyone who may create cgroups can name
/// one so; [`verified_unit`] asks systemd.
pub(crate) fn unit_like(path: &str) -> Option<&str> {
    let last = path.rsplit('/').next()?;
    (last.len() > ".service".len() && last.ends_with(".service")).then_some(last)
}

/// The unit whose cgroup `path` is, by systemd's own word: [`unit_like`],
/// confirmed by the unit's `ControlGroup`. `None` for a same-named
/// directory anywhere else (a user's delegated subtree, a container).
pub(crate) fn verified_unit(path: &str) -> Option<String> {
    let unit = unit_like(path)?;
    match unit_control_group(unit) {
        Ok(Some(cg)) if cg == path => Some(unit.to_owned()),
        _ => None,
    }
}

/// The cgroup v2 path of a process (the `0::` line of /proc/PID/cgroup).
pub(crate) fn cgroup_of_pid(pid: u32) -> Result<String, CgroupError> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|_| CgroupError::NoProcess { pid })?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .ok_or(CgroupError::NoProcess { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let h = Hierarchy {
            mount: PathBuf::from("/sys/fs/cgroup"),
        };
        assert_eq!(h.relative(Path::new("/sys/fs/cgroup")), "/");
        assert_eq!(h.relative(Path::new("/sys/fs/cgroup/a/b")), "/a/b");
        assert_eq!(h.fs_path("/a/b"), PathBuf::from("/sys/fs/cgroup/a/b"));
    }
}
