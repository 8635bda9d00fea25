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
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context};
use tokio::{
    io::unix::AsyncFd,
    net::UnixListener,
    signal::unix::{signal, SignalKind},
};
use tracing::{error, info, warn};

use crate::{
    agent::{Agent, Paths},
    audit::AuditLog,
    cgroupfs::Hierarchy,
    dataplane::{Dataplane, DataplaneConfig},
    hostaddrs::{self, AddressEvents},
    policy::{self, HostCheck, SystemHost},
    resolve::Resolver,
    settings::Settings,
    watch,
};

/// Control connections: admission, dispatch, replies.
mod conn;

type Shared = Arc<Mutex<Agent>>;

/// Wakes the main loop to recompute when the next grant expires: the loop
/// sleeps until the earliest deadline it knew of, and a request handled on
/// another task may have created an earlier one.
static DEADLINES_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Wakes the main loop's expiry timer (a fleet grant applied by the fleet
/// watch may be the earliest deadline now).
fn deadlines_changed() {
    DEADLINES_CHANGED.notify_one();
}

/// Stops the main loop once `uninstall` went through this agent.
static UNINSTALLED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Loads and validates the policy directory for the agent (unresolvable
/// users and groups are errors; units that are not running are warnings;
/// untrusted files — see `policy::FileTrust` — are errors).
pub(crate) fn load_policy(dir: &Path, trust: &policy::FileTrust) -> Result<policy::Policy, String> {
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
    let mounts = crate::mounts::mounts().context("reading /proc/self/mountinfo")?;
    let mounted = crate::mounts::is_mounted(&mounts, "bpf", root);
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

pub(crate) async fn run(opts: Settings) -> anyhow::Result<()> {
    // 0. Privileges: without them nothing else matters (and the policy's
    // warnings would only bury the one line that does).
    crate::privileges::check()?;
    crate::startup::begin();
    // The programs' tick bound takes 50 ms to measure: it does so while the
    // policy is parsed and the locks taken, not in front of the load.
    crate::dataplane::prefetch_tick();
    // 1. Policy first: a bad policy never reaches the kernel.
    let policy = load_policy(&opts.policies, &opts.policy_trust)
        .map_err(|e| anyhow::anyhow!("policy in {} is invalid:\n{e}", opts.policies.display()))?;
    // One agent per pin directory, state directory, audit log and socket:
    // a second one stops here, before it touches any of them.
    crate::startup::mark("policy_parse");
    let _locks =
        crate::lock::take_agent_locks(&opts.bpffs, &opts.state_dir, &opts.audit_log, &opts.socket)?;
    // The journal is ours now: it is read on a thread of its own while the
    // programs load and the pinned maps are read (`startup`).
    let journal = crate::startup::JournalOpening::spawn(opts.state_dir.clone())
        .context("starting the thread that reads the journal")?;

    // 2. Kernel.
    let hierarchy = Hierarchy::discover()?;
    let cgroup = opts
        .cgroup
        .clone()
        .unwrap_or_else(|| hierarchy.mount.clone());
    crate::cgroupfs::check_attach_point(&cgroup, &hierarchy.mount)?;
    ensure_bpffs(&opts.bpffs)?;
    let mut dataplane = Dataplane::open(&DataplaneConfig {
        bpffs: opts.bpffs.clone(),
        cgroup: cgroup.clone(),
        max_grants: opts.max_grants,
        max_peers: opts.max_peers,
        xdp_ifaces: opts.xdp_ifaces.clone(),
        discovery: opts.discovery,
        placement: opts.peer_filter,
    })?;
    // The rings go to their readers; the maps (and the links' check) go to
    // the agent, which sees them only through `KernelMaps`.
    let kill_requests = dataplane.take_kill_requests();
    let deny_events = dataplane.take_deny_events();
    // Kernel debug lines (off until `portcullis debug on`): a failure
    // costs the debug lines only, never enforcement.
    if let Err(e) = crate::kernlog::KernelLog::open(dataplane.ebpf_mut()).and_then(|k| k.serve()) {
        tracing::warn!("kernel debug lines unavailable: {e}");
    }
    let mut audit = AuditLog::open_with(&opts.audit_log, opts.audit_rotation)?;
    // Notifications go out from the audit writer, after each record is
    // durable; a thread per sink delivers them. A secret URL's file is
    // read now, as root.
    let notify = opts.notify.read_url_files().map_err(anyhow::Error::msg)?;
    if let Some(n) =
        crate::notifications::Notifier::start(&notify, &crate::notifications::host_name())
            .context("starting the notification threads")?
    {
        for s in &notify.sinks {
            info!(sink = %s.target, events = ?s.events, "notifications on");
        }
        audit.set_notifier(n);
    }
    crate::startup::mark("maps_open");
    let mut agent = Agent::start(
        policy,
        Box::new(dataplane),
        Resolver::new(hierarchy.clone()),
        audit,
        Paths { journal },
        opts.grant_grace,
        opts.mode,
    )?;
    agent.set_request_ttl(opts.request_expiry);
    agent.set_lock_admins(opts.lock_admins.clone());
    agent.set_discovery(opts.discovery);
    agent.set_metrics_addr(opts.metrics_addr);
    let addrs = hostaddrs::scan().context("listing this host's addresses")?;
    agent.set_local_addrs(&addrs)?;
    // The cgroup cover too, before the tracepoint that reads it.
    agent.sync_cover();
    crate::startup::mark("addresses_cover");
    // Attach only now: the maps hold the policy, the grants and this host's
    // addresses, so the programs never run on incomplete maps.
    let filters = agent.attach()?;
    crate::startup::mark("attach");
    crate::startup::release_freed_memory();
    crate::startup::mark("malloc_trim");
    agent.note_start(&cgroup);
    info!(
        cgroup = %cgroup.display(),
        pins = %agent.pin_dir().display(),
        segments = agent.policy().segments.len(),
        ports = %protected_ports(agent.policy()),
        addresses = addrs.len(),
        "enforcing"
    );
    for f in &filters {
        info!(iface = %f.iface, mode = f.mode.name(), "peer filter attached");
    }
    let shared: Shared = Arc::new(Mutex::new(agent));
    // Fleet mode: the watch starts from what the journal restored (pinned
    // and enforced already) and reconciles with the store when it answers.
    if let Some(cfg) = opts.fleet.clone() {
        info!(host = %cfg.host, groups = %cfg.groups.join(","), endpoints = %cfg.endpoints.join(","), "fleet mode");
        // Strict fleet grants work only while the watch hears from the store.
        shared
            .lock()
            .expect("agent lock")
            .set_strict_after(Some(cfg.strict_after));
        let link = Arc::new(crate::fleet::Link::default());
        crate::fleet::ops::install(crate::fleet::ops::Fleet {
            cfg: cfg.clone(),
            link: link.clone(),
        });
        crate::fleet::watch::start(cfg, shared.clone(), link, deadlines_changed);
    }
    // Judge the flows that were open before enforcement (or while the
    // agent was down), then keep a sweeper for revokes, expiries, reloads
    // and the programs' kill requests.
    if let Some(trigger) = crate::sweep::start(&hierarchy.mount, &cgroup, shared.clone()) {
        if let Some(ring) = kill_requests {
            tokio::spawn(crate::sweep::serve_kill_requests(ring, trigger));
        }
    }
    // Deny log and metrics endpoint.
    let observers = crate::observe::Observers::start(
        &shared,
        deny_events,
        hierarchy,
        &opts.deny_log,
        opts.metrics_addr,
    )
    .await?;

    // 3. Control socket, only once enforcement is in place.
    let listener = bind_socket(&opts)?;
    crate::startup::mark("sweep_observers_socket");
    info!(phases = %crate::startup::finish(), "start phases (wall time, then resident memory after each)");
    info!(socket = %opts.socket.display(), "control socket ready");
    crate::notify::ready();
    let mut watchdog = crate::notify::Watchdog::from_env();

    // Accepting runs on its own task: a flood of connections neither
    // delays timers and reloads nor waits behind them.
    let acceptor = tokio::spawn(conn::accept_loop(listener, shared.clone()));

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
    // The rescan every `opts.identity_rescan` is only the safety net.
    let mut rescanned = tokio::time::Instant::now();
    let mut policy_watch = watch::PolicyWatch::new(&opts.policies);
    let mut cgroup_watch = watch::CgroupWatch::new(&cgroup);
    // Group members: at once when /etc/group or /etc/passwd change, and
    // every `group_refresh` for groups that live in a directory.
    let mut groups_read = tokio::time::Instant::now();
    let mut accounts_watch = watch::AccountsWatch::new(Path::new("/etc"));

    loop {
        let sleep = blocking(|| next_expiry_sleep(&shared));
        // Every branch that takes the agent lock runs through `blocking`: the
        // lock may be held by a control request writing the audit log, and
        // the branch itself may fsync the audit log or write the state file.
        tokio::select! {
            _ = tokio::time::sleep(sleep) => blocking(|| {
                let mut a = shared.lock().expect("agent lock");
                // Ended grants, and strict ones once this host went stale:
                // the kernel already refuses them; the sweep cuts idle flows.
                let ended = !a.expire().is_empty();
                // Windowed allows due to open or close; a closed one's
                // open flows are swept like an expired grant's.
                let windows = a.turn_windows();
                let stale = a.check_freshness();
                if windows || stale || ended {
                    crate::sweep::request();
                }
            }),
            ready = addr_events.readable() => {
                let mut guard = ready?;
                if guard.get_inner().drain() {
                    blocking(|| update_addresses(&shared));
                }
                guard.clear_ready();
            }
            _ = refresh.tick() => blocking(|| {
                let mut a = shared.lock().expect("agent lock");
                // Enforcement checked against the kernel, repaired at once.
                a.check_enforcement();
                // Audit records queued while the log could not be written.
                a.retry_audit();
                // The cgroup cover follows grants made and ended since.
                a.sync_cover();
                // Locks whose TTL has passed are lifted.
                a.expire_locks();
                if groups_read.elapsed() >= opts.group_refresh {
                    groups_read = tokio::time::Instant::now();
                    refresh_groups(&mut a);
                }
                if rescanned.elapsed() >= opts.identity_rescan {
                    rescanned = tokio::time::Instant::now();
                    if let Err(e) = a.refresh_identities() {
                        warn!(error = %e, "re-resolving unit and cgroup identities failed");
                    }
                    // Counts of entries that left the grant map.
                    a.forget_unused_usage();
                }
            }),
            _ = hup.recv() => blocking(|| reload(&shared, &opts.policies, &opts.policy_trust)),
            _ = policy_watch.changed() => blocking(|| reload_changed(&shared, &opts.policies, &opts.policy_trust)),
            _ = accounts_watch.changed() => blocking(|| {
                groups_read = tokio::time::Instant::now();
                refresh_groups(&mut shared.lock().expect("agent lock"));
            }),
            _ = cgroup_watch.changed() => blocking(|| {
                let mut a = shared.lock().expect("agent lock");
                if let Err(e) = a.refresh_identities() {
                    warn!(error = %e, "re-resolving unit and cgroup identities failed");
                }
            }),
            // No ping while enforcement is missing and cannot be repaired.
            _ = watchdog.tick() => if blocking(|| shared.lock().expect("agent lock").enforcing()) {
                watchdog.ping();
            },
            _ = UNINSTALLED.notified() => break,
            _ = DEADLINES_CHANGED.notified() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        // Whatever this turn changed, the metrics show it.
        blocking(|| shared.lock().expect("agent lock").publish());
    }
    crate::notify::stopping();
    acceptor.abort();
    observers.stop();
    let mut a = shared.lock().expect("agent lock");
    a.note_stop();
    let _ = std::fs::remove_file(&opts.socket);
    if a.uninstalled() {
        info!("stopping after `portcullis uninstall`: nothing is enforced");
    } else {
        info!("stopping; enforcement stays in place (pinned) until `portcullis uninstall`");
    }
    Ok(())
}

/// Runs `f`, which takes the agent lock (and may write the audit log or the
/// state file), telling tokio that this worker blocks meanwhile: its other
/// tasks (control connections, the metrics endpoint) move to another worker.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// Reads group members again; a member who left is swept at once.
fn refresh_groups(a: &mut Agent) {
    match a.refresh_groups() {
        Ok(true) => crate::sweep::request(),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "writing changed group members to the kernel failed"),
    }
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
            if let Err(e) = a.set_local_addrs(&addrs) {
                error!(error = %e, "updating the local address map failed");
            }
        }
        Err(e) => error!(error = %e, "listing this host's addresses failed"),
    }
}

