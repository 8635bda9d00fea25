//! The mounts of this process's mount namespace, from
//! `/proc/self/mountinfo`: the one place it is read. The line format is
//! parsed by the `procfs` crate; this module only unescapes mount points
//! (the kernel writes space, tab, newline and backslash as `\ooo` octal)
//! and answers "where is a filesystem of this type mounted".
//!
//! Kernel: /proc/PID/mountinfo (Linux 2.6.26).
use std::{
    io,
    path::{Path, PathBuf},
};

use procfs::{process::MountInfos, FromBufRead};

/// One mount: its filesystem type and where it is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    pub fs_type: String,
    pub mount_point: PathBuf,
}

/// The mounts of this process's namespace, in mountinfo order.
pub(crate) fn mounts() -> io::Result<Vec<Mount>> {
    let file = std::fs::File::open("/proc/self/mountinfo")?;
    parse(io::BufReader::new(file))
}

/// The mounts in a mountinfo text.
pub(crate) fn parse(text: impl io::BufRead) -> io::Result<Vec<Mount>> {
    let infos = MountInfos::from_buf_read(text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(infos
        .into_iter()
        .map(|m| Mount {
            mount_point: PathBuf::from(unescape(&m.mount_point.to_string_lossy())),
            fs_type: m.fs_type,
        })
        .collect())
}

/// The first mount point of a filesystem of type `fs_type`.
pub(crate) fn first_of_type(mounts: &[Mount], fs_type: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_type == fs_type)
        .map(|m| m.mount_point.clone())
}

/// Whether a filesystem of type `fs_type` is mounted at `at`.
pub(crate) fn is_mounted(mounts: &[Mount], fs_type: &str, at: &Path) -> bool {
    mounts
        .iter()
        .any(|m| m.fs_type == fs_type && m.mount_point == at)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
41 35 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 35 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
43 25 0:40 / /sys/fs/bpf rw,nosuid - bpf bpf rw,mode=700
";
        let m = parse(info.as_bytes()).unwrap();
        assert_eq!(
            first_of_type(&m, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert!(is_mounted(&m, "bpf", Path::new("/sys/fs/bpf")));
        assert!(!is_mounted(&m, "bpf", Path::new("/sys/fs")));
    }

    #[test]
    fn optional_fields_and_escapes() {
        let info = "41 35 0:38 / /mnt/my\\040cg rw shared:9 master:2 - cgroup2 none rw\n";
        let m = parse(info.as_bytes()).unwrap();
        assert_eq!(
            first_of_type(&m, "cgroup2"),
            Some(PathBuf::from("/mnt/my cg"))
        );
        let m = parse("1 2 0:1 / / rw - ext4 /dev/sda rw\n".as_bytes()).unwrap();
        assert_eq!(first_of_type(&m, "cgroup2"), None);
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        let m = mounts().unwrap();
        assert!(m.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
