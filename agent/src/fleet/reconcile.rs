//! A listing of the store against what this host enforces: which fleet
//! grants to apply and which to end. Pure: the watch task lists, this
//! decides, the core acts.
use std::collections::BTreeMap;

use super::{
    layout::{Layout, Target},
    value::{GrantValue, LockValue, ValueError},
};
use crate::identity::Identity;

/// One fleet grant for this host, as listed or watched.
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub target: Target,
    pub value: GrantValue,
    pub identity: Identity,
}

/// The grants among `kvs` (key, value) that target `host` in `groups`,
/// by fleet id; and the keys that were unreadable, with why. Keys that
/// are not grant keys, or grants for other hosts, are left out silently.
pub(crate) fn targeted<'a>(
    layout: &Layout,
    host: &str,
    groups: &[String],
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> (BTreeMap<String, Wanted>, Vec<(String, ValueError)>) {
    let mut wanted = BTreeMap::new();
    let mut bad = Vec::new();
    for (key, value) in kvs {
        let Some((target, id)) = layout.parse_grant(key) else {
            continue;
        };
        if !target.applies_to(host, groups) {
            continue;
        }
        match GrantValue::parse(value) {
            // One id, one grant: a second key with the same id (only a
            // hand-written one can) does not replace the first.
            Ok((value, identity)) => {
                wanted.entry(id).or_insert(Wanted {
                    target,
                    value,
                    identity,
                });
            }
            Err(e) => bad.push((id, e)),
        }
    }
    (wanted, bad)
}

/// One fleet lock for this host.
#[derive(Clone, Debug)]
pub(crate) struct WantedLock {
    pub target: Target,
    pub value: LockValue,
    pub identity: Identity,
}

/// The locks among `kvs` that target this host, as [`targeted`] for grants.
pub(crate) fn targeted_locks<'a>(
    layout: &Layout,
    host: &str,
    groups: &[String],
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> (BTreeMap<String, WantedLock>, Vec<(String, ValueError)>) {
    let mut wanted = BTreeMap::new();
    let mut bad = Vec::new();
    for (key, value) in kvs {
        let Some((target, id)) = layout.parse_lock(key) else {
            continue;
        };
        if !target.applies_to(host, groups) {
            continue;
        }
        match LockValue::parse(value) {
            Ok((value, identity)) => {
                wanted.entry(id).or_insert(WantedLock {
                    target,
                    value,
                    identity,
                });
            }
            Err(e) => bad.push((id, e)),
        }
    }
    (wanted, bad)
}

/// Fleet locks to lift here (gone from the store) and to impose (new).
pub(crate) fn plan_locks(
    wanted: &BTreeMap<String, WantedLock>,
    enforced: &std::collections::BTreeSet<String>,
) -> Plan {
    Plan {
        end: enforced
            .iter()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect(),
        apply: wanted
            .keys()
            .filter(|id| !enforced.contains(*id))
            .cloned()
            .collect(),
    }
}

/// What to do to make this host enforce `wanted` and nothing else from the
/// fleet: `enforced` maps fleet id → (local grant id, deadline in Unix ms).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Fleet ids to end here (gone from the store, or changed).
    pub end: Vec<String>,
    /// Fleet ids to apply (new, or changed: ended first).
    pub apply: Vec<String>,
}

pub(crate) fn plan(
    wanted: &BTreeMap<String, Wanted>,
    enforced: &BTreeMap<String, (u64, u64)>,
) -> Plan {
    let mut out = Plan::default();
    for (id, (_, deadline)) in enforced {
        match wanted.get(id) {
            None => out.end.push(id.clone()),
            Some(w) if w.value.deadline_unix_ms != *deadline => {
                out.end.push(id.clone());
                out.apply.push(id.clone());
            }
            Some(_) => {}
        }
    }
    for id in wanted.keys() {
        if !enforced.contains_key(id) {
            out.apply.push(id.clone());
        }
    }
    out.apply.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::value::FORMAT;

    fn value(deadline: u64) -> Vec<u8> {
        serde_json::to_vec(&GrantValue {
            format: FORMAT,
            segment: "db".into(),
            identity: "uid:1000".into(),
            created_unix_ms: 1,
            deadline_unix_ms: deadline,
            actor_uid: 0,
            actor_user: None,
            origin_host: "h1".into(),
            reason: None,
            strict: false,
        })
        .unwrap()
    }

    #[test]
    fn only_this_hosts_grants_are_wanted_and_bad_values_are_named() {
        let l = Layout::new("/p");
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"/p/grants/group/db/a".to_vec(), value(10)),
            (b"/p/grants/group/web/b".to_vec(), value(10)),
            (b"/p/grants/host/h2/c".to_vec(), value(10)),
            (b"/p/grants/host/h1/d".to_vec(), value(10)),
            (b"/p/grants/fleet/e".to_vec(), b"{not json".to_vec()),
            (b"/p/agents/h1".to_vec(), b"{}".to_vec()),
        ];
        let (wanted, bad) = targeted(
            &l,
            "h1",
            &["db".to_string()],
            kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        );
        assert_eq!(wanted.keys().collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "e");
    }

    #[test]
    fn the_plan_ends_what_left_applies_what_is_new_and_replaces_what_changed() {
        let l = Layout::new("/p");
        let kvs = [
            (b"/p/grants/fleet/keep".to_vec(), value(10)),
            (b"/p/grants/fleet/new".to_vec(), value(10)),
            (b"/p/grants/fleet/moved".to_vec(), value(20)),
        ];
        let (wanted, _) = targeted(
            &l,
            "h1",
            &[],
            kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        );
        let enforced = BTreeMap::from([
            ("keep".to_string(), (1, 10)),
            ("gone".to_string(), (2, 10)),
            ("moved".to_string(), (3, 10)),
        ]);
        let p = plan(&wanted, &enforced);
        assert_eq!(p.end, ["gone", "moved"]);
        assert_eq!(p.apply, ["moved", "new"]);
        assert_eq!(plan(&wanted, &BTreeMap::new()).end, Vec::<String>::new());
    }

    #[test]
    fn locks_for_this_host_are_imposed_and_gone_ones_lifted() {
        let l = Layout::new("/p");
        let lock = |identity: &str| {
            serde_json::to_vec(&LockValue {
                format: FORMAT,
                identity: identity.into(),
                reason: "left".into(),
                include_standing: false,
                created_unix_ms: 1,
                expires_unix_ms: None,
                actor_uid: 0,
                actor_user: None,
                origin_host: "h1".into(),
            })
            .unwrap()
        };
        let kvs = [
            (b"/p/locks/group/db/a".to_vec(), lock("uid:1")),
            (b"/p/locks/group/web/b".to_vec(), lock("uid:2")),
            (b"/p/locks/fleet/c".to_vec(), lock("nope")),
            (b"/p/grants/fleet/d".to_vec(), value(10)),
        ];
        let (wanted, bad) = targeted_locks(
            &l,
            "h1",
            &["db".to_string()],
            kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        );
        assert_eq!(wanted.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        let enforced = std::collections::BTreeSet::from(["old".to_string()]);
        let p = plan_locks(&wanted, &enforced);
        assert_eq!(
            (p.end, p.apply),
            (vec!["old".to_string()], vec!["a".to_string()])
        );
    }
}
