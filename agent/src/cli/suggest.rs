//! `portcullis discover` (its table) and `portcullis suggest`: a segment
//! policy written from what the kernel saw, for a person to review.
//!
//! `suggest` is pure text work over a `DiscoveryView`: it picks the ports
//! (`--port` or `--segment`), the clients seen on them (within `--since`),
//! turns each into an identity — `unit:` only where systemd confirmed the
//! client's cgroup is that unit, else `user:` (or `uid:` without a name),
//! peers as single addresses or, with `--aggregate`, their /24 or /64 —
//! and writes TOML that `portcullis check` accepts. Every identity is
//! parsed back before it is written (a name that is not a valid identity
//! is left out, counted in a comment), strings go through TOML escaping,
//! and comments hold only numbers and times the agent wrote, never a name.
use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, time::Duration};

use super::render::table;
use crate::{
    discover::{ClientView, DiscoveryView},
    identity::{Identity, PortRange},
};

/// Which ports `suggest` writes a segment for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Port(PortRange),
    Segment(String),
}

/// What `suggest` was asked.
#[derive(Clone, Debug)]
pub(super) struct SuggestArgs {
    pub(super) target: Target,
    /// Only clients seen within this long.
    pub(super) since: Option<Duration>,
    /// Peers as their /24 (IPv4) or /64 (IPv6) instead of single addresses.
    pub(super) aggregate: bool,
}

/// One identity line: how often, and when last.
#[derive(Debug, Default)]
struct Seen {
    count: u64,
    last_secs_ago: u64,
    last_seen: String,
}

/// The suggested policy, or why there is none.
pub(super) fn suggest(view: &DiscoveryView, args: &SuggestArgs) -> Result<String, String> {
    let (name, ports, existing): (String, Vec<PortRange>, Option<&str>) = match &args.target {
        Target::Segment(s) => {
            let seg = view
                .segments
                .iter()
                .find(|x| &x.name == s)
                .ok_or_else(|| format!("no segment named {s:?} in the policy in force"))?;
            let ports = seg.ports.iter().filter_map(|p| p.parse().ok()).collect();
            (seg.name.clone(), ports, Some(seg.mode.as_str()))
        }
        Target::Port(p) => {
            let protected = view
                .ports
                .iter()
                .find(|v| v.proto == p.proto.to_string() && v.port == p.first)
                .and_then(|v| v.segment.clone());
            let name = protected.unwrap_or_else(|| format!("port-{}-{}", p.first, p.proto));
            (name, vec![*p], None)
        }
    };
    let mut lines: BTreeMap<String, Seen> = BTreeMap::new();
    let mut skipped = 0usize;
    for port in &view.ports {
        if !ports
            .iter()
            .any(|r| r.proto.to_string() == port.proto && r.ports().any(|n| n == port.port))
        {
            continue;
        }
        for c in &port.clients {
            if args
                .since
                .is_some_and(|d| c.last_seen_secs_ago > d.as_secs())
            {
                continue;
            }
            let Some(identity) = identity_of(c, args.aggregate) else {
                skipped += 1;
                continue;
            };
            let e = lines.entry(identity).or_default();
            e.count += c.count;
            if e.last_seen.is_empty() || c.last_seen_secs_ago < e.last_secs_ago {
                e.last_secs_ago = c.last_seen_secs_ago;
                e.last_seen = c.last_seen.clone();
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Suggested by `portcullis suggest` from the clients the kernel saw{}.",
        match args.since {
            Some(d) => format!(" in the last {}", crate::clock::human(d)),
            None => " since the agent started".to_owned(),
        }
    );
    out.push_str("# Review every line: whoever connected is listed, wanted or not.\n");
    if skipped > 0 {
        let _ = writeln!(
            out,
            "# {skipped} client(s) left out: no valid identity could be written for them."
        );
    }
    if existing == Some("audit") {
        out.push_str("# The segment is in audit mode now; this policy enforces once applied.\n");
    }
    let _ = writeln!(out, "[segment.{name}]");
    let port_texts: Vec<String> = ports.iter().map(|p| toml_string(&p.to_string())).collect();
    let _ = writeln!(out, "ports = [{}]", port_texts.join(", "));
    out.push_str("allow = [\n");
    for (identity, seen) in &lines {
        let _ = writeln!(
            out,
            "    {}, # {} connection(s), last {}",
            toml_string(identity),
            seen.count,
            seen.last_seen
        );
    }
    out.push_str("]\n");
    Ok(out)
}

/// The identity a client is written as, parsed back to be sure it is one.
fn identity_of(c: &ClientView, aggregate: bool) -> Option<String> {
    let text = if let Some(peer) = &c.peer {
        let ip: IpAddr = peer.parse().ok()?;
        let prefix = match (ip, aggregate) {
            (IpAddr::V4(_), false) => 32,
            (IpAddr::V6(_), false) => 128,
            (IpAddr::V4(_), true) => 24,
            (IpAddr::V6(_), true) => 64,
        };
        let net = mask(ip, prefix);
        format!("peer:{net}/{prefix}")
    } else if let Some(unit) = &c.unit {
        format!("unit:{unit}")
    } else if let Some(user) = &c.user {
        format!("user:{user}")
    } else {
        format!("uid:{}", c.uid?)
    };
    text.parse::<Identity>().ok().map(|i| i.to_string())
}

/// `ip` with every bit past `prefix` cleared.
fn mask(ip: IpAddr, prefix: u32) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & (u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX.checked_shl(128 - prefix).unwrap_or(0));
            IpAddr::V6(bits.into())
        }
    }
}

