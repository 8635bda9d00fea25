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
pub enum CgroupError {
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
    #[error("process {pid} not found or has no cgroup v2 entry")]
    NoProcess { pid: u32 },
}

/// The mount point of the cgroup2 filesystem, from /proc/self/mountinfo.
pub fn mount_point() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    parse_mountinfo(&info).ok_or(CgroupError::NotMounted)
}

/// The first cgroup2 mount point in a mountinfo text.
pub fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        // Fields: id parent major:minor root mountpoint options [optional...] - fstype source super
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// A cgroup hierarchy rooted at its mount point.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    pub mount: PathBuf,
}

impl Hierarchy {
    pub fn discover() -> Result<Self, CgroupError> {
        Ok(Self {
            mount: mount_point()?,
        })
    }

    /// Absolute filesystem path of a cgroup path like `/system.slice/x.service`.
    pub fn fs_path(&self, cgroup: &str) -> PathBuf {
        self.mount.join(cgroup.trim_start_matches('/'))
    }

    /// The id of the cgroup at `cgroup` (a path relative to the mount, with a leading `/`).
    pub fn id_of(&self, cgroup: &str) -> Result<u64, CgroupError> {
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
    pub fn relative(&self, fs_path: &Path) -> String {
        match fs_path.strip_prefix(&self.mount) {
            Ok(rel) if rel.as_os_str().is_empty() => "/".to_string(),
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => fs_path.display().to_string(),
        }
    }

    /// Every cgroup directory named `unit` (a systemd unit's cgroup carries the
    /// unit's name), at most `max_depth` levels down. Sorted, so results are
    /// deterministic.
    pub fn find_named(&self, unit: &str, max_depth: usize) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![(self.mount.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(ft) = entry.file_type() else { continue };
                if !ft.is_dir() {
                    continue;
                }
                let path = entry.path();
                if entry.file_name().to_str() == Some(unit) {
                    found.push(path.clone());
                }
                if depth + 1 < max_depth {
                    stack.push((path, depth + 1));
                }
            }
        }
        found.sort();
        found
    }

    /// The path of the cgroup with id `id`, searched breadth-first. `None`
    /// when it no longer exists.
    pub fn path_of_id(&self, id: u64) -> Option<String> {
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

/// The cgroup v2 path of a process (the `0::` line of /proc/PID/cgroup).
pub fn cgroup_of_pid(pid: u32) -> Result<String, CgroupError> {
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
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
41 35 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 35 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(
            parse_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn optional_fields_and_escapes() {
        let info = "41 35 0:38 / /mnt/my\\040cg rw shared:9 master:2 - cgroup2 none rw";
        assert_eq!(parse_mountinfo(info), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(parse_mountinfo("1 2 0:1 / / rw - ext4 /dev/sda rw"), None);
    }

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
