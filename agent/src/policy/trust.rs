//! Policy files as trusted input: who may have written them, what they are,
//! and reading them without ever blocking.
//!
//! Whoever can write a policy file decides who reaches the protected ports,
//! so the agent (and `portcullis check`, which reports the same problems)
//! reads a file only when, like sshd's `StrictModes`:
//! - it is a regular file (a FIFO would block `open(2)`, a device would
//!   stream forever), opened with `O_NONBLOCK` and checked with `fstat(2)`
//!   on the descriptor that is then read, so that what is checked is what
//!   is read;
//! - it, and the policy directory, are owned by root or by the user the
//!   reader runs as, and writable by no group and no other user;
//! - it is at most [`MAX_POLICY_BYTES`];
//! - a directory entry that is a symbolic link stays inside the directory,
//!   unless the agent's configuration allows links out of it
//!   (`policy_symlinks_outside = true`).
//!
//! It does not parse anything: `schema` does, on the text returned here.
use std::{
    fs,
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

use super::diagnostic::Diagnostic;

/// The largest policy file read. A policy of a few hundred segments is
/// well under 100 KiB, but one segment's allow list may be long (a
/// segment cannot span files): 1,000,000 `uid:` allows take ~15 MB. The
/// cap bounds a mistake (the wrong file), not an attacker: only trusted,
/// root-owned files are read at all.
pub const MAX_POLICY_BYTES: u64 = 32 * 1024 * 1024;

/// What a reader of policy files accepts.
#[derive(Clone, Debug, Default)]
pub struct FileTrust {
    /// Whether a `*.toml` entry of the policy directory may be a symbolic
    /// link to a file outside that directory.
    pub symlinks_outside: bool,
}

/// Root, and the user this process runs as (the agent's user).
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn owner_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// The ownership and mode rules, for a file or the directory (`what`).
fn check_owner_mode(path: &Path, meta: &fs::Metadata, what: &str) -> Result<(), Diagnostic> {
    if !trusted_owner(meta.uid()) {
        return Err(Diagnostic::error(
            None,
            format!(
                "{what} `{}` is owned by {}, not root: whoever owns it decides who reaches the protected ports",
                path.display(),
                owner_name(meta.uid())
            ),
        )
        .with_help(format!("run `chown root: {}`", path.display())));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Diagnostic::error(
            None,
            format!(
                "{what} `{}` is writable by {} (mode {mode:04o}): anyone who can write it decides who reaches the protected ports",
                path.display(),
                match (mode & 0o020 != 0, mode & 0o002 != 0) {
                    (true, true) => "its group and by everyone",
                    (true, false) => "its group",
                    _ => "everyone",
                }
            ),
        )
        .with_help(format!("run `chmod go-w {}`", path.display())));
    }
    Ok(())
}

/// Checks the policy directory itself (owner and mode).
pub(super) fn check_dir(dir: &Path) -> Result<(), Diagnostic> {
    let meta = fs::metadata(dir).map_err(|e| {
        Diagnostic::error(
            None,
            format!("cannot read policy directory `{}`: {e}", dir.display()),
        )
    })?;
    check_owner_mode(dir, &meta, "policy directory")?;
    check_ancestors(dir)
}

/// Checks every directory above the policy directory, and every symbolic
/// link on the way to it, as written and as resolved: whoever may rename
/// an entry of an ancestor (its owner, or anyone when it is writable by
/// group or others without the sticky bit) can swap the policy directory
/// for another one, as can the owner of a link on the path. sshd's
/// `StrictModes` checks the same way.
fn check_ancestors(dir: &Path) -> Result<(), Diagnostic> {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let resolved = fs::canonicalize(dir).unwrap_or_else(|_| absolute.clone());
    for path in [&absolute, &resolved] {
        let mut at = std::path::PathBuf::new();
        for part in path.components() {
            at.push(part);
            let Ok(meta) = fs::symlink_metadata(&at) else {
                continue;
            };
            let link = meta.file_type().is_symlink();
            let ancestor = at != *path;
            if !link && !ancestor {
                continue;
            }
            let what = if link {
                "a symbolic link on the way to the policy directory,"
            } else {
                "a directory above the policy directory,"
            };
            if !trusted_owner(meta.uid()) {
                return Err(Diagnostic::error(
                    None,
                    format!(
                        "{what} `{}`, is owned by {}, not root: its owner can replace the policy directory `{}` with another one",
                        at.display(),
                        owner_name(meta.uid()),
                        dir.display()
                    ),
                )
                .with_help(format!("run `chown root: {}`, or move the policies to a directory only root controls", at.display())));
            }
            let mode = meta.mode() & 0o7777;
            if !link && mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(Diagnostic::error(
                    None,
                    format!(
                        "{what} `{}`, is writable by others (mode {mode:04o}) and not sticky: anyone who can write it can replace the policy directory `{}`",
                        at.display(),
                        dir.display()
                    ),
                )
                .with_help(format!("run `chmod go-w {}`", at.display())));
            }
        }
    }
    Ok(())
}

