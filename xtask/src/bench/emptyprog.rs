//! The floor of table 9: an empty cgroup_skb program (`return 1`, allow)
//! linked to the same cgroup as the agent's, for ingress and egress, so
//! that the kernel's run-time statistics measure what any cgroup_skb
//! program costs on the very packets the agent's programs see. Two
//! instructions loaded through bpf(2) directly (the agent's ELF holds only
//! its real programs); the links are bpf_links, so closing their
//! descriptors (on drop, however the bench ends) detaches them.
use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
/// BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS.
const DIRECTIONS: [(u32, &str); 2] = [(0, "ingress"), (1, "egress")];

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_LINK_CREATE (the leading fields; the rest zero).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<i64> {
    // SAFETY: `attr` is a fully initialised prefix of bpf_attr for `cmd`,
    // and every buffer it points to outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>() as u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(rc)
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a descriptor the kernel just returned; we own it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// One empty program per direction, linked to a cgroup while this lives.
pub(super) struct EmptySkb {
    /// (direction, program id, program fd, link fd).
    progs: Vec<(&'static str, u32, OwnedFd, OwnedFd)>,
}

impl EmptySkb {
    pub(super) fn attach(cgroup: &Path) -> Result<Self> {
        let dir =
            fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        // mov64 r0, 1 (allow); exit
        let insns: [u64; 2] = [0xb7 | (1u64 << 32), 0x95];
        let license = b"GPL\0";
        let mut progs = Vec::new();
        for (attach_type, name) in DIRECTIONS {
            let mut prog_name = [0u8; 16];
            let n = format!("pcbench_{}", &name[..2]);
            prog_name[..n.len()].copy_from_slice(n.as_bytes());
            let attr = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_CGROUP_SKB,
                insn_cnt: insns.len() as u32,
                insns: insns.as_ptr() as u64,
                license: license.as_ptr() as u64,
                prog_name,
                expected_attach_type: attach_type,
                ..Default::default()
            };
            let prog =
                owned(bpf(BPF_PROG_LOAD, &attr).context("loading an empty cgroup_skb program")?);
            let mut info = [0u8; 256];
            let iattr = InfoAttr {
                bpf_fd: prog.as_raw_fd() as u32,
                info_len: info.len() as u32,
                info: info.as_mut_ptr() as u64,
            };
            bpf(BPF_OBJ_GET_INFO_BY_FD, &iattr).context("BPF_OBJ_GET_INFO_BY_FD")?;
            // struct bpf_prog_info starts with `__u32 type; __u32 id;`.
            let id = u32::from_ne_bytes(info[4..8].try_into().expect("4 bytes"));
            let lattr = LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_fd: dir.as_raw_fd() as u32,
                attach_type,
                ..Default::default()
            };
            let link = owned(bpf(BPF_LINK_CREATE, &lattr).with_context(|| {
                format!("linking an empty {name} program to {}", cgroup.display())
            })?);
            progs.push((name, id, prog, link));
        }
        Ok(Self { progs })
    }

    /// (direction, program id) of each program.
    pub(super) fn ids(&self) -> Vec<(&'static str, u32)> {
        self.progs.iter().map(|(n, id, _, _)| (*n, *id)).collect()
    }
}
