//! Diagnostics: what policy loading reports to a person, and where.
//!
//! Owns the report types (`Diagnostic`, `Diagnostics`, `Location`) and the
//! mapping from byte offsets in a file to 1-based line:column. It does not
//! decide what is wrong; `schema` and `validate` do.
use std::{
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

/// Every problem found, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
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

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
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

impl Extend<Diagnostic> for Diagnostics {
    fn extend<T: IntoIterator<Item = Diagnostic>>(&mut self, iter: T) {
        self.0.extend(iter);
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
        let all = Diagnostics(vec![d, w]);
        assert!(all.has_errors());
        assert_eq!(all.to_string().lines().count(), 3);
    }
}