/// Re-reads the policy; on any error keeps enforcing the previous one.
pub(crate) fn reload(shared: &Shared, dir: &Path, trust: &policy::FileTrust) {
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
                    refresh_groups(&mut a);
                    crate::sweep::request();
                    a.note_reload(Ok(digest.clone()), trigger);
                    info!(%digest, "policy reloaded");
                }
                Err(e) => {
                    a.note_reload(Err(vec![format!("{e:#}")]), trigger);
                    error!(error = %format!("{e:#}"), "applying the new policy failed");
                }
            }
        }
        Err(errors) => {
            let lines: Vec<String> = errors.lines().map(str::to_string).collect();
            a.note_reload(Err(lines), trigger);
            error!("policy reload refused; still enforcing the previous policy:\n{errors}");
        }
    }
    crate::startup::release_freed_memory();
}

/// `payments-db 5432/tcp,6432/tcp; sessions-cache 6379/tcp` for the
/// start-up log line: which ports are closed, not only how many segments.
fn protected_ports(policy: &policy::Policy) -> String {
    policy
        .segments
        .values()
        .map(|s| {
            let ports: Vec<String> = s.ports.iter().map(ToString::to_string).collect();
            format!("{} {}", s.name, ports.join(","))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn bind_socket(opts: &Settings) -> anyhow::Result<UnixListener> {
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
            .with_context(|| {
                format!(
                    "socket group {group:?} does not exist: create it (`groupadd --system {group}`) \
                     or set another socket_group in the configuration (or pass --socket-group)"
                )
            })?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("chown {} to group {group}", path.display()))?;
    }
    Ok(listener)
}
