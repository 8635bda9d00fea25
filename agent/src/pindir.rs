//! Pin directories that only root can touch.
//!
//! Whoever can unlink a pinned link lifts enforcement, and whoever owns a
//! directory can unlink what is in it. So the agent creates its pin
//! directory 0700 and refuses one (or a parent inside bpffs) that is not
//! owned by root or that group or others may write: on a bpffs mounted
//! without `mode=` (1777), an ordinary user could otherwise create the pin
//! directory before the agent's first start and delete the link pins later.
//! A root-owned parent with the sticky bit (like that 1777 mount root) is
//! accepted: others cannot remove or rename root's entries in it.
//!
//! Owns the checks and their messages; the dataplane calls [`secure`]
//! before it creates or re-opens any pin.
use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
};

const GROUP_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PinDirError {
    #[error("pin directory {path} is owned by uid {uid}, not root, so that user could unpin the links and lift enforcement; remove it (`rm -r {path}`) and let the agent create it, or `chown root:root {path} && chmod 0700 {path}`; mount bpffs with `mode=0700` so no one else can create directories in it")]
    NotRoot { path: PathBuf, uid: u32 },
    #[error("pin directory {path} is writable by group or others (mode {mode:04o}), so they could unpin the links and lift enforcement; `chmod 0700 {path}` (the agent creates it 0700), and mount bpffs with `mode=0700`")]
    Writable { path: PathBuf, mode: u32 },
    #[error("cannot create or inspect pin directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Creates `dir` mode 0700 (with missing parents) if it does not exist.
pub(crate) fn create(dir: &Path) -> Result<(), PinDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PinDirError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Checks one directory. `parent`: a directory above the agent's own, where
/// a root-owned sticky directory is fine.
fn check(dir: &Path, parent: bool) -> Result<(), PinDirError> {
    let meta = fs::metadata(dir).map_err(|source| PinDirError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if meta.uid() != 0 {
        return Err(PinDirError::NotRoot {
            path: dir.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & GROUP_OTHER_WRITE != 0 && !(parent && mode & STICKY != 0) {
        return Err(PinDirError::Writable {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates the agent's bpffs directory 0700 if missing, then checks it, the
/// pin directories below it that exist, and every parent that is on a bpf
/// filesystem (`on_bpffs` tells).
pub(crate) fn secure(bpffs: &Path, on_bpffs: impl Fn(&Path) -> bool) -> Result<(), PinDirError> {
    for parent in bpffs.ancestors().skip(1) {
        if !on_bpffs(parent) {
            break;
        }
        check(parent, true)?;
    }
    if !bpffs.exists() {
        create(bpffs)?;
    }
    check(bpffs, false)?;
    // Layout directories and their maps/ and links/, where they exist.
    let mut below = vec![bpffs.to_path_buf()];
    while let Some(d) = below.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                check(&e.path(), false)?;
                below.push(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-pindir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn created_0700_and_accepted() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let d = tmp("ok");
        secure(&d.join("pins"), |_| false).unwrap();
        let mode = fs::metadata(d.join("pins")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn writable_by_others_is_refused_with_the_fix() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let d = tmp("w");
        fs::create_dir_all(d.join("pins/v1")).unwrap();
        fs::set_permissions(d.join("pins/v1"), fs::Permissions::from_mode(0o777)).unwrap();
        let e = secure(&d.join("pins"), |_| false).unwrap_err().to_string();
        assert!(
            e.contains("writable by group or others") && e.contains("chmod 0700"),
            "{e}"
        );
        // A sticky world-writable parent on bpffs is fine; the same without sticky is not.
        fs::set_permissions(d.join("pins/v1"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).unwrap();
        let on = |p: &Path| p == d.as_path();
        secure(&d.join("pins"), on).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(secure(&d.join("pins"), on).is_err());
        let _ = fs::remove_dir_all(&d);
    }
}
