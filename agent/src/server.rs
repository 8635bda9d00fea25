//! The agent process: start-up order, the control socket, timers, signals
//! and shutdown.
//!
//! Start-up: policy is parsed and validated before anything touches the
//! kernel; the agent's locks are taken (one agent per pins, state, audit log
//! and socket; see `lock`); then programs are loaded and attached (replacing
//! a previous run's links without a gap), the saved grants restored, and
//! only then is the control socket opened. Every 2 s heartbeat checks enforcement against
//! the kernel and repairs it (`agent::enforce`); the watchdog is pinged only
//! while it is whole. Stopping the agent never detaches anything: the
//! kernel keeps enforcing from the pinned maps until `portcullis uninstall`.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};
use tracing::{error, info, warn};

use crate::{
    agent::{Agent, Paths},
    audit::AuditLog,
    cgroupfs::Hierarchy,
    connlimit,
    control::{self, PeerCred, Refusal, RefusalCode, Reply, Request, Response},
    dataplane::{Dataplane, DataplaneConfig},
    hostaddrs::{self, AddressEvents},
    policy::{self, HostCheck, SystemHost},
    resolve::Resolver,
    watch,
};

/// Everything `portcullis agent` is told.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub policies: PathBuf,
    pub socket: PathBuf,
    /// File mode of the control socket.
    pub socket_mode: u32,
    /// Group owning the control socket (members may connect).
    pub socket_group: Option<String>,
    /// This agent's bpffs directory.
    pub bpffs: PathBuf,
    /// Filesystem path of the cgroup to attach to; the cgroup2 root when `None`.
    pub cgroup: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub audit_log: PathBuf,
    pub max_grants: u32,
    pub max_peers: u32,
    /// Interfaces where XDP enforces `peer:` identities for remote traffic.
    pub xdp_ifaces: Vec<String>,
    /// How long a pending access request waits for an approver.
    pub request_expiry: Duration,
    /// How often unit and cgroup identities are re-resolved even without a
    /// cgroup event (the safety net under the cgroup watch).
    pub refresh: Duration,
    /// Audit rotation, the deny log, the metrics endpoint.
    pub observe: crate::metrics::Observe,
    /// How long grants of a segment that left the policy are kept.
    pub grant_grace: Duration,
    /// Which policy files are read (symbolic links out of the directory).
    pub policy_trust: policy::FileTrust,
}

type Shared = Arc<Mutex<Agent>>;

