//! `portcullis explain`: why a subject may or may not reach a port, read
//! from what is in the kernel maps rather than from a second copy of the
//! decision.
//!
//! Two steps, as the programs take them: the port's segment from the port
//! array, then every key the kernel would look up for the subject (uid,
//! primary gid, the cgroup and each ancestor; for a peer, the longest
//! prefix in the trie). The answer is "allow" when one of those entries is
//! live on the boot clock, exactly the kernel's test. Each entry is then
//! traced back to what put it there (a standing allow from a policy file,
//! a grant) through the ledger.
//!
//! Owns resolving a subject into kernel keys (a running process from
//! /proc, or an identity) and rendering the evaluation. It never writes a
//! map and does not decide anything the kernel has not already decided.
use std::{fs, net::IpAddr};

use agent_common::{kind, v4_mapped, GrantKey, Proto, NEVER};
use serde::{Deserialize, Serialize};

use crate::{
    cgroupfs::{self, Hierarchy},
    clock,
    dataplane::{Dataplane, DataplaneError},
    identity::{Identity, PortRange, Protocol},
    ledger::{EntryKey, Ledger, Source},
};

/// What to explain for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Identity(Identity),
    /// A running process: its cgroup, real uid and real gid.
    Pid(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0:?} is not one port: write PORT/PROTO, e.g. 5432/tcp")]
    Port(String),
    #[error("cannot read process {pid}: {why}")]
    Process { pid: u32, why: String },
    #[error("no user named {0:?} on this host")]
    NoSuchUser(String),
    #[error("no group named {0:?} on this host")]
    NoSuchGroup(String),
    #[error("cgroup {0} does not exist on this host")]
    NoSuchCgroup(String),
    #[error("unit {0} has no cgroup on this host (is it running?)")]
    UnitNotRunning(String),
    #[error("explain takes one peer address, not the network {0}")]
    PeerNetwork(crate::identity::IpCidr),
    #[error("reading the kernel maps failed")]
    Kernel(#[from] DataplaneError),
}

/// The kernel reads explain needs; the dataplane in the agent, a table in tests.
pub trait KernelView {
    fn port_segment(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError>;
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError>;
    fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError>;
    /// Whether `addr` (IPv6, IPv4 as v4-mapped) is in the mirror of the
    /// kernel's local, broadcast and anycast routes (`PC_LOCAL_NETS`).
    /// Views without that map count every address as local.
    fn in_local_nets(&self, _addr: [u8; 16]) -> Result<bool, DataplaneError> {
        Ok(true)
    }
}

impl KernelView for Dataplane {
    fn port_segment(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError> {
        Dataplane::port_segment(self, proto, port)
    }
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError> {
        Dataplane::grant_expiry(self, key)
    }
    fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError> {
        Dataplane::peer_lookup(self, segment, addr)
    }
    fn in_local_nets(&self, addr: [u8; 16]) -> Result<bool, DataplaneError> {
        Dataplane::in_local_nets(self, addr)
    }
}

/// One key the kernel looks up for the subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A [`GrantKey`] without its segment: kind and id.
    Local { kind: u32, id: u64 },
    /// A source address (IPv4 v4-mapped), matched by longest prefix.
    Peer([u8; 16]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// For people: "uid 1000 (alice)", "cgroup /a/b (id 4242)".
    pub label: String,
    pub lookup: Lookup,
}

/// A subject turned into what the kernel would see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// "pid 4242", "user:alice".
    pub subject: String,
    pub probes: Vec<Probe>,
    pub notes: Vec<String>,
}

/// One looked-up key and what it holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyCheck {
    pub key: String,
    /// Whether the kernel map holds an entry for it.
    pub in_kernel: bool,
    /// Whether that entry is live now (what the kernel tests).
    pub live: bool,
    /// True for entries that never expire (standing allows).
    pub never: bool,
    pub expires_at: Option<String>,
    pub remaining_secs: Option<u64>,
    /// What put the entry there, from the agent's ledger.
    pub sources: Vec<String>,
}

/// The answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExplainView {
    pub subject: String,
    /// "5432/tcp".
    pub port: String,
    /// The segment protecting the port, per the kernel's port map.
    pub segment: Option<String>,
    pub segment_id: u32,
    pub allowed: bool,
    /// Why, in one line.
    pub decided_by: String,
    /// Time left on the deciding entry; `None` when it never expires or on deny.
    pub remaining_secs: Option<u64>,
    pub checks: Vec<KeyCheck>,
    pub notes: Vec<String>,
}

