//! Kernel debug lines: which rule matched a decision, or why a connection
//! or packet was refused, written with aya-log into its ring
//! (`AYA_LOGS`) for the agent to forward into its log.
//!
//! Off by default. A hook first reads the switch ([`on`]: one load from a
//! one-entry array, which the verifier inlines, and a branch): that is all
//! debug costs while it is off. When on, each CPU writes at most
//! [`DEBUG_LINES_PER_SEC`] lines a second (the rest are counted and
//! dropped), and the ring is fixed at 128 KiB, so debug can neither flood
//! the agent's log nor use memory that was not reserved at load.
//!
//! Lines come from one subprogram ([`emit`]) that takes only integers,
//! so each hook pays for one call, not for a copy of aya-log's formatting
//! code per call site. Minimum kernel: 5.8 (ring buffer).
use agent_common::{hook, DebugBudget, DEBUG_LINES_PER_SEC};

use crate::{
    decide,
    maps::{DEBUG, DEBUG_BUDGET},
};

/// What a decision found. Below [`FIRST_DENY`]: the rule that let it
/// through; from it on: why it was refused.
pub mod reason {
    /// A grant to the caller's uid.
    pub const UID: u32 = 1;
    /// A grant to the caller's primary gid.
    pub const GID: u32 = 2;
    /// A grant to the caller's cgroup or one of its ancestors.
    pub const CGROUP: u32 = 3;
    /// A `peer:` entry for the single remote host.
    pub const PEER_HOST: u32 = 4;
    /// A `peer:` prefix covering the remote host.
    pub const PEER_PREFIX: u32 = 5;

    pub const FIRST_DENY: u32 = 16;
    /// No grant on the segment for the uid, gid or any cgroup level.
    pub const NO_GRANT: u32 = 16;
    /// A grant exists for the subject but its expiry has passed.
    pub const GRANT_EXPIRED: u32 = 17;
    /// No `peer:` entry covers the remote host.
    pub const NO_PEER: u32 = 18;
    /// The only `peer:` entries covering the remote host have expired.
    pub const PEER_EXPIRED: u32 = 19;
    /// XDP: the headers end before the transport ports.
    pub const TRUNCATED: u32 = 20;
    /// XDP: more VLAN tags than the parser walks.
    pub const VLAN_STACK: u32 = 21;
    /// XDP: an IP header that is not what its ethertype says, or too short.
    pub const BAD_IP_HEADER: u32 = 22;
    /// XDP: an IPv6 extension-header chain longer than the parser follows.
    pub const EXT_CHAIN: u32 = 23;
}

/// A reason and a cgroup level in one argument of [`emit`].
#[inline(always)]
pub fn code(why: u32, level: u32) -> u32 {
    why | (level << 8)
}

/// Whether debug lines are switched on (by the agent, at run time).
#[inline(always)]
pub fn on() -> bool {
    matches!(DEBUG.get(0), Some(&v) if v != 0)
}

/// Takes one line from this CPU's budget for the current second.
#[inline(always)]
fn take_budget(now: u64) -> bool {
    let Some(b) = DEBUG_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not migrate
    // while running, so nothing else writes it meanwhile.
    let b: &mut DebugBudget = unsafe { &mut *b };
    if now.wrapping_sub(b.window_ns) >= 1_000_000_000 {
        b.window_ns = now;
        b.used = 0;
    }
    if b.used >= DEBUG_LINES_PER_SEC {
        b.dropped = b.dropped.wrapping_add(1);
        return false;
    }
    b.used += 1;
    true
}

#[inline(always)]
fn hook_name(h: u32) -> &'static str {
    match h as u8 {
        hook::CONNECT4 => "connect4",
        hook::CONNECT6 => "connect6",
        hook::SENDMSG4 => "sendmsg4",
        hook::SENDMSG6 => "sendmsg6",
        hook::SKB_EGRESS => "skb_egress",
        hook::SKB_INGRESS => "skb_ingress",
        hook::XDP => "xdp",
        hook::TC => "tc",
        _ => "unknown",
    }
}

#[inline(always)]
fn reason_name(r: u32) -> &'static str {
    match r {
        reason::UID => "uid-grant",
        reason::GID => "gid-grant",
        reason::CGROUP => "cgroup-grant",
        reason::PEER_HOST => "peer-host",
        reason::PEER_PREFIX => "peer-prefix",
        reason::NO_GRANT => "no-grant",
        reason::GRANT_EXPIRED => "grant-expired",
        reason::NO_PEER => "no-peer-entry",
        reason::PEER_EXPIRED => "peer-expired",
        reason::TRUNCATED => "truncated-header",
        reason::VLAN_STACK => "vlan-stack-too-deep",
        reason::BAD_IP_HEADER => "bad-ip-header",
        reason::EXT_CHAIN => "ipv6-ext-chain-too-long",
        _ => "unknown",
    }
}

/// Writes one debug line, if this CPU's budget allows: `HOOK: allow|deny
/// REASON segment=S port=P id=ID [level=L]`. `id` is the matched or
/// refused uid, gid or cgroup id (0 for remote peers); `level` the cgroup
/// level of a cgroup match, packed with the reason by [`code`] (a BPF
/// call takes at most five arguments). Call only when [`on`].
#[inline(never)]
pub fn emit(hook: u32, code: u32, segment: u32, port: u32, id: u64) {
    if !take_budget(decide::now()) {
        return;
    }
    let why = code & 0xff;
    let level = code >> 8;
    let verdict = if why < reason::FIRST_DENY {
        "allow"
    } else {
        "deny"
    };
    if why == reason::CGROUP {
        aya_log_ebpf::info!(
            &(),
            "{}: {} {} segment={} port={} id={} level={}",
            hook_name(hook),
            verdict,
            reason_name(why),
            segment,
            port,
            id,
            level
        );
    } else {
        aya_log_ebpf::info!(
            &(),
            "{}: {} {} segment={} port={} id={}",
            hook_name(hook),
            verdict,
            reason_name(why),
            segment,
            port,
            id
        );
    }
}
