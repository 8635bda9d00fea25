//! The policy file format: one file's TOML text → segments, with a located
//! diagnostic for every problem in it.
//!
//! Owns the schema (which keys exist, their types and defaults) and the
//! rules that one segment can break on its own (bad ports, overlapping
//! ranges within it, bad identities, TTLs, approvers). Rules that need all
//! files at once, and host lookups, are `validate`'s.
//!
//! Why a walk over `toml_edit`'s document instead of serde structs with
//! `deny_unknown_fields`: serde stops at the first problem, and a person
//! fixing a policy wants all of them, each with its line and column. The
//! walk is the schema: each table lists its keys, and any other key is an
//! error, as `deny_unknown_fields` would make it.
use std::{path::Path, time::Duration};

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::{
    diagnostic::{Diagnostic, Diagnostics, Location, SourceMap},
    ranges::RangeSet,
    Jit, Mode, Segment,
};
use crate::{
    duration::parse_ttl,
    identity::{Identity, PortRange},
};

const SEGMENT_KEYS: [&str; 5] = ["description", "ports", "allow", "jit", "mode"];
const JIT_KEYS: [&str; 11] = [
    "max_ttl",
    "default_ttl",
    "approvers",
    "require_reason",
    "windows",
    "timezone",
    "idle_timeout",
    "approvals_required",
    "break_glass",
    "break_glass_max_ttl",
    "break_glass_by",
];
/// `default_ttl` when the policy gives none (capped at `max_ttl`).
const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
const SEGMENT_NAME_RULE: &str = "segment names are 1-63 characters: lowercase letters, digits, \
                                 `-` and `_`, starting with a letter or a digit";

/// A segment and where its parts were written, for checks across files.
#[derive(Debug)]
pub(super) struct ParsedSegment {
    pub segment: Segment,
    /// Where each of `segment.ports` was written, index for index.
    pub port_locations: Vec<Location>,
    /// Every identity in `allow` and `jit.approvers`, with its place.
    pub identities: Vec<(Identity, Location)>,
}

/// Parses one policy file on its own: no checks across files, no host
/// lookups. Warnings are dropped; `load_paths` reports them.
pub fn parse_str(file: &Path, text: &str) -> Result<Vec<Segment>, Diagnostics> {
    let (segments, diagnostics) = parse_file(file, text);
    if diagnostics.has_errors() {
        Err(diagnostics)
    } else {
        Ok(segments.into_iter().map(|p| p.segment).collect())
    }
}

/// Parses one file, keeping every segment that could be read even when
/// others (or parts of it) are wrong, so that later checks can still run.
pub(super) fn parse_file(file: &Path, text: &str) -> (Vec<ParsedSegment>, Diagnostics) {
    let (segments, diagnostics, _) = parse_file_declared(file, text);
    (segments, diagnostics)
}

/// [`parse_file`], and whether the file says `allow_empty = true`.
pub(super) fn parse_file_declared(
    file: &Path,
    text: &str,
) -> (Vec<ParsedSegment>, Diagnostics, bool) {
    let mut parser = Parser {
        map: SourceMap::new(file, text),
        diagnostics: Diagnostics::default(),
        allow_empty: false,
    };
    let segments = match ImDocument::parse(text) {
        Ok(document) => parser.document(document.as_table()),
        Err(error) => {
            // toml_edit puts a headline and a detail on separate lines.
            let message = error.message().trim().replace('\n', ": ");
            parser.diagnostics.push(
                Diagnostic::error(
                    Some(parser.map.span(error.span()).unwrap_or(parser.map.start())),
                    format!("TOML syntax error: {message}"),
                )
                .with_help("see docs/policy.md for the format; strings need double quotes"),
            );
            Vec::new()
        }
    };
    (segments, parser.diagnostics, parser.allow_empty)
}

/// Whether `name` matches `[a-z0-9][a-z0-9_-]{0,62}`.
pub(super) fn valid_segment_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

struct Parser<'a> {
    map: SourceMap<'a>,
    diagnostics: Diagnostics,
    /// The file's top-level `allow_empty = true`.
    allow_empty: bool,
}

