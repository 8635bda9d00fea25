//! A client for the end-to-end tests: makes one connection or sends one
//! datagram and prints `ok` or `err NAME` (the errno's name), so a test can
//! assert exactly what a user would see. The harness starts it inside the
//! test's cgroup with the uid/gid under test.
//!
//! Usage:
//!   pc-probe tcp ADDR:PORT              connect, send "ping", read the echo
//!   pc-probe udp ADDR:PORT              unconnected sendto, then wait for the echo
//!   pc-probe udp-connect ADDR:PORT      connect(2) a UDP socket, send, wait for the echo
//!   pc-probe hold ADDR:PORT MS COUNT    one TCP session: send/echo every MS, COUNT times;
//!                                       prints `ok N` per round trip, then `err NAME` and exits on failure
//!   pc-probe udp-hold ADDR:PORT MS COUNT  the same over a connected UDP socket
//!   pc-probe loop-until ADDR:PORT SECS MAXN  like `loop`, for SECS seconds (at most MAXN connects)
//!   pc-probe raw IFACE LISTEN FRAME...  send hex Ethernet frames on IFACE (AF_PACKET), then wait
//!                                       for one UDP datagram on the bound address LISTEN
//!
//!   pc-probe loop ADDR:PORT N           N TCP connects back to back (each closed with a reset, so
//!                                       no TIME_WAIT piles up); prints `loop ok K eperm M other L [FIRST]`
//!                                       where FIRST names the first error other than EPERM
//!
//!   pc-probe flood-udp ADDR:PORT N SECS  up to N unconnected sendto(2)s back to back, stopping
//!                                       after SECS seconds at most; prints `flood sent S eperm E other O`
//!
//!   pc-probe burst-udp ADDR:PORT SECS  a connected UDP socket sending numbered datagrams (the
//!                                       8-byte sequence number, big endian) back to back for at
//!                                       most SECS seconds; prints `started` once the first was
//!                                       sent; each line read on stdin is answered with `mark N`:
//!                                       every datagram numbered N or more is sent after that line
//!                                       was read, then goes on 300 ms more (failed sends counted,
//!                                       not fatal); ends with `end S errors E first NAME`
//!
//! PC_PROBE_TIMEOUT_MS sets the connect/receive timeout (default 3000).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::ECONNABORTED) => "ECONNABORTED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::EDESTADDRREQ) => "EDESTADDRREQ".into(),
        Some(libc::EAGAIN) => "TIMEOUT".into(),
        None if e.kind() == std::io::ErrorKind::TimedOut => "TIMEOUT".into(),
        Some(n) => format!("errno{n}"),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "EOF".into(),
        None => format!("{:?}", e.kind()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            println!("err {}", errno_name(&e));
            1
        }
    };
    std::process::exit(code);
}

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

fn timeout() -> Duration {
    let ms = std::env::var("PC_PROBE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    Duration::from_millis(ms)
}

/// SO_LINGER 0: closing sends a reset instead of leaving the connection in
/// TIME_WAIT, so thousands of connects do not run out of local ports.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a socket we own, with a pointer to a linger
    // value that outlives the call and its exact size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex frame"))
        .collect()
}

/// Sends raw Ethernet frames on `iface`.
fn send_raw(iface: &str, frames: &[Vec<u8>]) -> std::io::Result<()> {
    // SAFETY: plain socket(2)/sendto(2) calls on a descriptor we own, with
    // buffers we own; results are checked.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let name = std::ffi::CString::new(iface).unwrap();
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            libc::close(fd);
            return Err(std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        for f in frames {
            sll.sll_addr[..6].copy_from_slice(&f[..6]);
            let n = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            if n < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
        }
        libc::close(fd);
    }
    Ok(())
}

/// Connects to `target` up to `max` times (until `end`, if given), closing
/// each connection with a reset, and prints `loop ok K eperm M other L [FIRST]`.
fn connect_loop(
    target: SocketAddr,
    timeout: Duration,
    max: u64,
    end: Option<Instant>,
) -> std::io::Result<()> {
    let (mut ok, mut eperm, mut other) = (0u64, 0u64, 0u64);
    let mut first_other = None;
    let mut n = 0;
    while n < max && end.is_none_or(|e| Instant::now() < e) {
        n += 1;
        match TcpStream::connect_timeout(&target, timeout) {
            Ok(s) => {
                ok += 1;
                reset_on_close(&s);
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
            Err(e) => {
                other += 1;
                first_other.get_or_insert_with(|| errno_name(&e));
            }
        }
    }
    println!(
        "loop ok {ok} eperm {eperm} other {other} {}",
        first_other.unwrap_or_default()
    );
    Ok(())
}

/// A UDP socket bound to the unspecified address of `target`'s family.
fn udp_socket_for(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid address")
    } else {
        "[::]:0".parse().expect("valid address")
    };
    UdpSocket::bind(any)
}

