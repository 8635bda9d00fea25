//! XDP entry point of the peer filter, for physical NICs whose driver runs
//! XDP natively (the agent never attaches it in generic mode; virtual
//! devices get the tc entry point, `tc.rs`). The parsing and the decision
//! are `peer.rs`'s, shared with tc. Minimum kernel: 5.9 for XDP links.
use agent_common::hook;
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};

use crate::peer::{self, Frame, Verdict};

struct XdpFrame<'a>(&'a XdpContext);

impl Frame for XdpFrame<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        if start + offset + N > self.0.data_end() {
            return None;
        }
        // SAFETY: bounds checked against data_end just above (the caller
        // also bounds `offset`, which the verifier needs).
        Some(unsafe { *((start + offset) as *const [u8; N]) })
    }
}

#[xdp]
pub fn pc_xdp(ctx: XdpContext) -> u32 {
    // XDP sees the frame as it came off the wire: no tag taken off yet.
    match peer::judge(&XdpFrame(&ctx), hook::XDP, 0) {
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
    }
}
