//! `portcullis bench-dataplane` (hidden; run by `cargo xtask bench`): the
//! per-packet cost of the real XDP and cgroup_skb programs under
//! BPF_PROG_TEST_RUN, with 1 to 1,000,000 grants in the maps.
//!
//! Owns building the test frames, filling the maps through [`Dataplane`]
//! (loaded into a bpffs directory of its own and attached nowhere), and
//! printing the kernel's nanoseconds per run as one JSON document on
//! stdout. Statistics, tables and goals are `xtask bench`'s business.
//!
//! What each case exercises, checked by the program's return value so that
//! a case can never silently measure another path:
//! - XDP, non-IP frame (ARP): one Ethernet parse step, then pass.
//! - XDP, unprotected port: parse to the TCP ports, one array load, pass.
//! - XDP, allowed: a protected port from a source covered by a `peer:`
//!   entry (one LPM-trie lookup among N entries), pass.
//! - XDP, denied: the same from a source no entry covers, drop. Nothing
//!   reads the deny-event ring here, so after the first few thousand runs
//!   the ring is full and the event write fails fast.
//! - cgroup_skb egress: BPF_PROG_TEST_RUN gives the packet a fresh socket
//!   that connect4/6 never marked, so this is the path of every unmarked
//!   flow (one socket-storage lookup, pass), whatever the port.
//! - cgroup_skb ingress peer check (`skb_ingress_*`): a SYN arriving on a
//!   real, non-loopback device for a listener's port: unprotected (one
//!   array load, pass), allowed peer (host-map lookup among N, pass),
//!   denied peer (drop). BPF_PROG_TEST_RUN gives a blank socket, so these
//!   run `pc_skb_ingress_bench`, the same decision with the listener's
//!   protocol and port read from the packet instead of the socket (two
//!   loads more than the real program's socket-field reads).
//! - `*_debug_on`: the same with kernel debug lines switched on (the
//!   cases without the suffix run with it off, the default). Nothing reads
//!   the debug ring and each CPU may write 64 lines a second, so nearly
//!   every run pays for the switch, the budget check and nothing more:
//!   debug on under a flood.
//! - tc (`pc_tc_peer`, the peer filter on virtual devices): the XDP
//!   cases' frames through the tc entry point (unprotected, allowed,
//!   denied).
//! - `*_allowed_standing`: a source covered by a standing `peer:` allow
//!   (a policy entry, no expiry: what the comparison bench's peers are),
//!   one host among the N granted ones.
//! - The floors: two-instruction XDP and tc programs (`r0 = XDP_PASS;
//!   exit`, `r0 = TC_ACT_OK; exit`), loaded with raw bpf(2) calls: the
//!   cost of BPF_PROG_TEST_RUN itself (`xdp_empty`, `tc_empty`).
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use agent_common::{
    kind, program_names, GrantKey, Proto, DEFAULT_MAX_GRANTS, DEFAULT_MAX_PEERS, NEVER,
};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::{
    clock,
    dataplane::{self, Dataplane, DataplaneConfig},
    ledger::{Change, EntryKey},
};

/// The segment id the benchmark protects its port with.
const SEGMENT: u32 = 1;
/// Map writes per `Dataplane::apply` call while filling.
const FILL_CHUNK: usize = 8192;
const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const SKB_PASS: u32 = 1;
const SKB_DROP: u32 = 0;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// Flags of `portcullis bench-dataplane`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// A bpffs directory for this run's pinned maps (created; removed at the end).
    #[arg(long)]
    pub bpffs: PathBuf,
    /// Grant counts to measure at, ascending (the maps grow from one to the next).
    #[arg(long, value_delimiter = ',', default_value = "1,10000,100000,1000000")]
    pub grants: Vec<u32>,
    /// Runs per BPF_PROG_TEST_RUN call (the kernel reports their mean).
    #[arg(long, default_value_t = 100_000)]
    pub repeat: u32,
    /// BPF_PROG_TEST_RUN calls per case.
    #[arg(long, default_value_t = 9)]
    pub runs: u32,
    /// The protected TCP port in the test frames.
    #[arg(long, default_value_t = 15432)]
    pub port: u16,
    /// Load the programs with discovery off (the agent's `--no-discovery`),
    /// to compare the ingress cases with and without it.
    #[arg(long)]
    pub no_discovery: bool,
}

