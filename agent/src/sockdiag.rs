//! The netlink SOCK_DIAG shim: dumping this network namespace's TCP and
//! UDP sockets with their owner (uid, inode, cgroup id; the cgroup id
//! attribute needs kernel ≥ 5.7) and destroying one exact socket by its
//! cookie (`SOCK_DESTROY`, what `ss -K` does; needs
//! CONFIG_INET_DIAG_DESTROY, kernel ≥ 4.5). Which sockets to destroy is
//! `sweep`'s business.
//!
//! The wire format is the kernel's: messages are built and parsed by
//! netlink-packet-sock-diag over a netlink-sys socket; this module only
//! says which requests to send and what the answers mean.
//!
//! The programs drop the flow's packets: that is the guarantee. Destroying
//! the socket is the courtesy that makes its owner see an error at once
//! (ECONNABORTED locally; the remote side of a TCP connection gets a reset)
//! instead of waiting for TCP to give up.
//!
//! Safety rule: only the exact socket is ever destroyed: every destroy
//! names the socket's cookie, which the kernel checks, and excludes
//! listening sockets.
use std::{io, net::IpAddr, time::Duration};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla as _, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId as WireId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// Every TCP state but LISTEN (10).
pub(crate) const ALL_BUT_LISTEN: u32 = !(1 << 10);
/// Every state.
pub(crate) const ALL_STATES: u32 = !0;
/// `INET_DIAG_CGROUP_ID` (kernel ≥ 5.7): the socket's cgroup v2 id, sent
/// with every dumped socket.
const INET_DIAG_CGROUP_ID: u16 = 21;
/// How long an answer may take before a request fails.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// One socket from a dump, from its own point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DiagSocket {
    pub proto: u8,
    /// TCP state (`TCP_ESTABLISHED` = 1, ...); UDP uses 1 for connected, 7 for not.
    pub state: u8,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub cookie: u64,
    /// The socket's uid (the creator's fsuid).
    pub uid: u32,
    /// Its inode, to find the process holding it in /proc.
    pub inode: u32,
    /// Its cgroup v2 id, or 0 when the kernel did not say (before 5.7).
    pub cgroup_id: u64,
}

impl DiagSocket {
    pub(crate) fn id(&self) -> SocketId {
        SocketId {
            proto: self.proto,
            local: self.local,
            remote: self.remote,
            cookie: self.cookie,
        }
    }
}

/// One socket's identity, from its own point of view, with the cookie the
/// kernel checks on destroy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SocketId {
    pub proto: u8,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub cookie: u64,
}

impl SocketId {
    fn family(&self) -> u8 {
        match self.remote.0 {
            IpAddr::V4(_) => libc::AF_INET as u8,
            IpAddr::V6(_) => libc::AF_INET6 as u8,
        }
    }
}

/// `inet_diag_sockid.idiag_cookie` is `__u32[2]`, low word first, each in
/// host order.
fn cookie_bytes(cookie: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(cookie as u32).to_ne_bytes());
    b[4..].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    b
}

fn cookie_of(b: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let hi = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    lo as u64 | (hi as u64) << 32
}

