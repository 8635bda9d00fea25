//! Rules that need every policy file at once, and the host check.
//!
//! Owns: segment names are unique across files, a port belongs to at most
//! one segment, and named users, groups and units exist on this host (as
//! `HostCheck` says). Rules about one segment alone are `schema`'s.
use std::collections::{hash_map::Entry, HashMap};

use super::{
    diagnostic::{Diagnostic, Diagnostics, Location},
    host::{HostCheck, HostDirectory},
    schema::ParsedSegment,
};
use crate::identity::Identity;

/// Reports a segment name defined more than once, at each later definition.
pub(super) fn duplicate_names(segments: &[ParsedSegment], diagnostics: &mut Diagnostics) {
    let mut first: HashMap<&str, &Location> = HashMap::new();
    for parsed in segments {
        let segment = &parsed.segment;
        match first.entry(&segment.name) {
            Entry::Vacant(entry) => {
                entry.insert(&segment.origin);
            }
            Entry::Occupied(entry) => diagnostics.push(
                Diagnostic::error(
                    Some(segment.origin.clone()),
                    format!(
                        "segment `{}` is defined again; it is first defined at {}",
                        segment.name,
                        entry.get()
                    ),
                )
                .with_help("segment names are unique across all policy files: rename or merge one"),
            ),
        }
    }
}

/// Reports every port range that shares a port with a range of an earlier
/// segment. Ranges within one segment are checked by `schema`.
pub(super) fn port_conflicts(segments: &[ParsedSegment], diagnostics: &mut Diagnostics) {
    for (i, later) in segments.iter().enumerate() {
        for earlier in &segments[..i] {
            // A duplicated segment is reported once, by `duplicate_names`.
            if earlier.segment.name == later.segment.name {
                continue;
            }
            let later_ports = later.segment.ports.iter().zip(&later.port_locations);
            for (range, location) in later_ports {
                let earlier_ports = earlier.segment.ports.iter().zip(&earlier.port_locations);
                for (other, other_location) in earlier_ports {
                    if !range.overlaps(other) {
                        continue;
                    }
                    let message = if range == other {
                        format!(
                            "`{range}` is in segment `{}` and also in segment `{}` at {other_location}",
                            later.segment.name, earlier.segment.name
                        )
                    } else {
                        format!(
                            "`{range}` in segment `{}` overlaps `{other}` of segment `{}` at {other_location}",
                            later.segment.name, earlier.segment.name
                        )
                    };
                    diagnostics.push(
                        Diagnostic::error(Some(location.clone()), message).with_help(
                            "a port belongs to at most one segment: remove it from one of them, \
                             or merge the segments",
                        ),
                    );
                }
            }
        }
    }
}

/// Reports users, groups and units named in the policy that this host does
/// not know. Each name is looked up once.
pub(super) fn host_names(
    segments: &[ParsedSegment],
    host: &dyn HostDirectory,
    host_check: HostCheck,
    diagnostics: &mut Diagnostics,
) {
    let mut known: HashMap<&Identity, bool> = HashMap::new();
    for (identity, location) in segments.iter().flat_map(|p| &p.identities) {
        let exists = *known.entry(identity).or_insert_with(|| match identity {
            Identity::User(name) => host.user_exists(name),
            Identity::Group(name) => host.group_exists(name),
            Identity::Unit(name) => host.unit_exists(name),
            _ => true,
        });
        if !exists {
            diagnostics.extend(missing(identity, location.clone(), host_check));
        }
    }
}

/// The report for a name the host does not know; `None` for identities
/// that need no lookup (ids and networks).
fn missing(identity: &Identity, location: Location, host_check: HostCheck) -> Option<Diagnostic> {
    let (what, name, numeric) = match identity {
        Identity::User(name) => ("user", name, "uid:N"),
        Identity::Group(name) => ("group", name, "gid:N"),
        Identity::Unit(name) => {
            return Some(
                Diagnostic::warning(
                    Some(location),
                    format!("unit `{name}` is not found on this host"),
                )
                .with_help(format!(
                "the agent covers it once it starts; check the name with `systemctl status {name}`"
            )),
            )
        }
        _ => return None,
    };
    let message = format!("{what} `{name}` does not exist on this host");
    let help = format!(
        "create the {what} or remove it from the policy; `{numeric}` matches an id without a \
         lookup"
    );
    Some(match host_check {
        HostCheck::Error => Diagnostic::error(Some(location), message).with_help(help),
        HostCheck::Warn => Diagnostic::warning(Some(location), message).with_help(format!(
            "{help}. The agent refuses a policy naming a {what} it cannot resolve"
        )),
    })
}
