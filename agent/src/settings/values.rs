//! The value syntaxes of settings that are neither paths nor durations
//! (those are [`crate::duration`]): sizes (`64M`), listen addresses
//! (`9464`, `HOST:PORT`) and file modes (`0660`). Each is parsed here once,
//! whether it comes from a flag or from the configuration file.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A size in bytes: `4096`, `64K`, `64M`, `1G` (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let not_a_size = || format!("{s:?} is not a size: write bytes, or a number with K, M or G");
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(not_a_size()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(not_a_size)
}

/// A listen address: `PORT`, `HOST:PORT` or `[V6]:PORT`; a bare port (or
/// `localhost:PORT`) means 127.0.0.1.
pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not a metrics address: use PORT (localhost), HOST:PORT or [IPV6]:PORT, e.g. 127.0.0.1:9464")
    })
}

/// A socket mode from the command line or the file: octal digits, at most 0777.
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 0660"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn addresses_default_to_localhost() {
        assert_eq!(
            parse_addr("9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert_eq!(
            parse_addr("localhost:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            parse_addr("[::1]:9464").unwrap(),
            "[::1]:9464".parse().unwrap()
        );
        assert!(parse_addr("nowhere").unwrap_err().contains("9464"));
    }

    #[test]
    fn modes_are_octal_and_bounded() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("1777").is_err());
        assert!(parse_mode("").is_err());
    }
}
