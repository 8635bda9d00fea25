//! `cargo xtask setup`: installs what the build and the tests need and is
//! missing. Every step checks first, so a second run is a quick no-op.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::util::{self, Workspace};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major that bpf-linker's `llvm-22` feature links against; the
/// pinned nightly (1.97.0-nightly 2026-05-19) ships LLVM 22.
const LLVM_MAJOR: u32 = 22;
const BPFFS: &str = "/sys/fs/bpf";
/// Debian packages the tests and benchmarks use.
const PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "nftables",
    "iptables",
    "hyperfine",
    "postgresql",
    "redis-server",
    "socat",
    "ncat",
    "procps",
    // systemd-analyze (the unit file test) and setpriv (the capability test).
    "systemd",
    "util-linux",
    // The unit's system call filter test traces the agent; the control
    // socket flood test's client is a python3 script.
    "strace",
    "python3",
    // Fleet mode: the agent's etcd client (etcd-client, through tonic and
    // prost) compiles etcd's .proto files with protoc at build time, so this
    // step runs before anything builds the agent; the fleet tests and bench
    // start a real etcd (Debian's 3.4).
    "protobuf-compiler",
    "etcd-server",
];
/// fcntl locks apt and dpkg hold while they work.
const APT_LOCKS: &[&str] = &[
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
];
const APT_LOCK_WAIT: Duration = Duration::from_secs(600);

#[derive(clap::Args)]
pub(crate) struct Options {}

pub(crate) fn main(_: Options, ws: &Workspace) -> Result<()> {
    setup(ws)
}

/// Runs every step; stops at the first that fails.
pub(crate) fn setup(ws: &Workspace) -> Result<()> {
    let start = Instant::now();
    let root = step("privileges", |_| {
        Ok(if util::is_root() {
            (true, "ok (root)".to_string())
        } else {
            let msg = format!(
                "warning: not root (euid {}); the apt and bpffs steps fail if they have work to do",
                util::euid()
            );
            (false, msg)
        })
    })?;
    let sysroot = step("nightly toolchain", |_| nightly(ws))?;
    step("rust-src for nightly", |s| rust_src(ws, s, &sysroot))?;
    step(&format!("bpf-linker {BPF_LINKER_VERSION}"), |s| {
        bpf_linker(ws, s, &sysroot)
    })?;
    step("debian packages", |s| packages(ws, s, root))?;
    step(&format!("bpffs at {BPFFS}"), |s| bpffs(ws, s, root))?;
    step("cgroup2", |_| cgroup2())?;
    eprintln!("setup: done in {}", util::human(start.elapsed()));
    Ok(())
}

/// A step's name, for progress lines while it works.
struct Step<'a>(&'a str);

impl Step<'_> {
    fn note(&self, msg: &str) {
        eprintln!("setup: {} ... {msg}", self.0);
    }
}

/// Runs one step: `f` returns a value and the text of its final line.
fn step<T>(name: &str, f: impl FnOnce(&Step) -> Result<(T, String)>) -> Result<T> {
    let s = Step(name);
    match f(&s) {
        Ok((value, done)) => {
            s.note(&done);
            Ok(value)
        }
        Err(e) => {
            s.note("FAILED");
            Err(e.context(format!("setup step `{name}` failed")))
        }
    }
}

/// Checks that the `nightly` toolchain exists (never installs or updates it)
/// and returns its sysroot.
fn nightly(ws: &Workspace) -> Result<(PathBuf, String)> {
    if ws.which("rustup").is_none() {
        bail!(
            "`rustup` is not in PATH (nor in {})",
            ws.cargo_home.join("bin").display()
        );
    }
    let list = util::output(ws.command("rustup").args(["toolchain", "list"]))?;
    let installed = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            // `nightly-<host>`, not a dated `nightly-2026-...-<host>`.
            name.strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
    if !installed {
        bail!(
            "the `nightly` toolchain is not installed (`rustup toolchain list` shows none). \
             The eBPF build needs it; this project uses 1.97.0-nightly 2026-05-19 (LLVM 22). \
             Install that one; a newer nightly changes the LLVM bpf-linker must match"
        );
    }
    let version =
        util::output(
            ws.command("rustup")
                .args(["run", "nightly", "rustc", "--version"]),
        )?;
    let sysroot = util::output(
        ws.command("rustup")
            .args(["run", "nightly", "rustc", "--print", "sysroot"]),
    )?;
    Ok((
        PathBuf::from(sysroot.trim()),
        format!("ok ({})", version.trim()),
    ))
}

