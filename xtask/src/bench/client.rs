//! The two small programs the bench runs where the traffic starts: inside
//! its child cgroup as a chosen uid, or inside one of its network
//! namespaces. Both are hidden subcommands of xtask itself
//! (`cargo xtask bench client|probe`), spawned by the bench, never by hand.
//!
//! - `client`: N TCP connects in a tight loop (bounded in count and time),
//!   then one JSON line: how many succeeded and how long they took.
//! - `probe`: connects on command, for revocation latency: told `cut`, it
//!   connects every `interval` µs until a connect is refused and prints the
//!   CLOCK_MONOTONIC instant of that refusal, which the bench compares with
//!   the instant it started the revoking process.
//!
//! Every socket is closed with SO_LINGER 0 (a reset), so that neither side
//! keeps a TIME_WAIT entry and a run of 100,000 connects never runs out of
//! ephemeral ports.
use std::{
    io::{self, BufRead, Write},
    net::SocketAddrV4,
    os::fd::{FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;

/// A blocking connect gives up after this long (a dropped SYN would
/// otherwise retry for minutes).
const CONNECT_TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 2,
    tv_usec: 0,
};

#[derive(clap::Args)]
pub(super) struct ClientArgs {
    /// Where to connect.
    #[arg(long)]
    addr: SocketAddrV4,
    /// Connects to make.
    #[arg(long)]
    count: u64,
    /// Stop after this many seconds even if `count` is not reached.
    #[arg(long)]
    seconds: f64,
    /// A connect refused with EPERM is counted (as `refused`), not an error.
    #[arg(long)]
    refused_ok: bool,
}

/// `cargo xtask bench rr`: an echo server and its client in one process
/// (so both ends sit in the cgroup the process was started in), talking
/// over one TCP connection on 127.0.0.1:`port`.
#[derive(clap::Args)]
pub(super) struct RrArgs {
    /// The port to listen on and connect to.
    #[arg(long)]
    port: u16,
    /// Round trips to make.
    #[arg(long)]
    messages: u64,
    /// Stop after this many seconds even if `messages` is not reached.
    #[arg(long)]
    seconds: f64,
    /// Print `ready` once connected, then make round trips until one fails
    /// (or `seconds` pass) and report when the failed one began.
    #[arg(long)]
    until_cut: bool,
}

#[derive(clap::Args)]
pub(super) struct ProbeArgs {
    /// Where to connect.
    #[arg(long)]
    addr: SocketAddrV4,
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host.
pub(super) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// One connect and an immediate reset; the errno when refused.
fn connect_once(addr: &libc::sockaddr_in) -> Result<(), io::Error> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid option values of the sizes given, on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        ) | libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&CONNECT_TIMEOUT as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `addr` is a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            raw,
            (addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let result = if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    drop(fd);
    result
}

/// `cargo xtask bench client`: prints
/// `{"ok": N, "refused": R, "elapsed_ns": T, "error": null | "..."}`; stops
/// at the first refused connect (an allowed client is never refused)
/// unless `--refused-ok` counts EPERM refusals.
pub(super) fn client(args: ClientArgs) -> Result<()> {
    let addr = sockaddr(args.addr);
    let limit = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let mut ok = 0u64;
    let mut refused = 0u64;
    let mut error = None;
    while ok + refused < args.count && started.elapsed() < limit {
        match connect_once(&addr) {
            Ok(()) => ok += 1,
            Err(e) if args.refused_ok && e.raw_os_error() == Some(libc::EPERM) => refused += 1,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{}",
        json!({"ok": ok, "refused": refused, "elapsed_ns": elapsed.as_nanos() as u64, "error": error})
    );
    Ok(())
}

/// `cargo xtask bench probe`: one command per stdin line, one answer line each.
/// - `allowed MS`: connect until one succeeds → `ok`, or `timeout ERROR` after MS ms.
/// - `open MS US`: connect every US µs until one succeeds →
///   `open MONO_NS ATTEMPTS`, or `timeout ERROR` after MS ms.
/// - `cut MS US`: connect every US µs until one is refused →
///   `refused MONO_NS ATTEMPTS ERROR`, or `timeout` after MS ms.
pub(super) fn probe(args: ProbeArgs) -> Result<()> {
    let addr = sockaddr(args.addr);
    let stdin = io::stdin();
    let mut out = io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.context("reading a command")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["allowed", ms] => allowed(&addr, Duration::from_millis(ms.parse()?)),
            ["open", ms, us] => open(
                &addr,
                Duration::from_millis(ms.parse()?),
                Duration::from_micros(us.parse()?),
            ),
            ["cut", ms, us] => cut(
                &addr,
                Duration::from_millis(ms.parse()?),
                Duration::from_micros(us.parse()?),
            ),
            ["quit"] => return Ok(()),
            _ => bail!("unknown probe command {line:?}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

fn allowed(addr: &libc::sockaddr_in, limit: Duration) -> String {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match connect_once(addr) {
            Ok(()) => return "ok".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    format!("timeout {last}")
}

/// Connects every `interval` until one succeeds: `open MONO_NS ATTEMPTS`,
/// or `timeout ERROR` after `limit`.
fn open(addr: &libc::sockaddr_in, limit: Duration, interval: Duration) -> String {
    let started = Instant::now();
    let mut attempts = 0u64;
    let mut last = String::new();
    while started.elapsed() < limit {
        attempts += 1;
        match connect_once(addr) {
            Ok(()) => return format!("open {} {attempts}", mono_ns()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(interval);
    }
    format!("timeout {last}")
}

fn cut(addr: &libc::sockaddr_in, limit: Duration, interval: Duration) -> String {
    let started = Instant::now();
    let mut attempts = 0u64;
    while started.elapsed() < limit {
        attempts += 1;
        if let Err(e) = connect_once(addr) {
            return format!("refused {} {attempts} {e}", mono_ns());
        }
        std::thread::sleep(interval);
    }
    "timeout".into()
}

/// 4-byte messages echoed back; a read waits at most this long.
const RR_TIMEOUT: Duration = Duration::from_secs(1);

/// `cargo xtask bench rr`: prints
/// `{"messages": N, "elapsed_ns": T, "cut_at_ns": null | MONO_NS, "error": null | "..."}`.
/// With `--until-cut`, `cut_at_ns` is the CLOCK_MONOTONIC instant at which
/// the first round trip that did not complete (a refused send, a reset, or
/// no answer within 1 s) began.
pub(super) fn rr(args: RrArgs) -> Result<()> {
    use std::io::Read;
    let limit = Duration::from_secs_f64(args.seconds);
    let listener = std::net::TcpListener::bind(("127.0.0.1", args.port))
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    let echo = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(limit + RR_TIMEOUT));
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 4];
        while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
    });
    let mut c = std::net::TcpStream::connect(("127.0.0.1", args.port))
        .with_context(|| format!("connecting to 127.0.0.1:{}", args.port))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(RR_TIMEOUT))?;
    if args.until_cut {
        let mut out = io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let started = Instant::now();
    let mut messages = 0u64;
    let mut cut_at = None;
    let mut error = None;
    let mut buf = [0u8; 4];
    while (args.until_cut || messages < args.messages) && started.elapsed() < limit {
        let began = mono_ns();
        let r = c
            .write_all(&(messages as u32).to_ne_bytes())
            .and_then(|()| c.read_exact(&mut buf));
        match r {
            Ok(()) => messages += 1,
            Err(e) => {
                if args.until_cut {
                    cut_at = Some(began);
                } else {
                    error = Some(e.to_string());
                }
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = c.shutdown(std::net::Shutdown::Both);
    drop(c);
    let _ = echo.join();
    println!(
        "{}",
        json!({"messages": messages, "elapsed_ns": elapsed.as_nanos() as u64, "cut_at_ns": cut_at, "error": error})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_is_in_network_order() {
        let a = sockaddr("127.0.0.1:5432".parse().unwrap());
        assert_eq!(a.sin_port, 5432u16.to_be());
        assert_eq!(a.sin_addr.s_addr.to_ne_bytes(), [127, 0, 0, 1]);
    }

    #[test]
    fn connects_to_a_listener_and_reports_a_refusal() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = match l.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        assert!(connect_once(&sockaddr(addr)).is_ok());
        drop(l);
        let e = connect_once(&sockaddr(addr)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}