/// A TOML basic string, escaped by the TOML library.
fn toml_string(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_owned()
}

/// `discover`'s table (the reply arrives escaped).
pub(super) fn render_discovery(v: &DiscoveryView) -> String {
    let mut out = String::new();
    if !v.recording {
        out.push_str(
            "note: the kernel records no clients (discovery = false): only listeners are shown\n",
        );
    }
    let mut rows = Vec::new();
    for p in &v.ports {
        let protection = match (&p.segment, &p.mode) {
            (Some(s), Some(m)) => format!("{s} ({m})"),
            _ => "unprotected".to_owned(),
        };
        let port = format!("{}/{}", p.port, p.proto);
        for l in &p.listeners {
            rows.push(vec![
                port.clone(),
                protection.clone(),
                "listener".into(),
                format!(
                    "{} {} uid {}{} {}",
                    l.addr,
                    l.process.as_deref().unwrap_or("?"),
                    l.uid,
                    l.user
                        .as_deref()
                        .map(|u| format!(" ({u})"))
                        .unwrap_or_default(),
                    l.unit.as_deref().or(l.cgroup.as_deref()).unwrap_or("?"),
                ),
                String::new(),
                String::new(),
            ]);
        }
        for c in &p.clients {
            let who = match (&c.peer, &c.unit, &c.cgroup) {
                (Some(peer), ..) => format!("peer {peer}"),
                (None, Some(unit), _) => format!("unit {unit}"),
                (None, None, Some(cg)) => format!("cgroup {cg}"),
                (None, None, None) => format!("cgroup id {}", c.cgroup_id.unwrap_or(0)),
            };
            let user = match (c.uid, &c.user) {
                (Some(uid), Some(u)) => format!(" uid {uid} ({u})"),
                (Some(uid), None) => format!(" uid {uid}"),
                _ => String::new(),
            };
            rows.push(vec![
                port.clone(),
                protection.clone(),
                "client".into(),
                format!("{who}{user}"),
                c.count.to_string(),
                c.last_seen.clone(),
            ]);
        }
    }
    out.push_str(&table(
        &["PORT", "SEGMENT", "ROLE", "WHO", "COUNT", "LAST SEEN"],
        &rows,
    ));
    let _ = writeln!(
        out,
        "{} of {} kernel sighting entries in use",
        v.entries, v.capacity
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{PortView, SegmentPorts};

    fn client(kind: &str) -> ClientView {
        ClientView {
            kind: kind.into(),
            cgroup: None,
            cgroup_id: None,
            unit: None,
            uid: None,
            user: None,
            gid: None,
            peer: None,
            count: 1,
            first_seen: "2026-01-01T00:00:00Z".into(),
            last_seen: "2026-01-01T00:00:00Z".into(),
            last_seen_secs_ago: 10,
        }
    }

    fn view(clients: Vec<ClientView>) -> DiscoveryView {
        DiscoveryView {
            recording: true,
            capacity: 16,
            entries: clients.len(),
            ports: vec![PortView {
                proto: "tcp".into(),
                port: 5432,
                segment: Some("db".into()),
                mode: Some("audit".into()),
                listeners: vec![],
                clients,
            }],
            segments: vec![SegmentPorts {
                name: "db".into(),
                ports: vec!["5432/tcp".into()],
                mode: "audit".into(),
            }],
        }
    }

    fn by_segment() -> SuggestArgs {
        SuggestArgs {
            target: Target::Segment("db".into()),
            since: None,
            aggregate: false,
        }
    }

    /// The suggestion as the policy parser reads it.
    fn parsed(text: &str) -> crate::policy::Segment {
        let segs = crate::policy::parse_str(std::path::Path::new("suggested.toml"), text)
            .unwrap_or_else(|d| panic!("not a valid policy: {d:?}\n{text}"));
        assert_eq!(segs.len(), 1, "{text}");
        segs.into_iter().next().unwrap()
    }

    #[test]
    fn units_users_and_peers_become_identities_with_counts() {
        let mut unit = client("local");
        unit.unit = Some("payments-api.service".into());
        unit.uid = Some(998);
        unit.user = Some("payments".into());
        unit.count = 12;
        let mut alice = client("local");
        alice.uid = Some(1000);
        alice.user = Some("alice".into());
        alice.cgroup = Some("/user.slice/user-1000.slice/session-3.scope".into());
        alice.count = 3;
        // Same user from another cgroup: one line, counts summed.
        let mut alice2 = alice.clone();
        alice2.cgroup = Some("/user.slice/user-1000.slice/session-4.scope".into());
        alice2.count = 2;
        alice2.last_seen_secs_ago = 1;
        alice2.last_seen = "2026-01-02T00:00:00Z".into();
        let mut nobody = client("local");
        nobody.uid = Some(4242);
        let mut peer = client("peer");
        peer.peer = Some("10.1.2.3".into());
        let text = suggest(
            &view(vec![unit, alice, alice2, nobody, peer]),
            &by_segment(),
        )
        .unwrap();
        let seg = parsed(&text);
        let allow: Vec<String> = seg.allow.iter().map(ToString::to_string).collect();
        assert_eq!(
            allow,
            [
                "peer:10.1.2.3/32",
                "uid:4242",
                "unit:payments-api.service",
                "user:alice"
            ],
            "{text}"
        );
        assert_eq!(seg.name, "db");
        assert_eq!(seg.ports.len(), 1);
        assert!(
            text.contains("\"user:alice\", # 5 connection(s), last 2026-01-02T00:00:00Z"),
            "{text}"
        );
        assert!(text.contains("12 connection(s)"), "{text}");
    }

    #[test]
    fn aggregate_writes_prefixes_and_merges_peers() {
        let mut a = client("peer");
        a.peer = Some("10.1.2.3".into());
        let mut b = client("peer");
        b.peer = Some("10.1.2.200".into());
        let mut c = client("peer");
        c.peer = Some("2001:db8::1".into());
        let args = SuggestArgs {
            aggregate: true,
            ..by_segment()
        };
        let text = suggest(&view(vec![a, b, c]), &args).unwrap();
        let allow: Vec<String> = parsed(&text)
            .allow
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allow, ["peer:10.1.2.0/24", "peer:2001:db8::/64"], "{text}");
        assert!(text.contains("2 connection(s)"), "{text}");
    }

    #[test]
    fn since_leaves_out_clients_not_seen_lately() {
        let mut old = client("local");
        old.uid = Some(1);
        old.last_seen_secs_ago = 7200;
        let mut new = client("local");
        new.uid = Some(2);
        let args = SuggestArgs {
            since: Some(Duration::from_secs(3600)),
            ..by_segment()
        };
        let text = suggest(&view(vec![old, new]), &args).unwrap();
        let allow: Vec<String> = parsed(&text)
            .allow
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allow, ["uid:2"], "{text}");
    }

    #[test]
    fn forged_names_are_never_written_raw() {
        // A unit name no unit can have, and a user name with a quote and a
        // newline: neither reaches the file as written.
        let mut forged = client("local");
        forged.unit = Some("x\"]\nallow=[\"user:root\".service".into());
        forged.uid = Some(1001);
        let mut odd = client("local");
        odd.user = Some("eve\"\n[segment.x]".into());
        odd.uid = Some(1002);
        let text = suggest(&view(vec![forged, odd]), &by_segment()).unwrap();
        let seg = parsed(&text);
        assert!(seg.allow.is_empty(), "{text}");
        assert!(text.contains("2 client(s) left out"), "{text}");
        assert!(!text.contains("user:root"), "{text}");
    }

    #[test]
    fn a_port_target_names_an_unprotected_port_and_an_empty_allow_parses() {
        let args = SuggestArgs {
            target: Target::Port("6379/tcp".parse().unwrap()),
            since: None,
            aggregate: false,
        };
        let text = suggest(&view(vec![]), &args).unwrap();
        let seg = parsed(&text);
        assert_eq!(seg.name, "port-6379-tcp");
        assert!(seg.allow.is_empty());
        assert!(suggest(
            &view(vec![]),
            &SuggestArgs {
                target: Target::Segment("nope".into()),
                ..args
            }
        )
        .is_err());
    }
}