/// The `inet_diag_req_v2` for `id` in address family `family`.
fn request(id: &SocketId, family: u8, states: u32) -> InetRequest {
    // An IPv4 address of an AF_INET6 socket is v4-mapped on the wire.
    let wire = |ip: IpAddr| match (family == libc::AF_INET6 as u8, ip) {
        (true, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        _ => ip,
    };
    InetRequest {
        family,
        protocol: id.proto,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(states),
        socket_id: WireId {
            source_port: id.local.1,
            destination_port: id.remote.1,
            source_address: wire(id.local.0),
            destination_address: wire(id.remote.0),
            interface_id: 0,
            cookie: cookie_bytes(id.cookie),
        },
    }
}

/// One dumped socket as this module reports it: IPv4 addresses of AF_INET6
/// sockets (v4-mapped) as IPv4, the cgroup id from its attribute.
fn socket_of(proto: u8, r: &InetResponse) -> DiagSocket {
    let h = &r.header;
    let cgroup_id = r
        .nlas
        .iter()
        .find_map(|n| match n {
            Nla::Other(a) if a.kind() == INET_DIAG_CGROUP_ID && a.value_len() == 8 => {
                let mut b = [0u8; 8];
                a.emit_value(&mut b);
                Some(u64::from_ne_bytes(b))
            }
            _ => None,
        })
        .unwrap_or(0);
    DiagSocket {
        proto,
        state: h.state,
        local: (
            h.socket_id.source_address.to_canonical(),
            h.socket_id.source_port,
        ),
        remote: (
            h.socket_id.destination_address.to_canonical(),
            h.socket_id.destination_port,
        ),
        cookie: cookie_of(h.socket_id.cookie),
        uid: h.uid,
        inode: h.inode,
        cgroup_id,
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DiagError {
    #[error("netlink SOCK_DIAG socket")]
    Socket(#[source] io::Error),
    #[error("SOCK_DIAG request failed")]
    Io(#[source] io::Error),
    #[error("cannot decode a SOCK_DIAG answer: {0}")]
    Decode(String),
    #[error(
        "the kernel refused SOCK_DESTROY: {0} (needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN)"
    )]
    Refused(io::Error),
}

/// A netlink SOCK_DIAG socket.
pub(crate) struct SockDiag {
    socket: Socket,
    seq: u32,
}

impl SockDiag {
    pub(crate) fn open() -> Result<Self, DiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Socket)?;
        socket.bind_auto().map_err(DiagError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(DiagError::Socket)?;
        let tv = nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| DiagError::Socket(e.into()))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request; returns its sequence number.
    fn send<T>(&mut self, flags: u16, payload: T) -> Result<u32, DiagError>
    where
        T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
        NetlinkPayload<T>: From<T>,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(DiagError::Io)?;
        Ok(self.seq)
    }

    /// Reads answers to request `seq`, handing each to `each` until it
    /// returns `Some`, or until the end of a dump (`None`).
    fn answers<R>(
        &self,
        seq: u32,
        mut each: impl FnMut(NetlinkPayload<SockDiagMessage>) -> Option<Result<R, DiagError>>,
    ) -> Result<Option<R>, DiagError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(DiagError::Io)?;
            if n == 0 {
                return Ok(None);
            }
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..n])
                    .map_err(|e| DiagError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    if let NetlinkPayload::Done(_) = msg.payload {
                        return Ok(None);
                    }
                    if let Some(r) = each(msg.payload) {
                        return r.map(Some);
                    }
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
    }

    /// Destroys exactly the socket `id` (its cookie is checked by the
    /// kernel; listeners are excluded). Returns whether a socket was
    /// destroyed (false when it is already gone).
    pub(crate) fn destroy(&mut self, id: &SocketId) -> Result<bool, DiagError> {
        let msg = SockDiagMessage::InetRequest(request(id, id.family(), ALL_BUT_LISTEN));
        let seq = self.send(NLM_F_REQUEST | NLM_F_ACK, SockDiagDestroy::new(msg))?;
        let answer = self.answers(seq, |payload| match payload {
            NetlinkPayload::Error(e) => Some(match e.code.map(|c| -c.get()) {
                None => Ok(true),
                Some(libc::ENOENT | libc::ESTALE) => Ok(false),
                Some(code) => Err(DiagError::Refused(io::Error::from_raw_os_error(code))),
            }),
            _ => None,
        })?;
        Ok(answer.unwrap_or(false))
    }

    /// Every `proto` socket of address family `family` (AF_INET, AF_INET6)
    /// in one of `states` (a bit mask of TCP states), in this network
    /// namespace. One netlink dump.
    pub(crate) fn dump(
        &mut self,
        proto: u8,
        family: u8,
        states: u32,
    ) -> Result<Vec<DiagSocket>, DiagError> {
        let unspecified = if family == libc::AF_INET as u8 {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        let any = SocketId {
            proto,
            local: (unspecified, 0),
            remote: (unspecified, 0),
            // INET_DIAG_NOCOOKIE: a dump ignores the cookie.
            cookie: !0,
        };
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_DUMP,
            SockDiagMessage::InetRequest(request(&any, family, states)),
        )?;
        let mut out = Vec::new();
        self.answers::<()>(seq, |payload| match payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                out.push(socket_of(proto, &r));
                None
            }
            NetlinkPayload::Error(e) => Some(match e.code {
                None => Ok(()),
                Some(c) => Err(DiagError::Io(io::Error::from_raw_os_error(-c.get()))),
            }),
            _ => None,
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, ParseableParametrized};
    use netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn request_layout_matches_inet_diag_req_v2() {
        let id = SocketId {
            proto: 6,
            local: ("127.0.0.1".parse().unwrap(), 40000),
            remote: ("127.0.0.2".parse().unwrap(), 5432),
            cookie: 0x1_0000_0002,
        };
        let req = request(&id, id.family(), 0xff);
        let mut b = vec![0u8; req.buffer_len()];
        req.emit(&mut b);
        assert_eq!(b.len(), 56);
        assert_eq!((b[0], b[1]), (libc::AF_INET as u8, 6));
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 0xff);
        assert_eq!(&b[8..12], &[0x9c, 0x40, 0x15, 0x38]);
        assert_eq!(&b[12..16], &[127, 0, 0, 1]);
        assert_eq!(&b[28..32], &[127, 0, 0, 2]);
        assert_eq!(u32::from_ne_bytes(b[48..52].try_into().unwrap()), 2);
        assert_eq!(u32::from_ne_bytes(b[52..56].try_into().unwrap()), 1);
        // An IPv4 flow asked of AF_INET6 sockets is v4-mapped.
        let v6 = request(&id, libc::AF_INET6 as u8, 0xff);
        assert_eq!(
            v6.socket_id.source_address,
            "::ffff:127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn cookies_round_trip_through_the_wire_layout() {
        for c in [0, 1, 0x1_0000_0002, u64::MAX] {
            assert_eq!(cookie_of(cookie_bytes(c)), c);
        }
    }

    #[test]
    fn parses_the_cgroup_id_attribute_after_the_message() {
        let mut m = vec![0u8; 72];
        m[0] = libc::AF_INET6 as u8;
        m[1] = 1;
        m[4..6].copy_from_slice(&40000u16.to_be_bytes());
        m[6..8].copy_from_slice(&5432u16.to_be_bytes());
        m[8..24].copy_from_slice(
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        m[24..40].copy_from_slice(
            &"::ffff:127.0.0.2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        m[44..52].copy_from_slice(&cookie_bytes(0x1_0000_0002));
        m[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        m[68..72].copy_from_slice(&77u32.to_ne_bytes());
        // INET_DIAG_SHUTDOWN (1 byte of payload, padded), then the cgroup id.
        m.extend_from_slice(&5u16.to_ne_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&12u16.to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        m.extend_from_slice(&0xabcdu64.to_ne_bytes());
        let SockDiagMessage::InetResponse(r) =
            SockDiagMessage::parse_with_param(&m[..], SOCK_DIAG_BY_FAMILY).unwrap()
        else {
            panic!("an inet response");
        };
        let d = socket_of(6, &r);
        assert_eq!(d.local, ("127.0.0.1".parse().unwrap(), 40000));
        assert_eq!(d.remote, ("127.0.0.2".parse().unwrap(), 5432));
        assert_eq!(
            (d.state, d.uid, d.inode, d.cgroup_id, d.cookie),
            (1, 1000, 77, 0xabcd, 0x1_0000_0002)
        );
    }

    /// The dumped socket of the client end of a live loopback connection.
    fn client_socket(diag: &mut SockDiag, client: &TcpStream) -> DiagSocket {
        let local = client.local_addr().unwrap();
        diag.dump(6, libc::AF_INET as u8, ALL_BUT_LISTEN)
            .unwrap()
            .into_iter()
            .find(|s| s.local == (local.ip(), local.port()))
            .expect("the client socket is in the dump")
    }

    /// Against the real kernel (needs CAP_NET_ADMIN; skipped otherwise):
    /// a live loopback connection is destroyed by its cookie, and its
    /// listener survives.
    #[test]
    fn destroys_exactly_the_connection_and_not_the_listener() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let id = client_socket(&mut diag, &client).id();
        assert!(
            diag.destroy(&id).unwrap(),
            "the connection was found and destroyed"
        );
        let mut buf = [0u8; 1];
        let err = io::Read::read(&mut &client, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
        assert!(!diag.destroy(&id).unwrap(), "second destroy finds nothing");
        // The listener still accepts.
        TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    }

    /// Against the real kernel (root only): the same addresses with another
    /// cookie destroy nothing, because the kernel checks the cookie.
    #[test]
    fn a_wrong_cookie_destroys_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let mut id = client_socket(&mut diag, &client).id();
        id.cookie ^= 1;
        assert!(!diag.destroy(&id).unwrap(), "nothing destroyed");
        io::Write::write_all(&mut &server_side, b"x").unwrap();
        let mut buf = [0u8; 1];
        io::Read::read_exact(&mut &client, &mut buf).unwrap();
        assert_eq!(&buf, b"x", "the connection still works");
    }

    /// Against the real kernel (root only): a dump finds a live loopback
    /// connection with this process's uid and cgroup id.
    #[test]
    fn a_dump_reports_the_owner_of_a_live_connection() {
        use std::os::unix::fs::MetadataExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _server = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let all = diag.dump(6, libc::AF_INET as u8, ALL_STATES).unwrap();
        let me = all
            .iter()
            .find(|s| s.local == (local.ip(), local.port()))
            .expect("the client socket is in the dump");
        assert_eq!(me.uid, 0);
        let cgroup = crate::cgroupfs::cgroup_of_pid(std::process::id()).unwrap();
        let mount = crate::cgroupfs::mount_point().unwrap();
        let id = std::fs::metadata(mount.join(cgroup.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(me.cgroup_id, id);
        assert!(
            all.iter().any(|s| s.state == 10),
            "listeners are dumped too"
        );
    }
}
