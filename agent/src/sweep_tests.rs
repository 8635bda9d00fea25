//! The sweep's decisions against a table standing in for the kernel maps.
use std::collections::HashMap;

use agent_common::v4_mapped;

use super::*;
use crate::dataplane::DataplaneError;

#[derive(Default)]
struct Maps {
    ports: HashMap<(Proto, u16), u32>,
    grants: HashMap<GrantKey, u64>,
    peers: HashMap<(u32, [u8; 16]), u64>,
    /// "Fresh until" (0 unless a test sets it).
    fresh: u64,
}

impl KernelView for Maps {
    fn port_entry(&self, proto: Proto, port: u16) -> Result<u32, DataplaneError> {
        Ok(self.ports.get(&(proto, port)).copied().unwrap_or(0))
    }
    fn grant_expiry(&self, key: &GrantKey) -> Result<Option<u64>, DataplaneError> {
        Ok(self.grants.get(key).copied())
    }
    fn peer_lookup(&self, segment: u32, addr: [u8; 16]) -> Result<Option<u64>, DataplaneError> {
        Ok(self.peers.get(&(segment, addr)).copied())
    }
    fn fresh_until(&self) -> Result<u64, DataplaneError> {
        Ok(self.fresh)
    }
}

struct Gids(HashMap<u32, u32>, usize);
impl Owners for Gids {
    fn gid_of(&mut self, inode: u32) -> Option<u32> {
        self.1 += 1;
        self.0.get(&inode).copied()
    }
    fn cgroup_of(&mut self, _inode: u32) -> Option<String> {
        None
    }
}

const PORT: u16 = 5432;
const ATTACH: u64 = 100;
const CHILD: u64 = 101;
const OUTSIDE: u64 = 999;

fn cgroups() -> Cgroups {
    Cgroups::from_links(
        HashMap::from([(ATTACH, 0), (CHILD, ATTACH)]),
        vec![1],
        ATTACH,
    )
}

fn maps() -> Maps {
    let mut m = Maps::default();
    m.ports.insert((Proto::Tcp, PORT), 7);
    m.ports.insert((Proto::Udp, PORT), 7);
    m
}

fn grant(m: &mut Maps, kind: u32, id: u64) {
    m.grants.insert(
        GrantKey {
            kind,
            segment: 7,
            id,
        },
        u64::MAX,
    );
}

fn sock(proto: u8, state: u8, local: (&str, u16), remote: (&str, u16), cookie: u64) -> DiagSocket {
    DiagSocket {
        proto,
        state,
        local: (local.0.parse().unwrap(), local.1),
        remote: (remote.0.parse().unwrap(), remote.1),
        cookie,
        uid: 1000,
        inode: cookie as u32,
        cgroup_id: CHILD,
    }
}

/// A loopback TCP flow: (client, server's accepted socket).
fn tcp_pair(client_cg: u64) -> Vec<DiagSocket> {
    let mut c = sock(TCP, 1, ("127.0.0.1", 40000), ("127.0.0.1", PORT), 1);
    c.cgroup_id = client_cg;
    let mut s = sock(TCP, 1, ("127.0.0.1", PORT), ("127.0.0.1", 40000), 2);
    s.cgroup_id = OUTSIDE;
    vec![c, s]
}

fn run(sockets: &[DiagSocket], m: &Maps) -> Vec<(u64, End)> {
    let (cuts, _) = judge(
        sockets,
        &mut cgroups(),
        m,
        &mut Gids(HashMap::new(), 0),
        false,
    );
    cuts.iter().map(|c| (c.socket.cookie, c.end)).collect()
}

#[test]
fn a_refused_local_flow_is_cut_at_both_ends() {
    assert_eq!(
        run(&tcp_pair(CHILD), &maps()),
        vec![(1, End::Client), (2, End::Server)]
    );
}

#[test]
fn a_local_flow_allowed_by_uid_cgroup_ancestor_or_gid_is_kept() {
    for (kind, id) in [(kind::UID, 1000), (kind::CGROUP, ATTACH), (kind::CGROUP, 1)] {
        let mut m = maps();
        grant(&mut m, kind, id);
        assert_eq!(run(&tcp_pair(CHILD), &m), vec![], "{kind} {id}");
    }
    let mut m = maps();
    grant(&mut m, kind::GID, 50);
    let mut gids = Gids(HashMap::from([(1, 50)]), 0);
    let (cuts, judged) = judge(&tcp_pair(CHILD), &mut cgroups(), &m, &mut gids, false);
    assert_eq!((cuts.len(), judged), (0, 1));
}

#[test]
fn an_expired_entry_does_not_allow() {
    let mut m = maps();
    m.grants.insert(
        GrantKey {
            kind: kind::UID,
            segment: 7,
            id: 1000,
        },
        1,
    );
    assert_eq!(run(&tcp_pair(CHILD), &m).len(), 2);
}

