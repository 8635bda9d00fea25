//! The `jit` table's break-glass keys: `break_glass`, `break_glass_max_ttl`
//! and `break_glass_by`. Break-glass opens a segment at once, without an
//! approver, so its bounds are checked strictly: a break-glass segment
//! names its own cap (never above `max_ttl`), and the keys are refused
//! unless `break_glass = true`, so a cap never sits there unused by mistake.
use std::time::Duration;

use toml_edit::TableLike;

use super::{article, Location, Parser};
use crate::{identity::Identity, policy::BreakGlass};

impl Parser<'_> {
    /// The break-glass rules of `[segment.NAME.jit]`, `None` when it has
    /// none; `Err(())` when they are wrong (reported).
    pub(super) fn break_glass(
        &mut self,
        table: &dyn TableLike,
        name: &str,
        location: &Location,
        max_ttl: Option<Duration>,
        found: &mut Vec<(Identity, Location)>,
    ) -> Result<Option<BreakGlass>, ()> {
        let enabled = match table.get("break_glass") {
            None => false,
            Some(item) => match item.as_bool() {
                Some(b) => b,
                None => {
                    let at = self.item_location(item, location);
                    let message = format!(
                        "`break_glass` must be true or false, not {}",
                        article(item.type_name())
                    );
                    self.error(at, message, "write break_glass = true (without quotes)");
                    return Err(());
                }
            },
        };
        let cap = table.get("break_glass_max_ttl");
        let by = table.get("break_glass_by");
        if !enabled {
            for (key, item) in [("break_glass_max_ttl", cap), ("break_glass_by", by)] {
                if let Some(item) = item {
                    let at = self.item_location(item, location);
                    self.error(
                        at,
                        format!(
                            "`{key}` is set but [segment.{name}.jit] does not enable break-glass"
                        ),
                        "add break_glass = true, or remove the key",
                    );
                    return Err(());
                }
            }
            return Ok(None);
        }
        let Some(cap_item) = cap else {
            self.error(
                location.clone(),
                format!("[segment.{name}.jit] has break_glass = true but no break_glass_max_ttl"),
                r#"add break_glass_max_ttl = "1h": the longest access break-glass may open without an approver"#,
            );
            return Err(());
        };
        let max = self
            .ttl(cap_item, "break_glass_max_ttl", location)
            .ok_or(())?;
        if let Some(max_ttl) = max_ttl {
            if max > max_ttl {
                let at = self.item_location(cap_item, location);
                self.error(
                    at,
                    format!(
                        "break_glass_max_ttl {} is longer than max_ttl {}",
                        crate::duration::format(max, ""),
                        crate::duration::format(max_ttl, "")
                    ),
                    "break-glass opens without an approver, so it may give at most what an approver may: lower break_glass_max_ttl or raise max_ttl",
                );
                return Err(());
            }
        }
        let mut allowed = Vec::new();
        if let Some(item) = by {
            let mut listed = Vec::new();
            self.identities(item, "break_glass_by", location, &mut listed);
            for (identity, at) in listed {
                if self.approver(&identity, at.clone()) {
                    allowed.push(identity.clone());
                    found.push((identity, at));
                }
            }
            if allowed.is_empty() {
                let at = self.item_location(item, location);
                self.error(
                    at,
                    "`break_glass_by` names nobody".to_owned(),
                    r#"name who may break the glass, e.g. break_glass_by = ["group:oncall"], or remove the key to let any local user"#,
                );
                return Err(());
            }
        }
        Ok(Some(BreakGlass {
            max_ttl: max,
            by: allowed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use crate::policy::{parse_str, BreakGlass};

    fn parse(jit_extra: &str) -> Result<Option<BreakGlass>, String> {
        let text = format!(
            "[segment.db]\nports = [\"5432/tcp\"]\n\n[segment.db.jit]\nmax_ttl = \"2h\"\n\
             approvers = [\"group:dba\"]\n{jit_extra}"
        );
        parse_str(Path::new("t.toml"), &text)
            .map(|mut s| s.remove(0).jit.unwrap().break_glass)
            .map_err(|d| {
                d.0.iter()
                    .map(|d| {
                        format!(
                            "{}: {} ({})",
                            d.location
                                .as_ref()
                                .map(|l| l.line.to_string())
                                .unwrap_or_default(),
                            d.message,
                            d.help.clone().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
    }

    #[test]
    fn break_glass_needs_its_own_cap_within_max_ttl() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("break_glass = false\n").unwrap(), None);
        let bg = parse("break_glass = true\nbreak_glass_max_ttl = \"30m\"\n")
            .unwrap()
            .unwrap();
        assert_eq!(bg.max_ttl, Duration::from_secs(1800));
        assert!(bg.by.is_empty());
        let e = parse("break_glass = true\n").unwrap_err();
        assert!(e.contains("no break_glass_max_ttl"), "{e}");
        let e = parse("break_glass = true\nbreak_glass_max_ttl = \"3h\"\n").unwrap_err();
        assert!(e.starts_with("8: "), "the line of the cap: {e}");
        assert!(e.contains("longer than max_ttl 2h"), "{e}");
        let e = parse("break_glass = \"yes\"\n").unwrap_err();
        assert!(e.contains("must be true or false, not a string"), "{e}");
        let e = parse("break_glass_max_ttl = \"30m\"\n").unwrap_err();
        assert!(e.contains("does not enable break-glass"), "{e}");
        let e = parse("break_glass = true\nbreak_glass_max_ttl = \"0s\"\n").unwrap_err();
        assert!(e.contains("bad break_glass_max_ttl"), "{e}");
    }

    #[test]
    fn break_glass_by_names_people_only() {
        let bg = parse(
            "break_glass = true\nbreak_glass_max_ttl = \"30m\"\nbreak_glass_by = [\"group:oncall\"]\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(bg.by.len(), 1);
        let e = parse(
            "break_glass = true\nbreak_glass_max_ttl = \"30m\"\nbreak_glass_by = [\"peer:10.0.0.1/32\"]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("cannot approve") || e.contains("names nobody"),
            "{e}"
        );
        let e = parse("break_glass_by = [\"user:root\"]\n").unwrap_err();
        assert!(e.contains("does not enable break-glass"), "{e}");
    }
}