/// Parses `5432/tcp` into one port.
pub fn parse_port(text: &str) -> Result<(Proto, u16), ExplainError> {
    let range: PortRange = text
        .parse()
        .map_err(|_| ExplainError::Port(text.to_string()))?;
    if range.first != range.last {
        return Err(ExplainError::Port(text.to_string()));
    }
    let proto = match range.proto {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    };
    Ok((proto, range.first))
}

/// Real uid and real gid from the text of /proc/PID/status (what
/// `bpf_get_current_uid_gid` reports).
pub fn status_ids(status: &str) -> Option<(u32, u32)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// A cgroup path and every ancestor, root first: `/a/b` → `/`, `/a`, `/a/b`.
pub fn cgroup_chain(path: &str) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    let mut current = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        current.push('/');
        current.push_str(part);
        out.push(current.clone());
    }
    out
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn uid_probe(uid: u32) -> Probe {
    Probe {
        label: match user_name(uid) {
            Some(name) => format!("uid {uid} ({name})"),
            None => format!("uid {uid}"),
        },
        lookup: Lookup::Local {
            kind: kind::UID,
            id: uid as u64,
        },
    }
}

fn gid_probe(gid: u32, what: &str) -> Probe {
    Probe {
        label: format!("gid {gid}{what}"),
        lookup: Lookup::Local {
            kind: kind::GID,
            id: gid as u64,
        },
    }
}

fn cgroup_probes(h: &Hierarchy, path: &str, notes: &mut Vec<String>) -> Vec<Probe> {
    let mut out = Vec::new();
    for p in cgroup_chain(path) {
        match h.id_of(&p) {
            Ok(id) => out.push(Probe {
                label: format!("cgroup {p} (id {id})"),
                lookup: Lookup::Local {
                    kind: kind::CGROUP,
                    id,
                },
            }),
            Err(e) => notes.push(format!("{e}; not looked up")),
        }
    }
    out
}

/// What the kernel would look up for `subject`.
pub fn resolve(subject: &Subject, h: &Hierarchy) -> Result<Resolved, ExplainError> {
    let mut notes = Vec::new();
    let mut probes = Vec::new();
    let subject_text = match subject {
        Subject::Pid(pid) => {
            let pid = *pid;
            let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| {
                ExplainError::Process {
                    pid,
                    why: e.to_string(),
                }
            })?;
            let (uid, gid) = status_ids(&status).ok_or_else(|| ExplainError::Process {
                pid,
                why: "no Uid:/Gid: lines in its status".into(),
            })?;
            let cgroup = cgroupfs::cgroup_of_pid(pid).map_err(|e| ExplainError::Process {
                pid,
                why: e.to_string(),
            })?;
            probes.push(uid_probe(uid));
            probes.push(gid_probe(gid, ""));
            probes.extend(cgroup_probes(h, &cgroup, &mut notes));
            format!("pid {pid} (uid {uid}, gid {gid}, cgroup {cgroup})")
        }
        Subject::Identity(identity) => {
            match identity {
                Identity::User(name) => {
                    let user = nix::unistd::User::from_name(name)
                        .ok()
                        .flatten()
                        .ok_or_else(|| ExplainError::NoSuchUser(name.clone()))?;
                    probes.push(uid_probe(user.uid.as_raw()));
                    probes.push(gid_probe(user.gid.as_raw(), " (primary gid, from passwd)"));
                    notes.push(format!(
                        "{name}'s other groups do not count: the kernel sees a process's primary gid only ({} unless the process changed it); its cgroup is not known here (use --pid for a running process)",
                        user.gid.as_raw()
                    ));
                }
                Identity::Uid(uid) => {
                    probes.push(uid_probe(*uid));
                    if let Some(user) =
                        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))
                            .ok()
                            .flatten()
                    {
                        probes.push(gid_probe(user.gid.as_raw(), " (primary gid, from passwd)"));
                    }
                    notes.push("a process's cgroup is not known from a uid (use --pid for a running process)".into());
                }
                Identity::Group(name) => {
                    let group = nix::unistd::Group::from_name(name)
                        .ok()
                        .flatten()
                        .ok_or_else(|| ExplainError::NoSuchGroup(name.clone()))?;
                    probes.push(gid_probe(group.gid.as_raw(), &format!(" ({name})")));
                    notes.push(format!("only processes whose primary gid is {} count as group:{name}; supplementary membership does not", group.gid.as_raw()));
                }
                Identity::Gid(gid) => probes.push(gid_probe(*gid, "")),
                Identity::Cgroup(path) => {
                    if h.id_of(path).is_err() {
                        return Err(ExplainError::NoSuchCgroup(path.clone()));
                    }
                    probes.extend(cgroup_probes(h, path, &mut notes));
                }
                Identity::Unit(name) => {
                    // The same cgroup `resolve` gives the kernel: systemd's.
                    let path = match cgroupfs::unit_control_group(name) {
                        Ok(Some(path)) if h.trusted_id(&path).is_ok() => path,
                        _ => return Err(ExplainError::UnitNotRunning(name.clone())),
                    };
                    probes.extend(cgroup_probes(h, &path, &mut notes));
                }
                Identity::Peer(cidr) => {
                    let full = if cidr.addr.is_ipv4() { 32 } else { 128 };
                    if cidr.prefix != full {
                        return Err(ExplainError::PeerNetwork(*cidr));
                    }
                    probes.push(Probe {
                        label: format!("peer {}", cidr.addr),
                        lookup: Lookup::Peer(mapped(cidr.addr)),
                    });
                    notes.push("peers are decided for packets arriving from the network".into());
                }
            }
            identity.to_string()
        }
    };
    Ok(Resolved {
        subject: subject_text,
        probes,
        notes,
    })
}

fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Whether a peer trie entry (v6 form, v6 prefix length) contains `addr`.
fn prefix_contains(net: &[u8; 16], prefix: u8, addr: &[u8; 16]) -> bool {
    let bits = u128::from_be_bytes(*addr);
    let net = u128::from_be_bytes(*net);
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix.min(128) as u32)
    };
    bits & mask == net & mask
}

/// The ledger's sources for what the kernel matched: the exact key for
/// local lookups, the longest recorded prefix containing the address for peers.
fn ledger_sources(ledger: &Ledger, segment: u32, lookup: &Lookup) -> Vec<(Source, u64)> {
    match lookup {
        Lookup::Local { kind, id } => ledger
            .sources_of(&EntryKey::Local(GrantKey {
                kind: *kind,
                segment,
                id: *id,
            }))
            .to_vec(),
        Lookup::Peer(addr) => ledger
            .entries()
            .filter_map(|(k, s)| match k {
                EntryKey::Peer {
                    segment: seg,
                    addr: net,
                    prefix,
                } if *seg == segment && prefix_contains(net, *prefix, addr) => Some((*prefix, s)),
                _ => None,
            })
            .max_by_key(|(prefix, _)| *prefix)
            .map(|(_, s)| s.to_vec())
            .unwrap_or_default(),
    }
}

