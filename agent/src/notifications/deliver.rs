//! Delivery: one thread and one bounded queue per sink, so a slow or dead
//! sink delays only its own events, and never the agent, which only
//! pushes onto the queues ([`Queue::push`], constant time under a lock no
//! delivery holds).
//!
//! Each event is tried at most [`ATTEMPTS`] times, waiting [`backoff`]
//! between tries and giving up once the next try would start more than
//! [`GIVE_UP_AFTER`] after the first; an attempt is bounded by
//! [`CONNECT_TIMEOUT`] and [`REQUEST_TIMEOUT`] (webhooks) or
//! [`COMMAND_TIMEOUT`] (commands, killed with their process group after
//! it). When a queue is full the oldest event is dropped: the newest are
//! the ones a person can still act on. Drops, give-ups, retries and
//! successes are counted ([`super::Counters`]).
use std::{
    collections::VecDeque,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tracing::warn;

use super::{Prepared, Shared, Target};

/// Events waiting per sink.
pub(crate) const QUEUE: usize = 256;
/// Tries per event, the first included.
pub(crate) const ATTEMPTS: u32 = 6;
/// Wait after the first failed try; doubled after each, up to [`MAX_DELAY`].
pub(crate) const FIRST_DELAY: Duration = Duration::from_secs(1);
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(30);
/// No try starts later than this after the event's first.
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
/// Webhooks: the TCP (and TLS) connection, and the whole request.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands: from start to exit.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait after failed try number `attempt` (1-based): 1 s, 2 s, 4 s,
/// ... capped at [`MAX_DELAY`].
pub(crate) fn backoff(attempt: u32) -> Duration {
    let doubled = FIRST_DELAY.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    doubled.min(MAX_DELAY)
}

/// A sink's queue: pushed by the audit writer, popped by the sink's thread.
#[derive(Default)]
pub(crate) struct Queue {
    items: Mutex<VecDeque<Arc<Prepared>>>,
    ready: Condvar,
}

impl Queue {
    /// Adds an event; returns whether the oldest had to be dropped.
    pub(crate) fn push(&self, item: Arc<Prepared>) -> bool {
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = items.len() >= QUEUE;
        if dropped {
            items.pop_front();
        }
        items.push_back(item);
        self.ready.notify_one();
        dropped
    }

    pub(crate) fn len(&self) -> usize {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn pop(&self) -> Arc<Prepared> {
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(item) = items.pop_front() {
                return item;
            }
            items = self
                .ready
                .wait(items)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The sink's thread: takes events one by one and delivers each.
pub(crate) fn run(target: Target, queue: Arc<Queue>, shared: Arc<Shared>) {
    let http = match target {
        Target::Webhook { .. } | Target::WebhookFile { .. } => Some(http_agent()),
        Target::Command { .. } => None,
    };
    loop {
        let item = queue.pop();
        let body = match (&target, &item.slack) {
            (
                Target::Webhook { slack: true, .. } | Target::WebhookFile { slack: true, .. },
                Some(slack),
            ) => slack.as_bytes(),
            _ => item.json.as_bytes(),
        };
        let first = Instant::now();
        let mut attempt = 1;
        let outcome = loop {
            let tried = match &target {
                Target::Webhook { url, .. } => post(http.as_ref().expect("webhook"), url, body),
                Target::Command { path } => run_command(path, body),
                // Read into a `Webhook` at start (`read_url_files`).
                Target::WebhookFile { .. } => Err("the url_file was not read".into()),
            };
            let Err(why) = tried else { break Ok(()) };
            let wait = backoff(attempt);
            if attempt >= ATTEMPTS || first.elapsed() + wait > GIVE_UP_AFTER {
                break Err(why);
            }
            shared.counters.retried();
            std::thread::sleep(wait);
            attempt += 1;
        };
        match outcome {
            Ok(()) => shared.counters.sent(),
            Err(why) => {
                warn!(sink = %target, event = %item.class, attempts = attempt, error = %why,
                    "notification not delivered; giving up on this event");
                shared.failed(&target, &why);
            }
        }
    }
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        // A status is an answer, judged below; a redirect is not followed
        // (a webhook that moved is a configuration to fix).
        .http_status_as_error(false)
        .max_redirects(0)
        // Where the event goes is agent.toml's to say, not the environment's.
        .proxy(None)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// One POST; a 2xx answer is a delivery. Errors name the webhook only as
/// [`super::config::redact`] shows it.
fn post(http: &ureq::Agent, url: &str, body: &[u8]) -> Result<(), String> {
    match http
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
    {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("answered HTTP {}", resp.status().as_u16())),
        Err(e) => Err(scrub(&e.to_string(), url)),
    }
}

/// An error message without the URL's secret parts.
fn scrub(message: &str, url: &str) -> String {
    let mut out = message.replace(url, &super::config::redact(url));
    if let Some((_, rest)) = url.split_once("://") {
        if let Some(i) = rest.find(['/', '?', '#']) {
            let tail = &rest[i..];
            if tail.len() > 1 {
                out = out.replace(tail, "/…");
            }
        }
    }
    out
}

/// Runs the command with the event on its standard input: no shell, an
/// empty environment but a fixed PATH, `/` as working directory, in a
/// process group of its own that is killed at [`COMMAND_TIMEOUT`]. Exit
/// status 0 is a delivery.
fn run_command(path: &Path, body: &[u8]) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(path)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let pid = child.id() as i32;
    // The event is a few KiB, well under a pipe's buffer: the write does
    // not wait for the command to read. A command that exits without
    // reading it is judged by its exit status.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body);
    }
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("exited with {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                // SAFETY: kill(2) on the process group this function made
                // (the child is its leader, not yet reaped: the id is ours).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "did not finish within {}s; killed",
                    COMMAND_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_one_second_up_to_its_cap_and_the_tries_are_bounded() {
        let waits: Vec<u64> = (1..ATTEMPTS).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16]);
        assert_eq!(backoff(7), MAX_DELAY);
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
        // The whole schedule, each try at its timeout, fits the give-up bound.
        let worst: Duration = waits
            .iter()
            .map(|s| Duration::from_secs(*s))
            .sum::<Duration>()
            + REQUEST_TIMEOUT * ATTEMPTS;
        assert!(worst <= GIVE_UP_AFTER, "{worst:?}");
    }

    #[test]
    fn a_full_queue_drops_its_oldest_event() {
        let q = Queue::default();
        let item = |n: usize| {
            Arc::new(Prepared {
                class: super::super::EventClass::Request,
                json: n.to_string(),
                slack: None,
            })
        };
        for n in 0..QUEUE {
            assert!(!q.push(item(n)));
        }
        assert!(q.push(item(QUEUE)));
        assert_eq!(q.len(), QUEUE);
        assert_eq!(q.pop().json, "1");
    }

    #[test]
    fn error_messages_do_not_carry_the_url_secret() {
        let url = "https://hooks.example.com/services/T0/B0/s3cret";
        let m = scrub(&format!("io: connection refused for {url}"), url);
        assert!(!m.contains("s3cret"), "{m}");
        let m = scrub("GET /services/T0/B0/s3cret failed", url);
        assert!(!m.contains("s3cret"), "{m}");
    }

    #[test]
    fn a_command_gets_the_event_on_stdin_with_a_clean_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = dir.path().join("sink");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat > {0}\nenv | grep -c . >> {0}.env\nexit 0\n",
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        run_command(&script, b"{\"event\":\"request\"}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"event\":\"request\"}"
        );
        // PATH, and what sh itself sets (PWD, SHLVL, _): nothing of ours.
        let env_lines: u32 = std::fs::read_to_string(out.with_extension("env"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(env_lines <= 4, "{env_lines}");
        let failing = dir.path().join("failing");
        std::fs::write(&failing, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(
            &failing,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let e = run_command(&failing, b"{}").unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
        let e = run_command(Path::new("/nonexistent/sink"), b"{}").unwrap_err();
        assert!(e.contains("cannot run it"), "{e}");
    }
}
