//! Keeping enforcement in force, and lifting it on purpose.
//!
//! Owns what the agent does with the dataplane's kernel check on every
//! heartbeat: repair at once, audit `enforcement_repaired` with what was
//! missing, log at error level, count it, and remember whether enforcement
//! is whole (the server pings the systemd watchdog only while it is, and
//! `status` exits non-zero while it is not). Also the `uninstall` control
//! operation: the agent records it, lets go of its links, removes its pins
//! and stops, so the audit chain keeps a single writer.
use tracing::{error, info, warn};

use super::{refuse, Agent};
use crate::{
    audit::AuditEvent,
    control::{EnforcementView, PeerCred, Refusal, RefusalCode, RepairView, Reply},
    state::Actor,
};

/// What the agent remembers between heartbeats.
#[derive(Clone, Debug, Default)]
pub(crate) struct Enforcement {
    pub repairs: u64,
    pub repair_failures: u64,
    pub last_repair: Option<RepairView>,
    pub cgroup_recreated_at: Option<String>,
    /// What was still missing after the last check, if anything.
    pub failing: Vec<String>,
    pub uninstalled: bool,
    /// The last check could not be made (out of descriptors): said once.
    pub unchecked: bool,
}

impl Agent {
    /// The heartbeat's check: asks the kernel, repairs what is missing,
    /// audits and logs each repair. True when enforcement is whole.
    pub(crate) fn check_enforcement(&mut self) -> bool {
        if self.enforcement.uninstalled {
            return false;
        }
        let (before, after) = self.kernel.repair();
        if let Some(why) = &before.unchecked {
            // Not evidence of tampering: keep the last verdict, say so once
            // per episode, and repair nothing on it.
            if !self.enforcement.unchecked {
                warn!(reason = %why, "could not check enforcement against the kernel; keeping the last result until a check succeeds");
            }
            self.enforcement.unchecked = true;
            return self.enforcement.failing.is_empty();
        }
        self.enforcement.unchecked = false;
        if before.ok() && !before.cgroup_recreated {
            self.enforcement.failing.clear();
            return true;
        }
        let at = crate::clock::rfc3339(std::time::SystemTime::now());
        let mut missing = before.missing.clone();
        if before.cgroup_recreated {
            missing.insert(
                0,
                format!(
                    "the attach cgroup {} was removed and recreated",
                    self.kernel.cgroup().display()
                ),
            );
            if after.ok() {
                self.enforcement.cgroup_recreated_at = Some(at.clone());
            }
        }
        let ok = after.ok() && !after.cgroup_recreated;
        // A failure that persists is audited and logged once, not on every
        // heartbeat (the agent retries the repair on each).
        let news = ok || self.enforcement.failing != after.missing;
        if news {
            let _ = self.audit.record(AuditEvent::EnforcementRepaired {
                missing: missing.clone(),
                ok,
                still_missing: after.missing.clone(),
                cgroup: self.kernel.cgroup().display().to_string(),
                actor: Actor::agent(),
            });
        }
        if ok {
            self.enforcement.repairs += 1;
            error!(missing = ?missing, "enforcement was missing in the kernel; repaired");
        } else {
            self.enforcement.repair_failures += 1;
            if news {
                error!(missing = ?missing, still_missing = ?after.missing,
                    "enforcement is missing in the kernel and could not be repaired; not pinging the watchdog until it is");
            }
        }
        self.enforcement.last_repair = Some(RepairView { at, missing, ok });
        self.enforcement.failing = after.missing;
        ok
    }

    /// Whether the last check found enforcement whole.
    pub(crate) fn enforcing(&self) -> bool {
        !self.enforcement.uninstalled && self.enforcement.failing.is_empty()
    }

    /// `status`'s view: asks the kernel now.
    pub(super) fn enforcement_view(&self) -> (Vec<String>, EnforcementView) {
        let e = &self.enforcement;
        if e.uninstalled {
            return (
                Vec::new(),
                EnforcementView {
                    ok: false,
                    missing: vec!["uninstalled: nothing is pinned or attached".into()],
                    uninstalled: true,
                    ..EnforcementView::default()
                },
            );
        }
        let check = self.kernel.check();
        let mut missing = check.missing.clone();
        if check.cgroup_recreated {
            missing.push(format!(
                "the attach cgroup {} was recreated and has none of the programs yet",
                self.kernel.cgroup().display()
            ));
        }
        (
            check.attached,
            EnforcementView {
                ok: missing.is_empty(),
                missing,
                repairs: e.repairs,
                last_repair: e.last_repair.clone(),
                cgroup_recreated_at: e.cgroup_recreated_at.clone(),
                uninstalled: false,
            },
        )
    }

    /// `portcullis uninstall` through the agent (root only): audited first,
    /// then the links are released and the pins removed. The server stops
    /// the agent after replying.
    pub(crate) fn uninstall(&mut self, cred: &PeerCred) -> Result<Reply, Refusal> {
        if cred.uid != 0 {
            return Err(self.refused(
                cred,
                "uninstall",
                "",
                format!(
                    "uid {} may not uninstall: only root may lift enforcement",
                    cred.uid
                ),
            ));
        }
        let bpffs = self.kernel.bpffs().to_path_buf();
        let ports: Vec<String> = self
            .ports
            .keys()
            .map(|(proto, port)| format!("{port}/{}", proto_name(*proto)))
            .collect();
        let actor = Actor::from_uid(cred.uid, cred.pid);
        if let Err(e) = self.audit.record(AuditEvent::Uninstall {
            actor,
            bpffs: bpffs.display().to_string(),
            via: "agent".into(),
            ports: ports.clone(),
        }) {
            warn!(error = %e, "the uninstall could not be audited; lifting enforcement anyway");
        }
        self.kernel.release_links();
        let removed = crate::dataplane::uninstall(&bpffs).map_err(|e| {
            refuse(
                RefusalCode::Internal,
                format!("removing the pins under {} failed: {e}", bpffs.display()),
            )
        })?;
        self.enforcement.uninstalled = true;
        info!(bpffs = %bpffs.display(), removed = removed.len(), "uninstalled: enforcement lifted; stopping");
        Ok(Reply::Uninstalled {
            bpffs: bpffs.display().to_string(),
            removed: removed.len(),
            pid: std::process::id(),
            ports,
        })
    }
}

fn proto_name(p: agent_common::Proto) -> &'static str {
    p.name()
}
