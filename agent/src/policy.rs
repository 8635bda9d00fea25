//! Segment policy: files on disk → one validated, deterministic `Policy`.
//!
//! Owns reading policy files and directories, the file format and its
//! rules, and the diagnostics a person sees when a rule is broken. It never
//! touches the kernel or the agent's state: applying a `Policy` is the
//! dataplane's job, and comparing two of them is how a reload is planned.
//!
//! # Layout
//! - [`diagnostic`](Diagnostic): located, human-readable problem reports.
//! - `schema`: one file's TOML → segments; per-segment rules.
//! - `validate`: rules across files (unique names, one segment per port)
//!   and the host check.
//! - `host`: the [`HostDirectory`] seam and the real [`SystemHost`].
//!
//! The format is documented for operators in `docs/policy.md`.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use sha2::{Digest, Sha256};

use crate::identity::{Identity, PortRange, Protocol};

mod diagnostic;
mod host;
/// Disjoint port ranges, for overlap checks in O(log n).
mod ranges;
mod schema;
mod trust;
mod validate;
/// Time windows of a jit table (`windows`, `timezone`).
pub mod windows;

/// Offsets → line:column, for other files reported in the same style
/// (the agent's configuration).
pub(crate) use diagnostic::SourceMap;
pub use diagnostic::{Diagnostic, Diagnostics, Location, Severity};
pub use host::{HostCheck, HostDirectory, SystemHost};
pub use schema::parse_str;
pub use trust::{FileTrust, MAX_POLICY_BYTES};

/// Every segment from every policy file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub segments: BTreeMap<String, Segment>,
    /// The files read, in the order read.
    pub files: Vec<PathBuf>,
    /// SHA-256 (hex) over every file's path and contents, in path order: equal
    /// digests mean the same policy text, so a reload can be skipped.
    pub digest: String,
    /// A file says `allow_empty = true`: this policy may protect nothing,
    /// and its files may define no segments, on purpose.
    pub allow_empty: bool,
}

/// A named set of protected ports and who may reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    pub description: Option<String>,
    /// Never empty; no two ranges overlap, here or in any other segment.
    pub ports: Vec<PortRange>,
    /// Standing access: these identities may always connect.
    pub allow: Vec<Identity>,
    /// Windowed standing access: these identities may connect inside
    /// their windows (`allow = [{ identity = ..., windows = [...] }]`).
    /// No identity is both here and in `allow`.
    pub windowed: Vec<WindowedAllow>,
    /// Just-in-time access; `None` means grants to this segment are refused.
    pub jit: Option<Jit>,
    /// Enforce refusals, or only record them (`mode = "audit"`).
    pub mode: Mode,
    /// Where the segment's name was written.
    pub origin: Location,
}

/// A standing allow open only inside its windows: the agent opens it at
/// each window's start with the window's end as the kernel expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowedAllow {
    pub identity: Identity,
    /// The windows, in the entry's `timezone`, else the segment's jit
    /// `timezone`, else the host's.
    pub windows: windows::Windows,
    /// Where the entry was written.
    pub location: Location,
}

/// What the kernel does with a connection the segment refuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse it (EPERM, or the packet is dropped). The default.
    #[default]
    Enforce,
    /// Let it through and log it as `would_deny`: for rolling out a
    /// segment without breaking whoever it did not list yet.
    Audit,
}

impl Mode {
    /// The name written in policy files and shown by the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "audit" => Ok(Mode::Audit),
            other => Err(format!(
                "unknown mode `{other}`: write \"enforce\" or \"audit\""
            )),
        }
    }
}

/// Rules for time-bounded grants to one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jit {
    /// No grant or request may ask for longer.
    pub max_ttl: Duration,
    /// The TTL of a grant that names none; at most `max_ttl`.
    pub default_ttl: Duration,
    /// Who may approve requests and grant access besides root; only
    /// `user:`, `uid:`, `group:` and `gid:` identities.
    pub approvers: Vec<Identity>,
    /// Whether a request or grant must state a reason.
    pub require_reason: bool,
    /// When requests and grants are taken (`windows`, `timezone`);
    /// `None`: at any time.
    pub windows: Option<windows::Windows>,
    /// A grant nothing used for this long lapses (`idle_timeout`).
    pub idle_timeout: Option<Duration>,
    /// How many distinct approvers (never the requester) must approve a
    /// request before it is granted (`approvals_required`, default 1).
    pub approvals_required: u32,
    /// Break-glass (`break_glass = true`): access at once, without an
    /// approver, for at most its own cap; `None`: not allowed.
    pub break_glass: Option<BreakGlass>,
}

