//! Rules that need every policy file at once, and the host check.
//!
//! Owns: segment names are unique across files, a port belongs to at most
//! one segment, and named users, groups and units exist on this host (as
//! `HostCheck` says). Rules about one segment alone are `schema`'s.
use std::collections::{hash_map::Entry, HashMap, HashSet};

use super::{
    diagnostic::{Diagnostic, Diagnostics, Location},
    host::{HostCheck, HostDirectory},
    ranges::RangeSet,
    schema::ParsedSegment,
};
use crate::identity::Identity;

/// The most segments a policy may hold: segment ids are 12 bits of a
/// port entry, and 0 means "no segment" (`agent_common::MAX_SEGMENTS`).
pub(crate) const MAX_POLICY_SEGMENTS: usize = agent_common::MAX_SEGMENTS as usize - 1;

/// Reports a policy with more segments than the kernel's port entries can
/// number, at the first segment past the limit: `check` refuses what the
/// agent would (it used to pass `check` and fail at apply).
pub(super) fn segment_count(segments: &[ParsedSegment], diagnostics: &mut Diagnostics) {
    if let Some(over) = segments.get(MAX_POLICY_SEGMENTS) {
        diagnostics.push(
            Diagnostic::error(
                Some(over.segment.origin.clone()),
                format!(
                    "{} segments; at most {MAX_POLICY_SEGMENTS} fit the kernel's port map, and this is number {}",
                    segments.len(),
                    MAX_POLICY_SEGMENTS + 1
                ),
            )
            .with_help("merge segments that share their allows, or give one segment a port range"),
        );
    }
}

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
/// segment, once, naming one such range. Ranges within one segment are
/// checked by `schema`.
///
/// The ranges of earlier segments are kept in one ordered set of disjoint
/// ranges: each range costs one search, so n ranges cost O(n log n), where
/// comparing each with every earlier one cost O(n²) (18 s for one file of
/// 65,535 ports). A range that conflicts is reported and left out of the
/// set, so the set stays disjoint.
pub(super) fn port_conflicts(segments: &[ParsedSegment], diagnostics: &mut Diagnostics) {
    let mut earlier: RangeSet<(&str, &Location)> = RangeSet::default();
    let mut seen: HashSet<&str> = HashSet::new();
    for later in segments {
        let name = later.segment.name.as_str();
        // A duplicated segment is reported once, by `duplicate_names`.
        if !seen.insert(name) {
            continue;
        }
        let mut clear = Vec::new();
        let later_ports = later.segment.ports.iter().zip(&later.port_locations);
        for (range, location) in later_ports {
            let Some((other, (other_name, other_location))) = earlier.overlapping(range) else {
                clear.push((*range, location));
                continue;
            };
            let message = if range == other {
                format!(
                    "`{range}` is in segment `{name}` and also in segment `{other_name}` at {other_location}"
                )
            } else {
                format!(
                    "`{range}` in segment `{name}` overlaps `{other}` of segment `{other_name}` at {other_location}"
                )
            };
            diagnostics.push(
                Diagnostic::error(Some(location.clone()), message).with_help(
                    "a port belongs to at most one segment: remove it from one of them, \
                     or merge the segments",
                ),
            );
        }
        // A segment's own ranges are disjoint (`schema` keeps them so);
        // they join the set only once all of them were checked.
        for (range, location) in clear {
            earlier.insert(range, (name, location));
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
