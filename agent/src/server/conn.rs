//! The control socket's connections: admission, reading one request,
//! dispatching it to the agent off the async workers, and the reply.
//!
//! Owns the per-connection deadlines and limits, which requests wake the
//! main loop, and how large replies are streamed (`list` page by page,
//! the lock released before each page is written; `revoke`'s grants);
//! what each request does is the agent's (`crate::agent`).
use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::{Shared, DEADLINES_CHANGED, UNINSTALLED};
use crate::{
    agent::ListCursor,
    connlimit,
    control::{self, PeerCred, Record, Refusal, RefusalCode, Reply, Request, Response, StreamOf},
};

/// Accepts control connections for as long as the agent runs. Each one
/// is admitted by [`connlimit::Limits`] (per uid, total, root's reserve)
/// or answered at once with a refusal and closed. When accepting fails
/// (EMFILE, ENFILE, ENOBUFS...), the loop backs off and warns at most once
/// a minute, saying how many failures it did not report.
pub(super) async fn accept_loop(listener: UnixListener, shared: Shared) {
    let limits = connlimit::Limits::default();
    let mut warn_limit = connlimit::WarnLimiter::new(Duration::from_secs(60));
    let mut failures: u32 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failures = 0;
                admit(stream, &limits, &shared);
            }
            Err(e) => {
                if let Some(suppressed) = warn_limit.due(std::time::Instant::now()) {
                    warn!(
                        error = %e,
                        suppressed,
                        "accepting a control connection failed; backing off (further failures are reported at most once a minute)"
                    );
                }
                tokio::time::sleep(connlimit::backoff(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// Serves `stream` on its own task if its uid may have another
/// connection; otherwise tells the peer why (without waiting for it) and
/// closes.
fn admit(stream: UnixStream, limits: &connlimit::Limits, shared: &Shared) {
    let cred = match stream.peer_cred() {
        Ok(c) => PeerCred {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::debug!(error = %e, "control connection without peer credentials; closing");
            return;
        }
    };
    match limits.admit(cred.uid) {
        Ok(slot) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                serve_connection(stream, cred, shared).await;
                drop(slot);
            });
        }
        Err(refused) => {
            tracing::debug!(uid = cred.uid, "{refused}");
            let response =
                Response::Error(Refusal::new(RefusalCode::Unavailable, refused.to_string()));
            let mut out = serde_json::to_vec(&response).expect("responses serialize");
            out.push(b'\n');
            // A fresh socket's send buffer is empty: this never blocks,
            // and a peer that does not read loses nothing but the reason.
            let _ = stream.try_write(&out);
        }
    }
}

