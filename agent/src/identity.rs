//! Identities and port ranges: the words policy files and the CLI use to
//! say *who* may reach *which* port (*how long* is [`crate::duration`]).
//!
//! This module owns the text forms (`unit:payments-api.service`,
//! `peer:10.20.0.0/16`, and through [`ports`] `8000-8099/tcp`) and their
//! validation. It is
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
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The accepted identity forms, quoted in error messages.
const IDENTITY_FORMS: &str =
    "unit:NAME.service, cgroup:/PATH, user:NAME, uid:N, group:NAME, gid:N or peer:CIDR";

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

mod ports;
pub(crate) use ports::{PortRange, PortRangeError, Protocol};

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
    #[error("prefix `/{prefix}` in `{value}` has a leading zero")]
    PrefixLeadingZero { value: String, prefix: String },
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
            CidrError::PrefixLeadingZero { value, prefix } => {
                let trimmed = prefix.trim_start_matches('0');
                let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
                let addr = value.split_once('/').map_or(value.as_str(), |(a, _)| a);
                format!("write `{addr}/{trimmed}`")
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
                if text.len() > 1 && text.starts_with('0') {
                    return Err(CidrError::PrefixLeadingZero {
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

#[cfg(test)]
mod tests;
