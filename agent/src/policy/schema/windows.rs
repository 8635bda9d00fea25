//! `windows` and `timezone` of a jit table: parsed into
//! [`crate::policy::windows::Windows`], each error at its place.
use toml_edit::TableLike;

use super::{article, Location, Parser};

impl Parser<'_> {
    /// `windows` and `timezone` of a jit table, each error at its place.
    pub(super) fn windows(
        &mut self,
        table: &dyn TableLike,
        name: &str,
        location: &Location,
    ) -> Option<crate::policy::windows::Windows> {
        use crate::policy::windows::{Window, Windows, MAX_WINDOWS};
        let timezone = table.get("timezone").and_then(|item| {
            let at = self.item_location(item, location);
            match item.as_str() {
                Some(zone) => {
                    if jiff::tz::TimeZone::get(zone).is_err() {
                        self.error(
                            at,
                            format!("unknown time zone {zone:?}"),
                            r#"write an IANA zone name such as "Europe/Berlin" or "UTC" (the host's /usr/share/zoneinfo); leave timezone out for the host's zone"#,
                        );
                    }
                    Some(zone.to_string())
                }
                None => {
                    self.error(
                        at,
                        format!("`timezone` must be a string, not {}", article(item.type_name())),
                        r#"write timezone = "Europe/Berlin""#,
                    );
                    None
                }
            }
        });
        let Some(item) = table.get("windows") else {
            if let Some(item) = table.get("timezone") {
                let at = self.item_location(item, location);
                self.warning(
                    at,
                    format!("[segment.{name}.jit] has a timezone but no windows"),
                    r#"add windows = ["Mon-Fri 08:00-18:00"], or remove timezone"#,
                );
            }
            return None;
        };
        let at = self.item_location(item, location);
        let entries = self.strings(item, "windows", location, |_| {
            r#"write each window as a string, e.g. "Mon-Fri 08:00-18:00""#.to_owned()
        })?;
        let mut windows = Vec::new();
        for (text, at) in entries {
            match text.parse::<Window>() {
                Ok(w) => windows.push(w),
                Err(e) => self.error(
                    at,
                    e.to_string(),
                    "write DAYS HH:MM-HH:MM: days Mon..Sun as a range (Mon-Fri) or a list (Sat,Sun); a window whose end is not after its start runs past midnight",
                ),
            }
        }
        if windows.is_empty() {
            self.error(
                at,
                format!("[segment.{name}.jit] windows = [] never opens"),
                "list at least one window, or remove `windows` to take requests at any time",
            );
            return None;
        }
        if windows.len() > MAX_WINDOWS {
            self.error(
                at,
                format!("more than {MAX_WINDOWS} windows"),
                "merge windows: a window may name several days",
            );
            return None;
        }
        Some(Windows { windows, timezone })
    }
}