/// Wakes the main loop to recompute when the next grant expires: the loop
/// sleeps until the earliest deadline it knew of, and a request handled on
/// another task may have created an earlier one.
static DEADLINES_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Stops the main loop once `uninstall` went through this agent.
static UNINSTALLED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Loads and validates the policy directory for the agent (unresolvable
/// users and groups are errors; units that are not running are warnings;
/// untrusted files — see `policy::FileTrust` — are errors).
pub fn load_policy(dir: &Path, trust: &policy::FileTrust) -> Result<policy::Policy, String> {
    let (policy, diags) =
        policy::load_paths_trusted(&[dir.to_path_buf()], &SystemHost, HostCheck::Error, trust);
    for d in diags
        .0
        .iter()
        .filter(|d| !matches!(d.severity, policy::Severity::Error))
    {
        warn!("{d}");
    }
    match policy {
        Some(p) if !diags.has_errors() => Ok(p),
        _ => Err(diags.to_string()),
    }
}

/// Mounts bpffs at /sys/fs/bpf when `bpffs` lives there and nothing is
/// mounted, with mode 0700 so that only root can create pin directories.
fn ensure_bpffs(bpffs: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !bpffs.starts_with(root) {
        return Ok(());
    }
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo")?
        .lines()
        .any(|l| {
            l.split(" - ").nth(1).is_some_and(|r| r.starts_with("bpf "))
                && l.split_whitespace().nth(4) == Some("/sys/fs/bpf")
        });
    if !mounted {
        info!("mounting bpffs at /sys/fs/bpf");
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .context("mount -t bpf -o mode=0700 bpf /sys/fs/bpf failed (needs root)")?;
    }
    Ok(())
}

pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    // 1. Policy first: a bad policy never reaches the kernel.
    let policy = load_policy(&opts.policies, &opts.policy_trust)
        .map_err(|e| anyhow::anyhow!("policy in {} is invalid:\n{e}", opts.policies.display()))?;
    crate::privileges::check()?;
    // One agent per pin directory, state directory, audit log and socket:
    // a second one stops here, before it touches any of them.
    let _locks =
        crate::lock::take_agent_locks(&opts.bpffs, &opts.state_dir, &opts.audit_log, &opts.socket)?;

    // 2. Kernel.
    let hierarchy = Hierarchy::discover()?;
    let cgroup = opts
        .cgroup
        .clone()
        .unwrap_or_else(|| hierarchy.mount.clone());
    ensure_bpffs(&opts.bpffs)?;
    let dataplane = Dataplane::open(&DataplaneConfig {
        bpffs: opts.bpffs.clone(),
        cgroup: cgroup.clone(),
        max_grants: opts.max_grants,
        max_peers: opts.max_peers,
        xdp_ifaces: opts.xdp_ifaces.clone(),
    })?;
    let audit = AuditLog::open_with(&opts.audit_log, opts.observe.audit_rotation)?;
    let mut agent = Agent::start(
        policy,
        dataplane,
        Resolver::new(hierarchy.clone()),
        audit,
        Paths {
            state_dir: opts.state_dir.clone(),
        },
        opts.grant_grace,
    )?;
    agent.set_request_ttl(opts.request_expiry);
    let addrs = hostaddrs::scan().context("listing this host's addresses")?;
    agent.dataplane.set_local_addrs(&addrs)?;
    agent.set_local_address_count(addrs.len());
    // Attach only now: the maps hold the policy, the grants and this host's
    // addresses, so the programs never run on incomplete maps.
    agent.dataplane.attach()?;
    let _ = agent.audit.record(
        "agent_start",
        json!({"version": env!("CARGO_PKG_VERSION"), "cgroup": cgroup.display().to_string(),
            "policy_digest": agent.policy().digest, "pid": std::process::id()})
        .as_object()
        .cloned()
        .unwrap_or_default(),
    );
    info!(
        cgroup = %cgroup.display(),
        pins = %agent.dataplane.pin_dir().display(),
        segments = agent.policy().segments.len(),
        addresses = addrs.len(),
        "enforcing"
    );
    let kill_requests = agent.dataplane.take_kill_requests();
    for x in agent.dataplane.xdp() {
        info!(iface = %x.iface, mode = x.mode, "XDP attached");
    }
    let deny_events = agent.dataplane.take_deny_events();
    // Kernel debug lines (off until `portcullis debug on`): a failure
    // costs the debug lines only, never enforcement.
    if let Err(e) =
        crate::kernlog::KernelLog::open(agent.dataplane.ebpf_mut()).and_then(|k| k.serve())
    {
        tracing::warn!("kernel debug lines unavailable: {e}");
    }
    let shared: Shared = Arc::new(Mutex::new(agent));
    // Judge the flows that were open before enforcement (or while the
    // agent was down), then keep a sweeper for revokes, expiries, reloads
    // and the programs' kill requests.
    if let Some(trigger) = crate::sweep::start(&hierarchy.mount, &cgroup, shared.clone()) {
        if let Some(ring) = kill_requests {
            tokio::spawn(crate::sweep::serve_kill_requests(ring, trigger));
        }
    }
    // Deny log and metrics endpoint.
    let observers =
        crate::metrics::Observers::start(&shared, deny_events, hierarchy, &opts.observe).await?;

    // 3. Control socket, only once enforcement is in place.
    let listener = bind_socket(&opts)?;
    info!(socket = %opts.socket.display(), "control socket ready");
    crate::notify::ready();
    let mut watchdog = crate::notify::Watchdog::from_env();

    // Accepting runs on its own task: a flood of connections neither
    // delays timers and reloads nor waits behind them.
    let acceptor = tokio::spawn(accept_loop(listener, shared.clone()));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let events = AddressEvents::subscribe().context("subscribing to address changes")?;
    // SAFETY: `events` owns its descriptor and moves into the AsyncFd, which
    // drops the registration before the descriptor is closed.
    let addr_events = unsafe { AsyncFd::register(events)? };
    // A 2 s heartbeat: retries, and a fresh look at the next expiry (a grant
    // made on a control connection does not wake this loop by itself).
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Reload when a policy file changes; re-resolve unit and cgroup
    // identities as soon as cgroups below the attach point come and go.
    // The rescan every `opts.refresh` is only the safety net.
    let mut rescanned = tokio::time::Instant::now();
    let mut policy_watch = watch::PolicyWatch::new(&opts.policies);
    let mut cgroup_watch = watch::CgroupWatch::new(&cgroup);

    loop {
        let sleep = next_expiry_sleep(&shared);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {
                let mut a = shared.lock().expect("agent lock");
                if !a.expire().is_empty() {
                    crate::sweep::request();
                }
            }
            ready = addr_events.readable() => {
                let mut guard = ready?;
                if guard.get_inner().drain() {
                    update_addresses(&shared);
                }
                guard.clear_ready();
            }
            _ = refresh.tick() => {
                let mut a = shared.lock().expect("agent lock");
                // Enforcement checked against the kernel, repaired at once.
                a.check_enforcement();
                // Audit records queued while the log could not be written.
                a.audit.retry();
                if rescanned.elapsed() >= opts.refresh {
                    rescanned = tokio::time::Instant::now();
                    if let Err(e) = a.refresh_identities() {
                        warn!(error = %e, "re-resolving unit and cgroup identities failed");
                    }
                }
            }
            _ = hup.recv() => reload(&shared, &opts.policies, &opts.policy_trust),
            _ = policy_watch.changed() => reload_changed(&shared, &opts.policies, &opts.policy_trust),
            _ = cgroup_watch.changed() => {
                let mut a = shared.lock().expect("agent lock");
                if let Err(e) = a.refresh_identities() {
                    warn!(error = %e, "re-resolving unit and cgroup identities failed");
                }
            }
            // No ping while enforcement is missing and cannot be repaired.
            _ = watchdog.tick() => if shared.lock().expect("agent lock").enforcing() {
                watchdog.ping();
            },
            _ = UNINSTALLED.notified() => break,
            _ = DEADLINES_CHANGED.notified() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    crate::notify::stopping();
    acceptor.abort();
    observers.stop();
    let mut a = shared.lock().expect("agent lock");
    let _ = a.audit.record(
        "agent_stop",
        json!({"pid": std::process::id()})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let _ = std::fs::remove_file(&opts.socket);
    if a.enforcement.uninstalled {
        info!("stopping after `portcullis uninstall`: nothing is enforced");
    } else {
        info!("stopping; enforcement stays in place (pinned) until `portcullis uninstall`");
    }
    Ok(())
}

fn next_expiry_sleep(shared: &Shared) -> Duration {
    let a = shared.lock().expect("agent lock");
    match a.next_deadline() {
        Some(at) => crate::clock::remaining(at)
            .max(Duration::from_millis(1))
            .min(Duration::from_secs(60)),
        None => Duration::from_secs(60),
    }
}

fn update_addresses(shared: &Shared) {
    match hostaddrs::scan() {
        Ok(addrs) => {
            let mut a = shared.lock().expect("agent lock");
            match a.dataplane.set_local_addrs(&addrs) {
                Ok(()) => a.set_local_address_count(addrs.len()),
                Err(e) => error!(error = %e, "updating the local address map failed"),
            }
        }
        Err(e) => error!(error = %e, "listing this host's addresses failed"),
    }
}

/// Re-reads the policy; on any error keeps enforcing the previous one.
pub fn reload(shared: &Shared, dir: &Path, trust: &policy::FileTrust) {
    crate::notify::reloading();
    reload_with(shared, dir, trust, false);
    crate::notify::ready();
}

/// A reload because a file changed: skipped when the files' contents are
/// what is in force already (an editor's swap file, a `touch`), unless the
/// last reload failed, so that reverting a bad edit clears that failure.
fn reload_changed(shared: &Shared, dir: &Path, trust: &policy::FileTrust) {
    crate::notify::reloading();
    reload_with(shared, dir, trust, true);
    crate::notify::ready();
}

/// The agent as the actor of what it does by itself, for audit records.
fn agent_actor() -> serde_json::Value {
    json!({"uid": nix::unistd::getuid().as_raw(), "user": "portcullis-agent", "pid": std::process::id()})
}

fn reload_with(shared: &Shared, dir: &Path, trust: &policy::FileTrust, only_if_changed: bool) {
    // What asked for this reload: a changed file, or SIGHUP (systemctl reload).
    let trigger = if only_if_changed {
        "file change"
    } else {
        "SIGHUP"
    };
    let parsed = load_policy(dir, trust);
    let mut a = shared.lock().expect("agent lock");
    // An emptied file or directory is a deploy in progress, not an intent.
    let parsed = parsed.and_then(|p| match policy::suspicious_shrink(a.policy(), &p) {
        Some(why) => Err(why),
        None => Ok(p),
    });
    if let Ok(policy) = &parsed {
        if only_if_changed
            && policy.digest == a.policy().digest
            && a.last_reload().is_none_or(|r| r.ok)
        {
            tracing::debug!(dir = %dir.display(), "policy files touched, contents unchanged; not reloading");
            return;
        }
    }
    info!(dir = %dir.display(), trigger = if only_if_changed { "file change" } else { "SIGHUP" }, "reloading policy");
    match parsed {
        Ok(policy) => {
            let digest = policy.digest.clone();
            match a.apply_policy(policy) {
                Ok(()) => {
                    crate::sweep::request();
                    a.note_reload(true, vec![]);
                    let _ = a.audit.record(
                        "policy_reload",
                        json!({"ok": true, "digest": digest, "trigger": trigger, "actor": agent_actor()})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    );
                    info!(%digest, "policy reloaded");
                }
                Err(e) => {
                    a.note_reload(false, vec![format!("{e:#}")]);
                    let _ = a.audit.record(
                        "policy_reload",
                        json!({"ok": false, "errors": [format!("{e:#}")], "trigger": trigger, "actor": agent_actor()})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    );
                    error!(error = %format!("{e:#}"), "applying the new policy failed");
                }
            }
        }
        Err(errors) => {
            let lines: Vec<String> = errors.lines().map(str::to_string).collect();
            a.note_reload(false, lines.clone());
            let _ = a.audit.record(
                "policy_reload",
                json!({"ok": false, "errors": lines, "trigger": trigger, "actor": agent_actor()})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            );
            error!("policy reload refused; still enforcing the previous policy:\n{errors}");
        }
    }
}

fn bind_socket(opts: &AgentOptions) -> anyhow::Result<UnixListener> {
    // Socket activation first; binding the path ourselves is the fallback.
    if let Some(listener) =
        crate::notify::activated_listener().context("taking the socket systemd passed")?
    {
        return Ok(listener);
    }
    let path = &opts.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another agent is already listening on {}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.socket_mode))
        .with_context(|| format!("setting mode of {}", path.display()))?;
    if let Some(group) = &opts.socket_group {
        let gid = nix::unistd::Group::from_name(group)?
            .with_context(|| format!("socket group {group:?} does not exist"))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("chown {} to group {group}", path.display()))?;
    }
    Ok(listener)
}

