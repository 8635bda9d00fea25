//! Attaching: the cgroup programs through kernel links pinned under
//! `<pin dir>/links/` (new links beside the old ones, then renamed over
//! their pins), the peer filter on the configured interfaces (through
//! `peer_filter`: native XDP, tcx or clsact), and the descriptors of every
//! link this agent holds.
//!
//! Kernel: cgroup BPF links (Linux 5.7).
use std::{
    fs, io,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use agent_common::program_names;
use aya::programs::{
    links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, TracePoint,
};

use super::{
    enforcement,
    loader::{older_layouts, program, retire_layout},
    peer_filter, Dataplane, DataplaneError, Result,
};

pub(super) const SKB_PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    (program_names::SKB_EGRESS, CgroupSkbAttachType::Egress),
    (program_names::SKB_INGRESS, CgroupSkbAttachType::Ingress),
];

pub(super) const SOCK_ADDR_PROGRAMS: [(&str, &str); 4] = [
    (program_names::CONNECT4, "connect4"),
    (program_names::CONNECT6, "connect6"),
    (program_names::SENDMSG4, "sendmsg4"),
    (program_names::SENDMSG6, "sendmsg6"),
];

/// What a held link is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LinkKind {
    Cgroup,
    /// The peer filter's link on an interface (XDP or tcx).
    Peer(String),
    /// The host-wide `cgroup:cgroup_mkdir` tracepoint (`cover.rs`).
    Tracepoint,
}

/// A link this agent attached, held open beside its pin.
#[derive(Debug)]
pub(super) struct HeldLink {
    /// File name under `links/`.
    pub(super) pin: String,
    pub(super) program: &'static str,
    pub(super) kind: LinkKind,
    pub(super) fd: OwnedFd,
    pub(super) id: u32,
    pub(super) prog_id: u32,
}

/// A program's link as a plain fd link, to pin it.
pub(super) fn fd_link<L>(link: L, links: &Path, name: &str) -> Result<FdLink>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|e| DataplaneError::Pin {
        what: "link (needs kernel ≥ 5.7 for cgroup links)",
        path: links.join(name),
        source: Box::new(e),
    })
}

