//! BPF_PROG_TEST_RUN of a loaded program, for `portcullis bench-dataplane`
//! (feature `bench` only: the agent never runs programs itself).
//!
//! Kernel: BPF_PROG_TEST_RUN for XDP (4.12), tc (4.12) and cgroup_skb (5.10
//! with a context).
use agent_common::program_names;
use aya::programs::{CgroupSkb, ProgramError, SchedClassifier, Xdp};

use super::{loader::program, Dataplane, DataplaneError, Result};

impl Dataplane {
    /// Runs the XDP, the tc or a cgroup_skb program `repeat` times on `packet` (an
    /// Ethernet frame) under BPF_PROG_TEST_RUN, attached nowhere: its return
    /// value and the kernel's mean time per run. `ifindex` (cgroup_skb only)
    /// makes the packet arrive on that device instead of loopback (kernel ≥
    /// 5.10 for `ifindex` in the test context). For `portcullis
    /// bench-dataplane`; loads a program `open` did not.
    pub(crate) fn test_run(
        &mut self,
        name: &'static str,
        packet: &[u8],
        ifindex: Option<u32>,
        repeat: u32,
    ) -> Result<(u32, std::time::Duration)> {
        use aya::{TestRun, TestRunOptions};
        // The leading fields of `struct __sk_buff` up to `ifindex` (offset
        // 40); the kernel takes the rest as zero.
        let mut skb_ctx = [0u8; 44];
        if let Some(i) = ifindex {
            skb_ctx[40..44].copy_from_slice(&i.to_ne_bytes());
        }
        let opts = TestRunOptions {
            data_in: Some(packet),
            ctx_in: ifindex.map(|_| &skb_ctx[..]),
            repeat,
            ..TestRunOptions::new()
        };
        let load_err = |source| DataplaneError::ProgramLoad {
            program: name,
            source,
        };
        let result = if name == program_names::XDP {
            let prog: &mut Xdp = program(&mut self.ebpf, name)?;
            match prog.load() {
                Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
                Err(source) => return Err(load_err(source)),
            }
            prog.test_run(opts)
        } else if name == program_names::TC_PEER {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            match prog.load() {
                Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
                Err(source) => return Err(load_err(source)),
            }
            prog.test_run(opts)
        } else {
            let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            match prog.load() {
                Ok(()) | Err(ProgramError::AlreadyLoaded) => {}
                Err(source) => return Err(load_err(source)),
            }
            prog.test_run(opts)
        }
        .map_err(|source| DataplaneError::TestRun {
            program: name,
            source,
        })?;
        Ok((result.return_value, result.duration))
    }
}
