//! The client's end of the control socket: connect (turning "missing,
//! not running, no permission" into plain words), send one request, and
//! read the answer: a whole reply, or the header of a streamed one whose
//! records are read on demand.
use std::{
    io::{self, BufReader, Read, Write},
    os::unix::net::UnixStream as StdUnixStream,
    path::Path,
};

use super::{stream, ClientError, Records, Reply, Request, Response, IO_TIMEOUT};

/// An answer: a whole reply, or the records of a streamed one.
pub(crate) enum Answer {
    Whole(Response),
    Stream(Records),
}

/// Sends one request and waits for the answer; a streamed reply is
/// gathered into one [`Reply`] (use [`open`] to read it record by record).
pub(crate) fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    match open(socket, request)? {
        Answer::Whole(response) => Ok(response),
        Answer::Stream(records) => records.collect().map(Response::Ok),
    }
}

/// Sends one request and reads the first line of the answer: the whole
/// reply, or the header of a streamed one whose records are read on demand.
pub(crate) fn open(socket: &Path, request: &Request) -> Result<Answer, ClientError> {
    let conn = StdUnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ClientError::SocketMissing(socket.into()),
        io::ErrorKind::ConnectionRefused => ClientError::NotRunning(socket.into()),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: socket.into(),
            group: socket_group(socket),
        },
        _ => ClientError::Connect {
            path: socket.into(),
            source: e,
        },
    })?;
    let io_err = |source| ClientError::Io {
        path: socket.into(),
        source,
    };
    conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    // The agent answers a request it will not read in full (too long) and
    // closes: the write then fails, but its refusal is there to read.
    let written = (&conn).write_all(&line);
    let mut reader = BufReader::new(conn.take(0));
    let reply = match (written, stream::read_line(&mut reader, socket)) {
        (_, Ok(Some(reply))) => reply,
        (Err(e), _) => return Err(io_err(e)),
        (Ok(()), Err(e)) => return Err(e),
        (Ok(()), Ok(None)) => {
            return Err(ClientError::BadReply(
                "the agent closed the connection without answering".into(),
            ))
        }
    };
    let response: Response =
        serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
    Ok(match response {
        Response::Ok(Reply::Stream { of }) => {
            Answer::Stream(Records::new(of, reader, socket.to_path_buf()))
        }
        whole => Answer::Whole(whole),
    })
}

/// The name of the group that owns `socket` (or of its gid), escaped for
/// a terminal; `None` when it is root's group or cannot be read.
fn socket_group(socket: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(socket).ok()?.gid();
    if gid == 0 {
        return None;
    }
    let name = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| format!("gid {gid}"), |g| g.name);
    Some(crate::termtext::escape(&name).into_owned())
}
