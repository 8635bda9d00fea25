//! Unit tests of the audit log: chain, rotation, backlog, verify.
use super::{verify::verify, *};
use serde_json::json;

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pc-audit-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir.join("audit.jsonl")
}

#[test]
fn chain_verifies_and_survives_reopen() {
    let p = tmp("reopen");
    let mut log = AuditLog::open(&p).unwrap();
    log.record_fields("grant", fields(json!({"grant_id": 1})))
        .unwrap();
    drop(log);
    let mut log = AuditLog::open(&p).unwrap();
    log.record_fields("revoke", fields(json!({"grant_id": 1})))
        .unwrap();
    assert_eq!(verify(&p).unwrap(), Ok(2));
}

#[test]
fn tampering_is_found_at_the_right_line() {
    let p = tmp("tamper");
    let mut log = AuditLog::open(&p).unwrap();
    for i in 0..4 {
        log.record_fields("grant", fields(json!({"grant_id": i})))
            .unwrap();
    }
    let text = fs::read_to_string(&p).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    // A changed byte.
    let edited = text.replacen("\"grant_id\":2", "\"grant_id\":9", 1);
    fs::write(&p, edited).unwrap();
    let b = verify(&p).unwrap().unwrap_err();
    assert_eq!(b.line, 3);
    assert!(b.why.contains("modified"), "{b}");

    // A deleted line.
    let deleted = [lines[0], lines[1], lines[3]].join("\n");
    fs::write(&p, deleted).unwrap();
    assert_eq!(verify(&p).unwrap().unwrap_err().line, 3);

    // Two lines swapped.
    let swapped = [lines[0], lines[2], lines[1], lines[3]].join("\n");
    fs::write(&p, swapped).unwrap();
    assert_eq!(verify(&p).unwrap().unwrap_err().line, 2);

    // The first line deleted: the chain no longer starts at genesis.
    let headless = lines[1..].join("\n");
    fs::write(&p, headless).unwrap();
    let b = verify(&p).unwrap().unwrap_err();
    assert_eq!(b.line, 1);
    assert!(b.to_string().contains("grant at "), "{b}");

    // A byte that is not UTF-8 on line 3: named there, not an I/O error
    // without a place (issue 20).
    let mut bytes = [lines[0], lines[1]].join("\n").into_bytes();
    bytes.extend_from_slice(b"\n{\"event\":\"gr\xffnt\"}\n");
    bytes.extend_from_slice(lines[3].as_bytes());
    fs::write(&p, bytes).unwrap();
    let b = verify(&p).unwrap().unwrap_err();
    assert_eq!(
        b.to_string(),
        format!(
            "{}:3: byte 13 of the line is not UTF-8 (the record was altered or damaged)",
            p.display()
        )
    );
}

fn rotating(p: &Path, max_bytes: u64, keep: usize) -> AuditLog {
    AuditLog::open_with(p, Rotation { max_bytes, keep }).unwrap()
}

#[test]
fn rotation_keeps_one_chain_across_files() {
    let p = tmp("rotate");
    let mut log = rotating(&p, 600, 3);
    for i in 0..12 {
        log.record_fields(
            "grant",
            fields(json!({"grant_id": i, "pad": "x".repeat(100)})),
        )
        .unwrap();
    }
    assert!(rotated_path(&p, 3).exists());
    assert!(!rotated_path(&p, 4).exists(), "keep = 3");
    for f in chain_files(&p) {
        assert!(fs::metadata(&f).unwrap().len() <= 600, "{}", f.display());
    }
    // Each newer file opens with a rotate record chained to the older file.
    let first: Value =
        serde_json::from_str(fs::read_to_string(&p).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], ROTATE);
    let older = fs::read_to_string(rotated_path(&p, 1)).unwrap();
    let older_last: Value = serde_json::from_str(older.lines().last().unwrap()).unwrap();
    assert_eq!(first["prev"], older_last["hash"]);

    let report = verify_chain(&p).unwrap().unwrap();
    assert_eq!(report.files.len(), 4);
    assert_eq!(report.last_hash.as_deref(), Some(log.last_hash()));

    // Reopening continues the chain.
    drop(log);
    let mut log = rotating(&p, 600, 3);
    log.record_fields("revoke", fields(json!({"grant_id": 1})))
        .unwrap();
    assert!(verify_chain(&p).unwrap().is_ok());

    // A rotated file removed from the middle breaks the chain at the
    // first record of the file after the gap.
    fs::remove_file(rotated_path(&p, 2)).unwrap();
    fs::rename(rotated_path(&p, 3), rotated_path(&p, 2)).unwrap();
    let b = verify_chain(&p).unwrap().unwrap_err();
    assert_eq!((b.path.clone(), b.line), (rotated_path(&p, 1), 1), "{b}");
}

