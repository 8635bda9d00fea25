//! The peer filter on the interfaces named with `--xdp-iface`: where it
//! goes and how. Physical NICs whose driver runs XDP get `pc_xdp` in native
//! mode; veth and other virtual devices (and NICs without driver XDP) get
//! `pc_tc_peer` at tc ingress, through a tcx link (kernel ≥ 6.6) or, on
//! older kernels, a filter on a clsact qdisc. Generic (skb) XDP is never
//! used: it costs more than tc and judges the same frames later. Both
//! programs decide the same way (`agent-ebpf/src/peer.rs`).
//!
//! Links are pinned as `links/xdp_<iface>` or `links/tcx_<iface>`; a
//! previous run's link of the kind chosen (in this layout or an older one)
//! gets the new program in place (BPF_LINK_UPDATE), and pins of the other
//! kind are let go only once the new filter is attached, so an interface is
//! never without one. A clsact filter is no link: it stays on the qdisc
//! after the agent exits, and a restart replaces it (detach, then attach:
//! on kernels before 6.6 there is a short gap at start).
//!
//! Kernel: XDP links 5.9, tcx links 6.6, clsact filters 4.5.
use std::{
    fs,
    path::{Path, PathBuf},
};

use agent_common::program_names;
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf,
};

use super::{loader::program, DataplaneError, Result};

/// How the peer filter is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FilterMode {
    /// `pc_xdp` in the NIC driver (physical NICs with XDP support).
    XdpNative,
    /// `pc_tc_peer` through a tcx ingress link (kernel ≥ 6.6).
    Tcx,
    /// `pc_tc_peer` as a filter on a clsact qdisc (older kernels).
    TcClsact,
}

impl FilterMode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FilterMode::XdpNative => "xdp-native",
            FilterMode::Tcx => "tcx",
            FilterMode::TcClsact => "tc-clsact",
        }
    }

    pub(crate) fn program(self) -> &'static str {
        match self {
            FilterMode::XdpNative => program_names::XDP,
            FilterMode::Tcx | FilterMode::TcClsact => program_names::TC_PEER,
        }
    }

    /// The pin name of its link under `links/` (none for clsact filters).
    pub(crate) fn pin(self, iface: &str) -> Option<String> {
        // bpffs refuses dots in names.
        let iface = iface.replace('.', "_");
        match self {
            FilterMode::XdpNative => Some(format!("xdp_{iface}")),
            FilterMode::Tcx => Some(format!("tcx_{iface}")),
            FilterMode::TcClsact => None,
        }
    }
}

/// Which attach modes the agent may use (`peer_filter` setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Native XDP on physical NICs whose driver has it, else tc.
    #[default]
    Auto,
    /// Native XDP on every interface, virtual ones too (veth drivers
    /// have it); fails where the driver lacks it. For comparisons.
    Xdp,
    /// tc ingress (tcx, else clsact) on every interface.
    Tc,
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Placement::Auto),
            "xdp" => Ok(Placement::Xdp),
            "tc" => Ok(Placement::Tc),
            _ => Err(format!(
                "`{s}` is not a peer filter placement: use \"auto\", \"xdp\" or \"tc\""
            )),
        }
    }
}

/// Where the peer filter went on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerFilter {
    pub iface: String,
    pub mode: FilterMode,
}

/// Whether `iface` is a physical device (one with a bus device behind it
/// in sysfs); veth, bridges, tunnels, vlan and macvlan devices are not.
pub(super) fn is_physical(iface: &str) -> bool {
    !iface.contains('/')
        && Path::new("/sys/class/net")
            .join(iface)
            .join("device")
            .exists()
}

