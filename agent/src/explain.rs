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
use std::fs;

use agent_common::{expiry, kind, GrantKey, Proto, NEVER};
use serde::{Deserialize, Serialize};

use crate::{
    cgroupfs::{self, Hierarchy},
    clock,
    dataplane::DataplaneError,
    identity::{Identity, PortRange, Protocol},
    kernel::KernelMaps,
    ledger::{EntryKey, Ledger, Source},
};

/// What to explain for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Subject {
    Identity(Identity),
    /// A running process: its cgroup, real uid and real gid.
    Pid(u32),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExplainError {
    #[error("{0:?} is not one port: write PORT/PROTO, e.g. 5432/tcp")]
    Port(String),
    #[error("{0} ({help})", help = .0.help())]
    BadPort(crate::identity::PortRangeError),
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

/// The kernel reads explain (and the sweep) need: three lookups, nothing
/// written. Every [`KernelMaps`] has them; sweep tests give a table.
pub(crate) trait KernelView {
    fn port_entry(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError>;
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError>;
    fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError>;
    /// "Fresh until" (`PC_FRESH`): strict entries work only below it
    /// (`agent_common::expiry::until`). Views without that map say 0: a
    /// strict entry counts as stale, never as live.
    fn fresh_until(&self) -> Result<u64, DataplaneError> {
        Ok(0)
    }
    /// Whether `addr` (IPv6, IPv4 as v4-mapped) is in the mirror of the
    /// kernel's local, broadcast and anycast routes (`PC_LOCAL_NETS`).
    /// Views without that map count every address as local.
    fn in_local_nets(&self, _addr: [u8; 16]) -> Result<bool, DataplaneError> {
        Ok(true)
    }
}

impl<K: KernelMaps + ?Sized> KernelView for K {
    fn port_entry(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError> {
        KernelMaps::port_entry(self, proto, port)
    }
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError> {
        KernelMaps::grant_expiry(self, key)
    }
    fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError> {
        KernelMaps::peer_lookup(self, segment, addr)
    }
    fn in_local_nets(&self, addr: [u8; 16]) -> Result<bool, DataplaneError> {
        KernelMaps::in_local_nets(self, addr)
    }
    fn fresh_until(&self) -> Result<u64, DataplaneError> {
        KernelMaps::fresh_until(self)
    }
}

/// One key the kernel looks up for the subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// A [`GrantKey`] without its segment: kind and id.
    Local { kind: u32, id: u64 },
    /// A source address (IPv4 v4-mapped), matched by longest prefix.
    Peer([u8; 16]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    /// For people: "uid 1000 (alice)", "cgroup /a/b (id 4242)".
    pub label: String,
    pub lookup: Lookup,
}

/// A subject turned into what the kernel would see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// "pid 4242", "user:alice".
    pub subject: String,
    pub probes: Vec<Probe>,
    pub notes: Vec<String>,
}

/// One looked-up key and what it holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct KeyCheck {
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
pub(crate) struct ExplainView {
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
    /// The segment's mode as the kernel holds it ("enforce", "audit");
    /// `None` for an unprotected port. In audit mode a refusal (`allowed`
    /// false) is logged as `would_deny` and let through.
    #[serde(default)]
    pub mode: Option<String>,
}

/// Parses `5432/tcp` into one port.
pub(crate) fn parse_port(text: &str) -> Result<(Proto, u16), ExplainError> {
    let range: PortRange = text.parse().map_err(ExplainError::BadPort)?;
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
pub(crate) fn status_ids(status: &str) -> Option<(u32, u32)> {
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
pub(crate) fn cgroup_chain(path: &str) -> Vec<String> {
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

/// At most this many members of a `group:` subject are looked up.
const MAX_MEMBER_PROBES: usize = 64;

/// What the kernel would look up for `subject`.
pub(crate) fn resolve(
    subject: &Subject,
    resolver: &crate::resolve::Resolver,
) -> Result<Resolved, ExplainError> {
    let h = &resolver.hierarchy;
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
                        "group:NAME allows reach {name} by uid, as a member (primary or supplementary); gid:N allows only through a process's primary gid ({} unless the process changed it); its cgroup is not known here (use --pid for a running process)",
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
                    let group = resolver
                        .members(name)
                        .map_err(|_| ExplainError::NoSuchGroup(name.clone()))?;
                    for &uid in group.uids.iter().take(MAX_MEMBER_PROBES) {
                        let mut probe = uid_probe(uid);
                        probe.label.push_str(&format!(" (member of {name})"));
                        probes.push(probe);
                    }
                    notes.push(format!(
                        "group:{name} is its {} member(s) by uid, primary and supplementary (NSS){}; a process that only took gid {} (sg, newgrp) is not a member by that",
                        group.uids.len(),
                        if group.uids.len() > MAX_MEMBER_PROBES {
                            format!(", the first {MAX_MEMBER_PROBES} looked up here")
                        } else {
                            String::new()
                        },
                        group.gid
                    ));
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
                        lookup: Lookup::Peer(agent_common::key_of_ip(cidr.addr)),
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

/// The ledger's sources for what the kernel matched: the exact key for
/// local lookups, the longest recorded prefix containing the address for peers.
fn ledger_sources(ledger: &Ledger, segment: u32, lookup: &Lookup) -> Vec<(Source, u64)> {
    match lookup {
        Lookup::Local { kind, id } => ledger.sources_of(&EntryKey::Local(GrantKey {
            kind: *kind,
            segment,
            id: *id,
        })),
        Lookup::Peer(addr) => ledger
            .keys()
            .filter_map(|k| match k {
                EntryKey::Peer {
                    segment: seg,
                    addr: net,
                    prefix,
                } if seg == segment && crate::kernel::prefix_contains(&net, prefix, addr) => {
                    Some((prefix, k))
                }
                _ => None,
            })
            .max_by_key(|(prefix, _)| *prefix)
            .map(|(_, k)| ledger.sources_of(&k))
            .unwrap_or_default(),
    }
}

/// Evaluates `resolved` against the kernel maps at boot-clock instant `now`.
/// `segment_name` names a segment id; `describe` says what a ledger source is.
pub(crate) fn evaluate(
    kernel: &(impl KernelView + ?Sized),
    ledger: &Ledger,
    resolved: &Resolved,
    (proto, port): (Proto, u16),
    now: u64,
    segment_name: &dyn Fn(u32) -> Option<String>,
    describe: &dyn Fn(&Source) -> String,
) -> Result<ExplainView, ExplainError> {
    let proto_text = proto.name();
    let port_text = format!("{port}/{proto_text}");
    let mut notes = resolved.notes.clone();
    let entry = kernel.port_entry(proto, port)?;
    let segment_id = agent_common::port_entry::segment(entry);
    let audit = agent_common::port_entry::audit(entry);
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
            mode: None,
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
        // A strict entry is judged, and shown, by when it stops working.
        let expiry = match expiry {
            Some(e) if expiry::is_strict(e) => {
                let fresh = kernel.fresh_until()?;
                notes.push(format!(
                    "the entry for {} is strict: it works only while this host hears from the fleet store ({})",
                    probe.label,
                    if fresh > now {
                        format!("fresh for {} s more", (fresh - now) / 1_000_000_000)
                    } else {
                        "stale now".to_string()
                    }
                ));
                Some(expiry::until(e, fresh))
            }
            other => other,
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
                "no live entry for any of the {} key(s) looked up{}",
                checks.len(),
                if audit {
                    "; the segment is in audit mode: let through and logged as would_deny"
                } else {
                    ""
                }
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
        mode: Some(if audit { "audit" } else { "enforce" }.to_owned()),
    })
}

#[cfg(test)]
mod tests;
