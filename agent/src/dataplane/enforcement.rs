//! Enforcement checked against the kernel, and repaired.
//!
//! Owns asking the kernel what is really in force: which programs are
//! attached to the attach cgroup (BPF_PROG_QUERY on the cgroup at its path,
//! so a removed and recreated cgroup shows up as "nothing attached"), whether
//! the peer filter's links (XDP or tcx) still sit on their interfaces, and whether the pins under
//! the pin directory are this agent's links and maps. [`Dataplane::repair`]
//! re-attaches and re-pins whatever is missing. Deciding what to audit, log
//! and count is the agent's job.
//!
//! Minimum kernel: 5.7 (cgroup links), 5.9 (XDP links and link info), 6.6
//! (tcx links). A clsact filter (kernels before 6.6) is no link and is not
//! checked here.
use std::{
    ffi::CString,
    fs, io,
    mem::size_of,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::Path,
};

use agent_common::program_names;
use aya::maps::{MapData, MapInfo};
use serde::{Deserialize, Serialize};

use super::{Dataplane, LinkKind, Result};

// bpf(2) commands and attach types (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;

/// The cgroup attach type (BPF_CGROUP_*) of each cgroup program.
pub(super) fn attach_type(program: &str) -> u32 {
    match program {
        program_names::SKB_INGRESS => 0, // BPF_CGROUP_INET_INGRESS
        program_names::SKB_EGRESS => 1,  // BPF_CGROUP_INET_EGRESS
        program_names::CONNECT4 => 10,   // BPF_CGROUP_INET4_CONNECT
        program_names::CONNECT6 => 11,   // BPF_CGROUP_INET6_CONNECT
        program_names::SENDMSG4 => 14,   // BPF_CGROUP_UDP4_SENDMSG
        program_names::SENDMSG6 => 15,   // BPF_CGROUP_UDP6_SENDMSG
        _ => u32::MAX,
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialized bpf_attr prefix of the size
    // passed, for the command given; the kernel reads and writes only it and
    // the buffers its pointer fields name, which the callers keep alive.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The bpf_attr of BPF_OBJ_PIN and BPF_OBJ_GET.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// BPF_OBJ_PIN: pins the object behind `fd` at `path`.
pub(super) fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// BPF_OBJ_GET: a new descriptor for the object pinned at `path`.
pub(super) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LinkFacts {
    pub id: u32,
    pub prog_id: u32,
    /// cgroup links: the cgroup id (0 once detached); XDP and tcx links:
    /// the ifindex (0 once detached).
    pub target: u64,
}

/// BPF_OBJ_GET_INFO_BY_FD on a link.
pub(super) fn link_facts(fd: &OwnedFd) -> io::Result<LinkFacts> {
    #[repr(C, align(8))]
    struct Info([u8; 128]);
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = Info([0; 128]);
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.0.len() as u32,
        info: info.0.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let u32_at = |o: usize| u32::from_ne_bytes(info.0[o..o + 4].try_into().expect("4 bytes"));
    // struct bpf_link_info: type, id, prog_id, then the per-type union at 16.
    let link_type = u32_at(0);
    let target = match link_type {
        // BPF_LINK_TYPE_CGROUP: { __u64 cgroup_id; __u32 attach_type; }
        3 => u64::from_ne_bytes(info.0[16..24].try_into().expect("8 bytes")),
        // BPF_LINK_TYPE_XDP: { __u32 ifindex; }, BPF_LINK_TYPE_TCX:
        // { __u32 ifindex; __u32 attach_type; }
        6 | 11 => u32_at(16) as u64,
        _ => 0,
    };
    Ok(LinkFacts {
        id: u32_at(4),
        prog_id: u32_at(8),
        target,
    })
}

/// BPF_PROG_QUERY: ids of the programs attached directly to a cgroup for one
/// attach type (kernel ≥ 4.15).
fn prog_query(cgroup: &fs::File, attach_type: u32) -> io::Result<Vec<u32>> {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    let mut ids = vec![0u32; 64];
    for _ in 0..2 {
        let mut attr = Attr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Attr::default()
        };
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            // More programs than room: the kernel says how many; once more.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                ids = vec![0u32; attr.prog_cnt as usize + 16];
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOSPC))
}

/// What the kernel has, compared with what this agent put there.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct KernelCheck {
    /// Programs the kernel has attached where they belong.
    pub attached: Vec<String>,
    /// What is missing or not this agent's, in words.
    pub missing: Vec<String>,
    /// The attach cgroup at its path is not the one the programs were attached to.
    pub cgroup_recreated: bool,
    /// Set when the check could not be made (the agent is out of file
    /// descriptors or memory): what it found is not evidence of anything
    /// missing, and nothing is repaired on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchecked: Option<String>,
}

impl KernelCheck {
    pub(crate) fn ok(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Descriptors the check needs at once, with room to spare.
const CHECK_HEADROOM: usize = 8;

/// Whether this process can open a few more descriptors. A check that found
/// something "missing" while descriptors (or kernel memory) ran out proves
/// nothing: `Some(why)` then.
fn no_headroom() -> Option<String> {
    let mut held = Vec::with_capacity(CHECK_HEADROOM);
    for _ in 0..CHECK_HEADROOM {
        match fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
                ) =>
            {
                return Some(format!("the agent cannot open file descriptors ({e})"));
            }
            Err(_) => break,
        }
    }
    None
}

/// Whether the object pinned at `path` is the link `id`.
fn pin_is(path: &Path, id: u32) -> bool {
    obj_get(path)
        .and_then(|fd| link_facts(&fd))
        .is_ok_and(|f| f.id == id)
}

