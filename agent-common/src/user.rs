//! User-space conversions of the shared types (feature `user` only; the
//! eBPF programs never see them): map-key addresses ↔ `IpAddr`, protocols
//! ↔ names. `core::net` keeps the crate `no_std`.
use core::net::{IpAddr, Ipv6Addr};

use crate::{v4_mapped, Proto};

/// A map-key address (IPv6, IPv4 as v4-mapped) as an `IpAddr`: a
/// v4-mapped address is IPv4.
pub fn ip_of_key(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// An address as the maps key it: IPv4 as v4-mapped IPv6.
pub fn key_of_ip(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Proto {
    /// The protocol's name as users write it: `tcp`, `udp`.
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// From a name, in any case; `None` for anything else.
    pub fn from_name(s: &str) -> Option<Proto> {
        if s.eq_ignore_ascii_case("tcp") {
            Some(Proto::Tcp)
        } else if s.eq_ignore_ascii_case("udp") {
            Some(Proto::Udp)
        } else {
            None
        }
    }

    /// From an IP protocol number as the kernel reports it in a `u8`.
    pub const fn from_u8(n: u8) -> Option<Proto> {
        Proto::from_ip_proto(n as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses_round_trip_through_map_keys() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(key_of_ip(v4), v4_mapped([10, 1, 2, 3]));
        assert_eq!(ip_of_key(key_of_ip(v4)), v4);
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        assert_eq!(ip_of_key(key_of_ip(v6)), v6);
        // Unspecified IPv6 stays IPv6 (it is not v4-mapped).
        assert_eq!(ip_of_key([0; 16]), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in [Proto::Tcp, Proto::Udp] {
            assert_eq!(Proto::from_name(p.name()), Some(p));
            assert_eq!(Proto::from_u8(p as u8), Some(p));
        }
        assert_eq!(Proto::from_name("TCP"), Some(Proto::Tcp));
        assert_eq!(Proto::from_name("sctp"), None);
        assert_eq!(Proto::from_u8(132), None);
    }
}
