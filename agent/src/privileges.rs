//! What the agent needs from the kernel's permission system, checked up
//! front so that a start without it fails with one plain sentence instead
//! of a verifier refusal.
//!
//! Needed: CAP_BPF (load programs and maps), CAP_PERFMON (the verifier
//! rejects the programs' variable stack offsets for loaders without it),
//! CAP_NET_ADMIN (attach cgroup and XDP programs, destroy sockets).
//! CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as in the kernel.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in /proc/self/status).
pub(crate) fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// The capabilities missing from `eff`, by name.
pub(crate) fn missing(eff: u64) -> Vec<&'static str> {
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    let admin = has(CAP_SYS_ADMIN);
    let mut out = Vec::new();
    if !(has(CAP_BPF) || admin) {
        out.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || admin) {
        out.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    out
}

/// Fails with a plain message when the process cannot load and attach the programs.
pub(crate) fn check() -> anyhow::Result<()> {
    let Some(eff) = effective() else {
        return Ok(());
    };
    let missing = missing(eff);
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "portcullis agent needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; this process (uid {}) lacks {}",
        nix::unistd::geteuid(),
        missing.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000001000\n";
        assert_eq!(parse_cap_eff(status), Some(0xc0_0000_1000));
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert!(missing(1 << CAP_BPF | 1 << CAP_PERFMON | 1 << CAP_NET_ADMIN).is_empty());
        // CAP_SYS_ADMIN covers BPF and PERFMON, not NET_ADMIN.
        assert_eq!(missing(1 << CAP_SYS_ADMIN), vec!["CAP_NET_ADMIN"]);
        assert!(missing(u64::MAX).is_empty());
    }
}
