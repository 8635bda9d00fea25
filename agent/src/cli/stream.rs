//! Streamed replies on the terminal: `list --json` and `revoke --json`
//! printed record by record, in exactly the form the whole reply had
//! (`{"ok": {"kind": "list", "standing": [...], ...}}`, pretty-printed),
//! and `revoke` one line per grant. The CLI holds one record at a time.
use std::{
    io::{self, Write},
    process::ExitCode,
};

use super::{fail, render};
use crate::{
    control::{ClientError, Record, Records, Reply, StreamOf},
    termtext,
};

/// The arrays of each kind of stream, in the order the agent sends them.
fn sections(of: StreamOf) -> (&'static str, &'static [&'static str]) {
    match of {
        StreamOf::List => ("list", &["standing", "grants", "pending", "locks"]),
        StreamOf::Revoked => ("revoked", &["grants"]),
    }
}

fn section_of(of: StreamOf, record: &Record) -> Option<usize> {
    match (of, record) {
        (StreamOf::List, Record::Standing(_)) => Some(0),
        (StreamOf::List, Record::Grant(_)) => Some(1),
        (StreamOf::List, Record::Pending(_)) => Some(2),
        (StreamOf::List, Record::Lock(_)) => Some(3),
        (StreamOf::Revoked, Record::Grant(_)) => Some(0),
        _ => None,
    }
}

fn element(record: &Record) -> serde_json::Result<String> {
    match record {
        Record::Standing(a) => serde_json::to_string_pretty(a),
        Record::Grant(g) => serde_json::to_string_pretty(g),
        Record::Pending(r) => serde_json::to_string_pretty(r),
        Record::Lock(l) => serde_json::to_string_pretty(l),
        Record::End { .. } => unreachable!("the end is not an element"),
    }
}

/// Writes the records of `records` to `out` as the pretty JSON of the
/// whole reply. On a failure mid-stream the JSON is still closed (so what
/// arrived is readable) and the failure returned.
pub(super) fn write_json(records: &mut Records, out: &mut impl Write) -> Result<(), StreamError> {
    let of = records.of();
    let (kind, names) = sections(of);
    write!(out, "{{\n  \"ok\": {{\n    \"kind\": \"{kind}\"")?;
    // The section open now, and whether it has an element yet.
    let mut open: Option<usize> = None;
    let mut empty = true;
    let mut failure = None;
    loop {
        let record = match records.next_record() {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(e) => {
                failure = Some(StreamError::Agent(e));
                break;
            }
        };
        let Some(index) = section_of(of, &record).filter(|&i| open.is_none_or(|o| o <= i)) else {
            failure = Some(StreamError::Agent(ClientError::BadReply(
                "a record out of order in a streamed reply".into(),
            )));
            break;
        };
        while open != Some(index) {
            if open.is_some() {
                close(out, empty)?;
            }
            let next = open.map_or(0, |o| o + 1);
            write!(out, ",\n    \"{}\": [", names[next])?;
            open = Some(next);
            empty = true;
        }
        let text = element(&record)
            .map_err(|e| StreamError::Agent(ClientError::BadReply(e.to_string())))?;
        out.write_all(if empty { b"\n" } else { b",\n" })?;
        for (i, line) in text.lines().enumerate() {
            if i > 0 {
                out.write_all(b"\n")?;
            }
            write!(out, "      {line}")?;
        }
        empty = false;
    }
    // Every section is written, empty ones too.
    loop {
        if open.is_some() {
            close(out, empty)?;
        }
        let next = open.map_or(0, |o| o + 1);
        if next >= names.len() {
            break;
        }
        write!(out, ",\n    \"{}\": [", names[next])?;
        open = Some(next);
        empty = true;
    }
    out.write_all(b"\n  }\n}\n")?;
    out.flush()?;
    failure.map_or(Ok(()), Err)
}

fn close(out: &mut impl Write, empty: bool) -> io::Result<()> {
    out.write_all(if empty { b"]" } else { b"\n    ]" })
}

/// Why a stream could not be printed in full.
#[derive(Debug)]
pub(super) enum StreamError {
    /// The agent's side: cut short, a bad line.
    Agent(ClientError),
    /// Writing to stdout (a closed pipe).
    Out(io::Error),
}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        StreamError::Out(e)
    }
}

/// `--json` of a streamed reply on stdout.
pub(super) fn print_json(mut records: Records) -> ExitCode {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = write_json(&mut records, &mut out);
    finish(records.of(), records.seen(), result)
}

/// A human-readable `revoke`: one line per grant as it arrives.
pub(super) fn print_revoked(mut records: Records) -> ExitCode {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut result = Ok(());
    loop {
        match records.next_record() {
            Ok(Some(Record::Grant(g))) => {
                let one = Reply::Revoked { grants: vec![g] };
                if let Err(e) = out.write_all(render(&termtext::escaped(&one)).as_bytes()) {
                    result = Err(StreamError::Out(e));
                    break;
                }
            }
            Ok(Some(_)) => {
                result = Err(StreamError::Agent(ClientError::BadReply(
                    "a revoke's reply names something other than a grant".into(),
                )));
                break;
            }
            Ok(None) => break,
            Err(e) => {
                result = Err(StreamError::Agent(e));
                break;
            }
        }
    }
    if result.is_ok() && records.seen() == 0 {
        let none = Reply::Revoked { grants: Vec::new() };
        result = out
            .write_all(render(&none).as_bytes())
            .map_err(StreamError::Out);
    }
    let result = result.and_then(|()| out.flush().map_err(StreamError::Out));
    finish(StreamOf::Revoked, records.seen(), result)
}

