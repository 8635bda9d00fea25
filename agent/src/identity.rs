//! Identities, port ranges and TTLs: the words policy files and the CLI use
//! to say *who* may reach *which* port for *how long*.
//!
//! This module owns the text forms (`unit:payments-api.service`,
//! `peer:10.20.0.0/16`, `8000-8099/tcp`, `15m`) and their validation. It is
//! pure parsing: it never looks a name up on the host (is there a user
//! `postgres`? is the unit loaded?) — that is `policy`'s host check — and it
//! knows nothing of maps or grants.
//!
//! Every parsed value displays in a canonical form that parses back to the
//! same value, and serialises (serde) as that string. Errors name the value,
//! say what is wrong and which forms are accepted; `help()` on each error
//! gives a concrete fix for diagnostics.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The accepted identity forms, quoted in error messages.
const IDENTITY_FORMS: &str =
    "unit:NAME.service, cgroup:/PATH, user:NAME, uid:N, group:NAME, gid:N or peer:CIDR";

/// Longest TTL a grant or policy may ask for. A year and a day lets "yearly"
/// access exist while catching typos such as `100000h`.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Implements `Serialize`/`Deserialize` through `Display`/`FromStr`, so
/// every value has exactly one text form on disk, on the wire and on screen.
macro_rules! serde_as_string {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Protocol and port ranges

/// A transport protocol the dataplane can tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown protocol `{0}`: protocols are tcp and udp")]
pub struct ProtocolError(pub String);

impl FromStr for Protocol {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Case-insensitive: `TCP` in a policy is not worth an error.
        if s.eq_ignore_ascii_case("tcp") {
            Ok(Protocol::Tcp)
        } else if s.eq_ignore_ascii_case("udp") {
            Ok(Protocol::Udp)
        } else {
            Err(ProtocolError(s.to_owned()))
        }
    }
}

serde_as_string!(Protocol);

/// An inclusive range of ports of one protocol: `5432/tcp`, `8000-8099/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub proto: Protocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Every port in the range, in ascending order.
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }

    /// Whether the two ranges share a port of the same protocol.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.proto == other.proto && self.first <= other.last && other.first <= self.last
    }

    pub fn contains(&self, port: u16, proto: Protocol) -> bool {
        self.proto == proto && (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.first, self.proto)
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.proto)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PortRangeError {
    #[error("`{value}` has no protocol")]
    MissingProtocol { value: String },
    #[error("unknown protocol `{proto}` in `{value}`: protocols are tcp and udp")]
    UnknownProtocol { value: String, proto: String },
    #[error("`{text}` in `{value}` is not a port number")]
    NotANumber { value: String, text: String },
    #[error("port 0 in `{value}` is not a port")]
    Zero { value: String },
    #[error("port {text} in `{value}` is out of range")]
    OutOfRange { value: String, text: String },
    #[error("range `{value}` runs backwards")]
    Backwards {
        value: String,
        first: u16,
        last: u16,
        proto: Protocol,
    },
}

impl PortRangeError {
    /// How to fix it, for diagnostics.
    pub fn help(&self) -> String {
        match self {
            PortRangeError::MissingProtocol { value } => {
                format!("write `{value}/tcp` or `{value}/udp`")
            }
            PortRangeError::UnknownProtocol { .. } => {
                "write PORT/tcp or PORT/udp, e.g. `5432/tcp`".to_owned()
            }
            PortRangeError::NotANumber { .. } => {
                "write PORT/PROTO or FIRST-LAST/PROTO, e.g. `5432/tcp` or `8000-8099/tcp`"
                    .to_owned()
            }
            PortRangeError::Zero { .. } | PortRangeError::OutOfRange { .. } => {
                "ports are 1-65535".to_owned()
            }
            PortRangeError::Backwards {
                first, last, proto, ..
            } => format!("write `{last}-{first}/{proto}`"),
        }
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let Some((ports, proto)) = value.rsplit_once('/') else {
            return Err(PortRangeError::MissingProtocol {
                value: value.to_owned(),
            });
        };
        let proto = proto.parse::<Protocol>().map_err(|ProtocolError(proto)| {
            PortRangeError::UnknownProtocol {
                value: value.to_owned(),
                proto,
            }
        })?;
        let (first, last) = match ports.split_once('-') {
            Some((first, last)) => (parse_port(value, first)?, parse_port(value, last)?),
            None => {
                let port = parse_port(value, ports)?;
                (port, port)
            }
        };
        if first > last {
            return Err(PortRangeError::Backwards {
                value: value.to_owned(),
                first,
                last,
                proto,
            });
        }
        Ok(PortRange { proto, first, last })
    }
}

