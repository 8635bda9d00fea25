use std::fs;

use super::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn trailing_waits_for_quiet_but_not_forever() {
    let t0 = Instant::now();
    let mut d = Debounce::new(
        Edge::Trailing {
            max_wait: 1000 * MS,
        },
        200 * MS,
    );
    assert_eq!(d.due(), None);
    assert!(!d.note(t0));
    assert_eq!(d.due(), Some(t0 + 200 * MS));
    // A write then a rename 5 ms later: still one action, 200 ms after the last.
    assert!(!d.note(t0 + 5 * MS));
    assert_eq!(d.due(), Some(t0 + 205 * MS));
    // A writer that never stops is still acted on after max_wait.
    for i in 1..10 {
        d.note(t0 + i * 150 * MS);
    }
    assert_eq!(d.due(), Some(t0 + 1000 * MS));
    d.fired(t0 + 1000 * MS);
    assert_eq!(d.due(), None);
    // The next change starts a new window.
    assert!(!d.note(t0 + 1100 * MS));
    assert_eq!(d.due(), Some(t0 + 1300 * MS));
}

#[test]
fn leading_acts_at_once_then_once_per_window() {
    let t0 = Instant::now();
    let mut d = Debounce::new(Edge::Leading, 50 * MS);
    assert!(d.note(t0), "the first change is acted on at once");
    d.fired(t0);
    // More changes inside the window: one trailing action at its end.
    assert!(!d.note(t0 + 10 * MS));
    assert!(!d.note(t0 + 20 * MS));
    assert_eq!(d.due(), Some(t0 + 50 * MS));
    d.fired(t0 + 50 * MS);
    assert_eq!(d.due(), None);
    // After a quiet window, at once again.
    assert!(d.note(t0 + 200 * MS));
}

#[tokio::test]
async fn policy_watch_sees_a_write_then_rename_as_one_change() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    let mut watch = PolicyWatch::new(&policies);
    // As an editor saves: write a temporary file, rename it over the original.
    fs::write(policies.join(".db.toml.tmp"), "x").unwrap();
    fs::rename(policies.join(".db.toml.tmp"), policies.join("db.toml")).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("a change within 5 s");
    // Both events were consumed by that one change.
    assert!(
        tokio::time::timeout(3 * POLICY_DEBOUNCE, watch.changed())
            .await
            .is_err(),
        "a second change was reported for one save"
    );
    // The directory replaced wholesale is followed.
    fs::rename(&policies, dir.path().join("old")).unwrap();
    fs::create_dir(&policies).unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("the directory's replacement is seen");
    fs::write(policies.join("new.toml"), "y").unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("a file in the new directory is seen");
}

#[tokio::test]
async fn unrelated_files_next_to_the_directory_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    let mut watch = PolicyWatch::new(&policies);
    fs::write(dir.path().join("agent.toml"), "x").unwrap();
    assert!(
        tokio::time::timeout(3 * POLICY_DEBOUNCE, watch.changed())
            .await
            .is_err(),
        "a file beside the policy directory counted as a change"
    );
}

/// A plain directory tree stands in for cgroupfs here: the watch only
/// uses directory events. The end-to-end tests use real cgroups.
#[tokio::test]
async fn cgroup_watch_follows_new_directories_down_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    fs::create_dir_all(root.join("a/b")).unwrap();
    let mut watch = CgroupWatch::new(&root);
    assert_eq!(watch.watched(), 3);
    let within = Duration::from_secs(5);
    fs::create_dir(root.join("a/b/c")).unwrap();
    tokio::time::timeout(within, watch.changed()).await.unwrap();
    // The new directory is watched: a change below it is seen too.
    fs::create_dir(root.join("a/b/c/d")).unwrap();
    tokio::time::timeout(within, watch.changed()).await.unwrap();
    assert_eq!(watch.watched(), 5);
    fs::remove_dir(root.join("a/b/c/d")).unwrap();
    tokio::time::timeout(within, watch.changed()).await.unwrap();
    // Files are not cgroups.
    fs::write(root.join("a/file"), "x").unwrap();
    assert!(tokio::time::timeout(3 * CGROUP_DEBOUNCE, watch.changed())
        .await
        .is_err());
}

#[tokio::test]
async fn cgroup_watch_stops_at_its_depth() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut deep = root.clone();
    for i in 0..CGROUP_WATCH_DEPTH + 2 {
        deep = deep.join(format!("l{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    let watch = CgroupWatch::new(&root);
    // The root and the levels below it, down to the depth limit.
    assert_eq!(watch.watched(), CGROUP_WATCH_DEPTH);
}
