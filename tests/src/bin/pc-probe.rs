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
        Some(libc::EAGAIN) => "TIMEOUT".into(),
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

const TIMEOUT: Duration = Duration::from_secs(3);

fn run(args: &[String]) -> std::io::Result<()> {
    match args.get(1).map(String::as_str) {
        Some("tcp") => {
            let mut s = TcpStream::connect_timeout(&addr(&args[2]), TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf)?;
            println!("ok");
            Ok(())
        }
        Some(mode @ ("udp" | "udp-connect")) => {
            let target = addr(&args[2]);
            let bind: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(TIMEOUT))?;
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
        Some("hold") => {
            let interval = Duration::from_millis(args[3].parse().expect("MS"));
            let count: u32 = args[4].parse().expect("COUNT");
            let mut s = TcpStream::connect_timeout(&addr(&args[2]), TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
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
        _ => {
            eprintln!("usage: pc-probe tcp|udp|udp-connect ADDR:PORT | hold ADDR:PORT MS COUNT");
            std::process::exit(2);
        }
    }
}