fn parse_port(value: &str, text: &str) -> Result<u16, PortRangeError> {
    // Digits only: `u16::from_str` would also take `+80`.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortRangeError::NotANumber {
            value: value.to_owned(),
            text: text.to_owned(),
        });
    }
    let trimmed = text.trim_start_matches('0');
    match trimmed.parse::<u16>() {
        _ if trimmed.is_empty() => Err(PortRangeError::Zero {
            value: value.to_owned(),
        }),
        Ok(port) => Ok(port),
        Err(_) => Err(PortRangeError::OutOfRange {
            value: value.to_owned(),
            text: trimmed.to_owned(),
        }),
    }
}

serde_as_string!(PortRange);

// ---------------------------------------------------------------------------
// CIDR blocks

/// A network: an address and a prefix length, host bits clear. IPv4-mapped
/// IPv6 networks are stored as IPv4 so that one network has one form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpCidr {
    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses match
    /// IPv4 networks, as the kernel may report either form for one peer.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & v4_mask(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & v6_mask(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn v4_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidrError {
    #[error("`{value}` is not an IP address")]
    Address {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("`{prefix}` in `{value}` is not a prefix length")]
    Prefix { value: String, prefix: String },
    #[error("prefix /{prefix} in `{value}` is longer than {max} bits")]
    PrefixTooLong {
        value: String,
        prefix: String,
        max: u8,
    },
    #[error("`{value}` has host bits set beyond the /{} prefix", network.prefix)]
    HostBits { value: String, network: IpCidr },
}

impl CidrError {
    pub fn help(&self) -> String {
        match self {
            CidrError::HostBits { network, value } => {
                let host = value.split_once('/').map_or(value.as_str(), |(a, _)| a);
                format!("use the network address `{network}`, or `{host}` for that single host")
            }
            _ => "write an address or a network, e.g. `10.1.2.3`, `10.20.0.0/16` or \
                  `2001:db8::/32`"
                .to_owned(),
        }
    }
}

impl FromStr for IpCidr {
    type Err = CidrError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|source| CidrError::Address {
            value: value.to_owned(),
            source,
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(text) => {
                if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::Prefix {
                        value: value.to_owned(),
                        prefix: text.to_owned(),
                    });
                }
                let prefix: u16 = text.parse().expect("at most three digits fit in u16");
                if prefix > u16::from(max) {
                    return Err(CidrError::PrefixTooLong {
                        value: value.to_owned(),
                        prefix: text.to_owned(),
                        max,
                    });
                }
                prefix as u8
            }
        };
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(prefix))),
        };
        let cidr = IpCidr {
            addr: network,
            prefix,
        };
        if network != addr {
            return Err(CidrError::HostBits {
                value: value.to_owned(),
                network: cidr,
            });
        }
        Ok(cidr)
    }
}

serde_as_string!(IpCidr);

// ---------------------------------------------------------------------------
// Identities

/// Who wants in. Everything but `Peer` names a local process by its cgroup,
/// uid or gid; `Peer` names remote hosts by source address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    /// A systemd unit, e.g. `payments-api.service`, kept as written.
    Unit(String),
    /// A cgroup v2 path from the hierarchy root, normalised: `/` or
    /// `/system.slice/foo.service`.
    Cgroup(String),
    User(String),
    Uid(u32),
    Group(String),
    Gid(u32),
    Peer(IpCidr),
}

/// Unit types that own a cgroup, so a grant to them can be enforced.
const UNIT_TYPES_WITH_CGROUP: [&str; 6] = ["service", "socket", "scope", "slice", "mount", "swap"];
/// Unit types systemd knows that never run processes of their own.
const UNIT_TYPES_WITHOUT_CGROUP: [&str; 5] = ["target", "timer", "path", "device", "automount"];

/// Linux `LOGIN_NAME_MAX` and `NAME_MAX`; systemd's unit name limit.
const MAX_ACCOUNT_NAME: usize = 256;
const MAX_CGROUP_COMPONENT: usize = 255;
const MAX_UNIT_NAME: usize = 255;