/// Accepts control connections for as long as the agent runs. Each one
/// is admitted by [`connlimit::Limits`] (per uid, total, root's reserve)
/// or answered at once with a refusal and closed. When accepting fails
/// (EMFILE, ENFILE, ENOBUFS...), the loop backs off and warns at most once
/// a minute, saying how many failures it did not report.
async fn accept_loop(listener: UnixListener, shared: Shared) {
    let limits = connlimit::Limits::default();
    let mut warn_limit = connlimit::WarnLimiter::new(Duration::from_secs(60));
    let mut failures: u32 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failures = 0;
                admit(stream, &limits, &shared);
            }
            Err(e) => {
                if let Some(suppressed) = warn_limit.due(std::time::Instant::now()) {
                    warn!(
                        error = %e,
                        suppressed,
                        "accepting a control connection failed; backing off (further failures are reported at most once a minute)"
                    );
                }
                tokio::time::sleep(connlimit::backoff(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// Serves `stream` on its own task if its uid may have another
/// connection; otherwise tells the peer why (without waiting for it) and
/// closes.
fn admit(stream: UnixStream, limits: &connlimit::Limits, shared: &Shared) {
    let cred = match stream.peer_cred() {
        Ok(c) => PeerCred {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::debug!(error = %e, "control connection without peer credentials; closing");
            return;
        }
    };
    match limits.admit(cred.uid) {
        Ok(slot) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                serve_connection(stream, cred, shared).await;
                drop(slot);
            });
        }
        Err(refused) => {
            tracing::debug!(uid = cred.uid, "{refused}");
            let response =
                Response::Error(Refusal::new(RefusalCode::Unavailable, refused.to_string()));
            let mut out = serde_json::to_vec(&response).expect("responses serialize");
            out.push(b'\n');
            // A fresh socket's send buffer is empty: this never blocks,
            // and a peer that does not read loses nothing but the reason.
            let _ = stream.try_write(&out);
        }
    }
}