/// Removes the run's pins however the run ends.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = dataplane::uninstall(&self.0) {
            eprintln!(
                "portcullis bench-dataplane: removing {} failed: {e}",
                self.0.display()
            );
        }
    }
}

pub(crate) fn main(args: BenchArgs) -> std::process::ExitCode {
    match run(&args) {
        Ok(doc) => {
            println!("{doc}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis bench-dataplane: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &BenchArgs) -> anyhow::Result<Value> {
    if args.grants.is_empty() || args.grants.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--grants must be ascending and non-empty");
    }
    if args.grants[0] == 0 || args.repeat == 0 || args.runs == 0 {
        bail!("--grants, --repeat and --runs must be at least 1");
    }
    let most = *args.grants.last().expect("non-empty");
    let capacity = most.saturating_add(most / 10 + 16);
    let _pins = PinGuard(args.bpffs.clone());
    let mut dp = Dataplane::open(&DataplaneConfig {
        bpffs: args.bpffs.clone(),
        // Never attached: `attach` would fail to open this path.
        cgroup: PathBuf::from("/nonexistent/bench-dataplane-attaches-nowhere"),
        max_grants: capacity.max(DEFAULT_MAX_GRANTS),
        max_peers: capacity.max(DEFAULT_MAX_PEERS),
        xdp_ifaces: Vec::new(),
        discovery: !args.no_discovery,
        placement: Default::default(),
    })
    .context("loading the programs")?;
    dp.set_port(Proto::Tcp, args.port, SEGMENT)?;
    // The debug switch for the `*_debug_on` cases. Nothing reads the debug
    // ring, as nothing reads the deny ring: those cases measure debug on
    // under a flood, where the per-CPU budget refuses almost every line.
    let kernel_log =
        crate::kernlog::KernelLog::open(dp.ebpf_mut()).context("opening the kernel debug maps")?;
    let debug = kernel_log.switch();

    let floor = EmptyProg::load(BPF_PROG_TYPE_XDP).context("loading the empty XDP program")?;
    let tc_floor =
        EmptyProg::load(BPF_PROG_TYPE_SCHED_CLS).context("loading the empty tc program")?;
    // The ingress cases need a packet that arrives from the network: any
    // device but loopback. Without one they are left out (and say so).
    let ifindex = nix::net::if_::if_nameindex()
        .ok()
        .and_then(|l| l.iter().map(|i| i.index()).find(|&i| i > 1));
    if ifindex.is_none() {
        eprintln!("portcullis bench-dataplane: no network device besides loopback; the skb_ingress cases are left out");
    }
    let arp = arp_frame();
    let mut sizes = Vec::new();
    let mut filled = 0u32;
    for &n in &args.grants {
        let started = Instant::now();
        fill(&mut dp, filled, n)?;
        let fill_time = started.elapsed();
        filled = n;
        let allowed = peer_addr(n / 2);
        let denied = peer_addr(n + 1);
        let mut cases: Vec<(&str, &'static str, Vec<u8>, u32)> = vec![
            ("xdp_non_ip", program_names::XDP, arp.clone(), XDP_PASS),
            (
                "xdp_unprotected",
                program_names::XDP,
                tcp_syn(allowed, args.port.wrapping_add(1)),
                XDP_PASS,
            ),
            (
                "xdp_allowed",
                program_names::XDP,
                tcp_syn(allowed, args.port),
                XDP_PASS,
            ),
            (
                "xdp_denied",
                program_names::XDP,
                tcp_syn(denied, args.port),
                XDP_DROP,
            ),
            (
                "skb_unmarked",
                program_names::SKB_EGRESS,
                tcp_syn(allowed, args.port),
                SKB_PASS,
            ),
        ];
        cases.extend([
            (
                "tc_unprotected",
                program_names::TC_PEER,
                tcp_syn(allowed, args.port.wrapping_add(1)),
                TC_ACT_OK,
            ),
            (
                "tc_allowed",
                program_names::TC_PEER,
                tcp_syn(allowed, args.port),
                TC_ACT_OK,
            ),
            (
                "tc_allowed_standing",
                program_names::TC_PEER,
                tcp_syn(STANDING_PEER, args.port),
                TC_ACT_OK,
            ),
            (
                "xdp_allowed_standing",
                program_names::XDP,
                tcp_syn(STANDING_PEER, args.port),
                XDP_PASS,
            ),
            (
                "tc_denied",
                program_names::TC_PEER,
                tcp_syn(denied, args.port),
                TC_ACT_SHOT,
            ),
        ]);
        cases.extend([
            (
                "xdp_allowed_debug_on",
                program_names::XDP,
                tcp_syn(allowed, args.port),
                XDP_PASS,
            ),
            (
                "xdp_denied_debug_on",
                program_names::XDP,
                tcp_syn(denied, args.port),
                XDP_DROP,
            ),
        ]);
        if ifindex.is_some() {
            cases.extend([
                (
                    "skb_ingress_unprotected",
                    program_names::SKB_INGRESS_BENCH,
                    tcp_syn(allowed, args.port.wrapping_add(1)),
                    SKB_PASS,
                ),
                (
                    "skb_ingress_allowed",
                    program_names::SKB_INGRESS_BENCH,
                    tcp_syn(allowed, args.port),
                    SKB_PASS,
                ),
                (
                    "skb_ingress_denied",
                    program_names::SKB_INGRESS_BENCH,
                    tcp_syn(denied, args.port),
                    SKB_DROP,
                ),
                (
                    "skb_ingress_denied_debug_on",
                    program_names::SKB_INGRESS_BENCH,
                    tcp_syn(denied, args.port),
                    SKB_DROP,
                ),
            ]);
        }
        let mut entry = serde_json::Map::new();
        entry.insert("grants".into(), json!(n));
        entry.insert("fill_ms".into(), json!(fill_time.as_secs_f64() * 1e3));
        // One unmeasured call per case first (caches, the deny ring), then
        // the cases round-robin, so that drift on a shared machine spreads
        // over all of them instead of landing on one.
        let mut ns: Vec<Vec<u64>> = vec![Vec::new(); cases.len() + 2];
        for round in 0..=args.runs {
            for (i, (label, program, frame, expect)) in cases.iter().enumerate() {
                let on = (*program == program_names::SKB_INGRESS_BENCH)
                    .then_some(ifindex)
                    .flatten();
                debug.set(label.ends_with("_debug_on"))?;
                let (ret, per_run) = dp.test_run(program, frame, on, args.repeat)?;
                if ret != *expect {
                    bail!("{label} with {n} grants: {program} returned {ret}, expected {expect}: the case does not measure the path it names");
                }
                if round > 0 {
                    ns[i].push(per_run.as_nanos() as u64);
                }
            }
            let (ret, per_run) = floor.test_run(&arp, args.repeat)?;
            if ret != XDP_PASS {
                bail!("the empty XDP program returned {ret}");
            }
            if round > 0 {
                ns[cases.len()].push(per_run.as_nanos() as u64);
            }
            let (ret, per_run) = tc_floor.test_run(&arp, args.repeat)?;
            if ret != TC_ACT_OK {
                bail!("the empty tc program returned {ret}");
            }
            if round > 0 {
                ns[cases.len() + 1].push(per_run.as_nanos() as u64);
            }
        }
        for (i, (label, ..)) in cases.iter().enumerate() {
            entry.insert((*label).into(), json!(ns[i]));
        }
        entry.insert("xdp_empty".into(), json!(ns[cases.len()]));
        entry.insert("tc_empty".into(), json!(ns[cases.len() + 1]));
        sizes.push(Value::Object(entry));
    }
    drop(kernel_log);
    Ok(json!({
        "repeat": args.repeat,
        "runs": args.runs,
        "capacity": capacity,
        "sizes": sizes,
    }))
}

/// A peer with a standing allow (`peer:` in the policy: no expiry), beside
/// the N granted ones; outside their range at every N measured.
const STANDING_PEER: [u8; 4] = [192, 0, 2, 1];

/// The address of the i-th granted peer: 10.0.0.0 + i, so that every
/// lookup walks a trie as deep as N entries make it.
fn peer_addr(i: u32) -> [u8; 4] {
    (0x0a00_0000u32 + i).to_be_bytes()
}

/// Grows the maps from `from` to `to` entries of each kind: uid grants in
/// PC_GRANTS (what connect4/6 and cgroup_skb look up) and /32 peers in
/// PC_PEER_HOSTS (what XDP looks up first; the prefix trie stays empty
/// here), all on [`SEGMENT`], live for an hour.
fn fill(dp: &mut Dataplane, from: u32, to: u32) -> anyhow::Result<()> {
    let expiry = clock::deadline_after(Duration::from_secs(3600));
    let mut changes = Vec::with_capacity(FILL_CHUNK);
    if from == 0 {
        changes.push(Change::Put(
            EntryKey::Peer {
                segment: SEGMENT,
                addr: agent_common::v4_mapped(STANDING_PEER),
                prefix: 128,
            },
            NEVER,
        ));
    }
    for i in from..to {
        changes.push(Change::Put(
            EntryKey::Local(GrantKey {
                kind: kind::UID,
                segment: SEGMENT,
                id: 1_000_000 + u64::from(i),
            }),
            expiry,
        ));
        changes.push(Change::Put(
            EntryKey::Peer {
                segment: SEGMENT,
                addr: agent_common::v4_mapped(peer_addr(i)),
                prefix: 128,
            },
            expiry,
        ));
        if changes.len() >= FILL_CHUNK {
            dp.apply(&changes)?;
            changes.clear();
        }
    }
    dp.apply(&changes)?;
    Ok(())
}

const BENCH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&BENCH_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP request: the frame XDP passes after reading the Ethernet header.
fn arp_frame() -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&BENCH_MAC);
    arp.extend_from_slice(&[10, 0, 0, 1]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 0, 0, 2]);
    ethernet(0x0806, &arp)
}

