//! The peers Portcullis is measured against, set up the way a user would
//! to get the same guarantee, each removed on drop:
//!
//! - nftables, loopback: `table inet pcbench`, an output-hook rule that
//!   rejects TCP to the protected port unless the socket's uid is in a set
//!   with per-element timeouts (one element per grant). Like Portcullis'
//!   cgroup_skb program, it judges every packet of the flow, not just the
//!   first (no conntrack shortcut), so a deleted element cuts open flows.
//! - nftables, veth: `table netdev pcbench`, an ingress-hook rule on the
//!   peer-facing veth that drops TCP to the protected port unless the
//!   source address is in an `ipv4_addr` set with timeouts: the closest
//!   peer to XDP.
//! - iptables: a chain `PCBENCH` with one `-m owner --uid-owner N -j ACCEPT`
//!   rule per grant and a final reset, jumped to from OUTPUT for the port.
//!
//! Anything named `pcbench`/`PCBENCH` that a crashed run left is removed by
//! [`sweep_leftovers`] before the bench starts.
use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::util;

pub(super) const NFT_TABLE: &str = "pcbench";
pub(super) const IPT_CHAIN: &str = "PCBENCH";

fn nft(args: &[&str]) -> Result<String> {
    util::output(Command::new("nft").args(args))
}

/// Runs `nft -f FILE` and returns how long it took.
pub(super) fn nft_file(path: &Path) -> Result<Duration> {
    let started = Instant::now();
    util::output(Command::new("nft").arg("-f").arg(path))?;
    Ok(started.elapsed())
}

/// The family and set of the loopback table, and of the veth table.
pub(super) const LOOPBACK_SET: (&str, &str) = ("inet", "allowed");
pub(super) const VETH_SET: (&str, &str) = ("netdev", "peers");

/// Writes `add element` of `elements` (each with a 1 h timeout) to the set
/// `(family, set)` of the bench's table in one batch, for [`nft_file`].
pub(super) fn write_batch(
    path: &Path,
    (family, set): (&str, &str),
    elements: &[String],
) -> Result<()> {
    let mut text = String::with_capacity(elements.len() * 24 + 64);
    let _ = writeln!(text, "add element {family} {NFT_TABLE} {set} {{");
    for (i, e) in elements.iter().enumerate() {
        let sep = if i + 1 == elements.len() { "" } else { "," };
        let _ = writeln!(text, "\t{e} timeout 1h{sep}");
    }
    text.push_str("}\n");
    fs::write(path, text)?;
    Ok(())
}

/// One of the bench's nftables tables; deleted on drop.
pub(super) struct NftTable {
    family: &'static str,
    set: &'static str,
}

impl NftTable {
    /// The loopback ruleset: uid set `allowed`, empty.
    pub(super) fn loopback(port: u16) -> Result<Self> {
        let rules = format!(
            "table inet {NFT_TABLE} {{\n\
             \tset allowed {{ typeof meta skuid; flags timeout; }}\n\
             \tchain out {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\ttcp dport {port} meta skuid != @allowed reject with tcp reset\n\
             \t}}\n\
             }}\n"
        );
        Self::create(LOOPBACK_SET, &rules)
    }

    /// The veth ruleset: address set `peers` on `device`'s ingress, empty.
    pub(super) fn veth(device: &str, port: u16) -> Result<Self> {
        let rules = format!(
            "table netdev {NFT_TABLE} {{\n\
             \tset peers {{ type ipv4_addr; flags timeout; }}\n\
             \tchain in {{\n\
             \t\ttype filter hook ingress device \"{device}\" priority 0; policy accept;\n\
             \t\ttcp dport {port} ip saddr != @peers drop\n\
             \t}}\n\
             }}\n"
        );
        Self::create(VETH_SET, &rules)
    }

    fn create((family, set): (&'static str, &'static str), rules: &str) -> Result<Self> {
        let file =
            std::env::temp_dir().join(format!("{NFT_TABLE}-{}-{family}.nft", std::process::id()));
        fs::write(&file, rules)?;
        let result = nft_file(&file);
        let _ = fs::remove_file(&file);
        // From here on the table exists (or nothing was made): the guard owns it.
        let me = Self { family, set };
        result?;
        Ok(me)
    }

    /// `nft add element ... { E timeout 1h }` as its own process.
    pub(super) fn add_command(&self, element: &str) -> Command {
        let mut c = Command::new("nft");
        c.arg(format!(
            "add element {} {NFT_TABLE} {} {{ {element} timeout 1h }}",
            self.family, self.set
        ));
        c
    }

    /// `nft delete element ... { E }` as its own process: the revocation.
    pub(super) fn delete_command(&self, element: &str) -> Command {
        let mut c = Command::new("nft");
        c.arg(format!(
            "delete element {} {NFT_TABLE} {} {{ {element} }}",
            self.family, self.set
        ));
        c
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", self.family, NFT_TABLE]) {
            eprintln!(
                "bench: warning: removing nft table {} {NFT_TABLE}: {e}",
                self.family
            );
        }
    }
}