impl Identity {
    /// The prefix before the `:`: `unit`, `cgroup`, `user`, `uid`, `group`,
    /// `gid` or `peer`.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Unit(_) => "unit",
            Identity::Cgroup(_) => "cgroup",
            Identity::User(_) => "user",
            Identity::Uid(_) => "uid",
            Identity::Group(_) => "group",
            Identity::Gid(_) => "gid",
            Identity::Peer(_) => "peer",
        }
    }

    /// Whether this names processes on this host (everything but `peer:`).
    pub fn is_local(&self) -> bool {
        !matches!(self, Identity::Peer(_))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind();
        match self {
            Identity::Unit(name)
            | Identity::Cgroup(name)
            | Identity::User(name)
            | Identity::Group(name) => write!(f, "{kind}:{name}"),
            Identity::Uid(id) | Identity::Gid(id) => write!(f, "{kind}:{id}"),
            Identity::Peer(cidr) => write!(f, "{kind}:{cidr}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("`{value}` is not an identity: identities are {IDENTITY_FORMS}")]
    MissingKind { value: String },
    #[error("`{value}` has unknown identity kind `{kind}`: identities are {IDENTITY_FORMS}")]
    UnknownKind { value: String, kind: String },
    #[error("`{value}` is empty after `{kind}:`")]
    Empty { value: String, kind: &'static str },
    #[error("`{value}` contains {ch:?}, which is not allowed in a {kind} name")]
    BadChar {
        value: String,
        kind: &'static str,
        ch: char,
    },
    #[error("`{value}` is longer than {max} characters")]
    TooLong { value: String, max: usize },
    #[error("`{value}` has no unit type: units are NAME.service, .socket, .scope, .slice, .mount or .swap")]
    UnitType { value: String },
    #[error("`{value}` is a .{suffix} unit, which runs no processes and has no cgroup")]
    UnitWithoutCgroup { value: String, suffix: String },
    #[error("`{value}` is a template; only its instances (NAME@INSTANCE.{suffix}) run")]
    UnitTemplate { value: String, suffix: String },
    #[error("`{value}` is not an absolute cgroup path: write cgroup:/PATH from the cgroup2 root")]
    CgroupRelative { value: String },
    #[error("`{value}` contains `..`: cgroup paths are written from the cgroup2 root")]
    CgroupDotDot { value: String },
    #[error("`{value}` includes the cgroup2 mount point: paths are relative to the cgroup2 root")]
    CgroupMountPoint { value: String, suggestion: String },
    #[error("`{value}` is all digits: numeric ids are written {numeric}:N")]
    Numeric {
        value: String,
        numeric: &'static str,
        id: String,
    },
    #[error("`{value}` is not a {kind}: expected a number 0-4294967294")]
    Id { value: String, kind: &'static str },
    #[error("`{value}` is not a network: {source}")]
    Peer {
        value: String,
        #[source]
        source: CidrError,
    },
}

impl IdentityError {
    /// A concrete fix, when one can be guessed from the value.
    pub fn help(&self) -> Option<String> {
        match self {
            IdentityError::MissingKind { value } => Some(guess_kind(value).map_or_else(
                || format!("put the kind first, e.g. `user:{value}` for an account"),
                |guess| format!("write `{guess}`"),
            )),
            IdentityError::UnknownKind { value, kind } => {
                let rest = &value[kind.len() + 1..];
                suggest_kind(kind).map(|k| format!("write `{k}:{rest}`"))
            }
            IdentityError::UnitType { value } => Some(format!("write `{value}.service`")),
            IdentityError::UnitWithoutCgroup { .. } => {
                Some("name the unit it starts, e.g. `unit:foo.service`".to_owned())
            }
            IdentityError::UnitTemplate { value, suffix } => {
                let base = value.trim_end_matches(&format!("@.{suffix}"));
                Some(format!("name an instance, e.g. `{base}@INSTANCE.{suffix}`"))
            }
            IdentityError::CgroupRelative { value } => {
                let path = &value["cgroup:".len()..];
                Some(format!("write `cgroup:/{path}`"))
            }
            IdentityError::CgroupMountPoint { suggestion, .. } => {
                Some(format!("write `{suggestion}`"))
            }
            IdentityError::Numeric { numeric, id, .. } => Some(format!("write `{numeric}:{id}`")),
            IdentityError::Peer { source, .. } => Some(source.help()),
            _ => None,
        }
    }
}

/// For a value written without a kind: the identity it most likely means.
fn guess_kind(value: &str) -> Option<String> {
    if value.parse::<IpCidr>().is_ok() {
        Some(format!("peer:{value}"))
    } else if value.starts_with('/') {
        Some(format!("cgroup:{value}"))
    } else if let Some((_, suffix)) = value.rsplit_once('.') {
        UNIT_TYPES_WITH_CGROUP
            .contains(&suffix)
            .then(|| format!("unit:{value}"))
    } else {
        None
    }
}

/// For a misspelt or invented kind: the kind the author meant.
fn suggest_kind(kind: &str) -> Option<&'static str> {
    let lower = kind.to_ascii_lowercase();
    let synonym = match lower.as_str() {
        "service" | "svc" | "systemd" => Some("unit"),
        "ip" | "ipv4" | "ipv6" | "cidr" | "host" | "net" | "network" | "addr" | "address"
        | "src" | "source" | "remote" => Some("peer"),
        "username" | "usr" | "login" | "account" => Some("user"),
        "grp" | "groupname" => Some("group"),
        "path" | "cg" | "slice" | "scope" => Some("cgroup"),
        _ => None,
    };
    synonym.or_else(|| {
        KIND_PARSERS
            .iter()
            .map(|&(k, _)| (strsim::levenshtein(k, &lower), k))
            .filter(|(distance, _)| *distance <= 2)
            .min()
            .map(|(_, k)| k)
    })
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let Some((kind, rest)) = value.split_once(':') else {
            return Err(IdentityError::MissingKind {
                value: value.to_owned(),
            });
        };
        let Some(&(kind, parse)) = KIND_PARSERS.iter().find(|(k, _)| *k == kind) else {
            return Err(IdentityError::UnknownKind {
                value: value.to_owned(),
                kind: kind.to_owned(),
            });
        };
        if rest.is_empty() {
            return Err(IdentityError::Empty {
                value: value.to_owned(),
                kind,
            });
        }
        parse(value, rest)
    }
}

/// Parses the part after `kind:`; gets the whole value for error messages.
type KindParser = fn(&str, &str) -> Result<Identity, IdentityError>;

const KIND_PARSERS: [(&str, KindParser); 7] = [
    ("unit", parse_unit),
    ("cgroup", parse_cgroup),
    ("user", |value, name| {
        parse_account(value, name, "user").map(Identity::User)
    }),
    ("uid", |value, id| {
        parse_id(value, id, "uid").map(Identity::Uid)
    }),
    ("group", |value, name| {
        parse_account(value, name, "group").map(Identity::Group)
    }),
    ("gid", |value, id| {
        parse_id(value, id, "gid").map(Identity::Gid)
    }),
    ("peer", |value, cidr| {
        cidr.parse()
            .map(Identity::Peer)
            .map_err(|source| IdentityError::Peer {
                value: value.to_owned(),
                source,
            })
    }),
];

fn parse_unit(value: &str, name: &str) -> Result<Identity, IdentityError> {
    if name.len() > MAX_UNIT_NAME {
        return Err(IdentityError::TooLong {
            value: value.to_owned(),
            max: MAX_UNIT_NAME,
        });
    }
    // systemd's own alphabet for unit names (unit-name.c, VALID_CHARS).
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Err(bad_char(value, "unit", ch));
    }
    let Some((stem, suffix)) = name.rsplit_once('.') else {
        return Err(IdentityError::UnitType {
            value: value.to_owned(),
        });
    };
    if UNIT_TYPES_WITHOUT_CGROUP.contains(&suffix) {
        return Err(IdentityError::UnitWithoutCgroup {
            value: value.to_owned(),
            suffix: suffix.to_owned(),
        });
    }
    if !UNIT_TYPES_WITH_CGROUP.contains(&suffix) || stem.is_empty() {
        return Err(IdentityError::UnitType {
            value: value.to_owned(),
        });
    }
    if stem.ends_with('@') {
        return Err(IdentityError::UnitTemplate {
            value: value.to_owned(),
            suffix: suffix.to_owned(),
        });
    }
    Ok(Identity::Unit(name.to_owned()))
}

fn parse_cgroup(value: &str, path: &str) -> Result<Identity, IdentityError> {
    if !path.starts_with('/') {
        return Err(IdentityError::CgroupRelative {
            value: value.to_owned(),
        });
    }
    // Names may hold any byte but '/' and NUL; control characters would
    // only corrupt logs and diagnostics, so they are refused too.
    if let Some(ch) = path.chars().find(|c| c.is_control()) {
        return Err(bad_char(value, "cgroup", ch));
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(IdentityError::CgroupDotDot {
                    value: value.to_owned(),
                })
            }
            name if name.len() > MAX_CGROUP_COMPONENT => {
                return Err(IdentityError::TooLong {
                    value: value.to_owned(),
                    max: MAX_CGROUP_COMPONENT,
                })
            }
            name => components.push(name),
        }
    }
    if let ["sys", "fs", "cgroup", rest @ ..] = components.as_slice() {
        return Err(IdentityError::CgroupMountPoint {
            value: value.to_owned(),
            suggestion: format!("cgroup:/{}", rest.join("/")),
        });
    }
    Ok(Identity::Cgroup(format!("/{}", components.join("/"))))
}