fn rust_src(ws: &Workspace, s: &Step, sysroot: &Path) -> Result<((), String)> {
    let library = sysroot.join("lib/rustlib/src/rust/library");
    if library.is_dir() {
        return Ok(((), "ok (already present)".into()));
    }
    s.note("installing");
    util::run(ws.command("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    if !library.is_dir() {
        bail!(
            "`rustup component add rust-src` succeeded but {} is still missing",
            library.display()
        );
    }
    Ok(((), "ok (installed)".into()))
}

/// The version `bin --version` reports, or why it could not run.
fn linker_version(ws: &Workspace, bin: &Path) -> Result<String> {
    let out = util::output(ws.command(bin).arg("--version"))?;
    // "bpf-linker 0.13.0"
    Ok(out
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

fn bpf_linker(ws: &Workspace, s: &Step, sysroot: &Path) -> Result<((), String)> {
    // Children find bpf-linker in PATH with $CARGO_HOME/bin first: check that one.
    let reason = match ws.which("bpf-linker") {
        None => "not found".to_string(),
        Some(bin) => match linker_version(ws, &bin) {
            Ok(v) if v == BPF_LINKER_VERSION => {
                return Ok(((), format!("ok (already present: {})", bin.display())));
            }
            Ok(v) => format!("{} is version {v}", bin.display()),
            // E.g. the libLLVM it was linked against has gone.
            Err(e) => format!("{} does not run: {e:#}", bin.display()),
        },
    };
    s.note(&format!(
        "installing ({reason}); cargo install takes a minute or two"
    ));

    let llvm = find_libllvm(sysroot)?;
    let prefix = ws.target_dir()?.join("xtask/llvm-prefix");
    make_llvm_prefix(&prefix, &llvm)?;
    let llvm_lib = llvm.parent().expect("a file in the sysroot has a parent");
    let mut cmd = ws.cargo();
    cmd.env("LLVM_PREFIX", &prefix)
        // Also find libLLVM in the sysroot itself, so that `cargo clean`
        // (which removes the prefix folder) does not break bpf-linker.
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", llvm_lib.display()),
        )
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
            "--force",
        ])
        .arg("--root")
        .arg(&ws.cargo_home);
    util::run(&mut cmd)?;

    let installed = ws.cargo_home.join("bin/bpf-linker");
    let v = linker_version(ws, &installed).context("checking the bpf-linker just installed")?;
    if v != BPF_LINKER_VERSION {
        bail!("installed bpf-linker reports version {v}, not {BPF_LINKER_VERSION}");
    }
    match ws.which("bpf-linker") {
        Some(found) if found == installed => {
            Ok(((), format!("ok (installed: {})", installed.display())))
        }
        found => bail!(
            "installed {} but children would run {found:?}",
            installed.display()
        ),
    }
}

/// `<sysroot>/lib/libLLVM.so.<major>.<minor>-rust-<version>`, checked to be LLVM 22.
fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .collect();
    let file = match found.len() {
        1 => found.pop().unwrap(),
        0 => bail!("no libLLVM.so.*-rust-* in {}", lib.display()),
        _ => bail!(
            "several libLLVM.so.*-rust-* in {}: {found:?}",
            lib.display()
        ),
    };
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let major: Option<u32> = name["libLLVM.so.".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse().ok());
    if major != Some(LLVM_MAJOR) {
        bail!(
            "{name}: the nightly toolchain's LLVM is not {LLVM_MAJOR}, which bpf-linker \
             {BPF_LINKER_VERSION} is built for here; use 1.97.0-nightly 2026-05-19"
        );
    }
    Ok(file)
}

/// `<prefix>/lib/` with `libLLVM.so` and the file's own name, both linking to `llvm`.
fn make_llvm_prefix(prefix: &Path, llvm: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in [
        Path::new("libLLVM.so"),
        Path::new(llvm.file_name().unwrap()),
    ] {
        let link = lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == llvm) {
            continue;
        }
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(llvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), llvm.display()))?;
    }
    Ok(())
}

