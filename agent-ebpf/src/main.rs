//! Portcullis' kernel programs.
//!
//! Layout: [`maps`] declares every map (layouts from `agent-common`);
//! [`decide`] answers the one policy question every hook asks;
//! [`discovery`] counts who reaches which port; [`debug`] writes the optional debug lines (off unless the agent says); each hook
//! file (`connect.rs`, ...) is a thin entry point that reads its context and
//! calls `decide`. On the host this crate compiles to an empty program so the
//! workspace builds and tests with a plain `cargo`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `decide::epoch_ordered` needs a fetching atomic add, which `core`'s
// atomic types do not offer on the BPF target, and LLVM emits only for
// `-C target-cpu=v3` (the build uses `generic`): written in assembly.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod cover;
#[cfg(target_arch = "bpf")]
mod debug;
#[cfg(target_arch = "bpf")]
mod decide;
#[cfg(target_arch = "bpf")]
mod discovery;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod peer;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod usage;
#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