/// A segment's break-glass rules (`break_glass_max_ttl`, `break_glass_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// The longest access break-glass opens; at most the segment's `max_ttl`.
    pub max_ttl: Duration,
    /// Who may break the glass (`user:`, `uid:`, `group:`, `gid:`); empty:
    /// any local user, as for `request`.
    pub by: Vec<Identity>,
}

impl Policy {
    /// The segment protecting `port`, if any (at most one, by validation).
    pub fn segment_for(&self, port: u16, proto: Protocol) -> Option<&Segment> {
        self.segments
            .values()
            .find(|segment| segment.ports.iter().any(|r| r.contains(port, proto)))
    }

    /// One line per segment, for logs and `portcullis status`, e.g.
    /// `payments-db: 5432/tcp, 6432/tcp; 2 standing allows; jit max 1h,
    /// approvers group:secops`.
    pub fn summary_lines(&self) -> Vec<String> {
        self.segments.values().map(Segment::summary).collect()
    }
}

impl Segment {
    fn summary(&self) -> String {
        let ports = join(&self.ports);
        let mut allows = match self.allow.len() + self.windowed.len() {
            0 => "no standing allows".to_owned(),
            1 => "1 standing allow".to_owned(),
            n => format!("{n} standing allows"),
        };
        if !self.windowed.is_empty() {
            allows.push_str(&format!(" ({} windowed)", self.windowed.len()));
        }
        let jit = match &self.jit {
            None => "no jit".to_owned(),
            Some(jit) => {
                let approvers = if jit.approvers.is_empty() {
                    "root only".to_owned()
                } else {
                    join(&jit.approvers)
                };
                format!(
                    "jit max {}, approvers {approvers}",
                    crate::duration::format(jit.max_ttl, " ")
                )
            }
        };
        format!("{}: {ports}; {allows}; {jit}", self.name)
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads every policy file in `paths` (files, or directories whose
/// non-hidden `*.toml` files are read in name order), checks them together
/// and against `host`, and returns the policy if nothing is an error.
///
/// The diagnostics hold every problem found, warnings included, sorted by
/// place.
pub fn load_paths(
    paths: &[PathBuf],
    host: &dyn HostDirectory,
    host_check: HostCheck,
) -> (Option<Policy>, Diagnostics) {
    load_paths_trusted(paths, host, host_check, &FileTrust::default())
}

/// [`load_paths`], with the agent's rules for which files are trusted
/// (see `trust`): a file that breaks them is an error naming the file and
/// the fix.
pub fn load_paths_trusted(
    paths: &[PathBuf],
    host: &dyn HostDirectory,
    host_check: HostCheck,
    trust: &FileTrust,
) -> (Option<Policy>, Diagnostics) {
    let mut diagnostics = Diagnostics::default();
    let files = policy_files(paths, trust, &mut diagnostics);
    let mut texts = Vec::new();
    let mut segments = Vec::new();
    let mut allow_empty = false;
    for file in files {
        let Some(text) = read_policy_file(&file, &mut diagnostics) else {
            continue;
        };
        let (parsed, found, declared) = schema::parse_file_declared(&file, &text);
        allow_empty |= declared;
        segments.extend(parsed);
        diagnostics.merge(found);
        texts.push((file, text));
    }
    validate::segment_count(&segments, &mut diagnostics);
    validate::duplicate_names(&segments, &mut diagnostics);
    validate::port_conflicts(&segments, &mut diagnostics);
    validate::host_names(&segments, host, host_check, &mut diagnostics);
    diagnostics.sort();
    // Bounded output for any input: at most the first problems per file
    // (and in all), with a count of the rest.
    diagnostics.cap();
    if diagnostics.has_errors() {
        return (None, diagnostics);
    }
    let policy = Policy {
        digest: digest(&texts),
        files: texts.into_iter().map(|(file, _)| file).collect(),
        allow_empty,
        segments: segments
            .into_iter()
            .map(|p| (p.segment.name.clone(), p.segment))
            .collect(),
    };
    (Some(policy), diagnostics)
}

/// Expands `paths` into the files to read, reporting paths that cannot be
/// read and directories with no policy in them.
fn policy_files(
    paths: &[PathBuf],
    trust: &FileTrust,
    diagnostics: &mut Diagnostics,
) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        let metadata = match fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(error) => {
                diagnostics.push(
                    Diagnostic::error(
                        None,
                        format!("cannot read policy path `{}`: {error}", path.display()),
                    )
                    .with_help("pass a policy file or a directory of *.toml files"),
                );
                continue;
            }
        };
        if !metadata.is_dir() {
            // A file named explicitly is read whatever its extension.
            files.push(path.clone());
            continue;
        }
        if let Err(d) = trust::check_dir(path) {
            diagnostics.push(d);
            continue;
        }
        match directory_policy_files(path) {
            Ok(found) if found.is_empty() => diagnostics.push(
                Diagnostic::warning(
                    None,
                    format!("policy directory `{}` has no *.toml files", path.display()),
                )
                .with_help("no ports are protected until a policy file is added"),
            ),
            Ok(found) => {
                for file in found {
                    match trust::check_entry(path, &file, trust) {
                        Ok(()) => files.push(file),
                        Err(d) => diagnostics.push(d),
                    }
                }
            }
            Err(error) => diagnostics.push(Diagnostic::error(
                None,
                format!("cannot read policy directory `{}`: {error}", path.display()),
            )),
        }
    }
    // The same file given twice (as itself and through its directory) is
    // read once; its segments would otherwise clash with themselves.
    let mut seen = std::collections::HashSet::new();
    files.retain(|file| seen.insert(file.clone()));
    files
}

