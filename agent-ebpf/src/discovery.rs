//! Discovery: who reaches which local port, protected or not, counted in a
//! kernel map ([`DISCOVERY`], an LRU hash keyed by port, protocol and
//! identity) so that nothing is lost to a full ring buffer. The agent's
//! `portcullis discover` and `suggest` read it.
//!
//! The hooks call [`local`] (connect4/6, sendmsg4/6: a local process, by
//! cgroup, uid and gid) and [`peer`] (cgroup_skb ingress: a remote source
//! at connection set-up) with one line each, whether or not the port is
//! protected. Off (`PC_DISCOVERY_ON` = 0) costs one load. The caller hands
//! in what its own decision already read (the caller's uid/gid, the
//! decision's [`decide::Clock`]): on a protected port discovery then adds
//! one helper call (the cgroup id) and one LRU lookup to the connect, not
//! a second uid/gid call and a second clock read (~40 ns each here).
//!
//! Bounded: the map holds `DISCOVERY_ENTRIES`; when it is full the least
//! recently seen entries are evicted, so a process that makes up many
//! identities (many ports, cgroups it creates) can push older sightings
//! out, never grow memory. Minimum kernel: 4.10 (LRU hash), 5.8 (boot clock).
use agent_common::{seen, DiscoveryKey, Proto, Sighting};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_get_current_cgroup_id};

use crate::{
    decide,
    maps::{DISCOVERY, PC_DISCOVERY_ON},
};

/// Whether the agent turned discovery on.
#[inline(always)]
pub fn on() -> bool {
    // SAFETY: a read of a plain u32 the loader set; volatile so the
    // compiler does not fold the load-time value 0 into the code.
    unsafe { core::ptr::read_volatile(&PC_DISCOVERY_ON) != 0 }
}

/// The calling process, whose `bpf_get_current_uid_gid` is `uid_gid`,
/// reached local `port` (`clock`: the hook's, read here only if nothing
/// read it yet).
#[inline(always)]
pub fn local(proto: Proto, port: u16, uid_gid: u64, clock: &mut decide::Clock) {
    if !on() {
        return;
    }
    // SAFETY: a helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    record(
        &DiscoveryKey {
            port,
            proto: proto as u8,
            kind: seen::LOCAL,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            _pad: 0,
            cgroup_id,
            addr: [0; 16],
        },
        clock.get(),
    );
}

/// The remote source `addr` (v4-mapped for IPv4) reached local `port`
/// at `now` (the boot-time clock).
#[inline(always)]
pub fn peer(proto: Proto, port: u16, addr: [u8; 16], now: u64) {
    if !on() {
        return;
    }
    record(
        &DiscoveryKey {
            port,
            proto: proto as u8,
            kind: seen::PEER,
            uid: 0,
            gid: 0,
            _pad: 0,
            cgroup_id: 0,
            addr,
        },
        now,
    );
}

#[inline(always)]
fn record(key: &DiscoveryKey, now: u64) {
    if let Some(p) = DISCOVERY.get_ptr_mut(key) {
        // SAFETY: `p` points at this entry's value inside the map. Plain
        // 8-byte stores: two CPUs bumping the same key at the same instant
        // may lose one count (the BPF target offers no atomic add to
        // stable Rust); a sighting count, not an account.
        unsafe {
            (*p).count += 1;
            (*p).last_ns = now;
        }
        return;
    }
    // Lost races (another CPU inserted first) lose one count, no more.
    let _ = DISCOVERY.insert(
        key,
        &Sighting {
            first_ns: now,
            last_ns: now,
            count: 1,
        },
        BPF_NOEXIST as u64,
    );
}
