//! The metrics endpoint: a minimal HTTP/1.1 server answering `GET /metrics`
//! (and `HEAD`) and nothing else. It reads at most [`MAX_REQUEST`] bytes of
//! a request within [`REQUEST_TIMEOUT`], serves [`MAX_CONNECTIONS`] at a
//! time and closes each after one answer: nothing a scraper (or anyone else
//! who can reach it) sends can hold the agent. The page itself comes from
//! the caller.
use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

/// Largest request head read.
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, page: Arc<dyn Fn() -> String + Send + Sync>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let page = page.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, page).await {
                debug!(%peer, error = %e, "metrics connection");
            }
            drop(permit);
        });
    }
}

/// What to answer to a request head.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

async fn answer(
    mut stream: TcpStream,
    page: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let k = stream.read(&mut chunk).await?;
            if k == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let route = match read {
        Ok(Ok(())) if buf.windows(4).any(|w| w == b"\r\n\r\n") => {
            route(&String::from_utf8_lossy(&buf))
        }
        Ok(Err(e)) => return Err(e),
        // Too long, cut short or too slow.
        _ => Route::BadRequest,
    };
    let (status, content_type, body, head_only) = match route {
        Route::Metrics { head_only } => {
            // Reading the kernel maps takes the agent lock and a few
            // syscalls: keep it off the async workers.
            let page = page.clone();
            let body = tokio::task::spawn_blocking(move || page())
                .await
                .unwrap_or_default();
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body,
                head_only,
            )
        }
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
            false,
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics\n".to_string(),
            false,
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route("garbage\r\n\r\n"), Route::BadRequest);
    }
}
