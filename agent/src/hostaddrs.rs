//! "This host", as the kernel sees it, for the programs' "is this
//! destination local?" test: every prefix the kernel delivers locally, kept
//! current by listening to rtnetlink address and route events.
//!
//! The source of truth is the kernel's own routing tables: the `local`,
//! `broadcast` and `anycast` routes of every table (`ip route show table
//! all type local`), which cover interface addresses, subnet broadcast
//! addresses and prefixes such as `ip route add local 198.18.104.0/24 dev
//! lo`. Interface addresses from `getifaddrs` are added too (a superset is
//! safe: it can only protect more). Loopback ranges, `0.0.0.0`, `::`,
//! limited broadcast and multicast are local by rule in the programs and
//! need no entry.
//!
//! Owns the netlink route dump and the event subscription (netlink-sys +
//! netlink-packet-route); the dataplane owns the map. Minimum kernel: any
//! with rtnetlink (route dumps of every table since 2.6).
use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsRawFd, RawFd},
};

use agent_common::v4_mapped;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A prefix the kernel delivers to this host: IPv6 bytes (IPv4 as
/// v4-mapped) and an IPv6 prefix length (IPv4 prefixes are 96 + n).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LocalNet {
    pub addr: [u8; 16],
    pub prefix: u8,
}

impl LocalNet {
    /// A single address (/128, or /32 for IPv4).
    pub(crate) fn host(addr: [u8; 16]) -> Self {
        Self { addr, prefix: 128 }
    }

    /// From an address and its own family's prefix length; host bits are
    /// cleared (the trie compares only the prefix, but keys stay canonical).
    pub(crate) fn new(ip: IpAddr, len: u8) -> Self {
        let (addr, prefix) = match ip {
            IpAddr::V4(v4) => (v4_mapped(v4.octets()), 96 + len.min(32)),
            IpAddr::V6(v6) => (v6.octets(), len.min(128)),
        };
        let mut masked = [0u8; 16];
        for (i, b) in addr.iter().enumerate() {
            let bits = (prefix as usize).saturating_sub(i * 8).min(8);
            let mask = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            masked[i] = b & mask;
        }
        Self {
            addr: masked,
            prefix,
        }
    }
}

impl std::fmt::Display for LocalNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = Ipv6Addr::from(self.addr);
        match ip.to_ipv4_mapped() {
            Some(v4) if self.prefix >= 96 => write!(f, "{v4}/{}", self.prefix - 96),
            _ => write!(f, "{ip}/{}", self.prefix),
        }
    }
}

/// Errors of the route dump.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostAddrsError {
    #[error("rtnetlink socket (NETLINK_ROUTE) failed")]
    Socket(#[source] io::Error),
    #[error("RTM_GETROUTE dump failed")]
    Dump(#[source] io::Error),
    #[error("the kernel answered the RTM_GETROUTE dump with error {0}")]
    Kernel(i32),
    #[error("cannot decode an rtnetlink route message: {0}")]
    Decode(String),
    #[error("listing interface addresses (getifaddrs) failed")]
    Ifaddrs(#[source] nix::Error),
}

/// Every prefix this host accepts as its own now: local, broadcast and
/// anycast routes of every routing table, plus every interface address.
pub(crate) fn scan() -> Result<BTreeSet<LocalNet>, HostAddrsError> {
    let mut out = local_routes()?;
    for ifa in nix::ifaddrs::getifaddrs().map_err(HostAddrsError::Ifaddrs)? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.insert(LocalNet::host(v4_mapped(v4.ip().octets())));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.insert(LocalNet::host(v6.ip().octets()));
        }
    }
    Ok(out)
}

/// The kernel's local, broadcast and anycast routes of every table (one
/// RTM_GETROUTE dump per family; `rtm_table` 0 asks for all tables).
pub(crate) fn local_routes() -> Result<BTreeSet<LocalNet>, HostAddrsError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(HostAddrsError::Socket)?;
    socket.bind_auto().map_err(HostAddrsError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(HostAddrsError::Socket)?;
    let mut out = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetRoute(msg)),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        socket.send(&buf, 0).map_err(HostAddrsError::Dump)?;
        read_dump(&socket, &mut out)?;
    }
    Ok(out)
}

