//! Issue 20, "Unit restarts": a cgroup re-created at a path a `cgroup:`
//! (or `unit:`) identity names is covered by the kernel's `cgroup_mkdir`
//! tracepoint before `mkdir` returns, so a process moved into it at once
//! connects without EPERM; without the hook (the agent's own inotify →
//! re-resolve path alone) such first connects are refused.
use std::{fs, net::SocketAddr, path::Path, thread, time::Duration};

use portcullis_tests::*;

const CYCLES: usize = 20;

/// rmdir, retried while the last process's exit is still being accounted
/// (EBUSY), bounded.
fn rmdir(path: &Path) {
    for _ in 0..250 {
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                thread::sleep(Duration::from_millis(4))
            }
            Err(e) => panic!("rmdir {}: {e}", path.display()),
        }
    }
    panic!("rmdir {}: still busy after 1 s", path.display());
}

/// Runs `CYCLES` restarts of the `app` cgroup below a test attach point
/// that allows `cgroup:<attach>/app` on a protected port, each followed by
/// an immediate connect from a fresh process moved into the new cgroup.
/// Returns how many of those first connects were refused with EPERM.
fn first_connect_refusals(hook: bool) -> usize {
    require_root();
    let cg = TestCgroup::new();
    let app = cg.child("app");
    let server = EchoServer::tcp("127.0.0.1:0");
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let policy = format!(
        "[segment.db]\nports = [\"{}/tcp\"]\nallow = [\"cgroup:{}/app\"]\n",
        server.port(),
        cg.rel
    );
    let mut builder = Agent::builder(&policy, &cg.path);
    if !hook {
        builder = builder.env("PORTCULLIS_NO_MKDIR_COVER", "1");
    }
    let _agent = builder.start();
    let other = cg.child("other");
    assert_eq!(
        As::root_in(&other).tcp(addr),
        Outcome::eperm(),
        "the port is protected"
    );
    let mut refused = 0;
    for cycle in 0..CYCLES {
        // The agent has the current cgroup (so the cover holds its path).
        assert!(
            eventually(Duration::from_secs(10), || As::root_in(&app)
                .tcp(addr)
                .is_ok()),
            "cycle {cycle}: the agent never covered {}",
            app.display()
        );
        rmdir(&app);
        fs::create_dir(&app).unwrap();
        match As::root_in(&app).tcp(addr) {
            Outcome::Ok => {}
            o if o == Outcome::eperm() => refused += 1,
            o => panic!("cycle {cycle}: unexpected outcome {o:?}"),
        }
    }
    eprintln!("unit_restart: hook={hook}: {refused} of {CYCLES} immediate first connects refused");
    refused
}

#[test]
fn recreated_cgroup_is_covered_before_its_first_connect() {
    assert_eq!(first_connect_refusals(true), 0);
}

/// The test above can fail: with the tracepoint left unattached, the same
/// loop sees the old behaviour (the window before the agent re-resolves).
#[test]
fn without_the_mkdir_hook_first_connects_are_refused() {
    assert!(first_connect_refusals(false) > 0);
}