/// The non-hidden `*.toml` entries of `dir` that are files (or links to
/// files), sorted by name so that loading is deterministic.
fn directory_policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        // Follows links: a broken link is kept, and reading it reports why.
        let path = entry.path();
        if fs::metadata(&path).map_or(true, |m| !m.is_dir()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_policy_file(file: &Path, diagnostics: &mut Diagnostics) -> Option<String> {
    let bytes = match trust::read(file) {
        Ok(bytes) => bytes,
        Err(d) => {
            diagnostics.push(d);
            return None;
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(error) => {
            let offset = error.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(error.as_bytes());
            let location = SourceMap::new(file, &text).location(offset);
            diagnostics.push(
                Diagnostic::error(Some(location), "policy files must be UTF-8 text")
                    .with_help("re-save the file as UTF-8"),
            );
            None
        }
    }
}

/// Whether replacing `old` by `new` looks like a policy caught in the middle
/// of a rewrite rather than an intent: the new policy protects nothing
/// while the old one protected something, or a file that defined segments
/// now defines none (emptied, truncated). Either is refused unless a file
/// of the new policy says `allow_empty = true` (or the operator forces it).
/// A file that is gone, and segments moved between files, are intents.
pub fn suspicious_shrink(old: &Policy, new: &Policy) -> Option<String> {
    if new.allow_empty || old.segments.is_empty() {
        return None;
    }
    let fix = "if that is intended, add `allow_empty = true` to a policy file (docs/policy.md); \
               if a deploy is rewriting the files, the reload is retried when they change again";
    if new.segments.is_empty() {
        return Some(format!(
            "the new policy protects nothing (it would remove every segment: {}); refused, still enforcing the previous policy; {fix}",
            old.segments.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let defined_in =
        |p: &Policy, f: &Path| p.segments.values().filter(|s| s.origin.file == f).count();
    for file in &new.files {
        let before = defined_in(old, file);
        if before > 0 && defined_in(new, file) == 0 {
            return Some(format!(
                "policy file `{}` defined {before} segment(s) and now defines none (emptied or being rewritten?); refused, still enforcing the previous policy; {fix}",
                file.display()
            ));
        }
    }
    None
}

/// SHA-256 over (path, contents) of each file, in path order. Each part is
/// length-prefixed so that moving bytes between a path and a body, or
/// between files, changes the digest.
fn digest(texts: &[(PathBuf, String)]) -> String {
    let mut sorted: Vec<&(PathBuf, String)> = texts.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    for (path, text) in sorted {
        let path = path.as_os_str().as_encoded_bytes();
        for part in [path, text.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