/// Attaches the peer filter to every interface, then lets go of pins of
/// filters no longer wanted (interfaces dropped from the configuration, or
/// a kind of filter replaced by another).
pub(super) fn attach_all(
    ebpf: &mut Ebpf,
    links: &Path,
    older: &[PathBuf],
    ifaces: &[String],
    placement: Placement,
) -> Result<Vec<PeerFilter>> {
    let mut out = Vec::new();
    for iface in ifaces {
        out.push(attach_one(ebpf, links, older, iface, placement)?);
    }
    let keep: Vec<String> = out.iter().filter_map(|f| f.mode.pin(&f.iface)).collect();
    if let Ok(entries) = fs::read_dir(links) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().to_string();
            if (file.starts_with("xdp_") || file.starts_with("tcx_")) && !keep.contains(&file) {
                tracing::info!(pin = %e.path().display(), "releasing a peer filter no longer wanted there");
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok(out)
}

/// Attaches the peer filter to one interface: native XDP on a physical NIC
/// whose driver takes it, else tcx, else clsact (`placement` narrows the
/// choice). Fails (naming every attempt) when none can be attached.
pub(super) fn attach_one(
    ebpf: &mut Ebpf,
    links: &Path,
    older: &[PathBuf],
    iface: &str,
    placement: Placement,
) -> Result<PeerFilter> {
    let mut tried = Vec::new();
    let order = match placement {
        Placement::Auto if is_physical(iface) => {
            vec![FilterMode::XdpNative, FilterMode::Tcx, FilterMode::TcClsact]
        }
        Placement::Auto | Placement::Tc => vec![FilterMode::Tcx, FilterMode::TcClsact],
        Placement::Xdp => vec![FilterMode::XdpNative],
    };
    for mode in order {
        let done = match mode {
            FilterMode::XdpNative => xdp(ebpf, links, older, iface),
            FilterMode::Tcx => tcx(ebpf, links, older, iface),
            FilterMode::TcClsact => clsact(ebpf, iface),
        };
        match done {
            Ok(()) => {
                return Ok(PeerFilter {
                    iface: iface.to_string(),
                    mode,
                })
            }
            Err(e) => {
                tracing::info!(%iface, mode = mode.name(), error = %format!("{e:#}"), "peer filter mode unavailable; trying the next");
                tried.push(format!("{}: {e}", mode.name()));
            }
        }
    }
    Err(DataplaneError::PeerFilter {
        iface: iface.to_string(),
        tried: tried.join("; "),
    })
}

type AttachResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A link pinned for `mode` on `iface` by a previous run, in this layout
/// or an older one; pinned under this layout too if it was an older one's.
fn previous(
    links: &Path,
    older: &[PathBuf],
    mode: FilterMode,
    iface: &str,
) -> std::result::Result<Option<FdLink>, Box<dyn std::error::Error + Send + Sync>> {
    let Some(name) = mode.pin(iface) else {
        return Ok(None);
    };
    let pin = links.join(&name);
    let Some(prev) = std::iter::once(pin.clone())
        .chain(older.iter().map(|d| d.join("links").join(&name)))
        .find(|p| p.exists())
    else {
        return Ok(None);
    };
    if prev != pin {
        // Pin the same link under this layout before the old layout is retired.
        FdLink::from(PinnedLink::from_pin(&prev)?).pin(&pin)?;
    }
    Ok(Some(FdLink::from(PinnedLink::from_pin(&pin)?)))
}

/// Pins a new link at `links/<pin>`.
fn pin_new(link: FdLink, links: &Path, name: &str) -> AttachResult {
    let path = links.join(name);
    let _ = fs::remove_file(&path);
    link.pin(&path)?;
    Ok(())
}

fn xdp(ebpf: &mut Ebpf, links: &Path, older: &[PathBuf], iface: &str) -> AttachResult {
    let prog: &mut Xdp = program(ebpf, program_names::XDP)?;
    let name = FilterMode::XdpNative
        .pin(iface)
        .expect("XDP links are pinned");
    if let Some(link) = previous(links, older, FilterMode::XdpNative, iface)? {
        // Only this agent pins XDP links there, and only native ones.
        prog.attach_to_link(aya::programs::xdp::XdpLink::try_from(link)?)?;
        return Ok(());
    }
    let id = prog.attach(iface, XdpMode::Driver)?;
    pin_new(FdLink::try_from(prog.take_link(id)?)?, links, &name)
}

fn tcx(ebpf: &mut Ebpf, links: &Path, older: &[PathBuf], iface: &str) -> AttachResult {
    let prog: &mut SchedClassifier = program(ebpf, program_names::TC_PEER)?;
    let name = FilterMode::Tcx.pin(iface).expect("tcx links are pinned");
    if let Some(link) = previous(links, older, FilterMode::Tcx, iface)? {
        prog.attach_to_link(SchedClassifierLink::try_from(link)?)?;
        return Ok(());
    }
    // First in the chain: a drop here is final whatever runs after it.
    let id = prog.attach_with_options(
        iface,
        TcAttachType::Ingress,
        TcAttachOptions::TcxOrder(LinkOrder::first()),
    )?;
    pin_new(FdLink::try_from(prog.take_link(id)?)?, links, &name)
}

fn clsact(ebpf: &mut Ebpf, iface: &str) -> AttachResult {
    // The qdisc may be there already (ours from a previous run, or another
    // tool's): either way filters can be added to it.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        tracing::debug!(%iface, error = %e, "clsact qdisc not added (already there?)");
    }
    // A previous run's filter: replaced, not stacked.
    let _ = tc::qdisc_detach_program(iface, TcAttachType::Ingress, program_names::TC_PEER);
    let prog: &mut SchedClassifier = program(ebpf, program_names::TC_PEER)?;
    let id = prog.attach_with_options(
        iface,
        TcAttachType::Ingress,
        TcAttachOptions::Netlink(tc::NlOptions::default()),
    )?;
    // Dropping the link would detach the filter; it stays on the qdisc
    // after the agent exits, as a pinned link would.
    std::mem::forget(prog.take_link(id)?);
    Ok(())
}