fn parse_account(value: &str, name: &str, kind: &'static str) -> Result<String, IdentityError> {
    if name.len() > MAX_ACCOUNT_NAME {
        return Err(IdentityError::TooLong {
            value: value.to_owned(),
            max: MAX_ACCOUNT_NAME,
        });
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdentityError::Numeric {
            value: value.to_owned(),
            numeric: if kind == "user" { "uid" } else { "gid" },
            id: name.to_owned(),
        });
    }
    // The portable name set (POSIX 3.437) plus the trailing `$` of Samba
    // machine accounts; a leading `-` would read as an option to tools.
    let body = name.strip_suffix('$').unwrap_or(name);
    let bad = body
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphanumeric() || "._".contains(c) || (c == '-' && i > 0)));
    match bad {
        Some((_, ch)) => Err(bad_char(value, kind, ch)),
        None if body.is_empty() => Err(bad_char(value, kind, '$')),
        None => Ok(name.to_owned()),
    }
}

fn parse_id(value: &str, id: &str, kind: &'static str) -> Result<u32, IdentityError> {
    // (uid_t)-1 means "no id" to the kernel (e.g. in setresuid), so it can
    // never identify a process.
    id.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| id.parse::<u32>().ok())
        .flatten()
        .filter(|&n| n != u32::MAX)
        .ok_or_else(|| IdentityError::Id {
            value: value.to_owned(),
            kind,
        })
}

