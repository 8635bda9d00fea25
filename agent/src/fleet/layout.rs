//! Where things live in etcd, under the configured prefix:
//!
//! ```text
//! {prefix}/grants/host/H/ID    a grant for host H
//! {prefix}/grants/group/G/ID   a grant for every host in group G
//! {prefix}/grants/fleet/ID     a grant for every host
//! {prefix}/locks/host/H/ID     a lock for host H (likewise group/G, fleet)
//! {prefix}/agents/H            host H's live record (leased): applied revision, ...
//! {prefix}/seen/H              host H's last record (not leased): who was ever there
//! ```
//!
//! An agent watches one key range, `grants/` up to and including `locks/`
//! (nothing else sorts between them), so one revision orders both.
//!
//! Owns the key syntax and which grants target which host; nothing here
//! talks to etcd.
use super::config::valid_name;

/// Which hosts a fleet grant is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    Host(String),
    Group(String),
    Fleet,
}

impl Target {
    /// `host:H`, `group:G` or `all` (the CLI's `--hosts`).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let named = |kind: &str, name: &str, make: fn(String) -> Target| {
            if valid_name(name) {
                Ok(make(name.to_string()))
            } else {
                Err(format!(
                    "{kind} name {:?}: 1 to 63 letters, digits, '.', '_' or '-'",
                    crate::termtext::escape(name)
                ))
            }
        };
        match text.split_once(':') {
            _ if text == "all" => Ok(Target::Fleet),
            Some(("host", h)) => named("host", h, Target::Host),
            Some(("group", g)) => named("group", g, Target::Group),
            _ => Err(format!(
                "--hosts {:?}: write host:NAME, group:NAME or all",
                crate::termtext::escape(text)
            )),
        }
    }

    /// Whether a host with `host` and `groups` is targeted.
    pub(crate) fn applies_to(&self, host: &str, groups: &[String]) -> bool {
        match self {
            Target::Host(h) => h == host,
            Target::Group(g) => groups.iter().any(|x| x == g),
            Target::Fleet => true,
        }
    }

    fn path(&self) -> String {
        match self {
            Target::Host(h) => format!("host/{h}"),
            Target::Group(g) => format!("group/{g}"),
            Target::Fleet => "fleet".to_string(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Host(h) => write!(f, "host:{h}"),
            Target::Group(g) => write!(f, "group:{g}"),
            Target::Fleet => f.write_str("all"),
        }
    }
}

/// The key layout under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    prefix: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub(crate) fn grants(&self) -> String {
        format!("{}/grants/", self.prefix)
    }

    pub(crate) fn grant(&self, target: &Target, id: &str) -> String {
        format!("{}/grants/{}/{id}", self.prefix, target.path())
    }

    pub(crate) fn locks(&self) -> String {
        format!("{}/locks/", self.prefix)
    }

    pub(crate) fn lock(&self, target: &Target, id: &str) -> String {
        format!("{}/locks/{}/{id}", self.prefix, target.path())
    }

    /// The watched range: `grants/` through `locks/` (start, end exclusive).
    pub(crate) fn watched(&self) -> (String, String) {
        (self.grants(), format!("{}/locks0", self.prefix))
    }

    /// `requests/`: `requests/ID/` holds a request, `requests/ID/status`
    /// its decision (the compare-and-swap target).
    pub(crate) fn requests(&self) -> String {
        format!("{}/requests/", self.prefix)
    }

    pub(crate) fn agents(&self) -> String {
        format!("{}/agents/", self.prefix)
    }

    pub(crate) fn agent(&self, host: &str) -> String {
        format!("{}/agents/{host}", self.prefix)
    }

    pub(crate) fn hosts(&self) -> String {
        format!("{}/seen/", self.prefix)
    }

    pub(crate) fn host(&self, host: &str) -> String {
        format!("{}/seen/{host}", self.prefix)
    }

    /// A grant key back into its target and id; `None` for anything that
    /// is not exactly one (an extra segment, a bad name, another prefix).
    pub(crate) fn parse_grant(&self, key: &[u8]) -> Option<(Target, String)> {
        self.parse_under(&self.grants(), key)
    }

    /// A lock key back into its target and id (as [`Self::parse_grant`]).
    pub(crate) fn parse_lock(&self, key: &[u8]) -> Option<(Target, String)> {
        self.parse_under(&self.locks(), key)
    }

    fn parse_under(&self, under: &str, key: &[u8]) -> Option<(Target, String)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(under)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (target, id) = match parts.as_slice() {
            ["host", h, id] if valid_name(h) => (Target::Host(h.to_string()), id),
            ["group", g, id] if valid_name(g) => (Target::Group(g.to_string()), id),
            ["fleet", id] => (Target::Fleet, id),
            _ => return None,
        };
        valid_name(id).then(|| (target, id.to_string()))
    }

    /// The host an `agents/H` or `seen/H` key names.
    pub(crate) fn parse_host(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let h = key
            .strip_prefix(&self.agents())
            .or_else(|| key.strip_prefix(&self.hosts()))?;
        valid_name(h).then(|| h.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_select_exactly_their_hosts() {
        let db = vec!["db".to_string()];
        assert!(Target::parse("group:db").unwrap().applies_to("h1", &db));
        assert!(!Target::parse("group:db").unwrap().applies_to("h3", &[]));
        assert!(Target::parse("host:h3").unwrap().applies_to("h3", &[]));
        assert!(!Target::parse("host:h3").unwrap().applies_to("h1", &db));
        assert!(Target::parse("all").unwrap().applies_to("h9", &[]));
        assert!(Target::parse("group:").is_err());
        assert!(Target::parse("db").is_err());
        assert!(Target::parse("host:a/b").is_err());
    }

    #[test]
    fn grant_keys_round_trip_and_odd_keys_are_ignored() {
        let l = Layout::new("/p/v1");
        for t in [
            Target::Host("h1".into()),
            Target::Group("db".into()),
            Target::Fleet,
        ] {
            let k = l.grant(&t, "h1-17");
            assert_eq!(l.parse_grant(k.as_bytes()), Some((t, "h1-17".into())));
        }
        assert_eq!(l.parse_grant(b"/p/v1/grants/host/h1/x/y"), None);
        assert_eq!(l.parse_grant(b"/p/v1/grants/group/d\x1bb/1"), None);
        assert_eq!(l.parse_grant(b"/p/v1/grants/fleet/"), None);
        assert_eq!(l.parse_grant(b"/other/grants/fleet/1"), None);
        assert_eq!(l.parse_grant(b"/p/v1/grants/fleet/\xff"), None);
        assert_eq!(l.parse_host(b"/p/v1/agents/h2"), Some("h2".into()));
        let lock = l.lock(&Target::Fleet, "h1-9");
        assert_eq!(
            l.parse_lock(lock.as_bytes()),
            Some((Target::Fleet, "h1-9".into()))
        );
        assert_eq!(l.parse_grant(lock.as_bytes()), None);
        // The watched range holds grants and locks, not the agents' records.
        let (start, end) = l.watched();
        for k in [l.grant(&Target::Fleet, "x"), lock] {
            assert!(start <= k && k < end, "{k}");
        }
        for k in [l.agent("h1"), l.host("h1")] {
            assert!(!(start <= k && k < end), "{k}");
        }
    }
}
