//! `cargo xtask install` and `cargo xtask package`: put Portcullis on a host.
//!
//! Both lay out the same files: the binary in /usr/bin, the systemd unit,
//! the default agent config (never overwriting an existing one), an empty
//! policy directory (nothing is protected until ops put policies there),
//! the README, docs, copyright and example policies under /usr/share/doc.
//! The examples are the policies committed in the repository (`git
//! ls-files` at HEAD), never whatever the working tree holds. `package`
//! stages them into a directory and builds a .deb with dpkg-deb, with the
//! maintainer scripts of packaging/debian/ (stop on remove, lift
//! enforcement on purge, daemon-reload).
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{run, setup, util, util::Workspace};

#[derive(clap::Args)]
pub(crate) struct InstallOptions {
    /// Install under this directory instead of `/` (for staging).
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct PackageOptions {}

/// The group packaging/agent.toml gives the control socket; created by
/// packaging/debian/postinst and by `install`.
const SOCKET_GROUP: &str = "portcullis";

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))?;
    Ok(())
}

/// Lays out every installed file under `root`; returns the conffiles.
fn lay_out(ws: &Workspace, bin: &Path, root: &Path) -> Result<Vec<&'static str>> {
    copy(bin, &root.join("usr/bin/portcullis"), 0o755)?;
    copy(
        &ws.root.join("packaging/portcullis.service"),
        &root.join("lib/systemd/system/portcullis.service"),
        0o644,
    )?;
    let config = root.join("etc/portcullis/agent.toml");
    if config.exists() {
        eprintln!("install: keeping the existing {}", config.display());
    } else {
        copy(&ws.root.join("packaging/agent.toml"), &config, 0o644)?;
    }
    let policies = root.join("etc/portcullis/policies");
    fs::create_dir_all(&policies).with_context(|| format!("creating {}", policies.display()))?;
    let doc = root.join("usr/share/doc/portcullis");
    copy(&ws.root.join("README.md"), &doc.join("README.md"), 0o644)?;
    for entry in fs::read_dir(ws.root.join("docs")).context("reading docs/")? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "md") {
            copy(&p, &doc.join(p.file_name().expect("file name")), 0o644)?;
        }
    }
    copy(
        &ws.root.join("packaging/copyright"),
        &doc.join("copyright"),
        0o644,
    )?;
    for (name, body) in committed_policies(ws)? {
        let to = doc.join("examples/policies").join(name);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&to, body).with_context(|| format!("writing {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644))?;
    }
    Ok(vec!["/etc/portcullis/agent.toml"])
}

/// The example policies as committed: `policies/*.toml` tracked by git,
/// with their contents at HEAD (a local edit or an untracked file is not
/// shipped).
fn committed_policies(ws: &Workspace) -> Result<Vec<(String, Vec<u8>)>> {
    let listed = util::output(Command::new("git").arg("-C").arg(&ws.root).args([
        "ls-tree",
        "--name-only",
        "HEAD",
        "policies/",
    ]))
    .context(
        "listing the committed policies (the examples are packaged from git, not the working tree)",
    )?;
    let mut out = Vec::new();
    for path in listed.lines().filter(|p| p.ends_with(".toml")) {
        let body = Command::new("git")
            .arg("-C")
            .arg(&ws.root)
            .args(["show", &format!("HEAD:{path}")])
            .output()
            .with_context(|| format!("git show HEAD:{path}"))?;
        if !body.status.success() {
            bail!(
                "git show HEAD:{path} failed: {}",
                String::from_utf8_lossy(&body.stderr)
            );
        }
        let name = Path::new(path)
            .file_name()
            .expect("a listed file has a name")
            .to_string_lossy()
            .into_owned();
        out.push((name, body.stdout));
    }
    if out.is_empty() {
        bail!("no policies/*.toml committed at HEAD: nothing to ship as examples");
    }
    Ok(out)
}

pub(crate) fn install_main(options: InstallOptions, ws: &Workspace) -> Result<()> {
    let root = options.destdir.unwrap_or_else(|| PathBuf::from("/"));
    if root == Path::new("/") && !util::is_root() {
        bail!("installing into / needs root (or pass --destdir DIR to stage)");
    }
    setup::setup(ws)?;
    let bin = run::build_agent(ws, true)?;
    lay_out(ws, &bin, &root)?;
    eprintln!("install: done under {}", root.display());
    if root == Path::new("/") {
        // What the package's postinst does: the group agent.toml names
        // for the control socket.
        let known = Command::new("getent")
            .args(["group", SOCKET_GROUP])
            .output()
            .context("running getent")?;
        if !known.status.success() {
            util::run(Command::new("groupadd").args(["--system", SOCKET_GROUP]))?;
            eprintln!("install: created the system group {SOCKET_GROUP} (members may use the control socket)");
        }
    }
    if root == Path::new("/") && Path::new("/run/systemd/system").exists() {
        util::run(Command::new("systemctl").arg("daemon-reload"))?;
        eprintln!("install: next: put segment policies in /etc/portcullis/policies, then `systemctl enable --now portcullis`");
    }
    Ok(())
}

pub(crate) fn package_main(_options: PackageOptions, ws: &Workspace) -> Result<()> {
    setup::setup(ws)?;
    let bin = run::build_agent(ws, true)?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let out = ws.target_dir()?.join("package");
    let stage = out.join(format!("portcullis_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let conffiles = lay_out(ws, &bin, &stage)?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::write(
        debian.join("control"),
        format!(
            "Package: portcullis\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Portcullis developers <portcullis@localhost>\n\
             Section: net\nPriority: optional\nDepends: libc6\n\
             Description: port-level micro-segmentation agent (eBPF)\n \
             Closes a host's internal ports by default and opens them per identity,\n \
             for a bounded time, in the kernel; with a CLI and an audit trail.\n"
        ),
    )?;
    fs::write(debian.join("conffiles"), conffiles.join("\n") + "\n")?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &ws.root.join("packaging/debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    let deb = out.join(format!("portcullis_{version}_{arch}.deb"));
    util::run(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&stage)
            .arg(&deb),
    )?;
    eprintln!("package: {}", deb.display());
    Ok(())
}