impl Parser<'_> {
    fn error(&mut self, location: Location, message: String, help: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::error(Some(location), message).with_help(help));
    }

    fn warning(&mut self, location: Location, message: String, help: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::warning(Some(location), message).with_help(help));
    }

    /// Where `key` of `table` was written, or `fallback` if the parser
    /// kept no span (implicit tables).
    fn key_location(&self, table: &dyn TableLike, key: &str, fallback: &Location) -> Location {
        table
            .get_key_value(key)
            .and_then(|(key, _)| self.map.span(key.span()))
            .unwrap_or_else(|| fallback.clone())
    }

    fn item_location(&self, item: &Item, fallback: &Location) -> Location {
        self.map
            .span(item.span())
            .unwrap_or_else(|| fallback.clone())
    }

    fn value_location(&self, value: &Value, fallback: &Location) -> Location {
        self.map
            .span(value.span())
            .unwrap_or_else(|| fallback.clone())
    }

    fn document(&mut self, root: &toml_edit::Table) -> Vec<ParsedSegment> {
        let start = self.map.start();
        let mut segments = Vec::new();
        let mut saw_segments = false;
        for (key, item) in root.iter() {
            let location = self.key_location(root, key, &start);
            if key == "allow_empty" {
                match item.as_bool() {
                    Some(b) => self.allow_empty = b,
                    None => self.error(
                        location,
                        format!("`allow_empty` must be a boolean, not {}", article(item.type_name())),
                        "write allow_empty = true, at the top of the file, before any [segment.NAME]",
                    ),
                }
                continue;
            }
            if key != "segment" {
                let help = if item.is_table_like() && valid_segment_name(key) {
                    format!("segments are tables named [segment.NAME]: write [segment.{key}]")
                } else if let Some(close) = did_you_mean(key, &["segment", "allow_empty"]) {
                    format!("did you mean `{close}`?")
                } else {
                    "a policy file holds only [segment.NAME] tables".to_owned()
                };
                self.error(location, format!("unknown top-level key `{key}`"), help);
                continue;
            }
            let Some(table) = item.as_table_like() else {
                let message = format!(
                    "`segment` must be a table of named segments, not {}",
                    article(item.type_name())
                );
                self.error(location, message, "write [segment.NAME]");
                continue;
            };
            for (name, item) in table.iter() {
                saw_segments = true;
                let name_location = self.key_location(table, name, &location);
                segments.extend(self.segment(name, name_location, item));
            }
        }
        if !saw_segments && !self.diagnostics.has_errors() && !self.allow_empty {
            self.warning(
                start,
                "this file defines no segments".to_owned(),
                "add a [segment.NAME] table, or delete the file",
            );
        }
        segments
    }

    fn segment(&mut self, name: &str, origin: Location, item: &Item) -> Option<ParsedSegment> {
        if !valid_segment_name(name) {
            let fixed = name.trim().to_ascii_lowercase().replace([' ', '.'], "-");
            let help = if valid_segment_name(&fixed) {
                format!("{SEGMENT_NAME_RULE}; e.g. `{fixed}`")
            } else {
                SEGMENT_NAME_RULE.to_owned()
            };
            self.error(origin.clone(), format!("bad segment name `{name}`"), help);
        }
        let Some(table) = item.as_table_like() else {
            let message = format!(
                "segment `{name}` must be a table, not {}",
                article(item.type_name())
            );
            self.error(origin, message, format!("write [segment.{name}]"));
            return None;
        };
        let context = format!("segment `{name}`");
        self.unknown_keys(table, &SEGMENT_KEYS, &context, &origin);

        let description = table.get("description").and_then(|item| {
            let found = item.as_str();
            if found.is_none() {
                let location = self.item_location(item, &origin);
                let message = format!(
                    "`description` must be a string, not {}",
                    article(item.type_name())
                );
                self.error(location, message, r#"write description = "what this is""#);
            }
            found.map(str::to_owned)
        });

        let mode = match table.get("mode") {
            None => Mode::Enforce,
            Some(item) => {
                let location = self.item_location(item, &origin);
                match item.as_str().map(str::parse::<Mode>) {
                    Some(Ok(mode)) => mode,
                    Some(Err(message)) => {
                        self.error(location, message, r#"write mode = "audit" to only log refusals, or leave it out to enforce"#);
                        Mode::Enforce
                    }
                    None => {
                        let message =
                            format!("`mode` must be a string, not {}", article(item.type_name()));
                        self.error(
                            location,
                            message,
                            r#"write mode = "audit" or mode = "enforce""#,
                        );
                        Mode::Enforce
                    }
                }
            }
        };
        let (ports, port_locations) = self.ports(name, table, &origin);
        let mut identities = Vec::new();
        // The jit table's zone is also the zone of windowed allows.
        let jit_zone = table
            .get("jit")
            .and_then(Item::as_table_like)
            .and_then(|t| t.get("timezone"))
            .and_then(Item::as_str)
            .map(str::to_owned);
        let allow = match table.get("allow") {
            None => allow::Allows::default(),
            Some(item) => self.allow(item, name, &origin, jit_zone.as_deref(), &mut identities),
        };
        let zone_used = !allow.windowed.is_empty();
        let jit = table.get("jit").and_then(|item| {
            let location = self.key_location(table, "jit", &origin);
            self.jit(name, item, location, &mut identities, zone_used)
        });
        Some(ParsedSegment {
            segment: Segment {
                name: name.to_owned(),
                description,
                ports,
                allow: allow.always,
                windowed: allow.windowed,
                jit,
                mode,
                origin,
            },
            port_locations,
            identities,
        })
    }

    fn ports(
        &mut self,
        name: &str,
        table: &dyn TableLike,
        origin: &Location,
    ) -> (Vec<PortRange>, Vec<Location>) {
        let mut ports: Vec<PortRange> = Vec::new();
        let mut locations: Vec<Location> = Vec::new();
        let Some(item) = table.get("ports") else {
            self.error(
                origin.clone(),
                format!("segment `{name}` has no ports"),
                r#"a segment is a set of ports: add ports = ["5432/tcp"]"#,
            );
            return (ports, locations);
        };
        let entries = self.strings(item, "ports", origin, |value| match value.as_integer() {
            Some(port) => format!(r#"write "{port}/tcp" or "{port}/udp""#),
            None => r#"write each port as a string, e.g. "5432/tcp" or "8000-8099/tcp""#.to_owned(),
        });
        let Some(entries) = entries else {
            return (ports, locations);
        };
        if entries.is_empty() && item.as_array().is_some_and(|a| a.is_empty()) {
            let location = self.item_location(item, origin);
            self.error(
                location,
                format!("segment `{name}` has an empty ports list"),
                r#"list the ports to protect, e.g. ports = ["5432/tcp"], or delete the segment"#,
            );
        }
        // The ranges kept so far, each with the index of its location:
        // one ordered search per entry, not a scan of every earlier one.
        let mut kept: RangeSet<usize> = RangeSet::default();
        for (text, location) in entries {
            let range = match text.parse::<PortRange>() {
                Ok(range) => range,
                Err(error) => {
                    self.error(location, error.to_string(), error.help());
                    continue;
                }
            };
            // A segment's ranges may not overlap either: one of them would
            // be dead text, and usually it is a typo in the other.
            let earlier = kept
                .overlapping(&range)
                .map(|(other, &at)| (*other, &locations[at]));
            if let Some((other, other_location)) = earlier {
                let (message, help) = if other == range {
                    (
                        format!("`{range}` is listed twice in segment `{name}` (first at {other_location})"),
                        "list each port once",
                    )
                } else {
                    (
                        format!("`{range}` overlaps `{other}` (at {other_location}) in segment `{name}`"),
                        "a segment's port ranges must not overlap: merge them or drop one",
                    )
                };
                self.error(location, message, help);
                continue;
            }
            kept.insert(range, locations.len());
            ports.push(range);
            locations.push(location);
        }
        (ports, locations)
    }

    fn identities(
        &mut self,
        item: &Item,
        key: &str,
        fallback: &Location,
        found: &mut Vec<(Identity, Location)>,
    ) -> Vec<Identity> {
        let entries = self.strings(item, key, fallback, |value| {
            if value.is_inline_table() {
                format!("windows bound allow entries and the jit table's requests, not `{key}`: write each identity as a string, e.g. \"group:oncall\"")
            } else {
                r#"write each identity as a string, e.g. "user:root" or "peer:10.0.0.0/8""#.to_owned()
            }
        });
        let mut identities: Vec<Identity> = Vec::new();
        // Seen identities, for the duplicate warning in O(1) per entry.
        let mut seen = std::collections::HashSet::new();
        for (text, location) in entries.unwrap_or_default() {
            let identity = match text.parse::<Identity>() {
                Ok(identity) => identity,
                Err(error) => {
                    let help = error
                        .help()
                        .unwrap_or_else(|| "docs/policy.md lists the identity forms".to_owned());
                    self.error(location, error.to_string(), help);
                    continue;
                }
            };
            if !seen.insert(identity.clone()) {
                self.warning(
                    location,
                    format!("`{identity}` is listed twice in `{key}`"),
                    "list each identity once",
                );
                continue;
            }
            identities.push(identity.clone());
            found.push((identity, location));
        }
        identities
    }

    fn jit(
        &mut self,
        name: &str,
        item: &Item,
        location: Location,
        found: &mut Vec<(Identity, Location)>,
        zone_used: bool,
    ) -> Option<Jit> {
        let Some(table) = item.as_table_like() else {
            let message = format!(
                "`jit` of segment `{name}` must be a table, not {}",
                article(item.type_name())
            );
            self.error(location, message, format!("write [segment.{name}.jit]"));
            return None;
        };
        let context = format!("[segment.{name}.jit]");
        self.unknown_keys(table, &JIT_KEYS, &context, &location);

        let max_ttl = match table.get("max_ttl") {
            Some(item) => self.ttl(item, "max_ttl", &location),
            None => {
                self.error(
                    location.clone(),
                    format!("[segment.{name}.jit] has no max_ttl"),
                    r#"add max_ttl = "1h": the longest access a grant or request may give"#,
                );
                None
            }
        };
        let default_ttl = table.get("default_ttl").map(|item| {
            let ttl = self.ttl(item, "default_ttl", &location);
            (ttl, self.item_location(item, &location))
        });
        let mut approvers = Vec::new();
        if let Some(item) = table.get("approvers") {
            let mut listed = Vec::new();
            self.identities(item, "approvers", &location, &mut listed);
            for (identity, at) in listed {
                if self.approver(&identity, at.clone()) {
                    approvers.push(identity.clone());
                    found.push((identity, at));
                }
            }
        }
        let require_reason = match table.get("require_reason") {
            None => true,
            Some(item) => item.as_bool().unwrap_or_else(|| {
                let at = self.item_location(item, &location);
                let help = match item.as_str() {
                    Some(text @ ("true" | "false")) => {
                        format!("write require_reason = {text}, without quotes")
                    }
                    _ => "write require_reason = true or require_reason = false".to_owned(),
                };
                let message = format!(
                    "`require_reason` must be true or false, not {}",
                    article(item.type_name())
                );
                self.error(at, message, help);
                true
            }),
        };
        let idle_timeout = match table.get("idle_timeout") {
            None => None,
            Some(item) => Some(self.idle_timeout(item, &location)?),
        };
        let approvals_required = match table.get("approvals_required") {
            None => 1,
            Some(item) => self.approvals_required(item, &location)?,
        };

        let windows = self.windows(table, name, &location, zone_used);
        let break_glass = self
            .break_glass(table, name, &location, max_ttl, found)
            .ok()?;

        let max_ttl = max_ttl?;
        let default_ttl = match default_ttl {
            None => DEFAULT_TTL.min(max_ttl),
            Some((ttl, at)) => {
                let ttl = ttl?;
                if ttl > max_ttl {
                    self.error(
                        at,
                        format!(
                            "default_ttl {} is longer than max_ttl {}",
                            crate::duration::format(ttl, ""),
                            crate::duration::format(max_ttl, "")
                        ),
                        "no grant may outlast max_ttl: lower default_ttl or raise max_ttl",
                    );
                    return None;
                }
                ttl
            }
        };
        Some(Jit {
            max_ttl,
            default_ttl,
            approvers,
            require_reason,
            windows,
            idle_timeout,
            approvals_required,
            break_glass,
        })
    }

    fn ttl(&mut self, item: &Item, key: &str, fallback: &Location) -> Option<Duration> {
        let location = self.item_location(item, fallback);
        let Some(text) = item.as_str() else {
            let help = match item.as_integer() {
                Some(n) => format!(
                    r#"TTLs are strings with a unit: write {key} = "{n}s" or {key} = "{}m""#,
                    n / 60
                ),
                None => format!(r#"write {key} = "1h""#),
            };
            let message = format!(
                "`{key}` must be a string, not {}",
                article(item.type_name())
            );
            self.error(location, message, help);
            return None;
        };
        parse_ttl(text)
            .map_err(|error| {
                self.error(
                    location,
                    format!("bad {key}: {}", error.message()),
                    error.help(),
                )
            })
            .ok()
    }

    /// The strings of an array, each with its place. `None` if `item` is
    /// not an array at all; non-string entries are reported and skipped.
    fn strings<'i>(
        &mut self,
        item: &'i Item,
        key: &str,
        fallback: &Location,
        entry_help: impl Fn(&Value) -> String,
    ) -> Option<Vec<(&'i str, Location)>> {
        let location = self.item_location(item, fallback);
        let Some(array) = item.as_array() else {
            let help = match item.as_str() {
                Some(text) => format!(r#"write {key} = ["{text}"]"#),
                None => format!(r#"write {key} = ["...", "..."]"#),
            };
            let message = format!(
                "`{key}` must be a list of strings, not {}",
                article(item.type_name())
            );
            self.error(location, message, help);
            return None;
        };
        let mut strings = Vec::new();
        for value in array.iter() {
            let at = self.value_location(value, &location);
            match value.as_str() {
                Some(text) => strings.push((text, at)),
                None => {
                    let message = format!(
                        "entries of `{key}` are strings, not {}",
                        article(value.type_name())
                    );
                    self.error(at, message, entry_help(value));
                }
            }
        }
        Some(strings)
    }

    fn unknown_keys(
        &mut self,
        table: &dyn TableLike,
        known: &[&str],
        context: &str,
        fallback: &Location,
    ) {
        for (key, _) in table.iter() {
            if known.contains(&key) {
                continue;
            }
            let location = self.key_location(table, key, fallback);
            let help = match did_you_mean(key, known) {
                _ if matches!(key, "windows" | "timezone") && known.contains(&"allow") => {
                    r#"windows go in [segment.NAME.jit] (when requests and grants are taken) or on an allow entry: allow = [{ identity = "group:oncall", windows = ["Mon-Fri 08:00-18:00"] }]"#.to_owned()
                }
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("the keys of {context} are {}", known.join(", ")),
            };
            self.error(location, format!("unknown key `{key}` in {context}"), help);
        }
    }
}

/// The known key closest to a misspelt one, if it is close enough to be
/// what was meant (`max-ttl` → `max_ttl`, `port` → `ports`).
fn did_you_mean<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let normalised = key.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .map(|&k| (strsim::levenshtein(&normalised, k), k))
        .filter(|&(distance, _)| distance <= 2)
        .min()
        .map(|(_, k)| k)
}

/// "an integer", "a string": toml_edit's type names read as English.
fn article(type_name: &str) -> String {
    let vowel = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if vowel { "an" } else { "a" })
}

/// The `allow` list: plain and windowed allows.
mod allow;
/// `windows` and `timezone` of a jit table and of a windowed allow.
mod windows;

/// The `jit` table's `approvals_required`.
mod approvals;
/// The `jit` table's `break_glass`, `break_glass_max_ttl`, `break_glass_by`.
mod breakglass;
/// The `jit` table's `idle_timeout` and approvers.
mod jit;

#[cfg(test)]
mod tests;
