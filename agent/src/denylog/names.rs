//! Names for the ids in deny events (cgroup id → path, uid → user, gid →
//! group, segment id → name), each cache bounded, and the deny log's
//! records built from them.
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    net::IpAddr,
};

use agent_common::{hook, DenyEvent, Proto};
use serde_json::{Map, Value};

use super::{is_remote, SegmentNames};
use crate::{cgroupfs::Hierarchy, clock};

/// Most names remembered per cache.
const CACHE_SIZE: usize = 1024;

/// A small map that forgets its oldest entries past `cap`.
struct Cache<K, V> {
    cap: usize,
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Clone + Eq + Hash, V: Clone> Cache<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get_or(&mut self, key: &K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.map.get(key) {
            return v.clone();
        }
        let v = make();
        if self.map.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.map.insert(key.clone(), v.clone());
        self.order.push_back(key.clone());
        v
    }
}

/// Names for the ids in events.
pub(super) struct Names {
    hierarchy: Hierarchy,
    segment_source: SegmentNames,
    segments: HashMap<u32, String>,
    cgroups: Cache<u64, Option<String>>,
    users: Cache<u32, Option<String>>,
    groups: Cache<u32, Option<String>>,
}

impl Names {
    pub(super) fn new(hierarchy: Hierarchy, segment_source: SegmentNames) -> Self {
        let segments = segment_source();
        Self {
            hierarchy,
            segment_source,
            segments,
            cgroups: Cache::new(CACHE_SIZE),
            users: Cache::new(CACHE_SIZE),
            groups: Cache::new(CACHE_SIZE),
        }
    }

    pub(super) fn refresh_segments(&mut self) {
        self.segments = (self.segment_source)();
    }

    fn segment(&self, id: u32) -> String {
        self.segments
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// The fields naming who was refused on which segment.
    pub(super) fn subject_fields(&mut self, ev: &DenyEvent) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("segment".into(), self.segment(ev.segment).into());
        m.insert("segment_id".into(), ev.segment.into());
        if is_remote(ev) {
            let peer = ip_of(ev.peer_addr);
            m.insert("identity".into(), format!("peer:{peer}").into());
            return m;
        }
        let hierarchy = &self.hierarchy;
        let cgroup = self
            .cgroups
            .get_or(&ev.cgroup_id, || hierarchy.path_of_id(ev.cgroup_id));
        let user = self.users.get_or(&ev.uid, || {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(ev.uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        });
        let group = self.groups.get_or(&ev.gid, || {
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(ev.gid))
                .ok()
                .flatten()
                .map(|g| g.name)
        });
        let identity = match &cgroup {
            Some(p) => format!("cgroup:{p}"),
            None => format!("cgroup-id:{}", ev.cgroup_id),
        };
        // A cgroup named like a unit, for people; `suggest` asks systemd
        // before it writes a unit into a policy.
        if let Some(unit) = cgroup.as_deref().and_then(crate::cgroupfs::unit_like) {
            m.insert("unit".into(), unit.into());
        }
        m.insert("identity".into(), identity.into());
        m.insert("cgroup".into(), cgroup.into());
        m.insert("cgroup_id".into(), ev.cgroup_id.into());
        m.insert("uid".into(), ev.uid.into());
        m.insert("user".into(), user.into());
        m.insert("gid".into(), ev.gid.into());
        m.insert("group".into(), group.into());
        m
    }

    /// The deny log record of one event.
    pub(super) fn record(&mut self, ev: &DenyEvent) -> Map<String, Value> {
        let mut m = self.subject_fields(ev);
        m.insert("event".into(), super::event_name(ev).into());
        m.insert(
            "ts".into(),
            clock::rfc3339_millis(clock::wall_of(ev.boot_ns)).into(),
        );
        m.insert("hook".into(), hook_name(ev.hook).into());
        m.insert("proto".into(), proto_name(ev.proto).into());
        m.insert("port".into(), ev.port.into());
        m.insert("addr".into(), ip_of(ev.addr).to_string().into());
        if ev.peer_addr != [0; 16] || ev.peer_port != 0 {
            let peer = ip_of(ev.peer_addr);
            let text = match peer {
                IpAddr::V6(_) => format!("[{peer}]:{}", ev.peer_port),
                IpAddr::V4(_) => format!("{peer}:{}", ev.peer_port),
            };
            m.insert("peer".into(), text.into());
        }
        m
    }
}

/// The address in an event: v4-mapped IPv6 shows as IPv4.
use agent_common::ip_of_key as ip_of;

pub(crate) fn hook_name(h: u8) -> &'static str {
    match h {
        hook::CONNECT4 => "connect4",
        hook::CONNECT6 => "connect6",
        hook::SENDMSG4 => "sendmsg4",
        hook::SENDMSG6 => "sendmsg6",
        hook::SKB_EGRESS => "skb_egress",
        hook::SKB_INGRESS => "skb_ingress",
        hook::XDP => "xdp",
        hook::TC => "tc",
        _ => "unknown",
    }
}

fn proto_name(p: u8) -> String {
    Proto::from_u8(p).map_or_else(|| format!("ip{p}"), |p| p.name().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ev(uid: u32) -> DenyEvent {
        DenyEvent {
            boot_ns: 1,
            cgroup_id: 7,
            segment: 1,
            uid,
            gid: 0,
            port: 5432,
            peer_port: 0,
            proto: 6,
            hook: hook::CONNECT4,
            verdict: agent_common::verdict::DENIED,
            _pad: [0; 5],
            addr: agent_common::v4_mapped([127, 0, 0, 1]),
            peer_addr: [0; 16],
        }
    }

    #[test]
    fn caches_are_bounded() {
        let mut c: Cache<u32, u32> = Cache::new(2);
        for i in 0..10 {
            assert_eq!(c.get_or(&i, || i * 2), i * 2);
        }
        assert_eq!(c.map.len(), 2);
        let mut calls = 0;
        c.get_or(&9, || {
            calls += 1;
            0
        });
        assert_eq!(calls, 0, "recent entries stay cached");
    }

    #[test]
    fn remote_events_name_the_peer() {
        let mut e = ev(0);
        e.hook = hook::XDP;
        e.cgroup_id = 0;
        e.peer_addr = agent_common::v4_mapped([10, 1, 2, 3]);
        e.peer_port = 40000;
        let mut names = Names::new(
            Hierarchy {
                mount: PathBuf::from("/nonexistent"),
            },
            Box::new(|| HashMap::from([(1, "db".to_string())])),
        );
        let rec = names.record(&e);
        assert_eq!(rec["identity"], "peer:10.1.2.3");
        assert_eq!(rec["segment"], "db");
        assert_eq!(rec["hook"], "xdp");
        assert_eq!(rec["peer"], "10.1.2.3:40000");
        assert_eq!(rec["addr"], "127.0.0.1");
    }
}