/// The exit code of a streamed reply. A revoke that was answered has
/// happened: a reply cut short afterwards is a warning, never a failure.
fn finish(of: StreamOf, seen: u64, result: Result<(), StreamError>) -> ExitCode {
    match (result, of) {
        (Ok(()), _) => ExitCode::SUCCESS,
        (Err(StreamError::Out(e)), _) => fail(1, format!("writing the reply failed: {e}")),
        (Err(StreamError::Agent(e)), StreamOf::Revoked) => {
            eprintln!(
                "portcullis: warning: the revoke was done, but its reply stopped after {seen} grant(s): {e}; `portcullis list` shows the grants that remain"
            );
            ExitCode::SUCCESS
        }
        (Err(StreamError::Agent(e)), StreamOf::List) => fail(3, e),
    }
}

#[cfg(test)]
mod tests {
    use std::{io::BufReader, io::Read, os::unix::net::UnixStream};

    use super::*;
    use crate::control::{AllowView, GrantView, ListView, Response};

    fn grant(id: u64) -> GrantView {
        GrantView {
            id,
            segment: "db".into(),
            identity: format!("uid:{id}"),
            ports: vec!["5432/tcp".into(), "6000-6010/udp".into()],
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: "2026-01-01T01:00:00Z".into(),
            remaining_secs: 60,
            actor: "root (uid 0)".into(),
            reason: Some("INC \"1\"".into()),
            request_id: None,
            suspended_until: None,
            usage: None,
        }
    }

    /// The records of `lines`, as the agent would send them after a header.
    fn records(of: StreamOf, lines: &[Record]) -> Records {
        let (mut agent, client) = UnixStream::pair().unwrap();
        let mut text = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut text, l).unwrap();
            text.push(b'\n');
        }
        agent.write_all(&text).unwrap();
        drop(agent);
        Records::new(of, BufReader::new(client.take(0)), "test.sock".into())
    }

    fn printed(of: StreamOf, lines: &[Record]) -> (String, Result<(), StreamError>) {
        let mut out = Vec::new();
        let result = write_json(&mut records(of, lines), &mut out);
        (String::from_utf8(out).unwrap(), result)
    }

    #[test]
    fn a_streamed_list_prints_exactly_as_the_whole_reply_did() {
        let standing = AllowView {
            segment: "db".into(),
            identity: "user:app".into(),
            ports: vec!["5432/tcp".into()],
            mode: "enforce".into(),
            unresolved: None,
            usage: None,
            window: None,
        };
        for (s, g) in [(0, 0), (1, 0), (0, 3), (2, 2)] {
            let list = ListView {
                standing: vec![standing.clone(); s],
                grants: (1..=g).map(grant).collect(),
                pending: Vec::new(),
                locks: Vec::new(),
            };
            let mut lines: Vec<Record> = list
                .standing
                .iter()
                .cloned()
                .map(Record::Standing)
                .collect();
            lines.extend(list.grants.iter().cloned().map(Record::Grant));
            lines.push(Record::End {
                records: lines.len() as u64,
            });
            let (text, result) = printed(StreamOf::List, &lines);
            assert!(result.is_ok());
            let whole = serde_json::to_string_pretty(&Response::Ok(Reply::List(list))).unwrap();
            assert_eq!(text, format!("{whole}\n"), "{s} standing, {g} grants");
        }
        let grants: Vec<GrantView> = (1..=2).map(grant).collect();
        let mut lines: Vec<Record> = grants.iter().cloned().map(Record::Grant).collect();
        lines.push(Record::End { records: 2 });
        let (text, _) = printed(StreamOf::Revoked, &lines);
        let whole = serde_json::to_string_pretty(&Response::Ok(Reply::Revoked { grants })).unwrap();
        assert_eq!(text, format!("{whole}\n"));
    }

    #[test]
    fn a_stream_without_its_end_is_cut_short_yet_printed_as_json() {
        let (text, result) = printed(StreamOf::List, &[Record::Grant(grant(7))]);
        assert!(
            matches!(result, Err(StreamError::Agent(ClientError::CutShort(1)))),
            "{result:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ok"]["grants"][0]["id"], 7);
        // A wrong count is refused too.
        let (_, result) = printed(
            StreamOf::List,
            &[Record::Grant(grant(7)), Record::End { records: 2 }],
        );
        assert!(matches!(
            result,
            Err(StreamError::Agent(ClientError::BadReply(_)))
        ));
        // A revoke cut short has still happened: exit 0.
        assert_eq!(
            finish(
                StreamOf::Revoked,
                1,
                Err(StreamError::Agent(ClientError::CutShort(1)))
            ),
            ExitCode::SUCCESS
        );
        assert_ne!(
            finish(
                StreamOf::List,
                1,
                Err(StreamError::Agent(ClientError::CutShort(1)))
            ),
            ExitCode::SUCCESS
        );
    }
}
