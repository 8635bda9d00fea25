//! A stand-in for systemd's answer to "which cgroup is unit X's?", for
//! hosts where systemd is not PID 1 (these test machines). The agent asks
//! `systemctl show --property=ControlGroup --value -- UNIT`; with
//! `PORTCULLIS_SYSTEMCTL` pointing at [`FakeSystemd::program`], the answer
//! is whatever the test registered with [`FakeSystemd::start_unit`], and
//! nothing for any other unit, as systemctl answers for an inactive unit.
//! Removed on drop.
use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf};

use crate::{unique, Agent, AgentBuilder};

pub struct FakeSystemd {
    dir: PathBuf,
}

impl FakeSystemd {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("pc-systemd"));
        fs::create_dir_all(dir.join("units")).unwrap();
        let script = format!(
            "#!/bin/sh\n# systemctl show --property=ControlGroup --value -- UNIT\n[ \"$2\" = --property=ControlGroup ] || {{ echo; exit 0; }}\nfor unit; do :; done\ncat \"{}/units/$unit\" 2>/dev/null || echo\n",
            dir.display()
        );
        let program = dir.join("systemctl");
        fs::write(&program, script).unwrap();
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    pub fn program(&self) -> PathBuf {
        self.dir.join("systemctl")
    }

    /// From now on systemd says `unit`'s cgroup is `cgroup` (a path
    /// relative to the cgroup2 mount, with a leading `/`).
    pub fn start_unit(&self, unit: &str, cgroup: &str) {
        let tmp = self.dir.join("units").join(format!(".{unit}.tmp"));
        fs::write(&tmp, format!("{cgroup}\n")).unwrap();
        fs::rename(&tmp, self.dir.join("units").join(unit)).unwrap();
    }

    /// An agent builder that asks this stand-in.
    pub fn agent(&self, policy: &str, cgroup: &std::path::Path) -> AgentBuilder {
        Agent::builder(policy, cgroup).env("PORTCULLIS_SYSTEMCTL", self.program().to_str().unwrap())
    }
}

impl Default for FakeSystemd {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The keys of the agent's PC_GRANTS map, read from the kernel with
/// bpftool: `(kind, segment, id)` per entry.
pub fn kernel_grant_keys(agent: &Agent) -> Vec<(u32, u32, u64)> {
    let map = agent
        .bpffs
        .join(format!("v{}/maps/PC_GRANTS", agent_common::LAYOUT_VERSION));
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&map)
        .output()
        .expect("run bpftool (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        map.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool -j output");
    v.as_array()
        .expect("a list of entries")
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = e["key"]
                .as_array()
                .expect("raw key bytes")
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            assert_eq!(bytes.len(), 16, "GrantKey is 16 bytes");
            (
                u32::from_ne_bytes(bytes[0..4].try_into().unwrap()),
                u32::from_ne_bytes(bytes[4..8].try_into().unwrap()),
                u64::from_ne_bytes(bytes[8..16].try_into().unwrap()),
            )
        })
        .collect()
}

/// Marks a cgroup directory delegated, as systemd does for `Delegate=yes`
/// units such as `user@UID.service`: the `trusted.delegate` xattr.
pub fn mark_delegated(dir: &std::path::Path) {
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings and a one-byte value we own.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"trusted.delegate".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr trusted.delegate on {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
}
