//! Kernel debug lines: the runtime switch and the forwarding into `tracing`.
//!
//! Owns the three per-load maps of the programs' debug output (see
//! `agent-ebpf/src/debug.rs`): the switch `PC_DEBUG` (off at every load),
//! the per-CPU budget `PC_DEBUG_BUDGET`, and aya-log's ring `AYA_LOGS`,
//! whose records it forwards into the agent's log at INFO with target
//! [`TARGET`], so that `PORTCULLIS_LOG` and the journal treat them like
//! any other line. It also answers `portcullis debug on|off` (root only).
//! It does not decide what the programs log or how often: the kernel side
//! does, within a fixed per-CPU budget, so a flood of refused packets
//! costs at most [`DEBUG_LINES_PER_SEC`] lines a second per CPU.
//!
//! None of these maps is pinned: a restarted agent starts with debug off,
//! and programs left attached by an agent that stopped write to a ring
//! nobody reads (cheaply: the budget still applies). Minimum kernel: 5.8.
use std::sync::{Arc, Mutex, OnceLock};

use agent_common::{map_names, DebugBudget, DEBUG_LINES_PER_SEC};
use aya::{
    maps::{Array, MapData, MapError, PerCpuArray},
    Ebpf,
};
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

use crate::control::{PeerCred, Refusal, RefusalCode, Reply};

/// The `tracing` target of every forwarded kernel line.
pub(crate) const TARGET: &str = "portcullis::kernel";

#[derive(Debug, thiserror::Error)]
pub(crate) enum KernelLogError {
    #[error("map {map} is missing from the eBPF object (was it built without debug support?)")]
    MissingMap { map: &'static str },
    #[error("opening the kernel debug ring {} failed", map_names::DEBUG_LOG)]
    Ring(#[source] aya_log::Error),
    #[error("{op} on map {map} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("watching the kernel debug ring for lines failed")]
    Watch(#[source] std::io::Error),
}

type Result<T, E = KernelLogError> = std::result::Result<T, E>;

/// Hands each aya-log record to `tracing`. The records are the programs'
/// own format strings with integer arguments: no text from a packet or a
/// user reaches them.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: TARGET, "{}", record.args());
    }

    fn flush(&self) {}
}

/// The switch and the budget maps of one load of the programs.
pub(crate) struct DebugSwitch {
    flag: Mutex<Array<MapData, u32>>,
    budget: PerCpuArray<MapData, DebugBudget>,
}

impl DebugSwitch {
    /// Turns the programs' debug lines on or off; they see it at their next run.
    pub(crate) fn set(&self, on: bool) -> Result<()> {
        self.flag
            .lock()
            .expect("debug switch lock")
            .set(0, u32::from(on), 0)
            .map_err(|source| KernelLogError::Map {
                map: map_names::DEBUG,
                op: "update",
                source,
            })
    }

    pub(crate) fn is_on(&self) -> Result<bool> {
        self.flag
            .lock()
            .expect("debug switch lock")
            .get(&0, 0)
            .map(|v| v != 0)
            .map_err(|source| KernelLogError::Map {
                map: map_names::DEBUG,
                op: "lookup",
                source,
            })
    }

    /// Lines the per-CPU budget dropped since the programs were loaded.
    pub(crate) fn dropped(&self) -> Result<u64> {
        let per_cpu = self
            .budget
            .get(&0, 0)
            .map_err(|source| KernelLogError::Map {
                map: map_names::DEBUG_BUDGET,
                op: "lookup",
                source,
            })?;
        Ok(per_cpu.iter().map(|b| u64::from(b.dropped)).sum())
    }
}

/// The debug maps of one load, taken out of the object.
pub(crate) struct KernelLog {
    logger: EbpfLogger<Forward>,
    switch: Arc<DebugSwitch>,
}

impl KernelLog {
    /// Takes the debug maps out of `ebpf` (after its programs are loaded,
    /// or while `self` lives: the programs hold the maps by descriptor).
    pub(crate) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take =
            |map: &'static str| ebpf.take_map(map).ok_or(KernelLogError::MissingMap { map });
        let flag =
            Array::try_from(take(map_names::DEBUG)?).map_err(|source| KernelLogError::Map {
                map: map_names::DEBUG,
                op: "open",
                source,
            })?;
        let budget = PerCpuArray::try_from(take(map_names::DEBUG_BUDGET)?).map_err(|source| {
            KernelLogError::Map {
                map: map_names::DEBUG_BUDGET,
                op: "open",
                source,
            }
        })?;
        let logger = EbpfLogger::init_with_logger(ebpf, Forward).map_err(KernelLogError::Ring)?;
        Ok(Self {
            logger,
            switch: Arc::new(DebugSwitch {
                flag: Mutex::new(flag),
                budget,
            }),
        })
    }

