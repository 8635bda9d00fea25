//! Where an agent's programs spend their time on real traffic: the
//! kernel's per-program run-time statistics (`run_time_ns`, `run_cnt`),
//! switched on only while the bench holds a BPF_ENABLE_STATS descriptor
//! (kernel ≥ 5.8), so that they are off again when the bench ends, however
//! it ends. Read with bpftool through the agent's pinned links, so that
//! programs of any other agent on the host are never counted.
use std::{
    collections::BTreeMap,
    fs,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
    process::Command,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::util;

/// Run-time statistics are collected while this lives.
pub(super) struct StatsOn(#[allow(dead_code)] OwnedFd);

const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

impl StatsOn {
    pub(super) fn enable() -> Result<Self> {
        let kind: u32 = BPF_STATS_RUN_TIME;
        // SAFETY: the attr for BPF_ENABLE_STATS is one u32, valid for the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &kind as *const u32,
                size_of::<u32>() as u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("BPF_ENABLE_STATS (needs kernel ≥ 5.8 and root)");
        }
        // SAFETY: a new descriptor the kernel just returned; we own it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// Cumulative (run_time_ns, run_cnt) per program name.
pub(super) type Snapshot = BTreeMap<String, (u64, u64)>;

fn bpftool_json(args: &[&str]) -> Result<Value> {
    let out = util::output(Command::new("bpftool").args(args))?;
    serde_json::from_str(&out)
        .with_context(|| format!("bpftool {} printed {out:?}", args.join(" ")))
}

/// The statistics of every program linked under an agent's bpffs directory.
pub(super) fn snapshot(bpffs: &Path) -> Result<Snapshot> {
    let mut out = Snapshot::new();
    for layout in fs::read_dir(bpffs)? {
        let links = layout?.path().join("links");
        let Ok(entries) = fs::read_dir(&links) else {
            continue;
        };
        for link in entries {
            let path = link?.path();
            let info = bpftool_json(&["link", "show", "pinned", &path.to_string_lossy(), "-j"])?;
            let id = info["prog_id"].as_u64().context("link without prog_id")?;
            let prog = bpftool_json(&["prog", "show", "id", &id.to_string(), "-j"])?;
            let name = prog["name"].as_str().unwrap_or("?").to_string();
            let time = prog["run_time_ns"].as_u64().unwrap_or(0);
            let count = prog["run_cnt"].as_u64().unwrap_or(0);
            let e = out.entry(name).or_default();
            e.0 += time;
            e.1 += count;
        }
    }
    Ok(out)
}

/// Cumulative (run_time_ns, run_cnt) of one program by id.
pub(super) fn by_id(id: u32) -> Result<(u64, u64)> {
    let prog = bpftool_json(&["prog", "show", "id", &id.to_string(), "-j"])?;
    Ok((
        prog["run_time_ns"].as_u64().unwrap_or(0),
        prog["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// Per program between two snapshots: (runs, nanoseconds).
pub(super) fn delta(before: &Snapshot, after: &Snapshot) -> BTreeMap<String, (u64, u64)> {
    after
        .iter()
        .map(|(name, &(t, c))| {
            let (t0, c0) = before.get(name).copied().unwrap_or_default();
            (name.clone(), (c.saturating_sub(c0), t.saturating_sub(t0)))
        })
        .filter(|(_, (runs, _))| *runs > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_keep_programs_that_ran() {
        let before: Snapshot = [("a".into(), (100, 10)), ("b".into(), (5, 1))].into();
        let after: Snapshot = [
            ("a".into(), (400, 20)),
            ("b".into(), (5, 1)),
            ("c".into(), (50, 2)),
        ]
        .into();
        let d = delta(&before, &after);
        assert_eq!(d.get("a"), Some(&(10, 300)));
        assert_eq!(d.get("b"), None);
        assert_eq!(d.get("c"), Some(&(2, 50)));
    }
}