#[test]
fn clients_outside_the_attach_point_are_not_judged() {
    assert_eq!(run(&tcp_pair(OUTSIDE), &maps()), vec![]);
}

#[test]
fn unprotected_ports_are_not_touched() {
    let mut m = maps();
    m.ports.clear();
    assert_eq!(run(&tcp_pair(CHILD), &m), vec![]);
}

#[test]
fn a_connected_udp_client_to_a_wildcard_bound_server_is_local() {
    let c = sock(UDP, 1, ("127.0.0.1", 40000), ("127.0.0.1", PORT), 1);
    let server = sock(UDP, 7, ("0.0.0.0", PORT), ("0.0.0.0", 0), 2);
    assert_eq!(run(&[c, server], &maps()), vec![(1, End::Client)]);
    // Without a local socket on the port it is not a local flow.
    assert_eq!(run(&[c], &maps()), vec![]);
}

#[test]
fn a_tcp_connect_in_syn_sent_to_a_local_listener_is_a_local_flow() {
    // The server has not answered (no accepted or request socket yet).
    let c = sock(TCP, 2, ("127.0.0.1", 40000), ("127.0.0.1", PORT), 1);
    let listener = sock(TCP, 10, ("0.0.0.0", PORT), ("0.0.0.0", 0), 2);
    assert_eq!(run(&[c, listener], &maps()), vec![(1, End::Client)]);
    let mut m = maps();
    grant(&mut m, kind::CGROUP, CHILD);
    assert_eq!(run(&[c, listener], &m), vec![]);
    // Without a listener on the port it is not a local flow.
    assert_eq!(run(&[c], &maps()), vec![]);
}

#[test]
fn remote_flows_are_judged_by_peer_entries_on_the_servers_side() {
    let listener = sock(TCP, 10, ("0.0.0.0", PORT), ("0.0.0.0", 0), 4);
    let s = sock(TCP, 1, ("10.0.0.1", PORT), ("10.9.0.2", 50000), 5);
    assert_eq!(run(&[listener, s], &maps()), vec![(5, End::Peer)]);
    let mut m = maps();
    m.peers.insert((7, v4_mapped([10, 9, 0, 2])), u64::MAX);
    assert_eq!(run(&[listener, s], &m), vec![]);
    // A server outside the attach point is judged only when XDP filters peers.
    let mut outside = s;
    outside.cgroup_id = OUTSIDE;
    assert_eq!(run(&[listener, outside], &maps()), vec![]);
    let (cuts, _) = judge(
        &[listener, outside],
        &mut cgroups(),
        &maps(),
        &mut Gids(HashMap::new(), 0),
        true,
    );
    assert_eq!(cuts.len(), 1);
}

#[test]
fn an_outgoing_connection_from_a_protected_port_number_is_not_a_server() {
    // This host connected out; its ephemeral port happens to be protected.
    let s = sock(TCP, 1, ("10.0.0.1", PORT), ("10.9.0.2", 443), 5);
    assert_eq!(run(&[s], &maps()), vec![]);
}

#[test]
fn the_gid_is_looked_up_only_when_uid_and_cgroup_refuse() {
    let mut m = maps();
    grant(&mut m, kind::UID, 1000);
    let mut gids = Gids(HashMap::new(), 0);
    judge(&tcp_pair(CHILD), &mut cgroups(), &m, &mut gids, false);
    assert_eq!(gids.1, 0);
}

#[test]
fn chains_run_from_the_root_to_the_cgroup() {
    assert_eq!(cgroups().chain(CHILD), Some(vec![1, ATTACH, CHILD]));
    assert_eq!(cgroups().chain(OUTSIDE), None);
}

/// The chain a sweep judges stops where the programs stop looking
/// (`MAX_CGROUP_DEPTH` levels from the root), so a grant to a cgroup deeper
/// than that keeps no flow the kernel refuses.
#[test]
fn the_cgroup_chain_stops_at_the_programs_depth() {
    let depth = agent_common::MAX_CGROUP_DEPTH as u64;
    // Root (1) above the attach point (100), then a line of children.
    let mut below = HashMap::from([(ATTACH, 0)]);
    for id in ATTACH + 1..ATTACH + depth + 8 {
        below.insert(id, id - 1);
    }
    let cg = Cgroups::from_links(below, vec![1], ATTACH);
    let deepest = ATTACH + depth + 7;
    let chain = cg.chain(deepest).unwrap();
    assert_eq!(chain.len(), depth as usize);
    assert_eq!(chain[0], 1, "root first");
    assert!(!chain.contains(&deepest));
    // A shallow cgroup keeps its whole chain.
    assert_eq!(cg.chain(ATTACH + 1).unwrap(), vec![1, ATTACH, ATTACH + 1]);
}

