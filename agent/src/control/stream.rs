//! Streamed replies: a reply of any size as a header line, one line per
//! record, and an end line that counts them.
//!
//! `list` and `revoke` can name millions of grants; one JSON object for
//! all of them cannot be read with bounded memory, and a client with a
//! size cap broke on it (issue 14 item 5). So their replies are
//!
//! ```text
//! {"ok":{"kind":"stream","of":"list"}}
//! {"standing":{...}}          one AllowView, in segment order
//! {"grant":{...}}             one GrantView, in id order
//! {"pending":{...}}           one RequestView, oldest first
//! {"end":{"records":N}}       N records came before it
//! ```
//!
//! A stream without its end line was cut short: the client says so (and
//! for a revoke, says that the revoke itself happened). Each line is at
//! most [`MAX_LINE`] bytes; the client never holds more than one.
use std::{
    io::{self, BufRead, BufReader},
    os::unix::net::UnixStream as StdUnixStream,
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use super::{AllowView, ClientError, GrantView, ListView, LockView, Reply, RequestView};

/// The largest line of a reply the client reads: a whole reply (`status`
/// with its capped reload errors) or one record of a stream (a standing
/// allow on a segment of every port).
pub(crate) const MAX_LINE: usize = 16 << 20;

/// What a streamed reply lists.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StreamOf {
    /// `list`: standing allows, then grants, then pending requests.
    List,
    /// `revoke`: the grants revoked (the revoke happened once the header
    /// was sent).
    Revoked,
}

/// One line of a streamed reply after its header.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Record {
    Standing(AllowView),
    Grant(GrantView),
    Pending(RequestView),
    /// A locked identity (`list`, first).
    Lock(LockView),
    /// The last line: how many records came before it.
    End {
        records: u64,
    },
}

impl Record {
    /// How much a record weighs in a page: its ports are most of its size.
    pub(crate) fn weight(&self) -> usize {
        1 + match self {
            Record::Standing(a) => a.ports.len(),
            Record::Grant(g) => g.ports.len(),
            Record::Pending(r) => r.ports.len(),
            Record::Lock(_) => 0,
            Record::End { .. } => 0,
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `Ok(None)` at the end of
/// the connection.
pub(super) fn read_line(
    reader: &mut BufReader<io::Take<StdUnixStream>>,
    path: &std::path::Path,
) -> Result<Option<String>, ClientError> {
    reader.get_mut().set_limit(MAX_LINE as u64);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) if line.ends_with('\n') => Ok(Some(line)),
        Ok(_) if reader.get_ref().limit() == 0 => Err(ClientError::BadReply(format!(
            "a line of the reply is longer than {MAX_LINE} bytes"
        ))),
        // The agent closed mid-line: the caller sees a cut reply.
        Ok(_) => Ok(None),
        Err(e) if !line.is_empty() => Err(ClientError::BadReply(format!(
            "reading the reply failed mid-line: {e}"
        ))),
        Err(source) => Err(ClientError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The records of a streamed reply, read one at a time.
pub(crate) struct Records {
    of: StreamOf,
    reader: BufReader<io::Take<StdUnixStream>>,
    path: PathBuf,
    seen: u64,
    done: bool,
}

impl Records {
    pub(crate) fn new(
        of: StreamOf,
        reader: BufReader<io::Take<StdUnixStream>>,
        path: PathBuf,
    ) -> Self {
        Self {
            of,
            reader,
            path,
            seen: 0,
            done: false,
        }
    }

    pub(crate) fn of(&self) -> StreamOf {
        self.of
    }

    /// Records read so far.
    pub(crate) fn seen(&self) -> u64 {
        self.seen
    }

    /// The next record; `Ok(None)` after the end line (whose count must
    /// match); an error if the stream stops without one or a line is bad.
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let Some(line) = read_line(&mut self.reader, &self.path)? else {
            return Err(ClientError::CutShort(self.seen));
        };
        let record: Record =
            serde_json::from_str(&line).map_err(|e| ClientError::BadReply(e.to_string()))?;
        match record {
            Record::End { records } if records == self.seen => {
                self.done = true;
                Ok(None)
            }
            Record::End { records } => Err(ClientError::BadReply(format!(
                "the agent counted {records} records and sent {}",
                self.seen
            ))),
            record => {
                self.seen += 1;
                Ok(Some(record))
            }
        }
    }

    /// Every record, gathered into the reply they make up (for callers
    /// that need all of it at once, such as a table).
    pub(crate) fn collect(mut self) -> Result<Reply, ClientError> {
        let mut list = ListView {
            standing: Vec::new(),
            grants: Vec::new(),
            pending: Vec::new(),
            locks: Vec::new(),
        };
        while let Some(record) = self.next_record()? {
            match record {
                Record::Standing(a) => list.standing.push(a),
                Record::Grant(g) => list.grants.push(g),
                Record::Pending(r) => list.pending.push(r),
                Record::Lock(l) => list.locks.push(l),
                Record::End { .. } => unreachable!("next_record consumes the end"),
            }
        }
        Ok(match self.of {
            StreamOf::List => Reply::List(list),
            StreamOf::Revoked => Reply::Revoked {
                grants: list.grants,
            },
        })
    }
}