#[test]
fn an_interrupted_rotation_is_completed_on_open() {
    let p = tmp("interrupted");
    let mut log = AuditLog::open(&p).unwrap();
    log.record_fields("grant", fields(json!({"grant_id": 1})))
        .unwrap();
    drop(log);
    // The agent died between the rename and the rotate record.
    fs::rename(&p, rotated_path(&p, 1)).unwrap();
    let mut log = rotating(&p, 1 << 20, 2);
    log.record_fields("revoke", fields(json!({"grant_id": 1})))
        .unwrap();
    let text = fs::read_to_string(&p).unwrap();
    assert!(text
        .lines()
        .next()
        .unwrap()
        .contains("\"event\":\"rotate\""));
    let report = verify_chain(&p).unwrap().unwrap();
    assert_eq!(report.files.iter().map(|f| f.1).sum::<usize>(), 3);
}

#[test]
fn records_that_cannot_wait_are_refused_and_the_rest_written_late() {
    let p = tmp("backlog");
    let mut log = AuditLog::open(&p).unwrap();
    log.record_fields("grant", fields(json!({"grant_id": 1})))
        .unwrap();
    fs::remove_file(&p).unwrap();
    fs::create_dir(&p).unwrap();
    log.file = None;
    assert!(log
        .record_fields("revoke", fields(json!({"grant_id": 1})))
        .is_err());
    assert!(log
        .record_fields("grant", fields(json!({"grant_id": 2})))
        .is_err());
    assert_eq!(log.backlog(), 1, "the grant is refused, not queued");
    fs::remove_dir(&p).unwrap();
    // The original file is gone (a new one chains on): write into it and
    // check the order and the marks.
    log.retry();
    assert_eq!(log.backlog(), 0);
    assert!(log.failing().is_none());
    log.record_fields("grant", fields(json!({"grant_id": 3})))
        .unwrap();
    let recs: Vec<Value> = fs::read_to_string(&p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["event"], "revoke");
    assert_eq!(recs[0]["recorded_late"], true);
    assert!(recs[0]["happened_at"].is_string());
    assert_eq!(recs[1]["grant_id"], 3);
    assert_eq!(recs[1]["prev"], recs[0]["hash"]);
}

#[test]
fn a_torn_last_line_does_not_stop_the_log_and_is_reported() {
    let p = tmp("torn");
    let mut log = AuditLog::open(&p).unwrap();
    log.record_fields("grant", fields(json!({"grant_id": 1})))
        .unwrap();
    drop(log);
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"event\":\"rev").unwrap();
    let mut log = AuditLog::open(&p).unwrap();
    log.record_fields("revoke", fields(json!({"grant_id": 1})))
        .unwrap();
    let text = fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    let b = verify(&p).unwrap().unwrap_err();
    assert_eq!((b.line, b.why.as_str()), (2, "not a JSON object"));
}

#[test]
fn a_failed_write_leaves_the_chain_and_remembers_why() {
    let p = tmp("fail");
    let mut log = AuditLog::open(&p).unwrap();
    log.record_fields("grant", fields(json!({"grant_id": 1})))
        .unwrap();
    // A directory where the file should be: every reopen fails.
    fs::remove_file(&p).unwrap();
    fs::create_dir(&p).unwrap();
    log.file = None;
    let head = log.last_hash().to_string();
    assert!(log
        .record_fields("grant", fields(json!({"grant_id": 2})))
        .is_err());
    assert_eq!(log.last_hash(), head);
    assert_eq!(log.write_failures(), 1);
    assert!(
        log.failing().unwrap().contains("audit.jsonl"),
        "{:?}",
        log.failing()
    );
    fs::remove_dir(&p).unwrap();
    log.record_fields("grant", fields(json!({"grant_id": 3})))
        .unwrap();
    assert!(log.failing().is_none());
}
