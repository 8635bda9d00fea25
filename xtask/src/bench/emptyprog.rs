//! The floors: empty programs at the agent's hooks. Table 9 links an empty
//! cgroup_skb program (`return 1`, allow) to the same cgroup as the
//! agent's, for ingress and egress, so that the kernel's run-time
//! statistics measure what any cgroup_skb program costs on the very packets
//! the agent's programs see. Table 2's floor rows (`floor.rs`) link empty
//! connect4 and cgroup_skb programs to the filtered cgroup, and an empty
//! tcx ingress program to the filtered veth, with no agent running: what
//! the attach points alone cost a connection. Two
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
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// enum bpf_attach_type (linux/bpf.h); cgroup_skb ingress and egress are 0 and 1.
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_TCX_INGRESS: u32 = 46;

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

/// Empty programs linked to a cgroup or an interface while this lives.
pub(super) struct EmptySkb {
    /// (hook, program id, program fd, link fd).
    progs: Vec<(&'static str, u32, OwnedFd, OwnedFd)>,
}

/// Where an empty program goes: (hook name, program type, expected attach
/// type at load, attach type of the link, return value).
type Hook = (&'static str, u32, u32, u32, i32);

/// The cgroup_skb directions (allow: 1).
const SKB_HOOKS: [Hook; 2] = [
    ("ingress", BPF_PROG_TYPE_CGROUP_SKB, 0, 0, 1),
    ("egress", BPF_PROG_TYPE_CGROUP_SKB, 1, 1, 1),
];
/// cgroup/connect4 (allow: 1).
const CONNECT4_HOOK: Hook = (
    "connect4",
    BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
    BPF_CGROUP_INET4_CONNECT,
    BPF_CGROUP_INET4_CONNECT,
    1,
);
/// tcx ingress (TCX_PASS: 0).
const TCX_HOOK: Hook = (
    "tcx_ingress",
    BPF_PROG_TYPE_SCHED_CLS,
    0,
    BPF_TCX_INGRESS,
    0,
);

impl EmptySkb {
    /// Empty cgroup_skb programs, ingress and egress, on `cgroup`.
    pub(super) fn attach(cgroup: &Path) -> Result<Self> {
        Self::on_cgroup(cgroup, &SKB_HOOKS)
    }

    /// Empty programs at every hook the agent uses in a cgroup on the IPv4
    /// allowed path: connect4 and cgroup_skb ingress and egress.
    pub(super) fn attach_all(cgroup: &Path) -> Result<Self> {
        Self::on_cgroup(cgroup, &[CONNECT4_HOOK, SKB_HOOKS[0], SKB_HOOKS[1]])
    }

    /// An empty tcx ingress program on interface `ifname` (kernel ≥ 6.6).
    pub(super) fn attach_tcx(ifname: &str) -> Result<Self> {
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: a NUL-terminated name, valid for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("no interface {ifname}"));
        }
        let (prog, id) = load(TCX_HOOK)?;
        let link = link(&prog, ifindex, TCX_HOOK.3)
            .with_context(|| format!("linking an empty tcx program to {ifname}"))?;
        Ok(Self {
            progs: vec![(TCX_HOOK.0, id, prog, link)],
        })
    }

    fn on_cgroup(cgroup: &Path, hooks: &[Hook]) -> Result<Self> {
        let dir =
            fs::File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut progs = Vec::new();
        for &hook in hooks {
            let (prog, id) = load(hook)?;
            let link = link(&prog, dir.as_raw_fd() as u32, hook.3).with_context(|| {
                format!(
                    "linking an empty {} program to {}",
                    hook.0,
                    cgroup.display()
                )
            })?;
            progs.push((hook.0, id, prog, link));
        }
        Ok(Self { progs })
    }

    /// (hook, program id) of each program.
    pub(super) fn ids(&self) -> Vec<(&'static str, u32)> {
        self.progs.iter().map(|(n, id, _, _)| (*n, *id)).collect()
    }
}

/// Loads `mov64 r0, RET; exit`; returns the program and its id.
fn load((name, prog_type, expected, _, ret): Hook) -> Result<(OwnedFd, u32)> {
    let insns: [u64; 2] = [0xb7 | (u64::from(ret as u32) << 32), 0x95];
    let license = b"GPL\0";
    let mut prog_name = [0u8; 16];
    let n = format!("pcbench_{}", &name[..name.len().min(7)]);
    prog_name[..n.len()].copy_from_slice(n.as_bytes());
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: expected,
        ..Default::default()
    };
    let prog = owned(
        bpf(BPF_PROG_LOAD, &attr).with_context(|| format!("loading an empty {name} program"))?,
    );
    let mut info = [0u8; 256];
    let iattr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &iattr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    // struct bpf_prog_info starts with `__u32 type; __u32 id;`.
    let id = u32::from_ne_bytes(info[4..8].try_into().expect("4 bytes"));
    Ok((prog, id))
}

/// BPF_LINK_CREATE of `prog` on `target` (a cgroup fd or an ifindex).
fn link(prog: &OwnedFd, target: u32, attach_type: u32) -> Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target,
        attach_type,
        ..Default::default()
    };
    Ok(owned(bpf(BPF_LINK_CREATE, &attr)?))
}