/// The packages in `PACKAGES` that dpkg does not report as installed.
fn missing_packages(ws: &Workspace) -> Result<Vec<&'static str>> {
    if ws.which("dpkg-query").is_none() {
        bail!(
            "dpkg-query not found: setup installs packages only on Debian and Ubuntu; \
             install these yourself: {}",
            PACKAGES.join(" ")
        );
    }
    // Exits 1 when some package is unknown; the known ones are still listed.
    let out = ws
        .command("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(PACKAGES)
        .output()
        .context("could not run dpkg-query")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

fn packages(ws: &Workspace, s: &Step, root: bool) -> Result<((), String)> {
    let missing = missing_packages(ws)?;
    if missing.is_empty() {
        return Ok(((), format!("ok (all {} already present)", PACKAGES.len())));
    }
    let list = missing.join(" ");
    if !root {
        bail!("missing packages: {list}; installing them needs root (run setup as root)");
    }
    s.note(&format!("installing {list}"));
    wait_for_apt_locks(s)?;
    let apt = |args: &[&str]| {
        let mut cmd = ws.command("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=120"])
            .args(args);
        cmd
    };
    util::run(&mut apt(&["update"]))?;
    util::run(
        apt(&["install", "-y", "--no-install-recommends"])
            .args([
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
            ])
            .args(&missing),
    )?;
    let still = missing_packages(ws)?;
    if !still.is_empty() {
        bail!(
            "apt-get install succeeded but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(((), format!("ok (installed {list})")))
}

/// Waits (bounded) while another apt or dpkg, e.g. unattended-upgrades, works.
fn wait_for_apt_locks(s: &Step) -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let held = APT_LOCKS
            .iter()
            .find_map(|f| util::lock_holder(Path::new(f)).map(|pid| (*f, pid)));
        let Some((file, pid)) = held else {
            if told {
                s.note(&format!("lock free after {}", util::human(start.elapsed())));
            }
            return Ok(());
        };
        if start.elapsed() > APT_LOCK_WAIT {
            bail!(
                "{file} is still locked by pid {pid} after {}; is another apt-get or dpkg stuck?",
                util::human(APT_LOCK_WAIT)
            );
        }
        if !told {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            s.note(&format!(
                "waiting (up to {}) for {file}, held by pid {pid} {}",
                util::human(APT_LOCK_WAIT),
                comm.trim()
            ));
            told = true;
        }
        thread::sleep(Duration::from_secs(2));
    }
}

fn mounted(fstype: &str, at: &Path) -> Result<bool> {
    Ok(util::mounts()?
        .iter()
        .any(|m| m.fstype == fstype && m.mount_point == at))
}

fn bpffs(ws: &Workspace, s: &Step, root: bool) -> Result<((), String)> {
    let at = Path::new(BPFFS);
    if mounted("bpf", at)? {
        return Ok(((), "ok (already mounted)".into()));
    }
    if !root {
        bail!("no bpf filesystem at {BPFFS} and mounting one needs root");
    }
    s.note("mounting");
    fs::create_dir_all(at).with_context(|| format!("creating {BPFFS}"))?;
    // mode=0700: only root may create pin directories (without it the
    // mount root is 1777 and any user could pre-create the agent's).
    util::run(
        ws.command("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpf", BPFFS]),
    )?;
    if !mounted("bpf", at)? {
        bail!("`mount -t bpf bpf {BPFFS}` succeeded but /proc/self/mountinfo shows no bpf there");
    }
    Ok(((), "ok (mounted)".into()))
}

fn cgroup2() -> Result<((), String)> {
    let points: Vec<String> = util::mounts()?
        .into_iter()
        .filter(|m| m.fstype == "cgroup2")
        .map(|m| m.mount_point.display().to_string())
        .collect();
    match points.as_slice() {
        [] => bail!("no cgroup2 filesystem is mounted (see /proc/self/mountinfo); the agent needs cgroup v2"),
        [one] => Ok(((), format!("ok (mounted at {one})"))),
        [first, rest @ ..] => Ok(((), format!("ok (mounted at {first}; also at {})", rest.join(", ")))),
    }
}
