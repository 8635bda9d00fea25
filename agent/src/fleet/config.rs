//! The `[fleet]` table of agent.toml: which etcd, who this host is, and
//! how long the agent waits. Owns the checks of each value (endpoints,
//! names, the key prefix, TLS files); nothing here connects.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

/// Default key prefix (the data layout's version is part of it).
pub(crate) const DEFAULT_PREFIX: &str = "/portcullis/v1";
/// How long `revoke --fleet` waits for every targeted agent by default.
pub(crate) const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The liveness lease of `agents/H` by default.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long after this host last heard from the store its strict fleet
/// grants keep working (`strict_after`).
pub(crate) const DEFAULT_STRICT_AFTER: Duration = Duration::from_secs(60);
/// How long one call to etcd may take before it counts as unreachable.
pub(crate) const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// `[fleet]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    #[serde(default)]
    endpoints: Vec<String>,
    host: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    prefix: Option<String>,
    ack_timeout: Option<String>,
    lease_ttl: Option<String>,
    call_timeout: Option<String>,
    strict_after: Option<String>,
}

/// Client certificate and the CA that signs etcd's server certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tls {
    pub ca: PathBuf,
    /// Client certificate and key (mTLS); both or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// `[fleet]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FleetConfig {
    pub endpoints: Vec<String>,
    pub host: String,
    pub groups: Vec<String>,
    pub tls: Option<Tls>,
    pub prefix: String,
    pub ack_timeout: Duration,
    pub lease_ttl: Duration,
    pub call_timeout: Duration,
    /// Strict fleet grants stop working this long after the store was
    /// last heard from (enforced in the kernel: `agent/freshness.rs`).
    pub strict_after: Duration,
}

/// A problem with one key of `[fleet]`: what, and how to fix it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub message: String,
    pub help: String,
}

fn problem(message: String, help: &str) -> Problem {
    Problem {
        message,
        help: help.to_string(),
    }
}

/// A host or group name: what etcd keys and people both read safely.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The host of an endpoint URL and whether it is https.
fn endpoint_host(url: &str) -> Option<(bool, String)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        (false, url.strip_prefix("http://")?)
    };
    let authority = rest.split('/').next()?;
    let host = if let Some(inner) = authority.strip_prefix('[') {
        inner.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| (tls, host.to_string()))
}

fn loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// A timing knob: the project's one duration grammar, 1s to 1d.
fn duration(key: &str, text: Option<String>, default: Duration) -> Result<Duration, Problem> {
    let Some(text) = text else {
        return Ok(default);
    };
    text.parse::<crate::duration::Bounded<crate::duration::IntervalBounds>>()
        .map(|d| d.get())
        .map_err(|e| {
            problem(
                format!("fleet.{key} {:?}: {e}", crate::termtext::escape(&text)),
                "write a duration from \"1s\" to \"1d\", e.g. \"10s\"",
            )
        })
}

