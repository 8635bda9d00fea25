//! The netlink SOCK_DIAG shim: dumping this network namespace's TCP and
//! UDP sockets with their owner (uid, inode, cgroup id; the cgroup id
//! attribute needs kernel ≥ 5.7) and destroying one exact socket
//! (`SOCK_DESTROY`, what `ss -K` does; needs CONFIG_INET_DIAG_DESTROY,
//! kernel ≥ 4.5). Which sockets to destroy is `sweep`'s business.
//!
//! The programs drop the flow's packets: that is the guarantee. Destroying
//! the socket is the courtesy that makes its owner see an error at once
//! (ECONNABORTED locally; the remote side of a TCP connection gets a reset)
//! instead of waiting for TCP to give up.
//!
//! Safety rule: only the exact socket is ever destroyed. With a cookie
//! (cgroup_skb knows it) the kernel checks it. Without one (XDP), the socket
//! is first found in a dump that excludes listening sockets, and destroyed
//! by its cookie, so a server's listener is never touched.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use agent_common::KillRequest;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_NOCOOKIE: u32 = !0;
/// Every TCP state but LISTEN (10).
pub const ALL_BUT_LISTEN: u32 = !(1 << 10);
/// Every state.
pub const ALL_STATES: u32 = !0;
/// `INET_DIAG_CGROUP_ID` (kernel ≥ 5.7): the socket's cgroup v2 id, sent
/// with every dumped socket.
const INET_DIAG_CGROUP_ID: u16 = 21;
/// Size of `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;

/// One socket from a dump, from its own point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
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
    pub fn id(&self) -> SocketId {
        SocketId {
            proto: self.proto,
            local: self.local,
            remote: self.remote,
            cookie: Some(self.cookie),
        }
    }
}

