//! Protocols and port ranges: `tcp`, `5432/tcp`, `8000-8099/tcp`; their
//! text forms, validation and errors. Part of [`crate::identity`] (which
//! re-exports everything here); knows nothing of identities or maps.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

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

    /// `tcp` or `udp`, lower case: one spelling per protocol, so what is
    /// written is what every listing and audit record shows (`TCP` is
    /// refused with a hint, not silently read).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(ProtocolError(s.to_owned())),
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
    #[error("protocol `{proto}` in `{value}` is written in lower case")]
    ProtocolCase { value: String, proto: String },
    #[error("port `{text}` in `{value}` has a leading zero")]
    LeadingZero { value: String, text: String },
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
            PortRangeError::ProtocolCase { value, proto } => format!(
                "write `{}`",
                value.replacen(
                    &format!("/{proto}"),
                    &format!("/{}", proto.to_lowercase()),
                    1
                )
            ),
            PortRangeError::LeadingZero { value, text } => {
                let trimmed = text.trim_start_matches('0');
                format!("write `{}`", value.replacen(text.as_str(), trimmed, 1))
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
            if proto.to_lowercase().parse::<Protocol>().is_ok() {
                PortRangeError::ProtocolCase {
                    value: value.to_owned(),
                    proto,
                }
            } else {
                PortRangeError::UnknownProtocol {
                    value: value.to_owned(),
                    proto,
                }
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
    // `021001` is refused rather than read as 21001: a leading zero reads
    // as octal to some people and tools.
    if !trimmed.is_empty() && trimmed.len() != text.len() {
        return Err(PortRangeError::LeadingZero {
            value: value.to_owned(),
            text: text.to_owned(),
        });
    }
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