impl Dataplane {
    /// Asks the kernel what is in force; changes nothing.
    pub(crate) fn check(&self) -> KernelCheck {
        let mut out = KernelCheck::default();
        let links = self.pin_dir.join("links");
        match fs::File::open(&self.cgroup) {
            Err(e) => out.missing.push(format!(
                "the attach cgroup {} cannot be opened ({e}): nothing is attached to it",
                self.cgroup.display()
            )),
            Ok(cg) => {
                let ino = cg.metadata().map(|m| m.ino()).unwrap_or(0);
                out.cgroup_recreated = ino != self.cgroup_ino;
                for held in self.held.iter().filter(|h| h.kind == LinkKind::Cgroup) {
                    match prog_query(&cg, attach_type(held.program)) {
                        Ok(ids) if ids.contains(&held.prog_id) => {
                            out.attached.push(held.program.to_string())
                        }
                        Ok(_) => out.missing.push(format!(
                            "{} is not attached to cgroup {}",
                            held.program,
                            self.cgroup.display()
                        )),
                        Err(e) => out.missing.push(format!(
                            "{}: BPF_PROG_QUERY on cgroup {} failed: {e}",
                            held.program,
                            self.cgroup.display()
                        )),
                    }
                }
            }
        }
        for held in self.held.iter().filter(|h| h.kind != LinkKind::Cgroup) {
            let LinkKind::Peer(iface) = &held.kind else {
                continue;
            };
            let want = nix::net::if_::if_nametoindex(iface.as_str()).unwrap_or(0) as u64;
            match link_facts(&held.fd) {
                Ok(f) if f.target != 0 && f.target == want => {
                    out.attached.push(format!("{} on {iface}", held.program))
                }
                _ => out.missing.push(format!(
                    "{} is not attached to interface {iface}",
                    held.program
                )),
            }
        }
        for held in &self.held {
            let pin = links.join(&held.pin);
            if !pin_is(&pin, held.id) {
                out.missing.push(format!(
                    "link pin {} is missing or not this agent's link",
                    pin.display()
                ));
            }
        }
        for (name, id) in &self.map_ids {
            let pin = self.pin_dir.join("maps").join(name);
            if !MapInfo::from_pin(&pin).is_ok_and(|m| m.id() == *id) {
                out.missing.push(format!(
                    "map pin {} is missing or not the map this agent writes",
                    pin.display()
                ));
            }
        }
        if !out.missing.is_empty() {
            out.unchecked = no_headroom();
        }
        out
    }

    /// Checks, re-attaches and re-pins what is missing, and checks again.
    /// Returns what was missing before and what the kernel has after.
    pub(crate) fn repair(&mut self) -> (KernelCheck, KernelCheck) {
        let before = self.check();
        if (before.ok() && !before.cgroup_recreated) || before.unchecked.is_some() {
            return (before.clone(), before);
        }
        let links = self.pin_dir.join("links");
        let cgroup_bad = before.cgroup_recreated
            || before.missing.iter().any(|m| m.contains("cgroup"))
            || self
                .held
                .iter()
                .filter(|h| h.kind == LinkKind::Cgroup)
                .any(|h| !pin_is(&links.join(&h.pin), h.id));
        if cgroup_bad {
            if let Err(e) = self.attach_cgroup() {
                // The agent logs what is still missing; this is the why.
                tracing::warn!(error = %format!("{e:#}"), "re-attaching the cgroup programs failed");
            }
        }
        if let Err(e) = self.repair_peer_filters() {
            tracing::warn!(error = %format!("{e:#}"), "re-attaching the peer filter failed");
        }
        for (name, id) in self.map_ids.clone() {
            let pin = self.pin_dir.join("maps").join(name);
            if MapInfo::from_pin(&pin).is_ok_and(|m| m.id() == id) {
                continue;
            }
            let _ = fs::remove_file(&pin);
            let pinned = match MapData::from_id(id) {
                Ok(m) => m.pin(&pin).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = pinned {
                tracing::warn!(map = name, pin = %pin.display(), error = %e, "re-pinning a map failed");
            }
        }
        (before, self.check())
    }

    /// Peer-filter links that left their interface are replaced (the mode
    /// chosen again); pins that went missing are re-made from the link this
    /// agent holds.
    fn repair_peer_filters(&mut self) -> Result<()> {
        let links = self.pin_dir.join("links");
        let mut lost = Vec::new();
        for held in self.held.iter_mut() {
            let LinkKind::Peer(iface) = &held.kind else {
                continue;
            };
            let want = nix::net::if_::if_nametoindex(iface.as_str()).unwrap_or(0) as u64;
            let on = link_facts(&held.fd).is_ok_and(|f| f.target != 0 && f.target == want);
            let pin = links.join(&held.pin);
            if !on {
                lost.push(iface.clone());
                let _ = fs::remove_file(&pin);
            } else if !pin_is(&pin, held.id) {
                let _ = fs::remove_file(&pin);
                super::pin_fd(&held.fd, &pin)?;
            }
        }
        if lost.is_empty() {
            return Ok(());
        }
        self.held
            .retain(|h| !matches!(&h.kind, LinkKind::Peer(i) if lost.contains(i)));
        for iface in &lost {
            let f =
                super::peer_filter::attach_one(&mut self.ebpf, &links, &[], iface, self.placement)?;
            if let Some(pin) = f.mode.pin(iface) {
                self.hold(
                    &links,
                    &pin,
                    f.mode.program(),
                    LinkKind::Peer(iface.clone()),
                )?;
            }
            if let Some(old) = self.filters.iter_mut().find(|o| o.iface == *iface) {
                *old = f;
            }
        }
        Ok(())
    }
}