fn run(args: &[String]) -> std::io::Result<()> {
    let timeout = timeout();
    match args.get(1).map(String::as_str) {
        Some("tcp") => {
            let mut s = TcpStream::connect_timeout(&addr(&args[2]), timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)?;
            println!("ok");
            Ok(())
        }
        Some(mode @ ("udp" | "udp-connect")) => {
            let target = addr(&args[2]);
            let s = udp_socket_for(target)?;
            s.set_read_timeout(Some(timeout))?;
            if mode == "udp-connect" {
                s.connect(target)?;
                s.send(b"ping")?;
            } else {
                s.send_to(b"ping", target)?;
            }
            let mut buf = [0u8; 16];
            s.recv_from(&mut buf)?;
            println!("ok");
            Ok(())
        }
        Some("burst-udp") => burst_udp(addr(&args[2]), args[3].parse().expect("SECS")),
        Some("hold") => {
            let interval = Duration::from_millis(args[3].parse().expect("MS"));
            let count: u32 = args[4].parse().expect("COUNT");
            let mut s = TcpStream::connect_timeout(&addr(&args[2]), timeout)?;
            s.set_read_timeout(Some(timeout))?;
            let start = Instant::now();
            for i in 0..count {
                s.write_all(b"ping")?;
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf)?;
                println!("ok {i} {}", start.elapsed().as_millis());
                std::thread::sleep(interval);
            }
            Ok(())
        }
        Some("udp-hold") => {
            let target = addr(&args[2]);
            let interval = Duration::from_millis(args[3].parse().expect("MS"));
            let count: u32 = args[4].parse().expect("COUNT");
            let s = udp_socket_for(target)?;
            s.set_read_timeout(Some(timeout))?;
            s.connect(target)?;
            let start = Instant::now();
            for i in 0..count {
                s.send(b"ping")?;
                let mut buf = [0u8; 16];
                s.recv(&mut buf)?;
                println!("ok {i} {}", start.elapsed().as_millis());
                std::thread::sleep(interval);
            }
            Ok(())
        }
        Some("loop") => {
            let n: u64 = args[3].parse().expect("N");
            connect_loop(addr(&args[2]), timeout, n, None)
        }
        Some("loop-until") => {
            // Like `loop`, but for SECS seconds (at most MAXN connects), so a
            // test can keep connecting across an agent restart.
            let secs: f64 = args[3].parse().expect("SECS");
            let max: u64 = args[4].parse().expect("MAXN");
            let end = Instant::now() + Duration::from_secs_f64(secs);
            connect_loop(addr(&args[2]), timeout, max, Some(end))
        }
        Some("raw") => {
            let listen = UdpSocket::bind(addr(&args[3]))?;
            listen.set_read_timeout(Some(timeout))?;
            let frames: Vec<Vec<u8>> = args[4..].iter().map(|f| hex(f)).collect();
            send_raw(&args[2], &frames)?;
            let mut buf = [0u8; 2048];
            listen.recv_from(&mut buf)?;
            println!("ok");
            Ok(())
        }
        Some("flood-udp") => {
            let target = addr(&args[2]);
            let n: u64 = args[3].parse().expect("N");
            let limit = Duration::from_secs(args[4].parse().expect("SECS"));
            let s = udp_socket_for(target)?;
            let start = Instant::now();
            let (mut sent, mut eperm, mut other) = (0u64, 0u64, 0u64);
            for i in 0..n {
                match s.send_to(b"x", target) {
                    Ok(_) => sent += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
                    Err(_) => other += 1,
                }
                // Looking at the clock every call would cost as much as the call.
                if i % 4096 == 0 && start.elapsed() > limit {
                    break;
                }
            }
            println!("flood sent {sent} eperm {eperm} other {other}");
            Ok(())
        }
        _ => {
            eprintln!("usage: pc-probe tcp|udp|udp-connect ADDR:PORT | hold|udp-hold ADDR:PORT MS COUNT | loop ADDR:PORT N | raw IFACE LISTEN FRAME... | flood-udp ADDR:PORT N SECS");
            std::process::exit(2);
        }
    }
}

/// `burst-udp`: numbered datagrams back to back, failed sends counted
/// and retried; a line on stdin is answered with the first number sent
/// after it was read, and the burst goes on 300 ms more.
fn burst_udp(target: SocketAddr, secs: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let s = udp_socket_for(target)?;
    s.connect(target)?;
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut stop_at: Option<Instant> = None;
    let (mut seq, mut errors) = (0u64, 0u64);
    let mut first_error = String::from("none");
    let mut out = std::io::stdout();
    while Instant::now() < deadline && stop_at.is_none_or(|t| Instant::now() < t) {
        match s.send(&seq.to_be_bytes()) {
            Ok(_) => {}
            Err(e) => {
                if errors == 0 {
                    first_error = errno_name(&e);
                }
                errors += 1;
            }
        }
        if seq == 0 {
            writeln!(out, "started")?;
            out.flush()?;
        }
        seq += 1;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd we own, without waiting.
        if stop_at.is_none() && unsafe { libc::poll(&mut pfd, 1, 0) } > 0 {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut stdin.lock(), &mut line)?;
            // Every datagram from `seq` on is sent after the line was read.
            writeln!(out, "mark {seq}")?;
            out.flush()?;
            stop_at = Some(Instant::now() + Duration::from_millis(300));
        }
    }
    writeln!(out, "end {seq} errors {errors} first {first_error}")?;
    out.flush()
}
