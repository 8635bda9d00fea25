//! The etcd client: connecting (mTLS through the configured files), and
//! every call bounded by the configured timeout, so that an unreachable
//! store is an error within seconds, never a hang.
use std::{future::Future, time::Duration};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::FleetConfig;

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("reading {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints} did not answer within {timeout:?}")]
    Timeout {
        endpoints: String,
        timeout: Duration,
    },
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Connects to the configured endpoints.
pub(super) async fn connect(cfg: &FleetConfig) -> Result<Client, StoreError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(cfg.call_timeout)
        .with_timeout(cfg.call_timeout)
        .with_keep_alive(Duration::from_secs(5), cfg.call_timeout);
    if let Some(tls) = &cfg.tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca", &tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
        }
        options = options.with_tls(t);
    }
    call(cfg, Client::connect(cfg.endpoints.clone(), Some(options))).await
}

/// One call to the store within the configured timeout.
pub(super) async fn call<T>(
    cfg: &FleetConfig,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    let endpoints = cfg.endpoints.join(",");
    match tokio::time::timeout(cfg.call_timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(StoreError::Etcd { endpoints, source }),
        Err(_) => Err(StoreError::Timeout {
            endpoints,
            timeout: cfg.call_timeout,
        }),
    }
}
