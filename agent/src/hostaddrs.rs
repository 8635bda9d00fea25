//! This host's addresses, for the kernel programs' "is this destination
//! local?" test, kept current by listening to rtnetlink address events.
//!
//! Owns the netlink subscription and the address scan; the dataplane owns
//! the map. Loopback ranges, `0.0.0.0` and `::` are local by rule in the
//! programs and need no entry.
use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use agent_common::v4_mapped;

/// Every address configured on an interface now, IPv4 as v4-mapped IPv6.
pub fn scan() -> io::Result<BTreeSet<[u8; 16]>> {
    let mut out = BTreeSet::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.insert(v4_mapped(v4.ip().octets()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.insert(v6.ip().octets());
        }
    }
    Ok(out)
}

/// Renders a key of the address map for logs.
pub fn display(addr: &[u8; 16]) -> String {
    let ip = std::net::Ipv6Addr::from(*addr);
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4).to_string(),
        None => IpAddr::V6(ip).to_string(),
    }
}

/// A netlink socket subscribed to address changes; readable when one happened.
pub struct AddressEvents {
    fd: OwnedFd,
}

impl AddressEvents {
    pub fn subscribe() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is a valid value; fields set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups =
            (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR | libc::RTMGRP_LINK) as u32;
        // SAFETY: `sa` is a properly initialised sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Reads and discards pending events; returns whether there were any.
    /// The content does not matter: any event triggers a full rescan.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: reading into a local buffer of the stated length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                // On ENOBUFS (overrun) events were lost: report "changed" so the caller rescans.
                if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                    any = true;
                    continue;
                }
                return any;
            }
            any = true;
        }
    }
}

impl AsRawFd for AddressEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_includes_loopback() {
        let addrs = scan().unwrap();
        assert!(
            addrs.contains(&v4_mapped([127, 0, 0, 1])),
            "{:?}",
            addrs.iter().map(display).collect::<Vec<_>>()
        );
    }

    #[test]
    fn display_unmaps_ipv4() {
        assert_eq!(display(&v4_mapped([10, 1, 2, 3])), "10.1.2.3");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(display(&v6), "::1");
    }
}
