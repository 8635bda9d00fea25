//! tc ingress entry point of the peer filter, for veth and other virtual
//! devices (attached through tcx, kernel ≥ 6.6, else a clsact qdisc
//! filter): native XDP on a veth costs about a microsecond per connection
//! even with an empty program, tc ingress a sixth of that. The parsing and
//! the decision are `peer.rs`'s, shared with XDP; a drop is `TC_ACT_SHOT`.
//!
//! Before tc ingress the kernel has already taken the outermost VLAN tag off
//! the frame (into the skb's tag field); it counts as one walked, so a frame
//! is judged exactly as XDP judges it on the wire.
use agent_common::hook;
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};

use crate::peer::{self, Frame, Verdict};

struct SkbFrame<'a>(&'a TcContext);

impl Frame for SkbFrame<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // Direct packet access where the bytes are in the skb's linear
        // area (every header of an ordinary frame): a bounds check and a
        // load, where a bpf_skb_load_bytes call costs ~15-20 ns.
        let start = self.0.data();
        if start + offset + N <= self.0.data_end() {
            // SAFETY: bounds checked against data_end just above (the
            // caller also bounds `offset`, which the verifier needs).
            return Some(unsafe { *((start + offset) as *const [u8; N]) });
        }
        // Past the linear area (a sender may leave all but the Ethernet
        // header in pages): the helper reads there too, so a frame is
        // judged on the same bytes wherever the kernel keeps them.
        self.0.load::<[u8; N]>(offset).ok()
    }
}

#[classifier]
pub fn pc_tc_peer(ctx: TcContext) -> i32 {
    // SAFETY: `skb` is the program's context, valid for its whole run;
    // vlan_present is a readable __sk_buff field for tc programs.
    let stripped = unsafe { (*ctx.skb.skb).vlan_present };
    match peer::judge(&SkbFrame(&ctx), hook::TC, stripped.min(1)) {
        Verdict::Pass => TC_ACT_OK as i32,
        Verdict::Drop => TC_ACT_SHOT as i32,
    }
}