/// Holders whose cgroup paths are given: socket inode → path.
struct Paths(HashMap<u32, String>);
impl Owners for Paths {
    fn gid_of(&mut self, _inode: u32) -> Option<u32> {
        None
    }
    fn cgroup_of(&mut self, inode: u32) -> Option<String> {
        self.0.get(&inode).cloned()
    }
}

/// A directory tree standing in for the cgroup2 hierarchy: `mount/attach`
/// with `a/b` below; removed when dropped.
struct Tree(PathBuf);
impl Tree {
    fn new() -> Self {
        let top = std::env::temp_dir().join(format!(
            "pc-sweep-tree-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(top.join("attach/a/b")).unwrap();
        fs::create_dir_all(top.join("elsewhere")).unwrap();
        Self(top)
    }
    fn ino(&self, rel: &str) -> u64 {
        fs::metadata(self.0.join(rel)).unwrap().ino()
    }
}
impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn held(cgroup_id: u64, inode: u32) -> DiagSocket {
    let mut s = sock(
        TCP,
        1,
        ("127.0.0.1", 40000),
        ("127.0.0.1", PORT),
        inode as u64,
    );
    s.cgroup_id = cgroup_id;
    s
}

/// A cgroup nobody walked is placed from its holder's path, however many
/// cgroups exist: the chain runs from the mount through the attach point.
#[test]
fn a_sockets_cgroup_is_learned_from_its_holder_without_a_walk() {
    let t = Tree::new();
    let mut cg = Cgroups::scan(&t.0, &t.0.join("attach")).unwrap();
    let leaf = t.ino("attach/a/b");
    assert_eq!(
        cg.chain(leaf),
        None,
        "nothing below the attach point is walked"
    );
    let mut owners = Paths(HashMap::from([(9, "/attach/a/b".to_string())]));
    let chain = cg.chain_of(&held(leaf, 9), &mut owners).unwrap();
    assert_eq!(
        chain,
        vec![t.ino(""), t.ino("attach"), t.ino("attach/a"), leaf]
    );
    // Learned once, known after.
    assert_eq!(cg.chain(leaf), Some(chain));
}

/// A holder's path that is not the socket's cgroup (it moved, or the
/// socket's cgroup was removed), or is outside the attach point, places
/// nothing; below a child attach point such a socket is not judged.
#[test]
fn a_holder_elsewhere_places_nothing() {
    let t = Tree::new();
    let mut cg = Cgroups::scan(&t.0, &t.0.join("attach")).unwrap();
    let leaf = t.ino("attach/a/b");
    let mut owners = Paths(HashMap::from([
        (1, "/attach/a".to_string()),
        (2, "/elsewhere".to_string()),
        (3, "/attach/../elsewhere".to_string()),
    ]));
    assert_eq!(cg.chain_of(&held(leaf, 1), &mut owners), None);
    let other = t.ino("elsewhere");
    assert_eq!(cg.chain_of(&held(other, 2), &mut owners), None);
    assert_eq!(cg.chain_of(&held(other, 3), &mut owners), None);
    assert_eq!(cg.chain_of(&held(leaf, 4), &mut owners), None, "no holder");
}

/// Attached at the root, a socket whose cgroup cannot be placed is still
/// judged, by the root's entries only: a removed cgroup hides nothing.
#[test]
fn at_the_root_an_unplaceable_cgroup_is_judged_by_the_root_alone() {
    let t = Tree::new();
    let mut cg = Cgroups::scan(&t.0, &t.0).unwrap();
    let mut owners = Paths(HashMap::new());
    assert_eq!(
        cg.chain_of(&held(123_456_789, 1), &mut owners),
        Some(vec![t.ino("")])
    );
    // A cut follows when neither uid nor gid allows it.
    let sockets = tcp_pair(123_456_789);
    let (cuts, judged) = judge(&sockets, &mut cg, &maps(), &mut owners, false);
    assert_eq!((cuts.len(), judged), (2, 1));
}

#[test]
fn a_segment_in_audit_mode_cuts_nothing_and_enforce_cuts_again() {
    let mut m = maps();
    for v in m.ports.values_mut() {
        *v = port_entry::new(7, true);
    }
    assert_eq!(run(&tcp_pair(CHILD), &m), vec![], "audit mode only logs");
    // A remote peer on an audit-mode port is left alone too.
    let listener = sock(TCP, 10, ("0.0.0.0", PORT), ("0.0.0.0", 0), 5);
    let accepted = sock(TCP, 1, ("10.0.0.1", PORT), ("10.9.9.9", 50000), 6);
    assert_eq!(run(&[listener, accepted], &m), vec![]);
    // Back to enforce (the same segment id, the mode bit cleared).
    for v in m.ports.values_mut() {
        *v = port_entry::new(7, false);
    }
    assert_eq!(
        run(&tcp_pair(CHILD), &m),
        vec![(1, End::Client), (2, End::Server)]
    );
    assert_eq!(run(&[listener, accepted], &m), vec![(6, End::Peer)]);
}

/// Strict entries (issue 19): a flow they admit is kept while the host is
/// fresh and cut once "fresh until" has passed, though the entry's own
/// deadline is far ahead; a plain entry with that deadline keeps its flow.
#[test]
fn a_strict_entry_keeps_its_flow_only_while_the_host_is_fresh() {
    let now = clock::boot_ns();
    let hour = 3_600_000_000_000;
    let key = GrantKey {
        kind: kind::UID,
        segment: 7,
        id: 1000,
    };
    let mut m = maps();
    m.grants.insert(key, expiry::strict(now + hour));
    m.fresh = now + hour;
    assert_eq!(run(&tcp_pair(CHILD), &m), vec![], "fresh: kept");
    m.fresh = now.saturating_sub(1);
    assert_eq!(
        run(&tcp_pair(CHILD), &m),
        vec![(1, End::Client), (2, End::Server)],
        "stale: cut at both ends"
    );
    m.grants.insert(key, now + hour);
    assert_eq!(
        run(&tcp_pair(CHILD), &m),
        vec![],
        "plain: staleness ignored"
    );

    // The same for a remote peer's flow.
    let listener = sock(TCP, 10, ("0.0.0.0", PORT), ("0.0.0.0", 0), 4);
    let s = sock(TCP, 1, ("10.0.0.1", PORT), ("10.9.0.2", 50000), 5);
    let mut m = maps();
    m.peers
        .insert((7, v4_mapped([10, 9, 0, 2])), expiry::strict(now + hour));
    m.fresh = now + hour;
    assert_eq!(run(&[listener, s], &m), vec![]);
    m.fresh = 0;
    assert_eq!(run(&[listener, s], &m), vec![(5, End::Peer)]);
}

/// A holder source that notes whether the agent's lock was held while it
/// was read (the stand-in for /proc).
struct Watched {
    lock: std::sync::Arc<Mutex<Maps>>,
    path: String,
    gid: u32,
    reads: usize,
    read_under_lock: bool,
}
impl Watched {
    fn note(&mut self) {
        self.reads += 1;
        self.read_under_lock |= self.lock.try_lock().is_err();
    }
}
impl Owners for &mut Watched {
    fn gid_of(&mut self, _inode: u32) -> Option<u32> {
        self.note();
        Some(self.gid)
    }
    fn cgroup_of(&mut self, _inode: u32) -> Option<String> {
        self.note();
        Some(self.path.clone())
    }
}

/// The sweep reads the sockets' holders (/proc: tens of milliseconds on a
/// busy host) only while the agent's lock is free, and decides as one
/// judging with /proc read under the lock would: here a client whose
/// cgroup must be learned from its holder and which only its holder's gid
/// lets in (three runs: cgroup unknown, then gid unknown, then decided).
#[test]
fn holders_are_read_without_the_lock_and_decide_as_before() {
    let t = Tree::new();
    let leaf = t.ino("attach/a/b");
    for (gid, cut) in [(4242, false), (7, true)] {
        let mut m = maps();
        grant(&mut m, kind::GID, 4242);
        let lock = std::sync::Arc::new(Mutex::new(m));
        let mut client = held(leaf, 9);
        client.cookie = 1;
        let mut server = sock(TCP, 1, ("127.0.0.1", PORT), ("127.0.0.1", 40000), 2);
        server.cgroup_id = OUTSIDE;
        let mut snap = Snapshot {
            sockets: vec![client, server],
            cgroups: Cgroups::scan(&t.0, &t.0.join("attach")).unwrap(),
            all_remote: false,
        };
        let mut source = Watched {
            lock: lock.clone(),
            path: "/attach/a/b".into(),
            gid,
            reads: 0,
            read_under_lock: false,
        };
        let (cuts, judged) =
            snap.judge_locked(&lock, &mut source, |m, snap, owners| snap.judge(m, owners));
        assert_eq!(judged, 1);
        let cuts: Vec<_> = cuts.iter().map(|c| (c.socket.cookie, c.end)).collect();
        let want = if cut {
            vec![(1, End::Client), (2, End::Server)]
        } else {
            vec![]
        };
        assert_eq!(cuts, want, "holder gid {gid}");
        assert_eq!(source.reads, 2, "the cgroup and the gid, once each");
        assert!(!source.read_under_lock, "/proc read under the agent's lock");
    }
}
