//! What `[notify]` in agent.toml says, once checked: the sinks (webhooks
//! and commands) and which events each is sent. The file's syntax and its
//! located diagnostics belong to `settings/file/notify.rs`; this module
//! owns the values and the checks that do not depend on where a value was
//! written (event names, URLs, command paths).
use std::{collections::BTreeSet, fmt, path::PathBuf};

/// The kinds of notification, each standing for one or more audit kinds
/// (see `event::classify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum EventClass {
    Request,
    Approve,
    Deny,
    Grant,
    Revoke,
    Expire,
    Lock,
    BreakGlass,
    Enforcement,
}

impl EventClass {
    pub(crate) const ALL: [EventClass; 9] = [
        Self::Request,
        Self::Approve,
        Self::Deny,
        Self::Grant,
        Self::Revoke,
        Self::Expire,
        Self::Lock,
        Self::BreakGlass,
        Self::Enforcement,
    ];

    /// The name written in `events = [...]` and in the event's JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Approve => "approve",
            Self::Deny => "deny",
            Self::Grant => "grant",
            Self::Revoke => "revoke",
            Self::Expire => "expire",
            Self::Lock => "lock",
            Self::BreakGlass => "break_glass",
            Self::Enforcement => "enforcement",
        }
    }

    /// Every class, as a set (the default of `events`).
    pub(crate) fn all() -> BTreeSet<EventClass> {
        Self::ALL.into_iter().collect()
    }
}

impl std::str::FromStr for EventClass {
    type Err = String;

    /// An event name; an unknown one is refused with the nearest name.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(c) = Self::ALL.into_iter().find(|c| c.name() == s) {
            return Ok(c);
        }
        let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
        let near = names
            .iter()
            .map(|n| (strsim::jaro_winkler(s, n), *n))
            .filter(|(score, _)| *score > 0.75)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n);
        Err(match near {
            Some(n) => format!("unknown event {s:?}: did you mean {n:?}?"),
            None => format!("unknown event {s:?}: one of {}", names.join(", ")),
        })
    }
}

impl fmt::Display for EventClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one sink delivers.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// An HTTP(S) POST of the event; `slack`: a `{"text": ...}` body.
    Webhook { url: String, slack: bool },
    /// A webhook whose URL is kept in a file of its own (`url_file`), read
    /// by the agent at start ([`NotifyConfig::read_url_files`]): agent.toml
    /// is world-readable (the CLI reads its `socket`), a secret is not.
    WebhookFile { path: PathBuf, slack: bool },
    /// A program run with the event JSON on its standard input.
    Command { path: PathBuf },
}

/// The URL may hold a secret (a Slack webhook's path is its token): it is
/// never printed whole, not even in a debug dump of the settings.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Webhook { url, slack } => f
                .debug_struct("Webhook")
                .field("url", &redact(url))
                .field("slack", slack)
                .finish(),
            Self::WebhookFile { path, slack } => f
                .debug_struct("WebhookFile")
                .field("path", path)
                .field("slack", slack)
                .finish(),
            Self::Command { path } => f.debug_struct("Command").field("path", path).finish(),
        }
    }
}

impl fmt::Display for Target {
    /// How logs and audit records name the sink: a webhook by scheme, host
    /// and port only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Webhook { url, slack: false } => write!(f, "webhook {}", redact(url)),
            Self::Webhook { url, slack: true } => write!(f, "slack webhook {}", redact(url)),
            Self::WebhookFile { path, .. } => write!(f, "webhook from {}", path.display()),
            Self::Command { path } => write!(f, "command {}", path.display()),
        }
    }
}

/// One sink and the events it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sink {
    pub target: Target,
    pub events: BTreeSet<EventClass>,
}

/// The `[notify]` table; no sinks (the default) means no notifications and
/// no worker threads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NotifyConfig {
    pub sinks: Vec<Sink>,
}