/// Parses one `SOCK_DIAG_BY_FAMILY` answer: `struct inet_diag_msg`, then
/// attributes. `None` when it is too short to be one.
fn parse_diag(proto: u8, m: &[u8]) -> Option<DiagSocket> {
    if m.len() < DIAG_MSG_LEN {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().expect("4 bytes"));
    let family = m[0];
    let mut cgroup_id = 0;
    let mut off = DIAG_MSG_LEN;
    while off + 4 <= m.len() {
        let len = u16::from_ne_bytes([m[off], m[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([m[off + 2], m[off + 3]]) & 0x3fff;
        if len < 4 || off + len > m.len() {
            break;
        }
        if ty == INET_DIAG_CGROUP_ID && len >= 12 {
            cgroup_id = u64::from_ne_bytes(m[off + 4..off + 12].try_into().expect("8 bytes"));
        }
        off += (len + 3) & !3;
    }
    Some(DiagSocket {
        proto,
        state: m[1],
        local: (
            read_addr(family, &m[8..24]),
            u16::from_be_bytes([m[4], m[5]]),
        ),
        remote: (
            read_addr(family, &m[24..40]),
            u16::from_be_bytes([m[6], m[7]]),
        ),
        cookie: u32_at(44) as u64 | (u32_at(48) as u64) << 32,
        uid: u32_at(64),
        inode: u32_at(68),
        cgroup_id,
    })
}

/// One socket's identity, from its own point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketId {
    pub proto: u8,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub cookie: Option<u64>,
}

fn ip_of(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl SocketId {
    pub fn from_request(r: &KillRequest) -> Self {
        Self {
            proto: r.proto,
            local: (ip_of(r.local_addr), r.local_port),
            remote: (ip_of(r.remote_addr), r.remote_port),
            cookie: (r.cookie != 0).then_some(r.cookie),
        }
    }

    fn family(&self) -> u8 {
        match self.remote.0 {
            IpAddr::V4(_) => libc::AF_INET as u8,
            IpAddr::V6(_) => libc::AF_INET6 as u8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("netlink SOCK_DIAG socket")]
    Socket(#[source] io::Error),
    #[error("SOCK_DIAG request failed")]
    Io(#[source] io::Error),
    #[error(
        "the kernel refused SOCK_DESTROY: {0} (needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN)"
    )]
    Refused(io::Error),
}

/// A netlink SOCK_DIAG socket.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

/// The netlink messages in a received buffer: (type, sequence, payload).
/// Stops at the first header that does not fit.
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let header = buf.get(off..off + 16)?;
        let len = u32::from_ne_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(header[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(header[8..12].try_into().expect("4 bytes"));
        let payload = &buf[off + 16..off + len];
        off += (len + 3) & !3;
        Some((ty, seq, payload))
    })
}

/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, sockid.
fn request(id: &SocketId, family: u8, states: u32, cookie: Option<u64>) -> [u8; 56] {
    let mut b = [0u8; 56];
    b[0] = family;
    b[1] = id.proto;
    b[4..8].copy_from_slice(&states.to_ne_bytes());
    // inet_diag_sockid at offset 8: sport, dport (big endian), src[16], dst[16], if, cookie[2].
    b[8..10].copy_from_slice(&id.local.1.to_be_bytes());
    b[10..12].copy_from_slice(&id.remote.1.to_be_bytes());
    put_addr(&mut b[12..28], id.local.0);
    put_addr(&mut b[28..44], id.remote.0);
    let (lo, hi) = match cookie {
        Some(c) => (c as u32, (c >> 32) as u32),
        None => (INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE),
    };
    b[48..52].copy_from_slice(&lo.to_ne_bytes());
    b[52..56].copy_from_slice(&hi.to_ne_bytes());
    b
}

fn put_addr(dst: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => dst[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => dst.copy_from_slice(&v6.octets()),
    }
}

fn read_addr(family: u8, src: &[u8]) -> IpAddr {
    if family == libc::AF_INET as u8 {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&src[..16]);
        ip_of(a)
    }
}

impl SockDiag {
    pub fn open() -> Result<Self, DiagError> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(DiagError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: setting a receive timeout with a valid timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Self { fd, seq: 0 })
    }

    fn send(&mut self, msg_type: u16, flags: u16, payload: &[u8]) -> Result<u32, DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&msg_type.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: sending a buffer we own, of its length, to the kernel (nl pid 0).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(DiagError::Io(io::Error::last_os_error()));
        }
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize, DiagError> {
        // SAFETY: receiving into a buffer we own, of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(DiagError::Io(io::Error::last_os_error()));
        }
        Ok(n as usize)
    }

    /// Destroys exactly the socket `id`. Returns whether a socket was
    /// destroyed (false when it is already gone).
    pub fn destroy(&mut self, id: &SocketId) -> Result<bool, DiagError> {
        let cookie = match id.cookie {
            Some(c) => c,
            None => match self.find_cookie(id)? {
                Some(c) => c,
                None => return Ok(false),
            },
        };
        let seq = self.send(
            SOCK_DESTROY,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            &request(id, id.family(), ALL_BUT_LISTEN, Some(cookie)),
        )?;
        let mut buf = [0u8; 512];
        loop {
            let n = self.recv(&mut buf)?;
            for (ty, mseq, payload) in messages(&buf[..n]) {
                if ty == NLMSG_ERROR && mseq == seq && payload.len() >= 4 {
                    let err = i32::from_ne_bytes(payload[..4].try_into().expect("4 bytes"));
                    return match -err {
                        0 => Ok(true),
                        libc::ENOENT | libc::ESTALE => Ok(false),
                        e => Err(DiagError::Refused(io::Error::from_raw_os_error(e))),
                    };
                }
            }
        }
    }

    /// Every `proto` socket of address family `family` (AF_INET, AF_INET6)
    /// in one of `states` (a bit mask of TCP states), in this network
    /// namespace. One netlink dump.
    pub fn dump(
        &mut self,
        proto: u8,
        family: u8,
        states: u32,
    ) -> Result<Vec<DiagSocket>, DiagError> {
        let any = SocketId {
            proto,
            local: (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            remote: (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            cookie: None,
        };
        let seq = self.send(
            SOCK_DIAG_BY_FAMILY,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            &request(&any, family, states, None),
        )?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            for (ty, mseq, m) in messages(&buf[..n]) {
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let err = m
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(0);
                        return Err(DiagError::Io(io::Error::from_raw_os_error(-err)));
                    }
                    SOCK_DIAG_BY_FAMILY => out.extend(parse_diag(proto, m)),
                    _ => {}
                }
            }
        }
    }

    /// The cookie of the non-listening socket with exactly these addresses.
    /// An IPv4 flow may belong to an AF_INET6 socket (v4-mapped), so both
    /// families are searched for it.
    fn find_cookie(&mut self, id: &SocketId) -> Result<Option<u64>, DiagError> {
        if let Some(c) = self.find_cookie_in(id, id.family())? {
            return Ok(Some(c));
        }
        if id.family() == libc::AF_INET as u8 {
            return self.find_cookie_in(id, libc::AF_INET6 as u8);
        }
        Ok(None)
    }

    fn find_cookie_in(&mut self, id: &SocketId, family: u8) -> Result<Option<u64>, DiagError> {
        let seq = self.send(
            SOCK_DIAG_BY_FAMILY,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            &request(id, family, ALL_BUT_LISTEN, None),
        )?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut found = None;
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Ok(found);
            }
            for (ty, mseq, m) in messages(&buf[..n]) {
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE | NLMSG_ERROR => return Ok(found),
                    // struct inet_diag_msg: family, state, timer, retrans, sockid (48), ...
                    SOCK_DIAG_BY_FAMILY if m.len() >= 72 => {
                        let family = m[0];
                        let sport = u16::from_be_bytes([m[4], m[5]]);
                        let dport = u16::from_be_bytes([m[6], m[7]]);
                        let src = read_addr(family, &m[8..24]);
                        let dst = read_addr(family, &m[24..40]);
                        let cookie = u32::from_ne_bytes(m[44..48].try_into().expect("4 bytes"))
                            as u64
                            | (u32::from_ne_bytes(m[48..52].try_into().expect("4 bytes")) as u64)
                                << 32;
                        if (src, sport) == id.local && (dst, dport) == id.remote {
                            found = Some(cookie);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn request_layout_matches_inet_diag_req_v2() {
        let id = SocketId {
            proto: 6,
            local: ("127.0.0.1".parse().unwrap(), 40000),
            remote: ("127.0.0.2".parse().unwrap(), 5432),
            cookie: None,
        };
        let b = request(&id, id.family(), 0xff, Some(0x1_0000_0002));
        assert_eq!((b[0], b[1]), (libc::AF_INET as u8, 6));
        assert_eq!(&b[8..12], &[0x9c, 0x40, 0x15, 0x38]);
        assert_eq!(&b[12..16], &[127, 0, 0, 1]);
        assert_eq!(&b[28..32], &[127, 0, 0, 2]);
        assert_eq!(u32::from_ne_bytes(b[48..52].try_into().unwrap()), 2);
        assert_eq!(u32::from_ne_bytes(b[52..56].try_into().unwrap()), 1);
    }

    /// Against the real kernel (needs CAP_NET_ADMIN; skipped otherwise):
    /// a live loopback connection found by address is destroyed, and its
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
        let local = client.local_addr().unwrap();
        let remote = client.peer_addr().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let id = SocketId {
            proto: 6,
            local: (local.ip(), local.port()),
            remote: (remote.ip(), remote.port()),
            cookie: None,
        };
        assert!(
            diag.destroy(&id).unwrap(),
            "the connection was found and destroyed"
        );
        let mut buf = [0u8; 1];
        let err = std::io::Read::read(&mut &client, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
        assert!(!diag.destroy(&id).unwrap(), "second destroy finds nothing");
        // The listener still accepts.
        TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    }

    #[test]
    fn parses_the_cgroup_id_attribute_after_the_message() {
        let mut m = vec![0u8; DIAG_MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[1] = 1;
        m[4..6].copy_from_slice(&40000u16.to_be_bytes());
        m[6..8].copy_from_slice(&5432u16.to_be_bytes());
        m[8..12].copy_from_slice(&[127, 0, 0, 1]);
        m[24..28].copy_from_slice(&[127, 0, 0, 2]);
        m[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        m[68..72].copy_from_slice(&77u32.to_ne_bytes());
        // An unrelated attribute (3 bytes of payload, padded), then the cgroup id.
        m.extend_from_slice(&7u16.to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(&[1, 2, 3, 0]);
        m.extend_from_slice(&12u16.to_ne_bytes());
        m.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        m.extend_from_slice(&0xabcdu64.to_ne_bytes());
        let d = parse_diag(6, &m).unwrap();
        assert_eq!(d.local, ("127.0.0.1".parse().unwrap(), 40000));
        assert_eq!(d.remote, ("127.0.0.2".parse().unwrap(), 5432));
        assert_eq!(
            (d.state, d.uid, d.inode, d.cgroup_id),
            (1, 1000, 77, 0xabcd)
        );
        assert_eq!(parse_diag(6, &m[..DIAG_MSG_LEN - 1]), None);
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
