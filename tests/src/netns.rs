//! A second "host" for remote-peer tests: a network namespace joined to the
//! test host by a veth pair the test creates (the host side is where the
//! agent attaches XDP). Addresses come from the benchmarking range
//! 198.18.0.0/15 and a ULA prefix, only ever on these links. Everything is
//! deleted on drop, also when the test fails.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A peer host in its own network namespace.
pub struct PeerHost {
    pub ns: String,
    /// The veth end in the test's namespace (attach XDP here).
    pub host_if: String,
    /// The veth end inside the peer namespace.
    pub peer_if: String,
    pub host_v4: Ipv4Addr,
    pub peer_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub peer_v6: Ipv6Addr,
    pub host_mac: [u8; 6],
    pub peer_mac: [u8; 6],
}

impl PeerHost {
    pub fn new() -> Self {
        crate::require_root();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // A /30 and a /64 unique to this process and call.
        let tag = (pid.wrapping_mul(31).wrapping_add(n)) & 0x3fff;
        let (b, c) = (18 + (tag >> 13) as u8 % 2, ((tag >> 5) & 0xff) as u8);
        let d = ((tag & 0x1f) as u8) * 4;
        let host_v4 = Ipv4Addr::new(198, b, c, d + 1);
        let peer_v4 = Ipv4Addr::new(198, b, c, d + 2);
        let host_v6: Ipv6Addr = format!("fd18:{:x}:{:x}::1", pid & 0xffff, n)
            .parse()
            .unwrap();
        let peer_v6: Ipv6Addr = format!("fd18:{:x}:{:x}::2", pid & 0xffff, n)
            .parse()
            .unwrap();
        let ns = format!("pcpeer-{pid}-{n}");
        let host_if = format!("pch{:x}{n}", pid & 0xffff);
        let peer_if = format!("pcp{:x}{n}", pid & 0xffff);
        let host_mac = [0x02, 0xaa, (pid >> 8) as u8, pid as u8, n as u8, 1];
        let peer_mac = [0x02, 0xaa, (pid >> 8) as u8, pid as u8, n as u8, 2];
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let me = Self {
            ns: ns.clone(),
            host_if: host_if.clone(),
            peer_if: peer_if.clone(),
            host_v4,
            peer_v4,
            host_v6,
            peer_v6,
            host_mac,
            peer_mac,
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link",
            "add",
            &host_if,
            "address",
            &mac(host_mac),
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
            "address",
            &mac(peer_mac),
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_v4}/30"), "dev", &host_if]);
        ip(&[
            "addr",
            "add",
            &format!("{host_v6}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{peer_v4}/30"),
            "dev",
            &peer_if,
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{peer_v6}/64"),
            "dev",
            &peer_if,
            "nodad",
        ]);
        ip(&["-n", &ns, "link", "set", &peer_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        me
    }

    /// A command run inside the peer namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Runs pc-probe inside the peer namespace (connect timeout `timeout_ms`).
    pub fn probe(&self, args: &[&str], timeout_ms: u64) -> crate::Outcome {
        let out = self
            .command(crate::probe_bin())
            .args(args)
            .env("PC_PROBE_TIMEOUT_MS", timeout_ms.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run pc-probe in netns");
        crate::outcome_of(&out, args)
    }

    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run in netns")
    }

    pub fn host_addr(&self, v6: bool, port: u16) -> SocketAddr {
        let ip: IpAddr = if v6 {
            self.host_v6.into()
        } else {
            self.host_v4.into()
        };
        SocketAddr::new(ip, port)
    }

    pub fn peer_cidr(&self, v6: bool) -> String {
        if v6 {
            format!("peer:{}/128", self.peer_v6)
        } else {
            format!("peer:{}/32", self.peer_v4)
        }
    }
}

impl Default for PeerHost {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PeerHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