impl Dataplane {
    /// Attaches the loaded programs (call once the maps hold the policy).
    ///
    /// cgroup programs get new links beside any old ones (multi-attach: a
    /// connection passes only if every attached program allows it), pinned
    /// over this layout's previous pins, which releases the old links. The
    /// peer filter takes over a previous run's link in place
    /// (BPF_LINK_UPDATE) or is attached beside what it replaces. Then
    /// links and maps of older layouts are retired. At no instant is a
    /// protected port without a program whose maps are complete.
    pub(crate) fn attach(&mut self) -> Result<()> {
        self.attach_cgroup()?;
        let links = self.pin_dir.join("links");
        self.attach_mkdir_cover(&links)?;
        let older = older_layouts(&self.bpffs, &self.pin_dir);
        self.filters = peer_filter::attach_all(
            &mut self.ebpf,
            &links,
            &older,
            &self.xdp_ifaces,
            self.placement,
        )?;
        self.held
            .retain(|h| matches!(h.kind, LinkKind::Cgroup | LinkKind::Tracepoint));
        let mut programs = self.programs.clone();
        for f in self.filters.clone() {
            if let Some(pin) = f.mode.pin(&f.iface) {
                self.hold(&links, &pin, f.mode.program(), LinkKind::Peer(f.iface))?;
            }
            if !programs.contains(&f.mode.program()) {
                programs.push(f.mode.program());
            }
        }
        self.programs = programs;
        for dir in older {
            tracing::info!(dir = %dir.display(), "retiring the pins of an older map layout");
            retire_layout(&dir).map_err(|source| DataplaneError::PinDir {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Attaches the cgroup programs to the cgroup now at `self.cgroup` (new
    /// links beside old ones, pinned over them) and holds the new links.
    pub(super) fn attach_cgroup(&mut self) -> Result<()> {
        let links = self.pin_dir.join("links");
        let cgroup_file =
            fs::File::open(&self.cgroup).map_err(|source| DataplaneError::Cgroup {
                path: self.cgroup.clone(),
                source,
            })?;
        let ino = cgroup_file
            .metadata()
            .map_err(|source| DataplaneError::Cgroup {
                path: self.cgroup.clone(),
                source,
            })?
            .ino();
        let mut programs = Vec::new();
        for (name, _) in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let attach_err = |source| DataplaneError::Attach {
                program: name,
                cgroup: self.cgroup.clone(),
                source,
            };
            // Kernel cgroup links take no flags and always stack with other
            // programs (multi-attach semantics): `Single` means flags 0 here.
            let id = prog
                .attach(&cgroup_file, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            pin_link_replacing(fd_link(link, &links, name)?, &links, name)?;
            self.hold(&links, name, name, LinkKind::Cgroup)?;
            programs.push(name);
        }
        for (name, attach_type) in SKB_PROGRAMS {
            let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            let attach_err = |source| DataplaneError::Attach {
                program: name,
                cgroup: self.cgroup.clone(),
                source,
            };
            let id = prog
                .attach(&cgroup_file, attach_type, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            pin_link_replacing(fd_link(link, &links, name)?, &links, name)?;
            self.hold(&links, name, name, LinkKind::Cgroup)?;
            programs.push(name);
        }
        self.cgroup_ino = ino;
        self.programs = programs;
        Ok(())
    }

    /// Attaches the `cgroup:cgroup_mkdir` tracepoint (host-wide; it acts
    /// only on paths in the cover map), pinned over a previous run's link
    /// like the cgroup programs. `PORTCULLIS_NO_MKDIR_COVER=1` (set by
    /// root, for the end-to-end test's mutation check and measurement)
    /// leaves it unattached.
    fn attach_mkdir_cover(&mut self, links: &Path) -> Result<()> {
        let name = program_names::CGROUP_MKDIR;
        if std::env::var_os("PORTCULLIS_NO_MKDIR_COVER").is_some_and(|v| v == "1") {
            tracing::warn!("PORTCULLIS_NO_MKDIR_COVER=1: re-created cgroups are covered only when the agent re-resolves them");
            let _ = fs::remove_file(links.join(name));
            self.held.retain(|h| h.kind != LinkKind::Tracepoint);
            return Ok(());
        }
        let prog: &mut TracePoint = program(&mut self.ebpf, name)?;
        let attach_err = |source| DataplaneError::Attach {
            program: name,
            cgroup: PathBuf::from("tracepoint cgroup:cgroup_mkdir"),
            source,
        };
        let id = prog.attach("cgroup", "cgroup_mkdir").map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        pin_link_replacing(fd_link(link, links, name)?, links, name)?;
        self.hold(links, name, name, LinkKind::Tracepoint)
    }

    /// Opens the link pinned as `links/pin` and holds it (replacing the
    /// link held under that pin name before, which is then released).
    pub(super) fn hold(
        &mut self,
        links: &Path,
        pin: &str,
        program: &'static str,
        kind: LinkKind,
    ) -> Result<()> {
        let path = links.join(pin);
        let pin_err = |e: io::Error| DataplaneError::Pin {
            what: "link (re-opening it to hold it)",
            path: path.clone(),
            source: Box::new(e),
        };
        let fd = enforcement::obj_get(&path).map_err(pin_err)?;
        let facts = enforcement::link_facts(&fd).map_err(pin_err)?;
        self.held.retain(|h| h.pin != pin);
        self.held.push(HeldLink {
            pin: pin.to_string(),
            program,
            kind,
            fd,
            id: facts.id,
            prog_id: facts.prog_id,
        });
        Ok(())
    }

    /// Lets go of the links this agent holds (for an uninstall through the
    /// agent: once the pins are gone too, nothing is attached).
    pub(crate) fn release_links(&mut self) {
        self.held.clear();
        self.programs.clear();
        self.filters.clear();
    }
}

/// Pins `link` as `dir/name`, atomically replacing a link pinned there by a
/// previous run (which the kernel then releases).
pub(super) fn pin_link_replacing(link: FdLink, dir: &Path, name: &str) -> Result<()> {
    // bpffs refuses names with a dot in them.
    let tmp = dir.join(format!("{name}_new"));
    let _ = fs::remove_file(&tmp);
    let final_path = dir.join(name);
    let pinned = link.pin(&tmp).map_err(|e| DataplaneError::Pin {
        what: "link",
        path: tmp.clone(),
        source: Box::new(e),
    })?;
    fs::rename(&tmp, &final_path).map_err(|e| DataplaneError::Pin {
        what: "link",
        path: final_path.clone(),
        source: Box::new(e),
    })?;
    // Closing our fd leaves the pin holding the link.
    drop(pinned);
    Ok(())
}

/// Pins the object behind `fd` at `path` (BPF_OBJ_PIN).
pub(super) fn pin_fd(fd: &OwnedFd, path: &Path) -> Result<()> {
    enforcement::obj_pin(fd, path).map_err(|e| DataplaneError::Pin {
        what: "link",
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}
