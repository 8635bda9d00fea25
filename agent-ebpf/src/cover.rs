//! The `cgroup:cgroup_mkdir` tracepoint: covers a cgroup re-created at a
//! path the agent named (a restarted unit, a `cgroup:` identity's directory
//! made again) before `mkdir` returns, so before any process can be moved
//! into it. The agent keeps owning the truth: it writes
//! [`CGROUP_COVER`] (path → the cgroup-kind entries identities resolved to
//! that path hold) and, when it re-resolves the new cgroup, writes the same
//! entries again (idempotent) and deletes those of ids that vanished.
//!
//! It fires for every cgroup created on the host, in every hierarchy: a
//! miss costs one hash lookup; only a hit in the cgroup2 hierarchy writes.
use agent_common::{kind, CoverKey, Expiry, GrantKey, COVER_ENTRIES, COVER_PATH_MAX};
use aya_ebpf::{
    helpers::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};

use crate::maps::{CGROUP_COVER, GRANTS};

/// Offsets in the event record (`/sys/kernel/tracing/events/cgroup/cgroup_mkdir/format`,
/// stable since the event's introduction in 4.13).
const ROOT_OFFSET: usize = 8;
const ID_OFFSET: usize = 16;
const PATH_OFFSET: usize = 24;

/// The hierarchy id of cgroup v2 (the default hierarchy is always 0).
const CGROUP2_ROOT: i32 = 0;

#[tracepoint]
pub fn pc_cgroup_mkdir(ctx: TracePointContext) -> u32 {
    // SAFETY: the offsets are those of the event's format; reads go
    // through bpf_probe_read_kernel, which fails cleanly on a bad address.
    let _ = unsafe { cover(&ctx) };
    0
}

unsafe fn cover(ctx: &TracePointContext) -> Result<(), i32> {
    let root: i32 = unsafe { ctx.read_at(ROOT_OFFSET)? };
    if root != CGROUP2_ROOT {
        return Ok(());
    }
    // __data_loc: offset of the string in the record (low 16 bits), its
    // length with the NUL (high 16 bits).
    let loc: u32 = unsafe { ctx.read_at(PATH_OFFSET)? };
    let (offset, len) = ((loc & 0xffff) as usize, (loc >> 16) as usize);
    // Longer than a key: never in the map (the agent leaves such paths to
    // its own re-resolution), and a truncated copy could match a shorter
    // covered path.
    if len == 0 || len > COVER_PATH_MAX + 1 {
        return Ok(());
    }
    let mut key = CoverKey {
        path: [0; COVER_PATH_MAX + 1],
    };
    let src = unsafe { (ctx.as_ptr() as *const u8).add(offset) };
    unsafe { bpf_probe_read_kernel_str_bytes(src, &mut key.path)? };
    // SAFETY: the value is only read, and entries are copied out at once.
    let Some(cover) = (unsafe { CGROUP_COVER.get(&key) }) else {
        return Ok(());
    };
    let id: u64 = unsafe { ctx.read_at(ID_OFFSET)? };
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let count = cover.count as usize;
    for i in 0..COVER_ENTRIES {
        if i >= count {
            break;
        }
        let entry = cover.entries[i];
        // Past its own deadline: nothing to cover. A strict entry's
        // freshness is decided at lookup (`decide::until`); its value,
        // flag and all, is copied as it is.
        if agent_common::expiry::deadline(entry.at_boot_ns) <= now {
            continue;
        }
        let key = GrantKey {
            kind: kind::CGROUP,
            segment: entry.segment,
            id,
        };
        let _ = GRANTS.insert(
            &key,
            &Expiry {
                at_boot_ns: entry.at_boot_ns,
            },
            0,
        );
    }
    Ok(())
}