/// Whether iptables is the nf_tables flavour (its rules live in nft's
/// `table ip filter`, which it creates when missing).
fn iptables_is_nft() -> bool {
    util::output(Command::new("iptables").arg("-V")).is_ok_and(|v| v.contains("nf_tables"))
}

fn nft_filter_table_exists() -> bool {
    nft(&["list", "table", "ip", "filter"]).is_ok()
}

/// The iptables chain `PCBENCH` and the OUTPUT rule that jumps to it;
/// removed on drop, with the `filter` table itself when the chain's
/// creation made it (iptables-nft) and it holds nothing else.
pub(super) struct IptablesChain {
    remove_filter_table: bool,
}

impl IptablesChain {
    /// Loads one ACCEPT rule per uid, then a reset, for TCP to `port`, in
    /// one `iptables-restore --noflush`; returns the guard and how long the
    /// load took.
    pub(super) fn load(port: u16, uids: &[u32], scratch: &Path) -> Result<(Self, Duration)> {
        let made_table = iptables_is_nft() && !nft_filter_table_exists();
        let me = Self {
            remove_filter_table: made_table,
        };
        let mut text = String::with_capacity(uids.len() * 56 + 256);
        text.push_str("*filter\n");
        let _ = writeln!(text, ":{IPT_CHAIN} - [0:0]");
        let _ = writeln!(text, "-A OUTPUT -p tcp --dport {port} -j {IPT_CHAIN}");
        for uid in uids {
            let _ = writeln!(text, "-A {IPT_CHAIN} -m owner --uid-owner {uid} -j ACCEPT");
        }
        let _ = writeln!(
            text,
            "-A {IPT_CHAIN} -p tcp -j REJECT --reject-with tcp-reset"
        );
        text.push_str("COMMIT\n");
        let file = scratch.join("iptables.rules");
        fs::write(&file, text)?;
        let started = Instant::now();
        let result = util::output(Command::new("iptables-restore").arg("--noflush").arg(&file));
        let took = started.elapsed();
        let _ = fs::remove_file(&file);
        result?;
        Ok((me, took))
    }
}

impl Drop for IptablesChain {
    fn drop(&mut self) {
        remove_iptables_chain();
        if self.remove_filter_table {
            let rules = util::output(Command::new("iptables-save").args(["-t", "filter"]))
                .unwrap_or_default();
            if !rules.lines().any(|l| l.starts_with("-A ")) {
                let _ = nft(&["delete", "table", "ip", "filter"]);
            }
        }
    }
}

/// Deletes every OUTPUT rule that jumps to `PCBENCH`, then the chain.
fn remove_iptables_chain() {
    let Ok(rules) = util::output(Command::new("iptables").args(["-S", "OUTPUT"])) else {
        return;
    };
    for rule in rules
        .lines()
        .filter(|l| l.ends_with(&format!("-j {IPT_CHAIN}")))
    {
        let Some(spec) = rule.strip_prefix("-A OUTPUT ") else {
            continue;
        };
        let mut cmd = Command::new("iptables");
        cmd.args(["-D", "OUTPUT"]).args(spec.split_whitespace());
        if let Err(e) = util::output(&mut cmd) {
            eprintln!("bench: warning: {e}");
        }
    }
    if util::output(Command::new("iptables").args(["-S", IPT_CHAIN])).is_ok() {
        for op in ["-F", "-X"] {
            if let Err(e) = util::output(Command::new("iptables").args([op, IPT_CHAIN])) {
                eprintln!("bench: warning: {e}");
            }
        }
    }
}

/// Removes the bench's tables and chain left by a crashed run.
pub(super) fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let tables = nft(&["list", "tables"]).unwrap_or_default();
    for family in ["inet", "netdev"] {
        if tables
            .lines()
            .any(|l| l.trim() == format!("table {family} {NFT_TABLE}"))
        {
            match nft(&["delete", "table", family, NFT_TABLE]) {
                Ok(_) => removed.push(format!("nft table {family} {NFT_TABLE}")),
                Err(e) => eprintln!("bench: warning: {e}"),
            }
        }
    }
    if util::output(Command::new("iptables").args(["-S", IPT_CHAIN])).is_ok() {
        remove_iptables_chain();
        removed.push(format!("iptables chain {IPT_CHAIN}"));
    }
    removed
}

/// The version lines of the peers, for the report.
pub(super) fn versions() -> (String, String) {
    let first = |cmd: &mut Command| {
        util::output(cmd)
            .map(|o| o.lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    (
        first(Command::new("nft").arg("--version")),
        first(Command::new("iptables").arg("-V")),
    )
}

/// Element text of an address for an nft set.
pub(super) fn addr_element(a: Ipv4Addr) -> String {
    a.to_string()
}

/// Fails unless nft and iptables are there (`cargo xtask setup` installs them).
pub(super) fn require_tools(ws: &util::Workspace) -> Result<()> {
    for tool in ["nft", "iptables", "iptables-restore", "iptables-save", "ip"] {
        if ws.which(tool).is_none() && !Path::new("/usr/sbin").join(tool).exists() {
            bail!("`{tool}` is missing; `cargo xtask setup` installs it");
        }
    }
    Ok(())
}