/// Checks that `entry`, a `*.toml` entry of `dir`, is not a symbolic link
/// out of `dir` (unless `trust` allows it).
pub(super) fn check_entry(dir: &Path, entry: &Path, trust: &FileTrust) -> Result<(), Diagnostic> {
    if trust.symlinks_outside {
        return Ok(());
    }
    let is_link = fs::symlink_metadata(entry).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return Ok(());
    }
    let inside = match (fs::canonicalize(dir), fs::canonicalize(entry)) {
        (Ok(d), Ok(t)) => t.parent() == Some(d.as_path()) || t.starts_with(&d),
        // A broken link: reading it reports why.
        (_, Err(_)) => true,
        (Err(_), _) => false,
    };
    if inside {
        return Ok(());
    }
    let target = fs::read_link(entry)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".into());
    Err(Diagnostic::error(
        None,
        format!(
            "policy file `{}` is a symbolic link out of the policy directory (to `{target}`)",
            entry.display()
        ),
    )
    .with_help(
        "copy the file into the directory, or set `policy_symlinks_outside = true` in the agent's configuration",
    ))
}

/// Reads `file` if it is a regular file that passes the ownership, mode
/// and size rules; never blocks on a FIFO or a device.
pub(super) fn read(file: &Path) -> Result<Vec<u8>, Diagnostic> {
    let cannot = |e: std::io::Error| {
        Diagnostic::error(
            None,
            format!("cannot read policy file `{}`: {e}", file.display()),
        )
    };
    let handle = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(file)
        .map_err(cannot)?;
    let meta = handle.metadata().map_err(cannot)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(Diagnostic::error(
            None,
            format!(
                "policy file `{}` is {what}: only regular files are read",
                file.display()
            ),
        )
        .with_help(format!(
            "remove it, or replace it with a regular file: `rm {}`",
            file.display()
        )));
    }
    check_owner_mode(file, &meta, "policy file")?;
    if meta.len() > MAX_POLICY_BYTES {
        return Err(Diagnostic::error(
            None,
            format!(
                "policy file `{}` is {} bytes, more than the {MAX_POLICY_BYTES} a policy file may hold",
                file.display(),
                meta.len()
            ),
        )
        .with_help("split the policy into several files, or check that this is the right file"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow between fstat and read: the cap holds regardless.
    handle
        .take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(Diagnostic::error(
            None,
            format!(
                "policy file `{}` grew past {MAX_POLICY_BYTES} bytes while it was read",
                file.display()
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn message(r: Result<impl std::fmt::Debug, Diagnostic>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn a_regular_private_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        fs::write(&f, "x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read(&f).unwrap(), b"x");
    }

    #[test]
    fn a_file_writable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        fs::write(&f, "x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o646)).unwrap();
        let m = message(read(&f));
        assert!(m.contains("writable by everyone (mode 0646)"), "{m}");
        assert!(m.contains("chmod go-w"), "{m}");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o664)).unwrap();
        assert!(message(read(&f)).contains("writable by its group"));
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path in a fresh directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let m = message(read(&f));
        assert!(m.contains("is a FIFO"), "{m}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        let file = fs::File::create(&f).unwrap();
        file.set_len(MAX_POLICY_BYTES + 1).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(message(read(&f)).contains("more than"));
    }

    #[test]
    fn symlinks_stay_inside_the_directory_unless_allowed() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = outside.path().join("t.toml");
        fs::write(&target, "x").unwrap();
        fs::write(dir.path().join("real.toml"), "x").unwrap();
        let out = dir.path().join("out.toml");
        let inside = dir.path().join("in.toml");
        std::os::unix::fs::symlink(&target, &out).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real.toml"), &inside).unwrap();
        let strict = FileTrust::default();
        let m = message(check_entry(dir.path(), &out, &strict));
        assert!(
            m.contains("symbolic link out of the policy directory"),
            "{m}"
        );
        assert!(check_entry(dir.path(), &inside, &strict).is_ok());
        let lax = FileTrust {
            symlinks_outside: true,
        };
        assert!(check_entry(dir.path(), &out, &lax).is_ok());
    }
}
