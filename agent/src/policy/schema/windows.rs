//! `windows` and `timezone`, of a jit table and of a windowed allow
//! entry: parsed into [`crate::policy::windows::Windows`], each error at
//! its place.
use toml_edit::{Item, TableLike};

use super::{article, Location, Parser};
use crate::policy::windows::{Window, Windows, MAX_WINDOWS};

impl Parser<'_> {
    /// A `timezone` value: an IANA zone name this host knows.
    pub(super) fn timezone(&mut self, item: &Item, location: &Location) -> Option<String> {
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
                    format!(
                        "`timezone` must be a string, not {}",
                        article(item.type_name())
                    ),
                    r#"write timezone = "Europe/Berlin""#,
                );
                None
            }
        }
    }

    /// A `windows` list: at least one, at most [`MAX_WINDOWS`], each
    /// parsed. `owner` names where it was written, for the messages.
    pub(super) fn window_list(
        &mut self,
        item: &Item,
        owner: &str,
        empty_help: &str,
        location: &Location,
    ) -> Option<Vec<Window>> {
        let at = self.item_location(item, location);
        let entries = self.strings(item, "windows", location, |_| {
            r#"write each window as a string, e.g. "Mon-Fri 08:00-18:00""#.to_owned()
        })?;
        let listed = entries.len();
        let mut windows = Vec::new();
        for (text, at) in entries {
            match text.parse::<Window>() {
                Ok(w) => windows.push(w),
                Err(e) => self.error(
                    at,
                    e.to_string(),
                    "write DAYS HH:MM-HH:MM (or HH:MM:SS): days Mon..Sun as a range (Mon-Fri) or a list (Sat,Sun); a window whose end is not after its start runs past midnight",
                ),
            }
        }
        if listed == 0 {
            self.error(at, format!("{owner} windows = [] never opens"), empty_help);
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
        // Bad entries were reported: nothing half-read is used.
        (windows.len() == listed).then_some(windows)
    }

    /// `windows` and `timezone` of a jit table, each error at its place.
    /// `timezone` alone is fine when windowed allows of the segment use it
    /// (`zone_used`).
    pub(super) fn windows(
        &mut self,
        table: &dyn TableLike,
        name: &str,
        location: &Location,
        zone_used: bool,
    ) -> Option<Windows> {
        let timezone = table
            .get("timezone")
            .and_then(|item| self.timezone(item, location));
        let Some(item) = table.get("windows") else {
            if let (Some(item), false) = (table.get("timezone"), zone_used) {
                let at = self.item_location(item, location);
                self.warning(
                    at,
                    format!("[segment.{name}.jit] has a timezone but no windows"),
                    r#"add windows = ["Mon-Fri 08:00-18:00"], or remove timezone"#,
                );
            }
            return None;
        };
        let windows = self.window_list(
            item,
            &format!("[segment.{name}.jit]"),
            "list at least one window, or remove `windows` to take requests at any time",
            location,
        )?;
        Some(Windows { windows, timezone })
    }
}