/// A TCP SYN from `src` to 198.51.100.1:`dport`, IPv4 without options.
fn tcp_syn(src: [u8; 4], dport: u16) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[198, 51, 100, 1]);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&40000u16.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes()); // seq
    tcp.extend_from_slice(&0u32.to_be_bytes()); // ack
    tcp.extend_from_slice(&[0x50, 0x02]); // data offset 5, SYN
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
    ip.extend_from_slice(&tcp);
    ethernet(0x0800, &ip)
}

/// The IPv4 header checksum.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The floors: an XDP program that only returns XDP_PASS, and a tc
/// program that only returns TC_ACT_OK. aya loads ELF objects only and
/// agent-ebpf holds only the real programs, so these two instructions go
/// through bpf(2) directly.
struct EmptyProg {
    fd: std::os::fd::OwnedFd,
}

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (linux/bpf.h);
/// the kernel treats the fields after them as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN, up to `batch_size`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;

impl EmptyProg {
    fn load(prog_type: u32) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // mov64 r0, XDP_PASS (2) or TC_ACT_OK (0); exit
        let ret = if prog_type == BPF_PROG_TYPE_XDP {
            XDP_PASS
        } else {
            TC_ACT_OK
        };
        let insns: [u64; 2] = [0xb7 | (u64::from(ret) << 32), 0x95];
        let license = b"GPL\0";
        let mut name = [0u8; 16];
        name[..12].copy_from_slice(b"pcbench_noop");
        let attr = ProgLoadAttr {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid, fully initialised prefix of bpf_attr for
        // this command, and the buffers it points to outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                size_of::<ProgLoadAttr>() as u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this new descriptor; we own it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { fd })
    }

    fn test_run(&self, packet: &[u8], repeat: u32) -> std::io::Result<(u32, Duration)> {
        use std::os::fd::AsRawFd;
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: packet.len() as u32,
            data_in: packet.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: as in `load`; the kernel writes only retval and duration
        // (no output buffers are given).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                size_of::<TestRunAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((attr.retval, Duration::from_nanos(u64::from(attr.duration))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_layout_the_parser_expects() {
        let f = tcp_syn([10, 0, 0, 7], 5432);
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[14 + 12..14 + 16], &[10, 0, 0, 7]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 5432);
        assert_eq!(f[14 + 20 + 13], 0x02, "a bare SYN");
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(&arp_frame()[12..14], &[0x08, 0x06]);
    }

    #[test]
    fn peers_are_consecutive_addresses() {
        assert_eq!(peer_addr(0), [10, 0, 0, 0]);
        assert_eq!(peer_addr(1_000_000), [10, 15, 66, 64]);
    }
}