/// Reads one dump's replies up to NLMSG_DONE, keeping the local routes.
fn read_dump(socket: &Socket, out: &mut BTreeSet<LocalNet>) -> Result<(), HostAddrsError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(HostAddrsError::Dump)?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..n])
                .map_err(|e| HostAddrsError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(HostAddrsError::Kernel(e.code.map(|c| c.get()).unwrap_or(0)))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                    if let Some(net) = local_net(&route) {
                        out.insert(net);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// The destination prefix of a route the kernel delivers locally.
fn local_net(route: &RouteMessage) -> Option<LocalNet> {
    if !matches!(
        route.header.kind,
        RouteType::Local | RouteType::Broadcast | RouteType::Anycast
    ) {
        return None;
    }
    let len = route.header.destination_prefix_length;
    let dst = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    match (dst, route.header.address_family) {
        (Some(ip), _) => Some(LocalNet::new(ip, len)),
        // No destination attribute: the default (0/0) route of its type.
        (None, AddressFamily::Inet) => Some(LocalNet::new(IpAddr::V4([0; 4].into()), 0)),
        (None, AddressFamily::Inet6) => Some(LocalNet::new(IpAddr::V6([0; 16].into()), 0)),
        _ => None,
    }
}

/// Renders a key of the local-address map for logs.
#[cfg(test)]
pub(crate) fn display(addr: &[u8; 16]) -> String {
    agent_common::ip_of_key(*addr).to_string()
}

/// A netlink socket subscribed to address, link and route changes;
/// readable when one happened.
pub(crate) struct AddressEvents {
    socket: Socket,
}

impl AddressEvents {
    pub(crate) fn subscribe() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for group in [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV6_IFADDR,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV6_ROUTE,
        ] {
            socket.add_membership(group)?;
        }
        socket.set_non_blocking(true)?;
        Ok(Self { socket })
    }

    /// Reads pending events; returns whether any could change "this host":
    /// an address or link change, or a local, broadcast or anycast route
    /// added or removed (ordinary route churn, as on a router, does not
    /// cost a rescan). Anything undecodable, or lost (ENOBUFS), counts.
    pub(crate) fn drain(&self) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let mut any = false;
        // Bounded: a burst larger than this is picked up on the next wake-up.
        for _ in 0..4096 {
            match self.socket.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                Ok(0) => return any,
                Ok(n) => any |= relevant(&buf[..n]),
                // On ENOBUFS (overrun) events were lost: report "changed" so the caller rescans.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
                Err(_) => return any,
            }
        }
        any
    }
}

/// Whether a datagram of rtnetlink notifications may change the local set.
fn relevant(mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
            return true;
        };
        let len = (msg.header.length as usize).max(1).min(bytes.len());
        let matters = match msg.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r),
            ) => matches!(
                r.header.kind,
                RouteType::Local | RouteType::Broadcast | RouteType::Anycast
            ),
            _ => true,
        };
        if matters {
            return true;
        }
        // Netlink messages are 4-byte aligned.
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
    }
    false
}

impl AsRawFd for AddressEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// This process's network namespace cookie (SO_NETNS_COOKIE, kernel ≥
/// 5.14), which the programs compare with `bpf_get_netns_cookie` to tell
/// the host's namespace from a container's; `None` on older kernels.
pub(crate) fn netns_cookie() -> Option<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
        .ok()?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a local u64.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && cookie != 0).then_some(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_includes_loopback_and_its_local_route() {
        let nets = scan().unwrap();
        assert!(
            nets.contains(&LocalNet::host(v4_mapped([127, 0, 0, 1]))),
            "{:?}",
            nets.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
        // `local 127.0.0.0/8 dev lo` is in every table local.
        assert!(nets.contains(&LocalNet::new("127.0.0.0".parse().unwrap(), 8)));
    }

    #[test]
    fn prefixes_are_canonical_and_display_in_their_family() {
        let n = LocalNet::new("198.18.104.77".parse().unwrap(), 24);
        assert_eq!(n.to_string(), "198.18.104.0/24");
        assert_eq!(n.prefix, 120);
        let n = LocalNet::new("fd00::1:2".parse().unwrap(), 64);
        assert_eq!(n.to_string(), "fd00::/64");
        assert_eq!(
            LocalNet::host(v4_mapped([10, 1, 2, 3])).to_string(),
            "10.1.2.3/32"
        );
    }

    #[test]
    fn display_unmaps_ipv4() {
        assert_eq!(display(&v4_mapped([10, 1, 2, 3])), "10.1.2.3");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(display(&v6), "::1");
    }

    #[test]
    fn only_local_route_events_count() {
        let event = |kind: RouteType| {
            let mut route = RouteMessage::default();
            route.header.address_family = AddressFamily::Inet;
            route.header.kind = kind;
            let mut packet = NetlinkMessage::new(
                NetlinkHeader::default(),
                NetlinkPayload::from(RouteNetlinkMessage::NewRoute(route)),
            );
            packet.finalize();
            let mut buf = vec![0; packet.buffer_len()];
            packet.serialize(&mut buf);
            buf
        };
        assert!(!relevant(&event(RouteType::Unicast)));
        assert!(relevant(&event(RouteType::Local)));
        assert!(relevant(&event(RouteType::Broadcast)));
        let mut two = event(RouteType::Unicast);
        two.extend(event(RouteType::Anycast));
        assert!(relevant(&two));
        assert!(relevant(b"garbage"));
    }

    #[test]
    fn this_process_has_a_netns_cookie() {
        assert!(netns_cookie().is_some());
    }
}