async fn serve_connection(stream: UnixStream, cred: PeerCred, shared: Shared) {
    let (read, mut write) = stream.into_split();
    // One byte past the cap tells a request that is too long from one
    // that fits exactly.
    let mut reader = BufReader::new(read.take(control::MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let response = match tokio::time::timeout(
        control::REQUEST_DEADLINE,
        reader.read_until(b'\n', &mut line),
    )
    .await
    {
        Err(_) => Response::Error(Refusal::new(
            RefusalCode::BadRequest,
            format!(
                "no complete request within {} s of connecting",
                control::REQUEST_DEADLINE.as_secs()
            ),
        )),
        Ok(Err(e)) => Response::Error(Refusal::new(
            RefusalCode::BadRequest,
            format!("reading the request failed: {e}"),
        )),
        Ok(Ok(_)) if line.len() > control::MAX_REQUEST => Response::Error(Refusal::new(
            RefusalCode::BadRequest,
            format!(
                "request too long: the agent reads at most {} bytes per request",
                control::MAX_REQUEST
            ),
        )),
        Ok(Ok(_)) if !line.ends_with(b"\n") => Response::Error(Refusal::new(
            RefusalCode::BadRequest,
            "request not newline-terminated (the connection was closed mid-request)",
        )),
        Ok(Ok(_)) => match std::str::from_utf8(&line)
            .map_err(|e| {
                Refusal::new(
                    RefusalCode::BadRequest,
                    format!("malformed request: not UTF-8 ({e})"),
                )
            })
            .and_then(control::parse_request)
        {
            // A list of any size goes out page by page (see `stream_list`).
            Ok(Request::List {}) => return stream_list(write, shared).await,
            // Fleet operations wait on the store, never with the agent's lock.
            Ok(
                request @ (Request::FleetGrant { .. }
                | Request::FleetRevoke { .. }
                | Request::FleetLock { .. }
                | Request::FleetUnlock { .. }
                | Request::FleetRequest { .. }
                | Request::FleetApprove { .. }
                | Request::FleetDeny { .. }
                | Request::FleetList {}
                | Request::FleetStatus {}),
            ) => fleet(&shared, cred, request).await,
            // The agent's work (its lock, the audit fsync, the state write)
            // runs off the async workers; the reply still waits for the
            // audit record to be on disk.
            Ok(request) => {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || handle(&shared, &cred, request))
                    .await
                    .unwrap_or_else(|e| {
                        Response::Error(Refusal::new(
                            RefusalCode::Internal,
                            format!("handling the request failed: {e}"),
                        ))
                    })
            }
            Err(refusal) => {
                info!(uid = cred.uid, "{}", refusal.message);
                Response::Error(refusal)
            }
        },
    };
    match response {
        // A revoke has happened by now, whatever the client does next: the
        // grants it ended go out as a stream, so that no number of them
        // makes the reply too large to read.
        Response::Ok(Reply::Revoked { grants }) => stream_revoked(write, grants).await,
        response => {
            let mut out = serde_json::to_vec(&response).expect("responses serialize");
            out.push(b'\n');
            let _ = send(&mut write, &out).await;
        }
    }
}

/// Records per page of a streamed reply, by weight ([`control::Record::weight`]:
/// one per record plus one per port it names): bounds what one connection
/// holds in memory and how long one page holds the agent's lock.
const PAGE_WEIGHT: usize = 4096;

/// Writes `bytes` within [`control::REPLY_DEADLINE`]; false if the client
/// did not take them in time (it stopped reading, or went away).
async fn send(write: &mut OwnedWriteHalf, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(control::REPLY_DEADLINE, write.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

fn push_line(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    serde_json::to_writer(&mut *out, value).expect("replies serialize");
    out.push(b'\n');
}

/// `list` as a stream: each page is built under the agent's lock, the lock
/// is released, and only then is the page written. A client that stops
/// reading holds no lock and at most one page; when a page is not taken
/// within the deadline, the stream stops without its end line.
async fn stream_list(mut write: OwnedWriteHalf, shared: Shared) {
    let mut out = Vec::new();
    push_line(
        &mut out,
        &Response::Ok(Reply::Stream { of: StreamOf::List }),
    );
    let mut at = ListCursor::Start;
    let mut records: u64 = 0;
    loop {
        let shared = shared.clone();
        let page = tokio::task::spawn_blocking(move || {
            let (page, next) = shared
                .lock()
                .expect("agent lock")
                .list_page(&at, PAGE_WEIGHT);
            // Serialized after the lock is released.
            let mut bytes = Vec::new();
            for record in &page {
                push_line(&mut bytes, record);
            }
            (bytes, page.len() as u64, next)
        })
        .await;
        let Ok((bytes, n, next)) = page else {
            warn!("building a page of `list` failed; the stream stops without its end");
            return;
        };
        out.extend_from_slice(&bytes);
        records += n;
        if !send(&mut write, &out).await {
            info!(
                "stopped a `list` reply after {records} records: the client did not take a page within {} s",
                control::REPLY_DEADLINE.as_secs()
            );
            return;
        }
        out.clear();
        match next {
            Some(next) => at = next,
            None => break,
        }
    }
    push_line(&mut out, &Record::End { records });
    let _ = send(&mut write, &out).await;
}

/// The grants a revoke ended, as a stream of pages.
async fn stream_revoked(mut write: OwnedWriteHalf, grants: Vec<control::GrantView>) {
    let mut out = Vec::new();
    push_line(
        &mut out,
        &Response::Ok(Reply::Stream {
            of: StreamOf::Revoked,
        }),
    );
    let records = grants.len() as u64;
    let mut weight = 0;
    for grant in grants {
        let record = Record::Grant(grant);
        weight += record.weight();
        push_line(&mut out, &record);
        if weight >= PAGE_WEIGHT {
            if !send(&mut write, &out).await {
                return;
            }
            out.clear();
            weight = 0;
        }
    }
    push_line(&mut out, &Record::End { records });
    let _ = send(&mut write, &out).await;
}

/// A `--fleet` request (see `crate::fleet::ops`).
async fn fleet(shared: &Shared, cred: PeerCred, request: Request) -> Response {
    use crate::fleet::ops;
    let result = match request {
        Request::FleetGrant {
            hosts,
            segment,
            identity,
            ttl,
            reason,
            strict,
        } => {
            let ttl = ttl.map(crate::duration::Ttl::get);
            ops::grant(shared, cred, hosts, segment, identity, ttl, reason, strict).await
        }
        Request::FleetRevoke {
            id,
            identity,
            segment,
            hosts,
        } => ops::revoke(shared, cred, id, identity, segment, hosts).await,
        Request::FleetLock {
            hosts,
            identity,
            reason,
            ttl,
            include_standing,
        } => {
            let ttl = ttl.map(crate::duration::Ttl::get);
            ops::lock(shared, cred, hosts, identity, reason, ttl, include_standing).await
        }
        Request::FleetUnlock { identity, hosts } => {
            ops::unlock(shared, cred, identity, hosts).await
        }
        Request::FleetRequest {
            hosts,
            segment,
            ttl,
            reason,
        } => {
            let ttl = ttl.map(crate::duration::Ttl::get);
            crate::fleet::requests::request(shared, cred, hosts, segment, ttl, reason).await
        }
        Request::FleetApprove { id, ttl } => {
            let ttl = ttl.map(crate::duration::Ttl::get);
            crate::fleet::requests::decide(shared, cred, id, true, ttl, None).await
        }
        Request::FleetDeny { id, reason } => {
            crate::fleet::requests::decide(shared, cred, id, false, None, Some(reason)).await
        }
        Request::FleetList {} => ops::list().await,
        Request::FleetStatus {} => ops::status().await,
        _ => unreachable!("only fleet requests come here"),
    };
    match result {
        Ok(reply) => Response::Ok(reply),
        Err(refusal) => {
            info!(uid = cred.uid, code = ?refusal.code, "refused: {}", refusal.message);
            Response::Error(refusal)
        }
    }
}

#[tracing::instrument(skip(shared, request), fields(uid = cred.uid, pid = cred.pid))]
fn handle(shared: &Shared, cred: &PeerCred, request: Request) -> Response {
    let wake = moves_deadlines(&request);
    let mut a = shared.lock().expect("agent lock");
    let result = match request {
        Request::Grant {
            segment,
            identity,
            ttl,
            reason,
        } => a.grant(
            cred,
            &segment,
            &identity,
            ttl.map(crate::duration::Ttl::get),
            reason.as_deref(),
        ),
        Request::Revoke {
            id,
            identity,
            segment,
        } => a
            .revoke(cred, id, identity.as_deref(), segment.as_deref())
            .map(|(reply, _)| {
                // Idle flows and flows the programs never marked are cut now.
                crate::sweep::request();
                reply
            }),
        // Streamed by `serve_connection`; answered whole here only if a
        // caller ever sends it this way.
        Request::List {} => Ok(a.list()),
        Request::Status {} => Ok(a.status()),
        Request::Discover {} => a.discover(cred),
        Request::RequestAccess {
            segment,
            ttl,
            reason,
        } => a.request(
            cred,
            &segment,
            ttl.map(crate::duration::Ttl::get),
            reason.as_deref(),
        ),
        Request::Approve { id, ttl } => a.approve(cred, id, ttl.map(crate::duration::Ttl::get)),
        Request::Deny { id, reason } => a.deny(cred, id, &reason),
        Request::Extend { id, ttl, reason } => a.extend(cred, id, ttl.get(), reason.as_deref()),
        Request::ShowRequest { id } => a.show_request(cred, id),
        Request::Pending {} => Ok(a.pending()),
        Request::Explain {
            identity,
            pid,
            port,
        } => a.explain(cred, identity.as_deref(), pid, &port),
        Request::Lock {
            identity,
            reason,
            ttl,
            include_standing,
        } => a
            .lock(
                cred,
                &identity,
                &reason,
                ttl.map(crate::duration::Ttl::get),
                include_standing,
            )
            .map(|(reply, _)| {
                // The locked identity's open flows are cut now.
                crate::sweep::request();
                reply
            }),
        Request::Unlock { identity } => a.unlock(cred, &identity),
        Request::Uninstall {} => a.uninstall(cred),
        Request::Debug { on } => crate::kernlog::request(cred, on),
        Request::FleetGrant { .. }
        | Request::FleetRevoke { .. }
        | Request::FleetLock { .. }
        | Request::FleetUnlock { .. }
        | Request::FleetRequest { .. }
        | Request::FleetApprove { .. }
        | Request::FleetDeny { .. }
        | Request::FleetList {}
        | Request::FleetStatus {} => Err(Refusal::new(
            RefusalCode::Internal,
            "fleet requests are served by the connection, not here",
        )),
    };
    // The metrics show what this request changed (see `Agent::publish`).
    a.publish();
    drop(a);
    if matches!(result, Ok(Reply::Uninstalled { .. })) {
        UNINSTALLED.notify_one();
    }
    match result {
        Ok(reply) => {
            // A grant or approval may have moved the earliest deadline; a
            // read-only reply wakes nothing.
            if wake {
                DEADLINES_CHANGED.notify_one();
            }
            Response::Ok(reply)
        }
        Err(refusal) => {
            info!(code = ?refusal.code, "refused: {}", refusal.message);
            Response::Error(refusal)
        }
    }
}

/// Whether a request can move the earliest grant or request deadline (and
/// so must wake the main loop's expiry timer). `list`, `status`,
/// `pending`, `show`, `explain` and `uninstall` cannot.
fn moves_deadlines(request: &Request) -> bool {
    matches!(
        request,
        Request::Grant { .. }
            | Request::Revoke { .. }
            | Request::RequestAccess { .. }
            | Request::Approve { .. }
            | Request::Deny { .. }
            | Request::Lock { .. }
            | Request::Unlock { .. }
            | Request::Extend { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_requests_do_not_wake_the_main_loop() {
        for r in [
            Request::List {},
            Request::Status {},
            Request::Pending {},
            Request::ShowRequest { id: 1 },
            Request::Explain {
                identity: Some("uid:1".into()),
                pid: None,
                port: "1/tcp".into(),
            },
        ] {
            assert!(!moves_deadlines(&r), "{r:?}");
        }
        for r in [
            Request::Approve { id: 1, ttl: None },
            Request::Deny {
                id: 1,
                reason: "no".into(),
            },
            Request::Revoke {
                id: Some(1),
                identity: None,
                segment: None,
            },
        ] {
            assert!(moves_deadlines(&r), "{r:?}");
        }
    }
}
