use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::actor::Actor;
use crate::state::Grant;

fn grant(id: u64) -> Grant {
    Grant {
        id,
        segment: "db".into(),
        identity: "user:nobody".parse().unwrap(),
        created_unix_ms: 1_000,
        expires_unix_ms: 61_000,
        expires_boot_ns: 5,
        boot_id: "b".into(),
        actor: Actor {
            uid: 0,
            user: Some("root".into()),
            pid: Some(1),
        },
        reason: Some("because".into()),
        request_id: None,
        fleet: None,
    }
}

fn dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    d
}

fn open(d: &Path) -> (Journal, Opened) {
    Journal::open(d).unwrap()
}

fn g(id: u64, prev: Option<&str>) -> Op {
    Op::Grant {
        grant: grant(id),
        audit_prev: prev.map(str::to_string),
    }
}

#[test]
fn changes_survive_a_reopen_with_ids_reasons_and_names() {
    let d = dir();
    let (mut j, o) = open(d.path());
    assert!(o.fresh);
    j.append(&g(1, None)).unwrap();
    j.append(&g(2, Some("h2"))).unwrap();
    j.append(&Op::End {
        grant_id: 1,
        audit_prev: None,
        event: None,
    })
    .unwrap();
    drop(j);
    let (_, o) = open(d.path());
    assert!(!o.fresh);
    assert_eq!(o.memory.grants.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(o.memory.grants[&2].identity.to_string(), "user:nobody");
    assert_eq!(o.memory.grants[&2].reason.as_deref(), Some("because"));
    assert_eq!(o.memory.next_id, 3);
    // The last change owes nothing: an end with no audit head.
    assert!(o.last.is_none());
    let mode = fs::metadata(d.path().join(LOG_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_last_change_that_owes_an_audit_record_is_reported() {
    let d = dir();
    let (mut j, _) = open(d.path());
    j.append(&g(7, Some("head"))).unwrap();
    drop(j);
    let (_, o) = open(d.path());
    assert_eq!(o.last.as_ref().and_then(Op::audit_prev), Some("head"));
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_journal_goes_on() {
    let d = dir();
    let (mut j, _) = open(d.path());
    j.append(&g(1, None)).unwrap();
    j.append(&g(2, None)).unwrap();
    drop(j);
    let log = d.path().join(LOG_FILE);
    let bytes = fs::read(&log).unwrap();
    fs::write(&log, &bytes[..bytes.len() - 3]).unwrap();
    let (mut j, o) = open(d.path());
    assert!(o.damaged.is_none());
    assert_eq!(o.memory.grants.keys().copied().collect::<Vec<_>>(), vec![1]);
    j.append(&g(3, None)).unwrap();
    drop(j);
    let (_, o) = open(d.path());
    assert_eq!(
        o.memory.grants.keys().copied().collect::<Vec<_>>(),
        vec![1, 3]
    );
}

#[test]
fn damage_is_set_aside_and_reported() {
    let d = dir();
    let (mut j, _) = open(d.path());
    j.append(&g(1, None)).unwrap();
    j.append(&g(2, None)).unwrap();
    drop(j);
    let log = d.path().join(LOG_FILE);
    let mut bytes = fs::read(&log).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x20;
    fs::write(&log, &bytes).unwrap();
    let (_, o) = open(d.path());
    let (why, aside) = o.damaged.expect("damage reported");
    assert!(why.contains("checksum"), "{why}");
    assert_eq!(fs::read(&aside).unwrap(), bytes);
    assert_eq!(o.memory.grants.keys().copied().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn compaction_keeps_the_state_and_empties_the_log() {
    let d = dir();
    let (mut j, _) = open(d.path());
    let mut m = Memory::default();
    for id in 1..=50 {
        let op = g(id, None);
        j.append(&op).unwrap();
        m.apply(&op);
    }
    for id in 1..=40 {
        let op = Op::End {
            grant_id: id,
            audit_prev: None,
            event: None,
        };
        j.append(&op).unwrap();
        m.apply(&op);
    }
    j.compact(&m).unwrap();
    assert_eq!(fs::metadata(d.path().join(LOG_FILE)).unwrap().len(), 0);
    j.append(&g(51, None)).unwrap();
    drop(j);
    let (_, o) = open(d.path());
    assert_eq!(o.memory.grants.len(), 11);
    assert_eq!(o.memory.next_id, 52);
}

#[test]
fn a_state_file_of_an_earlier_version_is_imported_once() {
    let d = dir();
    let legacy = d.path().join(LEGACY_FILE);
    let g = serde_json::to_string(&grant(8)).unwrap();
    fs::write(
        &legacy,
        format!(r#"{{"format":1,"next_id":12,"segment_ids":{{"db":3}},"grants":[{g}]}}"#),
    )
    .unwrap();
    let (_, o) = open(d.path());
    assert_eq!(
        o.migrated.as_deref(),
        Some(&*d.path().join("state.json.migrated"))
    );
    assert_eq!(o.memory.next_id, 12);
    assert_eq!(o.memory.segment_ids["db"], 3);
    assert_eq!(o.memory.grants[&8].reason.as_deref(), Some("because"));
    assert!(!legacy.exists());
    // The second start reads the journal, not the kept copy.
    let (_, o) = open(d.path());
    assert!(o.migrated.is_none());
    assert_eq!(o.memory.grants.len(), 1);
}

#[test]
fn a_journal_others_may_write_is_refused() {
    let d = dir();
    let (mut j, _) = open(d.path());
    j.append(&g(1, None)).unwrap();
    drop(j);
    let log = d.path().join(LOG_FILE);
    fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
    let e = Journal::open(d.path()).err().expect("refused");
    assert!(e.to_string().contains("writable by others"), "{e}");
    fs::set_permissions(&log, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let e = Journal::open(d.path()).err().expect("refused");
    assert!(e.to_string().contains("mode 0777"), "{e}");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&log, Some(65534), None).unwrap();
    let e = Journal::open(d.path()).err().expect("refused");
    assert!(e.to_string().contains("uid 65534"), "{e}");
}

#[test]
fn an_unwritable_journal_refuses_and_queues_then_catches_up() {
    let d = dir();
    let (mut j, _) = open(d.path());
    j.append(&g(1, None)).unwrap();
    // Something that cannot be opened for appending where the log was.
    let log = d.path().join(LOG_FILE);
    let kept = d.path().join("kept");
    fs::rename(&log, &kept).unwrap();
    fs::create_dir(&log).unwrap();
    assert!(j.append(&g(2, None)).is_err());
    assert!(j.failing().is_some());
    let end = Op::End {
        grant_id: 1,
        audit_prev: None,
        event: None,
    };
    assert!(matches!(
        j.append_or_queue(end),
        Err(JournalError::Queued { .. })
    ));
    assert_eq!(j.queued(), 1);
    fs::remove_dir(&log).unwrap();
    fs::rename(&kept, &log).unwrap();
    j.retry();
    assert!(j.failing().is_none());
    assert_eq!(j.queued(), 0);
    drop(j);
    let (_, o) = open(d.path());
    // The refused grant never reached the file; the queued end did.
    assert!(o.memory.grants.is_empty());
    assert_eq!(o.memory.next_id, 2);
}

#[test]
fn a_snapshot_holds_its_grants_in_a_binary_table_and_a_json_one_is_still_read() {
    let d = dir();
    let (mut j, _) = open(d.path());
    let mut memory = Memory {
        next_id: 9,
        ..Memory::default()
    };
    for id in [3, 5, 8] {
        memory.grants.insert(id, grant(id));
    }
    j.compact(&memory).unwrap();
    let bytes = fs::read(d.path().join(SNAP_FILE)).unwrap();
    let f = frames(&bytes);
    assert_eq!(f.payloads.len(), 2, "a JSON header and the grant table");
    let header: serde_json::Value = serde_json::from_slice(f.payloads[0]).unwrap();
    assert_eq!(header["format"], 2);
    assert_eq!(header["memory"]["grants"], serde_json::json!({}));
    drop(j);
    assert_eq!(open(d.path()).1.memory, memory);

    // The format of earlier versions: everything in one JSON frame.
    let old = serde_json::json!({ "format": 1, "memory": memory });
    fs::write(
        d.path().join(SNAP_FILE),
        frame(&serde_json::to_vec(&old).unwrap()),
    )
    .unwrap();
    assert_eq!(open(d.path()).1.memory, memory);

    // Format 2 without its table, or format 1 with one, is damage.
    let header_only = frame(f.payloads[0]);
    fs::write(d.path().join(SNAP_FILE), header_only).unwrap();
    let (_, o) = open(d.path());
    assert!(o.damaged.unwrap().0.contains("format 2 with 1 records"));
}

/// A staged change (a revoke's end) is in the file before it is committed,
/// so that an agent crash between the kernel's refusal and the fdatasync
/// keeps it; once committed, the log goes on after it.
#[test]
fn a_staged_end_is_written_before_its_commit_and_the_log_goes_on_after_it() {
    let d = dir();
    let (mut j, _) = open(d.path());
    j.append(&g(1, None)).unwrap();
    j.append(&g(2, None)).unwrap();
    let staged = j
        .stage(Op::End {
            grant_id: 1,
            audit_prev: None,
            event: None,
        })
        .unwrap();
    // What an agent crash here leaves: the frame, written, not synced.
    let (_, crashed) = open(d.path());
    assert_eq!(
        crashed.memory.grants.keys().copied().collect::<Vec<_>>(),
        vec![2]
    );
    j.commit(staged).unwrap();
    j.append(&g(3, None)).unwrap();
    drop(j);
    let (_, o) = open(d.path());
    assert_eq!(
        o.memory.grants.keys().copied().collect::<Vec<_>>(),
        vec![2, 3]
    );
}
