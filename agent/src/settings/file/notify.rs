//! The `[notify]` table of agent.toml: its syntax and located checks. The
//! values it yields, and what they mean, are `crate::notifications`'s.
//!
//! ```toml
//! [notify]
//! webhooks = ["https://hooks.example.com/pc", { url = "https://hooks.slack.com/services/…", slack = true, events = ["request"] }]
//! commands = ["/usr/local/bin/page-oncall"]
//! events = ["request", "break_glass", "enforcement"]   # default: all
//! slack = false                                        # for webhooks written as plain URLs
//! ```
use std::{collections::BTreeSet, ops::Range, path::PathBuf};

use serde::Deserialize;
use toml::{Spanned, Value};

use super::Checker;
use crate::notifications::{config::check_url, EventClass, NotifyConfig, Sink, Target};

/// The keys of `[notify]`, and of a sink written as a table.
pub(super) const KEYS: [&str; 4] = ["webhooks", "commands", "events", "slack"];
const WEBHOOK_KEYS: [&str; 4] = ["url", "url_file", "slack", "events"];
const COMMAND_KEYS: [&str; 2] = ["path", "events"];

/// Most sinks of each kind: each is a thread and a queue.
const MAX_SINKS: usize = 16;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    webhooks: Option<Spanned<Vec<Spanned<Value>>>>,
    commands: Option<Spanned<Vec<Spanned<Value>>>>,
    events: Option<Spanned<Vec<Spanned<String>>>>,
    slack: Option<bool>,
}