fn bad_char(value: &str, kind: &'static str, ch: char) -> IdentityError {
    IdentityError::BadChar {
        value: value.to_owned(),
        kind,
        ch,
    }
}

serde_as_string!(Identity);

// ---------------------------------------------------------------------------
// TTLs

#[derive(Debug, Clone, PartialEq, Error)]
pub enum DurationError {
    #[error("`{value}` is not a duration: {source}")]
    Parse {
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("TTL must be greater than zero")]
    Zero { value: String },
    #[error("TTL `{value}` is longer than the maximum of 366 days")]
    TooLong { value: String },
}

impl DurationError {
    pub fn help(&self) -> String {
        match self {
            DurationError::Parse { .. } | DurationError::Zero { .. } => {
                "write a duration such as `90s`, `30m`, `1h` or `1h 30m`".to_owned()
            }
            DurationError::TooLong { .. } => {
                "grants are meant to expire; use at most `366d`, or a standing allow".to_owned()
            }
        }
    }
}

/// Parses a TTL such as `30m`, `1h 30m` or `90s`: more than zero, at most
/// [`MAX_TTL`].
pub fn parse_ttl(s: &str) -> Result<Duration, DurationError> {
    let ttl = humantime::parse_duration(s).map_err(|source| DurationError::Parse {
        value: s.to_owned(),
        source,
    })?;
    if ttl.is_zero() {
        Err(DurationError::Zero {
            value: s.to_owned(),
        })
    } else if ttl > MAX_TTL {
        Err(DurationError::TooLong {
            value: s.to_owned(),
        })
    } else {
        Ok(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> Identity {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn id_err(s: &str) -> IdentityError {
        s.parse::<Identity>().expect_err(s)
    }

    #[test]
    fn port_ranges_parse_and_display() {
        let single: PortRange = "5432/tcp".parse().unwrap();
        assert_eq!(
            single,
            PortRange {
                proto: Protocol::Tcp,
                first: 5432,
                last: 5432
            }
        );
        assert_eq!(single.to_string(), "5432/tcp");
        let range: PortRange = "8000-8099/TCP".parse().unwrap();
        assert_eq!(range.to_string(), "8000-8099/tcp");
        assert_eq!(range.ports().count(), 100);
        assert!(range.contains(8050, Protocol::Tcp));
        assert!(!range.contains(8050, Protocol::Udp));
        assert!(!range.contains(8100, Protocol::Tcp));
        let dns: PortRange = "53/udp".parse().unwrap();
        assert_eq!(dns.proto, Protocol::Udp);
        assert!("8080-8080/tcp".parse::<PortRange>().unwrap().to_string() == "8080/tcp");
        assert!("65535/udp".parse::<PortRange>().is_ok());
    }

    #[test]
    fn port_range_errors() {
        let err = |s: &str| s.parse::<PortRange>().unwrap_err();
        assert_eq!(
            err("70000/tcp").to_string(),
            "port 70000 in `70000/tcp` is out of range"
        );
        assert_eq!(err("70000/tcp").help(), "ports are 1-65535");
        assert_eq!(err("0/tcp").to_string(), "port 0 in `0/tcp` is not a port");
        assert_eq!(err("99999999999999999999/tcp").help(), "ports are 1-65535");
        assert_eq!(err("5432").help(), "write `5432/tcp` or `5432/udp`");
        assert!(
            matches!(err("5432/sctp"), PortRangeError::UnknownProtocol { proto, .. } if proto == "sctp")
        );
        assert!(matches!(err("+80/tcp"), PortRangeError::NotANumber { .. }));
        assert!(matches!(err("80-/tcp"), PortRangeError::NotANumber { .. }));
        assert!(matches!(err("/tcp"), PortRangeError::NotANumber { .. }));
        assert_eq!(err("8099-8000/tcp").help(), "write `8000-8099/tcp`");
    }

    #[test]
    fn overlaps_requires_same_protocol_and_a_shared_port() {
        let r = |s: &str| s.parse::<PortRange>().unwrap();
        assert!(r("8000-8099/tcp").overlaps(&r("8099/tcp")));
        assert!(r("8099/tcp").overlaps(&r("8000-8099/tcp")));
        assert!(!r("8000-8099/tcp").overlaps(&r("8100/tcp")));
        assert!(!r("53/tcp").overlaps(&r("53/udp")));
    }

    #[test]
    fn identities_parse() {
        assert_eq!(
            id("unit:payments-api.service"),
            Identity::Unit("payments-api.service".into())
        );
        assert_eq!(id("unit:getty@tty1.service").kind(), "unit");
        assert_eq!(id("unit:-.slice"), Identity::Unit("-.slice".into()));
        assert_eq!(id("cgroup:/"), Identity::Cgroup("/".into()));
        assert_eq!(
            id("cgroup://system.slice//foo.service/./"),
            Identity::Cgroup("/system.slice/foo.service".into())
        );
        assert_eq!(id("user:postgres"), Identity::User("postgres".into()));
        assert_eq!(id("user:HOST$"), Identity::User("HOST$".into()));
        assert_eq!(id("group:secops"), Identity::Group("secops".into()));
        assert_eq!(id("uid:0"), Identity::Uid(0));
        assert_eq!(id("gid:4294967294"), Identity::Gid(4_294_967_294));
        assert!(!id("peer:10.0.0.0/8").is_local());
        assert!(id("uid:1000").is_local());
    }

    #[test]
    fn peers_normalise() {
        assert_eq!(id("peer:10.1.2.3").to_string(), "peer:10.1.2.3/32");
        assert_eq!(id("peer:2001:db8::/32").to_string(), "peer:2001:db8::/32");
        assert_eq!(id("peer:::1").to_string(), "peer:::1/128");
        assert_eq!(
            id("peer:::ffff:10.0.0.0/104").to_string(),
            "peer:10.0.0.0/8"
        );
        assert_eq!(id("peer:::ffff:10.1.2.3").to_string(), "peer:10.1.2.3/32");
        assert_eq!(id("peer:0.0.0.0/0").to_string(), "peer:0.0.0.0/0");
    }

    #[test]
    fn cidr_contains() {
        let net: IpCidr = "10.20.0.0/16".parse().unwrap();
        assert!(net.contains("10.20.255.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.20.0.9".parse().unwrap()));
        assert!(!net.contains("10.21.0.1".parse().unwrap()));
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let all: IpCidr = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn cidr_errors() {
        let err = id_err("peer:10.0.0.1/24");
        assert_eq!(
            err.to_string(),
            "`peer:10.0.0.1/24` is not a network: `10.0.0.1/24` has host bits set beyond the /24 prefix"
        );
        assert_eq!(
            err.help().unwrap(),
            "use the network address `10.0.0.0/24`, or `10.0.0.1` for that single host"
        );
        assert!(matches!(
            id_err("peer:10.0.0.0/33"),
            IdentityError::Peer {
                source: CidrError::PrefixTooLong { .. },
                ..
            }
        ));
        assert!(matches!(
            id_err("peer:10.0.0/8"),
            IdentityError::Peer {
                source: CidrError::Address { .. },
                ..
            }
        ));
        assert!(matches!(
            id_err("peer:10.0.0.0/+8"),
            IdentityError::Peer {
                source: CidrError::Prefix { .. },
                ..
            }
        ));
    }

    #[test]
    fn identity_errors_say_what_and_how_to_fix() {
        let err = id_err("postgres");
        assert!(
            err.to_string().contains("unit:NAME.service, cgroup:/PATH"),
            "{err}"
        );
        assert_eq!(
            id_err("10.0.0.0/8").help().unwrap(),
            "write `peer:10.0.0.0/8`"
        );
        assert_eq!(
            id_err("nginx.service").help().unwrap(),
            "write `unit:nginx.service`"
        );
        assert_eq!(
            id_err("ip:10.0.0.1").help().unwrap(),
            "write `peer:10.0.0.1`"
        );
        assert_eq!(id_err("usr:bob").help().unwrap(), "write `user:bob`");
        assert_eq!(
            id_err("Unit:a.service").help().unwrap(),
            "write `unit:a.service`"
        );
        assert_eq!(
            id_err("unit:nginx").to_string(),
            "`unit:nginx` has no unit type: units are NAME.service, .socket, .scope, .slice, .mount or .swap"
        );
        assert_eq!(
            id_err("unit:nginx").help().unwrap(),
            "write `unit:nginx.service`"
        );
        assert!(matches!(
            id_err("unit:backup.timer"),
            IdentityError::UnitWithoutCgroup { .. }
        ));
        assert!(matches!(
            id_err("unit:foo.txt"),
            IdentityError::UnitType { .. }
        ));
        assert!(matches!(
            id_err("unit:.service"),
            IdentityError::UnitType { .. }
        ));
        assert_eq!(
            id_err("unit:getty@.service").help().unwrap(),
            "name an instance, e.g. `unit:getty@INSTANCE.service`"
        );
        assert!(matches!(
            id_err("unit:a b.service"),
            IdentityError::BadChar { ch: ' ', .. }
        ));
        assert_eq!(
            id_err("cgroup:system.slice").help().unwrap(),
            "write `cgroup:/system.slice`"
        );
        assert!(matches!(
            id_err("cgroup:/a/../b"),
            IdentityError::CgroupDotDot { .. }
        ));
        assert_eq!(
            id_err("cgroup:/sys/fs/cgroup/system.slice").help().unwrap(),
            "write `cgroup:/system.slice`"
        );
        assert!(matches!(
            id_err("cgroup:/a\nb"),
            IdentityError::BadChar { .. }
        ));
        assert_eq!(id_err("user:1000").help().unwrap(), "write `uid:1000`");
        assert_eq!(id_err("group:27").help().unwrap(), "write `gid:27`");
        assert!(matches!(
            id_err("user:-rf"),
            IdentityError::BadChar { ch: '-', .. }
        ));
        assert!(matches!(id_err("user:a/b"), IdentityError::BadChar { .. }));
        assert!(matches!(id_err("uid:4294967295"), IdentityError::Id { .. }));
        assert!(matches!(id_err("uid:-1"), IdentityError::Id { .. }));
        assert!(matches!(id_err("gid:abc"), IdentityError::Id { .. }));
        assert!(matches!(
            id_err("user:"),
            IdentityError::Empty { kind: "user", .. }
        ));
        assert!(matches!(id_err("user:$"), IdentityError::BadChar { .. }));
    }

    #[test]
    fn serde_uses_the_string_form() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Row {
            who: Identity,
            ports: PortRange,
        }
        let row = Row {
            who: id("peer:10.0.0.0/8"),
            ports: "8000-8099/tcp".parse().unwrap(),
        };
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(json, r#"{"who":"peer:10.0.0.0/8","ports":"8000-8099/tcp"}"#);
        assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);
        let bad = serde_json::from_str::<Row>(r#"{"who":"bob","ports":"1/tcp"}"#).unwrap_err();
        assert!(
            bad.to_string().contains("`bob` is not an identity"),
            "{bad}"
        );
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("366d").unwrap(), MAX_TTL);
        assert_eq!(
            parse_ttl("0s").unwrap_err().to_string(),
            "TTL must be greater than zero"
        );
        assert!(matches!(
            parse_ttl("367d"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(parse_ttl("30"), Err(DurationError::Parse { .. })));
        assert!(matches!(
            parse_ttl("soon"),
            Err(DurationError::Parse { .. })
        ));
    }

    /// Identities built from their parts, covering every kind.
    fn any_identity() -> impl Strategy<Value = Identity> {
        let name = "[a-z_][a-z0-9_.-]{0,20}";
        prop_oneof![
            (
                "[A-Za-z0-9_:.-]{1,20}(@[a-z0-9]{1,5})?",
                prop::sample::select(&UNIT_TYPES_WITH_CGROUP[..])
            )
                .prop_map(|(stem, ty)| Identity::Unit(format!("{stem}.{ty}"))),
            prop::collection::vec("[^/\\p{Cc}]{1,12}", 0..4).prop_filter_map(
                "no dot components",
                |parts| {
                    (!parts.iter().any(|p| p == "." || p == "..")
                        && parts.first().is_none_or(|p| p != "sys"))
                    .then(|| Identity::Cgroup(format!("/{}", parts.join("/"))))
                }
            ),
            name.prop_filter("not numeric", |n| !n.bytes().all(|b| b.is_ascii_digit()))
                .prop_map(Identity::User),
            name.prop_filter("not numeric", |n| !n.bytes().all(|b| b.is_ascii_digit()))
                .prop_map(Identity::Group),
            (0..u32::MAX).prop_map(Identity::Uid),
            (0..u32::MAX).prop_map(Identity::Gid),
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| Identity::Peer(IpCidr {
                addr: IpAddr::V4(Ipv4Addr::from(a & v4_mask(p))),
                prefix: p
            })),
            (any::<u128>(), 0u8..=128).prop_filter_map("not v4-mapped", |(a, p)| {
                let addr = Ipv6Addr::from(a & v6_mask(p));
                (p < 96 || addr.to_ipv4_mapped().is_none()).then_some(Identity::Peer(IpCidr {
                    addr: IpAddr::V6(addr),
                    prefix: p,
                }))
            }),
        ]
    }

    proptest! {
        #[test]
        fn identity_display_round_trips(identity in any_identity()) {
            let text = identity.to_string();
            prop_assert_eq!(text.parse::<Identity>(), Ok(identity), "{}", text);
        }

        #[test]
        fn port_range_display_round_trips(
            a in 1u16..,
            b in 1u16..,
            udp in any::<bool>(),
        ) {
            let range = PortRange {
                proto: if udp { Protocol::Udp } else { Protocol::Tcp },
                first: a.min(b),
                last: a.max(b),
            };
            prop_assert_eq!(range.to_string().parse::<PortRange>(), Ok(range));
        }

        /// Whatever a user writes, if it parses, its canonical form parses to
        /// the same value (normalisation is idempotent) and nothing panics.
        #[test]
        fn parsed_identities_are_canonical(text in "[a-z]{0,7}:?[ -~]{0,40}") {
            if let Ok(identity) = text.parse::<Identity>() {
                prop_assert_eq!(identity.to_string().parse::<Identity>(), Ok(identity));
            }
        }

        #[test]
        fn parsed_port_ranges_are_canonical(text in "[0-9]{0,7}-?[0-9]{0,7}/?[a-zA-Z]{0,4}") {
            if let Ok(range) = text.parse::<PortRange>() {
                prop_assert_eq!(range.to_string().parse::<PortRange>(), Ok(range));
            }
        }
    }
}
