//! The control socket's connections: admission, reading one request,
//! dispatching it to the agent off the async workers, and the reply.
//!
//! Owns the per-connection deadlines and limits and which requests wake the
//! main loop; what each request does is the agent's (`crate::agent`).
use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::{Shared, DEADLINES_CHANGED, UNINSTALLED};
use crate::{
    connlimit,
    control::{self, PeerCred, Refusal, RefusalCode, Reply, Request, Response},
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
    let mut out = serde_json::to_vec(&response).expect("responses serialize");
    out.push(b'\n');
    let _ = tokio::time::timeout(control::REPLY_DEADLINE, write.write_all(&out)).await;
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
        Request::ShowRequest { id } => a.show_request(cred, id),
        Request::Pending {} => Ok(a.pending()),
        Request::Explain {
            identity,
            pid,
            port,
        } => a.explain(cred, identity.as_deref(), pid, &port),
        Request::Uninstall {} => a.uninstall(cred),
        Request::Debug { on } => crate::kernlog::request(cred, on),
    };
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
