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
                Value::InlineTable(table) => match self.windowed_entry(table, segment, zone, &at) {
                    Some((identity, windows)) => (identity, Some(windows)),
                    None => continue,
                },
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::parse_file;
    use crate::policy::{Diagnostic, Severity};

    const FILE: &str = "policies/w.toml";

    fn check(text: &str) -> Vec<Diagnostic> {
        parse_file(Path::new(FILE), text).1 .0
    }

    /// The errors of `text` as `line:column message`.
    fn errors(text: &str) -> Vec<String> {
        check(text)
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| {
                assert!(d.help.is_some(), "every error says how to fix it: {d}");
                let l = d.location.as_ref().expect("located");
                format!("{}:{} {}", l.line, l.column, d.message)
            })
            .collect()
    }

    fn segment(allow: &str, jit: &str) -> String {
        format!("[segment.db]\nports = [\"5432/tcp\"]\nallow = [{allow}]\n{jit}")
    }

    #[test]
    fn a_windowed_allow_takes_its_zone_else_the_jit_tables_else_the_hosts() {
        let text = segment(
            r#""user:root", { identity = "group:oncall", windows = ["Mon-Fri 08:00-18:00"] }, { identity = "uid:7", windows = ["Sat 10:00:30-12:00"], timezone = "UTC" }"#,
            "[segment.db.jit]\nmax_ttl = \"1h\"\ntimezone = \"Europe/Berlin\"\n",
        );
        let (segments, diagnostics) = parse_file(Path::new(FILE), &text);
        // A jit timezone used by windowed allows is not "a timezone but no windows".
        assert!(diagnostics.0.is_empty(), "{:?}", diagnostics.0);
        let seg = &segments[0].segment;
        assert_eq!(seg.allow.len(), 1);
        assert_eq!(seg.windowed.len(), 2);
        assert_eq!(seg.windowed[0].identity.to_string(), "group:oncall");
        assert_eq!(
            seg.windowed[0].windows.timezone.as_deref(),
            Some("Europe/Berlin")
        );
        assert_eq!(seg.windowed[1].windows.timezone.as_deref(), Some("UTC"));
        assert_eq!(seg.windowed[0].location.line, 3);
        // Both identities are checked against the host like any other.
        assert_eq!(segments[0].identities.len(), 3);
        let plain = segment(
            r#"{ identity = "uid:7", windows = ["Mon 08:00-09:00"] }"#,
            "",
        );
        let (segments, _) = parse_file(Path::new(FILE), &plain);
        assert_eq!(segments[0].segment.windowed[0].windows.timezone, None);
    }

    #[test]
    fn check_names_the_place_of_each_mistake_in_a_windowed_allow() {
        let text = segment(
            r#"{ identity = "uid:7", windows = ["Mon 08:00-09:00"], zone = "UTC" },
  { identity = "uid:8", windows = [] },
  { identity = "uid:9", windows = ["Mon 25:00-26:00"] },
  { identity = "uid:10", windows = ["Mon 09:00-09:00"] },
  { windows = ["Mon 08:00-09:00"] },
  { identity = "uid:11" },
  { identity = "uid:12", windows = ["Mon 08:00-09:00"], timezone = "Mars/Olympus" },
  { identity = "uid:13", windows = "Mon 08:00-09:00" },
  42"#,
            "",
        );
        let found = errors(&text);
        let want = [
            "3:63 unknown key `zone` in a windowed allow",
            "4:35 a windowed allow of segment `db`: windows = [] never opens",
            "5:36 window \"Mon 25:00-26:00\": a time is HH:MM or HH:MM:SS, 00:00 to 24:00",
            "6:37 window \"Mon 09:00-09:00\": a window that ends when it starts is empty",
            "7:3 a windowed allow has no identity",
            "8:3 a windowed allow has no windows",
            "9:68 unknown time zone \"Mars/Olympus\"",
            "10:36 `windows` must be a list of strings, not a string",
            "11:3 entries of `allow` are identities, not an integer",
        ];
        assert_eq!(found, want, "{found:#?}");
    }

    #[test]
    fn a_window_where_it_cannot_apply_is_an_error_that_says_where_it_goes() {
        // On the segment itself.
        let text = "[segment.db]\nports = [\"5432/tcp\"]\nwindows = [\"Mon 08:00-09:00\"]\n";
        let d = check(text);
        assert_eq!(d[0].message, "unknown key `windows` in segment `db`");
        assert!(
            d[0].help.as_deref().unwrap().contains("identity = "),
            "{}",
            d[0]
        );
        // On an approver.
        let text = "[segment.db]\nports = [\"5432/tcp\"]\n[segment.db.jit]\nmax_ttl = \"1h\"\napprovers = [{ identity = \"uid:7\", windows = [\"Mon 08:00-09:00\"] }]\n";
        let d = check(text);
        assert!(
            d[0].message.contains("entries of `approvers` are strings"),
            "{}",
            d[0]
        );
        assert!(
            d[0].help.as_deref().unwrap().contains("not `approvers`"),
            "{}",
            d[0]
        );
        // The same identity windowed twice, or plain and windowed.
        let text = segment(
            r#"{ identity = "uid:7", windows = ["Mon 08:00-09:00"] }, { identity = "uid:7", windows = ["Tue 08:00-09:00"] }, "uid:8", { identity = "uid:8", windows = ["Mon 08:00-09:00"] }"#,
            "",
        );
        let found = errors(&text);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("two windowed allows"), "{found:#?}");
        assert!(
            found[1].contains("both always and inside windows"),
            "{found:#?}"
        );
    }
}