impl NotifyConfig {
    /// The configuration with every `url_file` read: the agent's start
    /// calls this (as root). The file must not be readable by others than
    /// its owner and group, and must hold one URL (surrounding whitespace
    /// ignored); its contents are never shown, only its path.
    pub(crate) fn read_url_files(&self) -> Result<NotifyConfig, String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = self.clone();
        for sink in &mut out.sinks {
            let Target::WebhookFile { path, slack } = &sink.target else {
                continue;
            };
            let meta = std::fs::metadata(path)
                .map_err(|e| format!("notify: cannot read url_file {}: {e}", path.display()))?;
            if meta.mode() & 0o004 != 0 {
                return Err(format!(
                    "notify: url_file {} is readable by every user; it holds a webhook's secret: chmod o-r it (0600 or 0640)",
                    path.display()
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("notify: cannot read url_file {}: {e}", path.display()))?;
            let url = text.trim().to_string();
            check_url(&url).map_err(|e| format!("notify: url_file {}: {e}", path.display()))?;
            sink.target = Target::Webhook { url, slack: *slack };
        }
        Ok(out)
    }
}

/// Longest webhook URL taken.
pub(crate) const MAX_URL: usize = 2048;

/// Checks a webhook URL: `https://` (or `http://`, meant for loopback and
/// tests), a host, no whitespace or control characters.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("the URL is longer than {MAX_URL} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL holds whitespace or a control character".into());
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!(
            "{} is not an http(s) URL",
            redact(url).trim_end_matches("/…")
        ));
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("{} is not a valid URL: {e}", redact(url)))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{} names no host", redact(url)));
    }
    Ok(())
}

/// A URL as logs may show it: scheme, host and port; the user info, path
/// and query (where webhook secrets live) become `…`.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => return "(not a URL)".into(),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host: String = host
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace())
        .take(255)
        .collect();
    if host.len() == rest.len() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip_and_a_typo_gets_the_nearest_name() {
        for c in EventClass::ALL {
            assert_eq!(c.name().parse::<EventClass>().unwrap(), c);
        }
        let e = "aprove".parse::<EventClass>().unwrap_err();
        assert!(e.contains("did you mean \"approve\""), "{e}");
        let e = "breakglass".parse::<EventClass>().unwrap_err();
        assert!(e.contains("\"break_glass\""), "{e}");
        let e = "zzz".parse::<EventClass>().unwrap_err();
        assert!(e.contains("one of request, approve"), "{e}");
    }

    #[test]
    fn urls_are_checked_and_shown_without_their_secret_parts() {
        assert!(check_url("https://hooks.example.com/services/T0/B0/secret").is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_url("ftp://example.com/")
            .unwrap_err()
            .contains("not an http(s) URL"));
        assert!(check_url("https://exa mple.com/").is_err());
        assert!(check_url("https:///path").is_err());
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL))).is_err());
        assert_eq!(
            redact("https://user:pw@hooks.example.com:8443/services/T0/B0/secret?x=1"),
            "https://hooks.example.com:8443/…"
        );
        assert_eq!(redact("http://127.0.0.1:9"), "http://127.0.0.1:9");
        let t = Target::Webhook {
            url: "https://hooks.example.com/secret-token".into(),
            slack: true,
        };
        assert!(!format!("{t} {t:?}").contains("secret-token"));
    }

    #[test]
    fn a_url_file_is_read_at_start_only_if_others_cannot_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slack.url");
        std::fs::write(&file, "https://hooks.example.com/T0/s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = NotifyConfig {
            sinks: vec![Sink {
                target: Target::WebhookFile {
                    path: file.clone(),
                    slack: true,
                },
                events: EventClass::all(),
            }],
        };
        let read = config.read_url_files().unwrap();
        assert_eq!(
            read.sinks[0].target,
            Target::Webhook {
                url: "https://hooks.example.com/T0/s3cret".into(),
                slack: true
            }
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = config.read_url_files().unwrap_err();
        assert!(e.contains("readable by every user"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&file, "not a url s3cret").unwrap();
        let e = config.read_url_files().unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