    #[cfg(feature = "bench")]
    pub(crate) fn switch(&self) -> Arc<DebugSwitch> {
        self.switch.clone()
    }

    /// Forwards lines on a task of its own for as long as the agent runs,
    /// and makes the switch the one `portcullis debug` turns.
    pub(crate) fn serve(self) -> Result<()> {
        let _ = SWITCH.set(self.switch.clone());
        // SAFETY: the logger owns the ring's descriptor and moves into the
        // AsyncFd, which drops the registration before the descriptor closes.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(self.logger, tokio::io::Interest::READABLE) }
                .map_err(|e| KernelLogError::Watch(e.into()))?;
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = ring.readable_mut().await else {
                    tracing::warn!(
                        "the kernel debug ring can no longer be read; kernel debug lines stop here"
                    );
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }
}

/// The switch of the running agent's programs (set by [`KernelLog::serve`]).
static SWITCH: OnceLock<Arc<DebugSwitch>> = OnceLock::new();

/// `portcullis debug [on|off]`: root only, since the lines name the uids
/// and cgroups of everyone refused. `None` only reports the state.
pub(crate) fn request(cred: &PeerCred, on: Option<bool>) -> Result<Reply, Refusal> {
    if cred.uid != 0 {
        return Err(Refusal::new(
            RefusalCode::Forbidden,
            format!(
                "uid {} may not use kernel debug: only root may (its lines name who was refused)",
                cred.uid
            ),
        ));
    }
    let Some(switch) = SWITCH.get() else {
        return Err(Refusal::new(
            RefusalCode::Unavailable,
            "kernel debug lines are not available in this agent (see its log at start-up)",
        ));
    };
    let internal = |e: KernelLogError| Refusal::new(RefusalCode::Internal, format!("{e}"));
    if let Some(on) = on {
        switch.set(on).map_err(internal)?;
        tracing::info!(
            uid = cred.uid,
            pid = cred.pid,
            "kernel debug lines {}",
            if on { "on" } else { "off" }
        );
    }
    Ok(Reply::Debug {
        on: switch.is_on().map_err(internal)?,
        dropped: switch.dropped().map_err(internal)?,
        lines_per_sec: DEBUG_LINES_PER_SEC,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(uid: u32) -> PeerCred {
        PeerCred {
            uid,
            gid: uid,
            pid: None,
        }
    }

    #[test]
    fn only_root_may_use_kernel_debug() {
        for on in [None, Some(true), Some(false)] {
            let refusal = request(&cred(1000), on).unwrap_err();
            assert_eq!(refusal.code, RefusalCode::Forbidden);
            assert!(refusal.message.contains("only root"), "{}", refusal.message);
        }
    }

    #[test]
    fn root_without_loaded_programs_is_told_it_is_unavailable() {
        // No agent in this process served a KernelLog, so no switch is set.
        let refusal = request(&cred(0), Some(true)).unwrap_err();
        assert_eq!(refusal.code, RefusalCode::Unavailable);
    }

    #[test]
    fn the_debug_op_is_on_the_wire_as_documented() {
        use crate::control::{parse_request, Request};
        assert_eq!(
            parse_request(r#"{"op":"debug","on":true}"#).unwrap(),
            Request::Debug { on: Some(true) }
        );
        assert_eq!(
            parse_request(r#"{"op":"debug"}"#).unwrap(),
            Request::Debug { on: None }
        );
        assert!(parse_request(r#"{"op":"debug","on":"yes"}"#).is_err());
    }
}
