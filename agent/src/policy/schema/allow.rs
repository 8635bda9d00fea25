//! A segment's `allow` list: identities as strings (always open) and
//! windowed allows as inline tables,
//! `{ identity = "group:oncall", windows = ["Mon-Fri 08:00-18:00"] }`
//! with an optional `timezone` (default: the segment's jit `timezone`,
//! else the host's zone).
use std::collections::HashMap;

use toml_edit::{Item, Value};

use super::{article, Location, Parser};
use crate::{
    identity::Identity,
    policy::{windows::Windows, WindowedAllow},
};

const WINDOWED_KEYS: [&str; 3] = ["identity", "windows", "timezone"];

/// The `allow` list of one segment.
#[derive(Default)]
pub(super) struct Allows {
    pub always: Vec<Identity>,
    pub windowed: Vec<WindowedAllow>,
}

impl Parser<'_> {
    /// Reads `allow`. `zone` is the segment's jit `timezone`, if written:
    /// the zone of windowed entries that name none.
    pub(super) fn allow(
        &mut self,
        item: &Item,
        segment: &str,
        fallback: &Location,
        zone: Option<&str>,
        found: &mut Vec<(Identity, Location)>,
    ) -> Allows {
        let mut out = Allows::default();
        let location = self.item_location(item, fallback);
        let Some(array) = item.as_array() else {
            let help = match item.as_str() {
                Some(text) => format!(r#"write allow = ["{text}"]"#),
                None if item.is_array_of_tables() => r#"write the entries inline: allow = ["user:alice", { identity = "group:oncall", windows = ["Mon-Fri 08:00-18:00"] }]"#.to_owned(),
                None => r#"write allow = ["...", "..."]"#.to_owned(),
            };
            let message = format!(
                "`allow` must be a list of identities, not {}",
                article(item.type_name())
            );
            self.error(location, message, help);
            return out;
        };
        // Identity → where it was first listed, and whether windowed.
        let mut seen: HashMap<Identity, (Location, bool)> = HashMap::new();
        for value in array.iter() {
            let at = self.value_location(value, &location);
            let (identity, windows) = match value {
                Value::String(s) => match self.identity(s.value(), at.clone()) {
                    Some(identity) => (identity, None),
                    None => continue,
                },
                Value::InlineTable(table) => {
                    match self.windowed_entry(table, segment, zone, &at) {
                        Some((identity, windows)) => (identity, Some(windows)),
                        None => continue,
                    }
                }
                other => {
                    let message = format!(
                        "entries of `allow` are identities, not {}",
                        article(other.type_name())
                    );
                    self.error(
                        at,
                        message,
                        r#"write each identity as a string, e.g. "user:root" or "peer:10.0.0.0/8", or a windowed allow as { identity = "group:oncall", windows = ["Mon-Fri 08:00-18:00"] }"#,
                    );
                    continue;
                }
            };
            if let Some((first, was_windowed)) = seen.get(&identity) {
                match (was_windowed, windows.is_some()) {
                    (false, false) => self.warning(
                        at,
                        format!("`{identity}` is listed twice in `allow`"),
                        "list each identity once",
                    ),
                    (true, true) => self.error(
                        at,
                        format!("`{identity}` has two windowed allows in segment `{segment}` (first at {first})"),
                        "list all its windows in one entry's windows = [...]",
                    ),
                    _ => self.error(
                        at,
                        format!("`{identity}` is allowed both always and inside windows in segment `{segment}` (first at {first})"),
                        "keep one: the plain entry allows it at all times, which makes the windows meaningless",
                    ),
                }
                continue;
            }
            seen.insert(identity.clone(), (at.clone(), windows.is_some()));
            found.push((identity.clone(), at.clone()));
            match windows {
                None => out.always.push(identity),
                Some(windows) => out.windowed.push(WindowedAllow {
                    identity,
                    windows,
                    location: at,
                }),
            }
        }
        out
    }

    fn identity(&mut self, text: &str, at: Location) -> Option<Identity> {
        match text.parse::<Identity>() {
            Ok(identity) => Some(identity),
            Err(error) => {
                let help = error
                    .help()
                    .unwrap_or_else(|| "docs/policy.md lists the identity forms".to_owned());
                self.error(at, error.to_string(), help);
                None
            }
        }
    }

    /// `{ identity = "...", windows = [...], timezone = "..." }`.
    fn windowed_entry(
        &mut self,
        table: &toml_edit::InlineTable,
        segment: &str,
        zone: Option<&str>,
        at: &Location,
    ) -> Option<(Identity, Windows)> {
        let table: &dyn toml_edit::TableLike = table;
        let context = "a windowed allow";
        self.unknown_keys(table, &WINDOWED_KEYS, context, at);
        let identity = match table.get("identity") {
            None => {
                self.error(
                    at.clone(),
                    "a windowed allow has no identity".to_owned(),
                    r#"write { identity = "group:oncall", windows = ["Mon-Fri 08:00-18:00"] }"#,
                );
                None
            }
            Some(item) => {
                let here = self.item_location(item, at);
                match item.as_str() {
                    Some(text) => self.identity(text, here),
                    None => {
                        let message = format!(
                            "`identity` must be a string, not {}",
                            article(item.type_name())
                        );
                        self.error(here, message, r#"write identity = "group:oncall""#);
                        None
                    }
                }
            }
        };
        let timezone = match table.get("timezone") {
            Some(item) => Some(self.timezone(item, at)?),
            None => zone.map(str::to_owned),
        };
        let windows = match table.get("windows") {
            None => {
                self.error(
                    at.clone(),
                    "a windowed allow has no windows".to_owned(),
                    r#"add windows = ["Mon-Fri 08:00-18:00"], or write the identity as a plain string to allow it at all times"#,
                );
                None
            }
            Some(item) => self.window_list(
                item,
                &format!("a windowed allow of segment `{segment}`:"),
                "list at least one window, or remove the entry",
                at,
            ),
        };
        Some((
            identity?,
            Windows {
                windows: windows?,
                timezone,
            },
        ))
    }
}
