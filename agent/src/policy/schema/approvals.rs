//! The `jit` table's `approvals_required`: how many distinct approvers a
//! request needs before it is granted.
use toml_edit::Item;

use super::{article, Location, Parser};

/// The most approvals a segment may require: enough for any real review
/// chain, small enough that a request's record stays small.
pub(crate) const MAX_APPROVALS_REQUIRED: u32 = 10;

impl Parser<'_> {
    /// `approvals_required`: an integer from 1 to [`MAX_APPROVALS_REQUIRED`].
    pub(super) fn approvals_required(&mut self, item: &Item, fallback: &Location) -> Option<u32> {
        let location = self.item_location(item, fallback);
        let help = format!(
            "write approvals_required = 2: a request is granted once that many distinct \
             approvers (never the requester) approved it; 1 to {MAX_APPROVALS_REQUIRED}"
        );
        let Some(n) = item.as_integer() else {
            let quoted = item
                .as_str()
                .is_some_and(|s| s.trim().parse::<u32>().is_ok());
            let message = format!(
                "`approvals_required` must be an integer, not {}",
                article(item.type_name())
            );
            let help = if quoted {
                "write the number without quotes".to_owned()
            } else {
                help
            };
            self.error(location, message, help);
            return None;
        };
        match u32::try_from(n) {
            Ok(n @ 1..=MAX_APPROVALS_REQUIRED) => Some(n),
            _ => {
                self.error(
                    location,
                    format!(
                        "approvals_required = {n} is out of range (1 to {MAX_APPROVALS_REQUIRED})"
                    ),
                    help,
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::{parse_str, Segment};

    fn segment(jit_extra: &str) -> Result<Segment, String> {
        let text = format!(
            "[segment.db]\nports = [\"5432/tcp\"]\n\n[segment.db.jit]\nmax_ttl = \"1h\"\n\
             approvers = [\"group:dba\"]\n{jit_extra}"
        );
        parse_str(Path::new("t.toml"), &text)
            .map(|mut s| s.remove(0))
            .map_err(|d| {
                d.0.iter()
                    .map(|d| format!("{} ({})", d.message, d.help.clone().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
    }

    fn required(s: &Segment) -> u32 {
        s.jit.as_ref().unwrap().approvals_required
    }

    #[test]
    fn approvals_required_defaults_to_one_and_is_bounded() {
        assert_eq!(required(&segment("approvals_required = 2\n").unwrap()), 2);
        assert_eq!(required(&segment("approvals_required = 10\n").unwrap()), 10);
        assert_eq!(required(&segment("").unwrap()), 1);
        for bad in ["0", "-1", "11", "99999999999"] {
            let e = segment(&format!("approvals_required = {bad}\n")).unwrap_err();
            assert!(e.contains("out of range (1 to 10)"), "{bad}: {e}");
        }
        let e = segment("approvals_required = \"2\"\n").unwrap_err();
        assert!(e.contains("must be an integer, not a string"), "{e}");
        assert!(e.contains("without quotes"), "{e}");
        let e = segment("approvals_required = true\n").unwrap_err();
        assert!(e.contains("must be an integer"), "{e}");
    }
}