impl Checker<'_> {
    /// `[notify]` into sinks; every problem reported with its place.
    pub(super) fn notify(&mut self, raw: RawNotify) -> NotifyConfig {
        let events = match raw.events {
            Some(list) => {
                let span = list.span();
                let set = self.events(list.into_inner().into_iter().map(|e| {
                    let span = e.span();
                    (e.into_inner(), span)
                }));
                if set.is_empty() {
                    self.error(
                        span,
                        "notify.events is empty".into(),
                        "name at least one event, or remove the key to send every event; to send nothing, list no webhooks and no commands",
                    );
                }
                set
            }
            None => EventClass::all(),
        };
        let slack = raw.slack.unwrap_or(false);
        let mut sinks = Vec::new();
        for (key, list) in [("webhooks", raw.webhooks), ("commands", raw.commands)] {
            let Some(list) = list else { continue };
            if list.get_ref().len() > MAX_SINKS {
                self.error(
                    list.span(),
                    format!("notify.{key} lists more than {MAX_SINKS} entries"),
                    "each sink is a delivery thread; fan out in one command or one webhook receiver",
                );
                continue;
            }
            for entry in list.into_inner() {
                let span = entry.span();
                let sink = match key {
                    "webhooks" => self.webhook(entry.into_inner(), span, slack, &events),
                    _ => self.command(entry.into_inner(), span, &events),
                };
                sinks.extend(sink);
            }
        }
        NotifyConfig { sinks }
    }

    fn events(
        &mut self,
        names: impl Iterator<Item = (String, Range<usize>)>,
    ) -> BTreeSet<EventClass> {
        let mut set = BTreeSet::new();
        for (name, span) in names {
            match name.parse::<EventClass>() {
                Ok(c) => {
                    set.insert(c);
                }
                Err(e) => self.error(
                    span,
                    format!("notify: {e}"),
                    "events are request, approve, deny, grant, revoke, expire, lock, break_glass and enforcement (docs/jit.md#notifications)",
                ),
            }
        }
        set
    }

    /// A webhook: a URL string, or `{ url, slack, events }`.
    fn webhook(
        &mut self,
        value: Value,
        span: Range<usize>,
        slack: bool,
        events: &BTreeSet<EventClass>,
    ) -> Option<Sink> {
        let help = "write a URL string, or a table { url = \"https://...\" (or url_file = \"/etc/portcullis/NAME.url\"), slack = true, events = [...] }";
        let (url, slack, events) = match value {
            Value::String(url) => (url, slack, events.clone()),
            Value::Table(t) => {
                self.unknown_keys(&t, &WEBHOOK_KEYS, "webhook", span.clone())?;
                let slack = self.sink_slack(t.get("slack"), slack, span.clone(), help)?;
                let events = self.sink_events(t.get("events"), span.clone(), events)?;
                match (t.get("url"), t.get("url_file")) {
                    (Some(Value::String(url)), None) => (url.clone(), slack, events),
                    (None, Some(Value::String(file))) => {
                        let path = PathBuf::from(file);
                        if !path.is_absolute() {
                            self.error(
                                span,
                                format!(
                                    "notify.webhooks: url_file {file:?} is not an absolute path"
                                ),
                                help,
                            );
                            return None;
                        }
                        return Some(Sink {
                            target: Target::WebhookFile { path, slack },
                            events,
                        });
                    }
                    _ => {
                        self.error(
                            span,
                            "notify.webhooks: this entry needs one url string or one url_file path"
                                .into(),
                            help,
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.error(
                    span,
                    "notify.webhooks: an entry is neither a URL nor a table".into(),
                    help,
                );
                return None;
            }
        };
        if let Err(e) = check_url(&url) {
            self.error(
                span,
                format!("notify.webhooks: {e}"),
                "write https://HOST/PATH; http:// only for a receiver on this host (loopback) or in tests",
            );
            return None;
        }
        Some(Sink {
            target: Target::Webhook { url, slack },
            events,
        })
    }

    /// A command: an absolute path, or `{ path, events }`. No arguments,
    /// no shell: the event comes on standard input.
    fn command(
        &mut self,
        value: Value,
        span: Range<usize>,
        events: &BTreeSet<EventClass>,
    ) -> Option<Sink> {
        let help = "write the absolute path of a program (no arguments: it reads the event on standard input), or a table { path = \"/usr/local/bin/x\", events = [...] }";
        let (path, events) = match value {
            Value::String(p) => (p, events.clone()),
            Value::Table(t) => {
                self.unknown_keys(&t, &COMMAND_KEYS, "command", span.clone())?;
                let Some(Value::String(p)) = t.get("path") else {
                    self.error(
                        span,
                        "notify.commands: this entry has no path string".into(),
                        help,
                    );
                    return None;
                };
                let events = self.sink_events(t.get("events"), span.clone(), events)?;
                (p.clone(), events)
            }
            _ => {
                self.error(
                    span,
                    "notify.commands: an entry is neither a path nor a table".into(),
                    help,
                );
                return None;
            }
        };
        let path = PathBuf::from(path);
        if !path.is_absolute() || path.as_os_str().as_encoded_bytes().contains(&0) {
            self.error(
                span,
                format!(
                    "notify.commands: {:?} is not an absolute path",
                    path.display().to_string()
                ),
                help,
            );
            return None;
        }
        Some(Sink {
            target: Target::Command { path },
            events,
        })
    }

    /// A webhook's own `slack`, else the table's.
    fn sink_slack(
        &mut self,
        value: Option<&Value>,
        default: bool,
        span: Range<usize>,
        help: &str,
    ) -> Option<bool> {
        match value {
            None => Some(default),
            Some(Value::Boolean(b)) => Some(*b),
            Some(_) => {
                self.error(
                    span,
                    "notify.webhooks: slack must be true or false".into(),
                    help,
                );
                None
            }
        }
    }

    /// A sink's own `events`, else the table's.
    fn sink_events(
        &mut self,
        value: Option<&Value>,
        span: Range<usize>,
        default: &BTreeSet<EventClass>,
    ) -> Option<BTreeSet<EventClass>> {
        let Some(value) = value else {
            return Some(default.clone());
        };
        let names: Option<Vec<String>> = value
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect());
        let Some(names) = names.filter(|n| !n.is_empty()) else {
            self.error(
                span,
                "notify: a sink's events must be a non-empty list of event names".into(),
                "e.g. events = [\"request\", \"break_glass\"]",
            );
            return None;
        };
        let before = self.diagnostics.iter().count();
        let set = self.events(names.into_iter().map(|n| (n, span.clone())));
        (self.diagnostics.iter().count() == before).then_some(set)
    }

    /// Refuses keys a sink table does not have, naming the nearest.
    fn unknown_keys(
        &mut self,
        table: &toml::Table,
        keys: &[&str],
        what: &str,
        span: Range<usize>,
    ) -> Option<()> {
        let mut ok = true;
        for k in table.keys().filter(|k| !keys.contains(&k.as_str())) {
            ok = false;
            let near = keys
                .iter()
                .map(|c| (strsim::jaro_winkler(k, c), *c))
                .filter(|(s, _)| *s > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, c)| c);
            let help = match near {
                Some(c) => format!("did you mean `{c}`? a {what} has {}", keys.join(", ")),
                None => format!("a {what} has {}", keys.join(", ")),
            };
            self.error(
                span.clone(),
                format!("notify: unknown {what} key `{k}`"),
                &help,
            );
        }
        ok.then_some(())
    }
}