/// Evaluates `resolved` against the kernel maps at boot-clock instant `now`.
/// `segment_name` names a segment id; `describe` says what a ledger source is.
pub fn evaluate(
    kernel: &dyn KernelView,
    ledger: &Ledger,
    resolved: &Resolved,
    (proto, port): (Proto, u16),
    now: u64,
    segment_name: &dyn Fn(u32) -> Option<String>,
    describe: &dyn Fn(&Source) -> String,
) -> Result<ExplainView, ExplainError> {
    let proto_text = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let port_text = format!("{port}/{proto_text}");
    let mut notes = resolved.notes.clone();
    let segment_id = kernel.port_segment(proto, port)?;
    if segment_id == 0 {
        return Ok(ExplainView {
            subject: resolved.subject.clone(),
            port: port_text,
            segment: None,
            segment_id: 0,
            allowed: true,
            decided_by: "the port is in no segment: not protected".into(),
            remaining_secs: None,
            checks: Vec::new(),
            notes,
        });
    }
    let segment = segment_name(segment_id);
    if segment.is_none() {
        notes.push(format!(
            "the kernel maps the port to segment id {segment_id}, which the agent does not know (left by an earlier run?)"
        ));
    }
    let mut checks = Vec::new();
    let mut decided: Option<(usize, u64)> = None;
    for probe in &resolved.probes {
        let expiry = match &probe.lookup {
            Lookup::Local { kind, id } => kernel.grant_expiry(&GrantKey {
                kind: *kind,
                segment: segment_id,
                id: *id,
            })?,
            Lookup::Peer(addr) => kernel.peer_lookup(segment_id, *addr)?,
        };
        let live = expiry.is_some_and(|e| e > now);
        let sources = ledger_sources(ledger, segment_id, &probe.lookup);
        let mut described: Vec<String> = sources.iter().map(|(s, _)| describe(s)).collect();
        match (expiry.is_some(), sources.is_empty()) {
            (true, true) => described.push(
                "no source known to the agent (an entry left by an earlier run; swept at the next start)".into(),
            ),
            (false, false) => notes.push(format!(
                "the agent records {} for {} but the kernel holds no entry",
                described.join(", "),
                probe.label
            )),
            _ => {}
        }
        if live && decided.is_none_or(|(_, best)| expiry.unwrap_or(0) > best) {
            decided = Some((checks.len(), expiry.unwrap_or(0)));
        }
        checks.push(KeyCheck {
            key: probe.label.clone(),
            in_kernel: expiry.is_some(),
            live,
            never: expiry == Some(NEVER),
            expires_at: expiry
                .filter(|e| *e != NEVER)
                .map(|e| clock::rfc3339(clock::wall_of(e))),
            remaining_secs: expiry
                .filter(|e| *e != NEVER)
                .map(|e| e.saturating_sub(now) / 1_000_000_000),
            sources: described,
        });
    }
    let (allowed, decided_by, remaining_secs) = match decided {
        Some((i, expiry)) => {
            let c = &checks[i];
            let what = if c.sources.is_empty() {
                "an entry".to_string()
            } else {
                c.sources.join("; ")
            };
            (
                true,
                format!("{what}, matched as {}", c.key),
                (expiry != NEVER).then(|| expiry.saturating_sub(now) / 1_000_000_000),
            )
        }
        None => (
            false,
            format!(
                "no live entry for any of the {} key(s) looked up",
                checks.len()
            ),
            None,
        ),
    };
    Ok(ExplainView {
        subject: resolved.subject.clone(),
        port: port_text,
        segment,
        segment_id,
        allowed,
        decided_by,
        remaining_secs,
        checks,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct FakeKernel {
        ports: HashMap<(Proto, u16), u32>,
        grants: HashMap<GrantKey, u64>,
        peers: Vec<(u32, [u8; 16], u8, u64)>,
    }

    impl KernelView for FakeKernel {
        fn port_segment(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError> {
            Ok(*self.ports.get(&(proto, port)).unwrap_or(&0))
        }
        fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError> {
            Ok(self.grants.get(key).copied())
        }
        fn peer_lookup(&self, seg: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError> {
            Ok(self
                .peers
                .iter()
                .filter(|(s, net, p, _)| *s == seg && prefix_contains(net, *p, &addr))
                .max_by_key(|(_, _, p, _)| *p)
                .map(|(_, _, _, e)| *e))
        }
    }

    const NOW: u64 = 1_000_000_000_000;

    fn uid_key(uid: u64) -> GrantKey {
        GrantKey {
            kind: kind::UID,
            segment: 3,
            id: uid,
        }
    }

    fn resolved(probes: Vec<Probe>) -> Resolved {
        Resolved {
            subject: "test".into(),
            probes,
            notes: vec![],
        }
    }

    fn uid(u: u64) -> Probe {
        Probe {
            label: format!("uid {u}"),
            lookup: Lookup::Local {
                kind: kind::UID,
                id: u,
            },
        }
    }

    fn run(k: &FakeKernel, l: &Ledger, r: &Resolved, port: u16) -> ExplainView {
        evaluate(
            k,
            l,
            r,
            (Proto::Tcp, port),
            NOW,
            &|id| (id == 3).then(|| "db".to_string()),
            &|s| match s {
                Source::Grant(id) => format!("grant {id}"),
                Source::Standing { identity, .. } => format!("standing allow {identity}"),
            },
        )
        .unwrap()
    }

    #[test]
    fn unprotected_ports_are_allowed() {
        let v = run(
            &FakeKernel::default(),
            &Ledger::new(),
            &resolved(vec![uid(1)]),
            80,
        );
        assert!(v.allowed);
        assert_eq!(v.segment, None);
        assert!(v.checks.is_empty());
    }

    #[test]
    fn a_live_grant_allows_and_is_traced_to_its_source() {
        let mut k = FakeKernel::default();
        k.ports.insert((Proto::Tcp, 5432), 3);
        let expiry = NOW + 90 * 1_000_000_000;
        k.grants.insert(uid_key(1000), expiry);
        let mut l = Ledger::new();
        l.set(Source::Grant(7), &[EntryKey::Local(uid_key(1000))], expiry);
        let v = run(&k, &l, &resolved(vec![uid(1000), uid(1001)]), 5432);
        assert!(v.allowed);
        assert_eq!(v.segment.as_deref(), Some("db"));
        assert_eq!(v.remaining_secs, Some(90));
        assert_eq!(v.decided_by, "grant 7, matched as uid 1000");
        assert_eq!(v.checks[0].sources, vec!["grant 7"]);
        assert!(!v.checks[1].in_kernel);
    }

    #[test]
    fn an_expired_entry_still_in_the_map_denies() {
        let mut k = FakeKernel::default();
        k.ports.insert((Proto::Tcp, 5432), 3);
        // The kernel stops honouring an entry at its instant, before the agent sweeps it.
        k.grants.insert(uid_key(1000), NOW);
        let v = run(&k, &Ledger::new(), &resolved(vec![uid(1000)]), 5432);
        assert!(!v.allowed);
        assert!(v.checks[0].in_kernel && !v.checks[0].live);
        assert!(v.checks[0].sources[0].starts_with("no source known"));
    }

    #[test]
    fn a_standing_allow_wins_over_a_shorter_grant_and_disagreements_are_noted() {
        let mut k = FakeKernel::default();
        k.ports.insert((Proto::Tcp, 5432), 3);
        k.grants.insert(uid_key(5), NOW + 10);
        k.grants.insert(uid_key(6), NEVER);
        let mut l = Ledger::new();
        l.set(
            Source::Standing {
                segment: "db".into(),
                identity: "uid:6".into(),
            },
            &[EntryKey::Local(uid_key(6))],
            NEVER,
        );
        // The ledger believes uid 7 is open; the kernel disagrees and wins.
        l.set(Source::Grant(9), &[EntryKey::Local(uid_key(7))], NOW + 100);
        let v = run(&k, &l, &resolved(vec![uid(5), uid(6), uid(7)]), 5432);
        assert!(v.allowed);
        assert_eq!(v.remaining_secs, None);
        assert!(
            v.decided_by.starts_with("standing allow uid:6"),
            "{}",
            v.decided_by
        );
        assert!(v.checks[1].never);
        assert!(v
            .notes
            .iter()
            .any(|n| n.contains("grant 9") && n.contains("no entry")));
    }

    #[test]
    fn peers_match_by_longest_prefix() {
        let mut k = FakeKernel::default();
        k.ports.insert((Proto::Tcp, 5432), 3);
        let net = v4_mapped([10, 1, 0, 0]);
        k.peers.push((3, net, 96 + 16, NEVER));
        let mut l = Ledger::new();
        l.set(
            Source::Standing {
                segment: "db".into(),
                identity: "peer:10.1.0.0/16".into(),
            },
            &[EntryKey::Peer {
                segment: 3,
                addr: net,
                prefix: 112,
            }],
            NEVER,
        );
        let inside = resolved(vec![Probe {
            label: "peer 10.1.2.3".into(),
            lookup: Lookup::Peer(v4_mapped([10, 1, 2, 3])),
        }]);
        let v = run(&k, &l, &inside, 5432);
        assert!(v.allowed);
        assert_eq!(v.checks[0].sources, vec!["standing allow peer:10.1.0.0/16"]);
        let outside = resolved(vec![Probe {
            label: "peer 10.2.0.1".into(),
            lookup: Lookup::Peer(v4_mapped([10, 2, 0, 1])),
        }]);
        assert!(!run(&k, &l, &outside, 5432).allowed);
    }

    #[test]
    fn proc_status_gives_real_ids() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t100\t0\t0\t0\nGroups:\t4 24\n";
        assert_eq!(status_ids(status), Some((1000, 100)));
        assert_eq!(status_ids("Name: x\n"), None);
    }

    #[test]
    fn cgroup_chains_start_at_the_root() {
        assert_eq!(cgroup_chain("/"), vec!["/"]);
        assert_eq!(cgroup_chain("/a/b"), vec!["/", "/a", "/a/b"]);
    }

    #[test]
    fn ports_are_single() {
        assert_eq!(parse_port("5432/tcp").unwrap(), (Proto::Tcp, 5432));
        assert_eq!(parse_port("53/udp").unwrap(), (Proto::Udp, 53));
        assert!(parse_port("8000-8001/tcp").is_err());
        assert!(parse_port("5432").is_err());
    }
}