async fn serve_connection(stream: UnixStream, cred: PeerCred, shared: Shared) {
    let (read, mut write) = stream.into_split();
    // One byte past the cap tells a request that is too long from one
    // that fits exactly.
    let mut reader = BufReader::new(read.take(control::MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let response = match tokio::time::timeout(
        control::REQUEST_DEADLINE,
        reader.read_until(b'\n', &mut line),
    )
    .await
    {
        Err(_) => Response::Error(Refusal::new(
            RefusalCode::BadRequest,
            format!(
                "no complete request within {} s of connecting",
                control::REQUEST_DEADLINE.as_secs()
            ),
        )),
        Ok(Err(e)) => Response::Error(Refusal::new(
            RefusalCode::BadRequest,
            format!("reading the request failed: {e}"),
        )),
        Ok(Ok(_)) if line.len() > control::MAX_REQUEST => Response::Error(Refusal::new(
            RefusalCode::BadRequest,
            format!(
                "request too long: the agent reads at most {} bytes per request",
                control::MAX_REQUEST
            ),
        )),
        Ok(Ok(_)) if !line.ends_with(b"\n") => Response::Error(Refusal::new(
            RefusalCode::BadRequest,
            "request not newline-terminated (the connection was closed mid-request)",
        )),
        Ok(Ok(_)) => match std::str::from_utf8(&line)
            .map_err(|e| {
                Refusal::new(
                    RefusalCode::BadRequest,
                    format!("malformed request: not UTF-8 ({e})"),
                )
            })
            .and_then(control::parse_request)
        {
            Ok(request) => handle(&shared, &cred, request),
            Err(refusal) => {
                info!(uid = cred.uid, "{}", refusal.message);
                Response::Error(refusal)
            }
        },
    };
    let mut out = serde_json::to_vec(&response).expect("responses serialize");
    out.push(b'\n');
    let _ = tokio::time::timeout(control::REPLY_DEADLINE, write.write_all(&out)).await;
}

#[tracing::instrument(skip(shared, request), fields(uid = cred.uid, pid = cred.pid))]
fn handle(shared: &Shared, cred: &PeerCred, request: Request) -> Response {
    let mut a = shared.lock().expect("agent lock");
    let result = match request {
        Request::Grant {
            segment,
            identity,
            ttl,
            reason,
        } => a.grant(cred, &segment, &identity, ttl.as_deref(), reason.as_deref()),
        Request::Revoke {
            id,
            identity,
            segment,
        } => a
            .revoke(cred, id, identity.as_deref(), segment.as_deref())
            .map(|(reply, _)| {
                // Idle flows and flows the programs never marked are cut now.
                crate::sweep::request();
                reply
            }),
        Request::List {} => Ok(a.list()),
        Request::Status {} => Ok(a.status()),
        Request::RequestAccess {
            segment,
            ttl,
            reason,
        } => a.request(cred, &segment, ttl.as_deref(), reason.as_deref()),
        Request::Approve { id, ttl } => a.approve(cred, id, ttl.as_deref()),
        Request::Deny { id, reason } => a.deny(cred, id, &reason),
        Request::ShowRequest { id } => a.show_request(cred, id),
        Request::Pending {} => Ok(a.pending()),
        Request::Explain {
            identity,
            pid,
            port,
        } => a.explain(cred, identity.as_deref(), pid, &port),
        Request::Uninstall {} => a.uninstall(cred),
        Request::Debug { on } => crate::kernlog::request(cred, on),
    };
    if matches!(result, Ok(Reply::Uninstalled { .. })) {
        UNINSTALLED.notify_one();
    }
    match result {
        Ok(reply) => {
            // A grant or approval may have moved the earliest deadline.
            DEADLINES_CHANGED.notify_one();
            Response::Ok(reply)
        }
        Err(refusal) => {
            info!(code = ?refusal.code, "refused: {}", refusal.message);
            Response::Error(refusal)
        }
    }
}
