//! Usage of local grant entries, counted by the hooks on an allowed
//! decision: how many connections (and unconnected datagrams) each entry
//! admitted, and when it was first and last used. What `list --usage`,
//! `report unused`, the metrics, the end-of-grant audit records and idle
//! timeouts read.
//!
//! Only the entry that decided is counted (the first live match of uid,
//! gid, then the cgroup walk), so use by another identity never counts
//! towards someone else's grant. Entries are created here at first use
//! (only for keys that just matched a live `GRANTS` entry, so the map never
//! holds more than the grants do, plus what the agent has not yet swept)
//! and deleted by the agent when the grant entry goes. Per CPU: no
//! atomics, no lost counts; one hash lookup and three stores per admitted
//! connection.
use agent_common::{GrantKey, Usage};
use aya_ebpf::bindings::BPF_NOEXIST;

use crate::{
    decide::LocalMatch,
    maps::{PC_USAGE_ON, USAGE},
};

/// Counts an admitted connection or datagram against the entry that
/// admitted it (`connection` false: a later packet of an admitted flow,
/// which only refreshes the last use).
#[inline(always)]
pub fn record(segment: u32, found: &LocalMatch, now: u64, connection: bool) {
    record_key(segment, found.kind(), found.id, now, connection);
}

/// [`record`] for the entry (`kind`, `segment`, `id`); nothing for kind 0.
#[inline(always)]
pub fn record_key(segment: u32, kind: u32, id: u64, now: u64, connection: bool) {
    // SAFETY: a read of a constant the loader set; volatile so the
    // compiler does not fold the default in.
    if unsafe { core::ptr::read_volatile(&PC_USAGE_ON) } == 0 || kind == 0 {
        return;
    }
    let key = GrantKey { kind, segment, id };
    let add = connection as u64;
    match USAGE.get_ptr_mut(&key) {
        // SAFETY: the pointer is this CPU's slot of an entry just looked
        // up; programs do not migrate between CPUs while they run.
        Some(u) => unsafe {
            (*u).connections += add;
            if (*u).first_boot_ns == 0 {
                (*u).first_boot_ns = now;
            }
            (*u).last_boot_ns = now;
        },
        None => {
            // Full map or a racing insert: this use is not counted.
            let _ = USAGE.insert(
                &key,
                &Usage {
                    connections: add,
                    first_boot_ns: now,
                    last_boot_ns: now,
                },
                BPF_NOEXIST as u64,
            );
        }
    }
}