impl RawFleet {
    /// Checks every key; `hostname` is the default of `host`.
    pub(crate) fn resolve(self, hostname: &str) -> Result<FleetConfig, Vec<Problem>> {
        let mut problems = Vec::new();
        if self.endpoints.is_empty() {
            problems.push(problem(
                "fleet.endpoints is empty".into(),
                "name etcd's client URLs, e.g. endpoints = [\"https://etcd1:2379\"]",
            ));
        }
        let mut plain = false;
        for e in &self.endpoints {
            match endpoint_host(e) {
                None => problems.push(problem(
                    format!("fleet.endpoints: {:?} is not an http(s) URL", crate::termtext::escape(e)),
                    "write https://HOST:PORT",
                )),
                Some((false, host)) if !loopback(&host) => problems.push(problem(
                    format!("fleet.endpoints: {:?} is plain http to a host that is not loopback", crate::termtext::escape(e)),
                    "use https:// with ca, cert and key (mTLS); plain http is only for etcd on 127.0.0.1 (tests)",
                )),
                Some((false, _)) => plain = true,
                Some((true, _)) => {}
            }
        }
        let host = self.host.unwrap_or_else(|| hostname.to_string());
        if !valid_name(&host) {
            problems.push(problem(
                format!(
                    "fleet.host {:?} is not a valid host name",
                    crate::termtext::escape(&host)
                ),
                "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
            ));
        }
        let mut groups = Vec::new();
        for g in self.groups {
            if !valid_name(&g) {
                problems.push(problem(
                    format!(
                        "fleet.groups: {:?} is not a valid group name",
                        crate::termtext::escape(&g)
                    ),
                    "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
                ));
            } else if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let prefix = self.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        let prefix_ok = prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix.len() <= 128
            && prefix[1..].split('/').all(valid_name);
        if !prefix_ok {
            problems.push(problem(
                format!("fleet.prefix {:?} is not a key prefix", crate::termtext::escape(&prefix)),
                "write e.g. \"/portcullis/v1\": starts with '/', no trailing '/', names of letters, digits, '.', '_', '-'",
            ));
        }
        let tls = match (self.ca, self.cert, self.key) {
            (None, None, None) => None,
            (Some(ca), None, None) => Some(Tls { ca, identity: None }),
            (Some(ca), Some(cert), Some(key)) => Some(Tls {
                ca,
                identity: Some((cert, key)),
            }),
            _ => {
                problems.push(problem(
                    "fleet: cert and key go together, and need ca".into(),
                    "set ca, cert and key (mTLS), or ca alone",
                ));
                None
            }
        };
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        if https && tls.is_none() {
            problems.push(problem(
                "fleet: https endpoints need ca (and cert and key for mTLS)".into(),
                "set ca = \"/etc/portcullis/etcd-ca.pem\", cert and key",
            ));
        }
        if plain && https {
            problems.push(problem(
                "fleet.endpoints mixes http and https".into(),
                "use one scheme for all endpoints",
            ));
        }
        let strict_after = match duration("strict_after", self.strict_after, DEFAULT_STRICT_AFTER) {
            Ok(d) => d,
            Err(p) => {
                problems.push(p);
                DEFAULT_STRICT_AFTER
            }
        };
        let durations = (
            duration("ack_timeout", self.ack_timeout, DEFAULT_ACK_TIMEOUT),
            duration("lease_ttl", self.lease_ttl, DEFAULT_LEASE_TTL),
            duration("call_timeout", self.call_timeout, DEFAULT_CALL_TIMEOUT),
        );
        let (ack_timeout, lease_ttl, call_timeout) = match durations {
            (Ok(a), Ok(l), Ok(c)) => (a, l, c),
            (a, l, c) => {
                problems.extend([a.err(), l.err(), c.err()].into_iter().flatten());
                return Err(problems);
            }
        };
        if lease_ttl < Duration::from_secs(2) {
            problems.push(problem(
                "fleet.lease_ttl is under 2s".into(),
                "etcd leases count in whole seconds; use 2s or more",
            ));
        }
        if strict_after < lease_ttl {
            problems.push(problem(
                format!(
                    "fleet.strict_after ({}) is shorter than fleet.lease_ttl ({})",
                    crate::clock::human(strict_after),
                    crate::clock::human(lease_ttl)
                ),
                "the lease keepalive (every lease_ttl / 3) is how an idle agent hears from the store; \
                 make strict_after at least lease_ttl, or strict grants stop between keepalives",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(FleetConfig {
            endpoints: self.endpoints,
            host,
            groups,
            tls,
            prefix,
            ack_timeout,
            lease_ttl,
            call_timeout,
            strict_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FleetConfig, Vec<Problem>> {
        toml::from_str::<RawFleet>(text).unwrap().resolve("h1")
    }

    #[test]
    fn loopback_http_is_accepted_with_defaults() {
        let c =
            parse("endpoints = [\"http://127.0.0.1:2379\"]\ngroups = [\"db\", \"db\"]").unwrap();
        assert_eq!(c.host, "h1");
        assert_eq!(c.groups, ["db"]);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(c.ack_timeout, DEFAULT_ACK_TIMEOUT);
        assert!(c.tls.is_none());
    }

    #[test]
    fn plain_http_to_another_host_is_refused() {
        let e = parse("endpoints = [\"http://10.0.0.5:2379\"]").unwrap_err();
        assert!(e[0].message.contains("not loopback"), "{e:?}");
    }

    #[test]
    fn https_needs_a_ca_and_cert_needs_key() {
        assert!(parse("endpoints = [\"https://etcd:2379\"]").is_err());
        assert!(parse("endpoints = [\"https://etcd:2379\"]\nca = \"/ca\"\ncert = \"/c\"").is_err());
        let c = parse(
            "endpoints = [\"https://[::1]:2379\"]\nca = \"/ca\"\ncert = \"/c\"\nkey = \"/k\"",
        )
        .unwrap();
        assert_eq!(c.tls.unwrap().identity.unwrap().1, PathBuf::from("/k"));
    }

    #[test]
    fn names_and_prefixes_with_control_characters_or_slashes_are_refused() {
        assert!(parse("endpoints = [\"http://127.0.0.1:1\"]\nhost = \"a/b\"").is_err());
        assert!(
            parse("endpoints = [\"http://127.0.0.1:1\"]\ngroups = [\"db\\u001b[2J\"]").is_err()
        );
        assert!(parse("endpoints = [\"http://127.0.0.1:1\"]\nprefix = \"/p/\"").is_err());
        assert!(parse("endpoints = [\"http://127.0.0.1:1\"]\nprefix = \"p\"").is_err());
        assert!(parse("endpoints = []").is_err());
        assert!(valid_name("db-1.eu_west"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
    }
}
