//! Parts of the `jit` table's parsing: `idle_timeout` and who may approve.
use std::time::Duration;

use toml_edit::Item;

use super::{article, Location, Parser};
use crate::{duration::IdleTimeout, identity::Identity};

impl Parser<'_> {
    /// `idle_timeout`: a string duration within [`IdleTimeout`]'s bounds.
    pub(super) fn idle_timeout(&mut self, item: &Item, fallback: &Location) -> Option<Duration> {
        let location = self.item_location(item, fallback);
        let Some(text) = item.as_str() else {
            let message = format!(
                "`idle_timeout` must be a string, not {}",
                article(item.type_name())
            );
            self.error(
                location,
                message,
                r#"write idle_timeout = "15m": a grant nothing used for that long lapses"#,
            );
            return None;
        };
        text.parse::<IdleTimeout>()
            .map(Duration::from)
            .map_err(|error| {
                self.error(
                    location,
                    format!("bad idle_timeout: {}", error.message()),
                    error.help(),
                )
            })
            .ok()
    }

    /// Whether `identity` can approve; reports why not.
    pub(super) fn approver(&mut self, identity: &Identity, location: Location) -> bool {
        let help = match identity {
            Identity::User(_) | Identity::Uid(_) | Identity::Group(_) | Identity::Gid(_) => {
                return true
            }
            Identity::Peer(_) => {
                "approvals come over the agent's local socket, which knows the caller's uid \
                 and groups, never its address: name a user:, uid:, group: or gid:"
            }
            _ => {
                "approvals are made by people running `portcullis approve`: name their \
                 user:, uid:, group: or gid:"
            }
        };
        self.error(
            location,
            format!(
                "`{identity}` cannot approve: approvers are user:NAME, uid:N, group:NAME or gid:N"
            ),
            help,
        );
        false
    }
}
