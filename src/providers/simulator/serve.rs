//! Serving the simulator: HTTP/1.1 and HTTP/2 on one port, like the real APIs.
//!
//! Cleartext: a connection that opens with the HTTP/2 preface is served as HTTP/2 (h2c
//! with prior knowledge), any other as HTTP/1.1. With TLS ([`ServeOptions::tls`]) the
//! client picks through ALPN (`h2`, `http/1.1`). Each HTTP/2 connection allows
//! [`ServeOptions::h2_max_streams`] calls at once (SETTINGS_MAX_CONCURRENT_STREAMS, 100
//! at Google, 256 behind Cloudflare), so a client with more calls in flight has to open
//! more connections, as it would against a real provider.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The default of [`ServeOptions::h2_max_streams`].
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;

/// How the simulator serves connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// Streams (calls) one HTTP/2 connection may carry at once.
    pub h2_max_streams: u32,
    /// Serve TLS with this identity (ALPN `h2` and `http/1.1`) instead of cleartext.
    pub tls: Option<TlsIdentity>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
            tls: None,
        }
    }
}

/// A certificate chain and its private key.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// Read a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<TlsIdentity> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{}: no certificate", cert.display());
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("{}: not a PEM private key", key.display()))?;
        Ok(TlsIdentity { chain, key })
    }

    fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("the TLS certificate and key do not go together")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// Connections accepted since start, and open now.
#[derive(Debug, Default)]
pub(crate) struct ConnCounts {
    accepted: AtomicU64,
    open: AtomicU64,
}

impl ConnCounts {
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// Decrements the open count when the connection's task ends.
struct OpenGuard(Arc<ConnCounts>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept and serve until `shutdown`; then call `on_stop` (which answers held requests)
/// and wait for the open connections to finish their requests.
pub(crate) async fn run(
    router: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
    opts: &ServeOptions,
    counts: Arc<ConnCounts>,
    on_stop: impl FnOnce(),
) -> std::io::Result<()> {
    let tls = match &opts.tls {
        Some(id) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            id.server_config().map_err(std::io::Error::other)?,
        ))),
        None => None,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(opts.h2_max_streams)
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                // Out of file descriptors and the like: wait, as axum::serve does.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        counts.accepted.fetch_add(1, Ordering::Relaxed);
        counts.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard(Arc::clone(&counts));
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open;
            let result = match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                    let Ok(Ok(stream)) = handshake.await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    on_stop();
    graceful.shutdown().await;
    Ok(())
}

/// A self-signed identity for 127.0.0.1 and localhost, and its certificate (DER) for a
/// client to trust.
#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) fn test_identity() -> (TlsIdentity, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("self-signed certificate");
    let der = ck.cert.der().to_vec();
    let key = PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let id = TlsIdentity {
        chain: vec![CertificateDer::from(der.clone())],
        key,
    };
    (id, der)
}
