//! Diagnostics: what policy loading reports to a person, and where.
//!
//! Owns the report types (`Diagnostic`, `Diagnostics`, `Location`) and the
//! mapping from byte offsets in a file to 1-based line:column. It does not
//! decide what is wrong; `schema` and `validate` do.
use std::{
    collections::BTreeMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

/// A place in a policy file. Line and column are 1-based; the column counts
/// characters, not bytes, as editors do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The policy cannot be used.
    Error,
    /// The policy can be used, but probably does not do what was meant.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// `None` when the problem has no place in a file (a missing directory).
    pub location: Option<Location>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(location: Option<Location>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            location,
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(location: Option<Location>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(location, message)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    /// `error: path:3:9: port 70000 is out of range` and, when there is
    /// help, `  help: ports are 1-65535` on the next line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity)?;
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found, in file order, and a count per file of those
/// found beyond [`MAX_PER_FILE`] (kept only as a number, so a file with a
/// million problems costs a hundred and a count, not a million).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>, Omitted);

/// Per file (`None`: no place): problems kept, errors and warnings left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Omitted(BTreeMap<Option<PathBuf>, (usize, usize, usize)>);

impl From<Vec<Diagnostic>> for Diagnostics {
    fn from(all: Vec<Diagnostic>) -> Self {
        Diagnostics(all, Omitted::default())
    }
}

impl Diagnostics {
    /// Whether any error was found (kept or only counted).
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some() || self.1 .0.values().any(|&(_, e, _)| e > 0)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds a problem, or only counts it once its file has [`MAX_PER_FILE`].
    pub fn push(&mut self, diagnostic: Diagnostic) {
        let file = diagnostic.location.as_ref().map(|l| l.file.clone());
        let (kept, errors, warnings) = self.1 .0.entry(file).or_default();
        if *kept < MAX_PER_FILE {
            *kept += 1;
            self.0.push(diagnostic);
        } else if diagnostic.severity == Severity::Error {
            *errors += 1;
        } else {
            *warnings += 1;
        }
    }

    /// Adds every problem of `other`, and its counts of those left out.
    pub fn merge(&mut self, other: Diagnostics) {
        for (file, (_, e, w)) in other.1 .0 {
            let entry = self.1 .0.entry(file).or_default();
            entry.1 += e;
            entry.2 += w;
        }
        for d in other.0 {
            self.push(d);
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// Orders by place (file, line, column); problems without a place come
    /// first. Stable, so problems at one place keep the order found.
    pub(crate) fn sort(&mut self) {
        self.0.sort_by(|a, b| a.location.cmp(&b.location));
    }
}

/// At most this many problems are reported per file; the rest are counted.
pub(crate) const MAX_PER_FILE: usize = 100;
/// At most this many problems are reported for all files together.
pub(crate) const MAX_TOTAL: usize = 1000;
/// A message or help text longer than this many characters is cut (a
/// message may quote what the file says, and a file may say a lot).
pub(crate) const MAX_TEXT_CHARS: usize = 1024;

impl Diagnostics {
    /// Keeps the first [`MAX_PER_FILE`] problems of each file (in the
    /// order they are now in) and [`MAX_TOTAL`] in all, cuts long texts,
    /// and adds for each file with more one problem that says how many
    /// errors and warnings were left out. An error left out keeps the
    /// count of errors above zero: the summary is then an error too.
    pub(crate) fn cap(&mut self) {
        let mut kept: Vec<Diagnostic> = Vec::with_capacity(self.0.len().min(MAX_TOTAL + 1));
        // (file, shown, omitted errors, omitted warnings) of the file in hand.
        let mut file: Option<Option<PathBuf>> = None;
        let (mut shown, mut errors, mut warnings) = (0usize, 0usize, 0usize);
        let mut total_errors = 0usize;
        let mut total_warnings = 0usize;
        // Those left out when they were found, per file.
        let mut counted = std::mem::take(&mut self.1 .0);
        let mut flush = |kept: &mut Vec<Diagnostic>, f: &Option<PathBuf>, e: usize, w: usize| {
            let (_, e0, w0) = counted.remove(f).unwrap_or_default();
            let (e, w) = (e + e0, w + w0);
            if e + w > 0 {
                kept.push(omitted(f.as_deref(), e, w, MAX_PER_FILE, "per file"));
            }
        };
        for mut d in std::mem::take(&mut self.0) {
            let this = d.location.as_ref().map(|l| l.file.clone());
            if file.as_ref() != Some(&this) {
                if let Some(f) = &file {
                    flush(&mut kept, f, errors, warnings);
                }
                file = Some(this);
                (shown, errors, warnings) = (0, 0, 0);
            }
            let is_error = d.severity == Severity::Error;
            if shown >= MAX_PER_FILE {
                if is_error {
                    errors += 1
                } else {
                    warnings += 1
                }
                continue;
            }
            if kept.len() >= MAX_TOTAL {
                if is_error {
                    total_errors += 1
                } else {
                    total_warnings += 1
                }
                continue;
            }
            shown += 1;
            cut(&mut d.message);
            if let Some(help) = &mut d.help {
                cut(help);
            }
            kept.push(d);
        }
        if let Some(f) = &file {
            flush(&mut kept, f, errors, warnings);
        }
        if total_errors + total_warnings > 0 {
            kept.push(omitted(
                None,
                total_errors,
                total_warnings,
                MAX_TOTAL,
                "in all",
            ));
        }
        self.0 = kept;
    }
}

/// The problem that stands for the ones [`Diagnostics::cap`] left out.
fn omitted(
    file: Option<&Path>,
    errors: usize,
    warnings: usize,
    max: usize,
    scope: &str,
) -> Diagnostic {
    let what = match (errors, warnings) {
        (e, 0) => format!("{e} more error(s)"),
        (0, w) => format!("{w} more warning(s)"),
        (e, w) => format!("{e} more error(s) and {w} more warning(s)"),
    };
    let message = match file {
        Some(f) => format!(
            "{what} in {} not shown (at most {max} are reported {scope})",
            f.display()
        ),
        None => format!("{what} not shown (at most {max} are reported {scope})"),
    };
    let d = if errors > 0 {
        Diagnostic::error(None, message)
    } else {
        Diagnostic::warning(None, message)
    };
    d.with_help("fix the problems shown and check again (`portcullis check FILE`)")
}

/// Cuts `text` to [`MAX_TEXT_CHARS`] characters, marking the cut.
fn cut(text: &mut String) {
    if let Some((at, _)) = text.char_indices().nth(MAX_TEXT_CHARS) {
        let rest = text.len() - at;
        text.truncate(at);
        text.push_str(&format!("… ({rest} more bytes)"));
    }
}

impl Extend<Diagnostic> for Diagnostics {
    fn extend<T: IntoIterator<Item = Diagnostic>>(&mut self, iter: T) {
        for d in iter {
            self.push(d);
        }
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    /// One block per diagnostic, each on its own line(s).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Turns byte offsets in one file's text into `Location`s.
pub(crate) struct SourceMap<'a> {
    file: &'a Path,
    text: &'a str,
    /// Byte offset where each line starts; line 1 starts at 0.
    line_starts: Vec<usize>,
    /// Whether each line is plain ASCII (then a column is a byte count, which
    /// keeps locations O(1) even on one very long line of identities).
    ascii_lines: Vec<bool>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let ascii_lines = text.split('\n').map(str::is_ascii).collect();
        SourceMap {
            file,
            text,
            line_starts,
            ascii_lines,
        }
    }

    pub(crate) fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        // A span from the parser always falls on a character boundary; if
        // one ever did not, counting bytes is the honest fallback.
        let column = if self.ascii_lines.get(line - 1).copied().unwrap_or(false) {
            offset - start
        } else {
            self.text
                .get(start..offset)
                .map_or(offset - start, |prefix| prefix.chars().count())
        };
        Location {
            file: self.file.to_owned(),
            line,
            column: column + 1,
        }
    }

    /// Where a span starts, if the parser gave one.
    pub(crate) fn span(&self, span: Option<Range<usize>>) -> Option<Location> {
        span.map(|span| self.location(span.start))
    }

    /// The start of the file: the place for problems with the file as a
    /// whole.
    pub(crate) fn start(&self) -> Location {
        self.location(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines_and_character_columns() {
        let text = "a = 1\n\nb = \"é\" x\n";
        let map = SourceMap::new(Path::new("p.toml"), text);
        let at = |offset| {
            let l = map.location(offset);
            (l.line, l.column)
        };
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(4), (1, 5));
        assert_eq!(at(6), (2, 1));
        assert_eq!(at(7), (3, 1));
        // `x` follows a two-byte `é`: byte column 10, character column 9.
        assert_eq!(at(text.find('x').unwrap()), (3, 9));
        assert_eq!(at(text.len()), (4, 1));
        assert_eq!(at(text.len() + 10), (4, 1));
    }

    fn at(file: &str, line: usize) -> Option<Location> {
        Some(Location {
            file: file.into(),
            line,
            column: 1,
        })
    }

    #[test]
    fn at_most_the_first_problems_of_each_file_are_kept_with_a_count_of_the_rest() {
        let mut all = Diagnostics::default();
        all.push(Diagnostic::warning(None, "no place"));
        for line in 1..=MAX_PER_FILE + 50 {
            all.push(Diagnostic::error(at("a.toml", line), format!("bad {line}")));
        }
        for line in 1..=MAX_PER_FILE + 3 {
            all.push(Diagnostic::warning(at("b.toml", line), "meh"));
        }
        all.push(Diagnostic::error(at("c.toml", 1), "x".repeat(5000)));
        // Beyond the cap, problems are only counted as they are found.
        assert_eq!(all.0.len(), 1 + MAX_PER_FILE + MAX_PER_FILE + 1);
        assert!(all.has_errors());
        all.cap();
        let a: Vec<_> = all.iter().filter(|d| d.message.contains("bad")).collect();
        assert_eq!(a.len(), MAX_PER_FILE);
        assert_eq!(a[0].message, "bad 1");
        assert_eq!(a[MAX_PER_FILE - 1].message, format!("bad {MAX_PER_FILE}"));
        let text = all.to_string();
        assert!(
            text.contains(
                "error: 50 more error(s) in a.toml not shown (at most 100 are reported per file)"
            ),
            "{text}"
        );
        assert!(
            text.contains("warning: 3 more warning(s) in b.toml not shown"),
            "{text}"
        );
        // The summary of a file follows that file's problems.
        let summary = all
            .iter()
            .position(|d| d.message.contains("in a.toml"))
            .unwrap();
        assert_eq!(all.0[summary - 1].message, format!("bad {MAX_PER_FILE}"));
        let long = all.iter().find(|d| d.message.starts_with("xxx")).unwrap();
        assert!(
            long.message.ends_with("… (3976 more bytes)"),
            "{}",
            &long.message[1000..]
        );
        assert!(long.message.chars().count() < MAX_TEXT_CHARS + 30);
        assert_eq!(all.0.len(), 1 + MAX_PER_FILE + 1 + MAX_PER_FILE + 1 + 1);
    }

    #[test]
    fn at_most_max_total_problems_are_kept_in_all_and_errors_stay_errors() {
        let mut all = Diagnostics::default();
        for f in 0..30 {
            for line in 1..=60 {
                all.push(Diagnostic::error(at(&format!("f{f:02}.toml"), line), "e"));
            }
        }
        all.cap();
        let shown = all.iter().filter(|d| d.message == "e").count();
        assert_eq!(shown, MAX_TOTAL);
        let text = all.to_string();
        assert!(
            text.contains("error: 800 more error(s) not shown (at most 1000 are reported in all)"),
            "{text}"
        );
        assert!(all.has_errors());
        // Only errors left out: still an error, never silently fewer.
        let mut only = Diagnostics::default();
        for line in 1..=MAX_PER_FILE + 1 {
            only.push(Diagnostic::error(at("a.toml", line), "e"));
        }
        only.cap();
        assert_eq!(only.errors().count(), MAX_PER_FILE + 1);
    }

    #[test]
    fn display_matches_the_documented_form() {
        let location = Location {
            file: "policies/db.toml".into(),
            line: 3,
            column: 9,
        };
        let d = Diagnostic::error(Some(location), "port 70000 is out of range")
            .with_help("ports are 1-65535");
        assert_eq!(
            d.to_string(),
            "error: policies/db.toml:3:9: port 70000 is out of range\n  help: ports are 1-65535"
        );
        let w = Diagnostic::warning(None, "no policy files");
        assert_eq!(w.to_string(), "warning: no policy files");
        let all = Diagnostics::from(vec![d, w]);
        assert!(all.has_errors());
        assert_eq!(all.to_string().lines().count(), 3);
    }
}
