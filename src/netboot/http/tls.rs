//! The HTTPS node API: the same application as plain HTTP, behind TLS with a certificate issued from the
//! provisioning CA at start (`pki::provisioning`), on `network.server:network.https_port`. Everything a node
//! says or receives after the boot loader goes here: enrollment, token publication, the barrier, node events
//! from the root filesystem. Requests served here carry the [`ViaTls`] extension; the enrollment and token
//! routes refuse requests without it, so no secret crosses plain HTTP.
//!
//! [`serve_tls_connection`] serves one connection the listener's accept loop admitted (`listener.rs`: the same
//! `[limits.http]` caps and timeouts as the plain listener; handshake bounded by [`HANDSHAKE_TIMEOUT`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::pki::provisioning::ServerCert;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Marks a request that arrived over TLS (inserted by [`serve_tls_connection`]).
#[derive(Debug, Clone, Copy)]
pub struct ViaTls;

/// Whether a request arrived over TLS.
pub fn via_tls(req: &axum::extract::Request) -> bool {
    req.extensions().get::<ViaTls>().is_some()
}

/// A TLS acceptor for the server certificate (TLS 1.2 and 1.3, the ring provider, HTTP/1.1 over ALPN).
pub fn acceptor(cert: &ServerCert) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(cert.cert_der.clone()),
                CertificateDer::from(cert.ca_der.clone()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .context("TLS: the server certificate and key do not form a usable pair")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Serves `app` over TLS on one accepted connection `io` from `peer` (already admitted by the listener's caps,
/// its idle and write timeouts applied): the handshake (bounded by [`HANDSHAKE_TIMEOUT`]), then the same HTTP/1.1
/// serving as the plain listener ([`super::listener::serve_http`]: header and body limits), with `ConnectInfo`
/// and [`ViaTls`] available to handlers. Returns when the connection ends; a failed handshake (a client refusing
/// our certificate) is logged at debug level.
pub async fn serve_tls_connection<I>(
    acceptor: TlsAcceptor,
    io: I,
    peer: SocketAddr,
    app: Router,
    limiter: Arc<super::listener::Limiter>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    super::listener::serve_http(tls, peer, app.layer(axum::Extension(ViaTls)), limiter).await;
}

/// Accepts connections on `listener` and serves each with [`serve_tls_connection`] under the default
/// `[limits.http]`, its limit metrics kept in a registry of its own (not exported): for embedding the node API
/// without a whole server, as the tests do. `imgbuild serve` runs the accept loop of [`super::run`] instead.
pub async fn serve_tls_listener(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
) -> std::io::Result<()> {
    use super::listener::{Limiter, ListenerMetrics, accept_loop};
    let metrics = ListenerMetrics::register(&mut prometheus_client::registry::Registry::default());
    let limiter = Limiter::new(metrics, crate::config::HttpLimits::default);
    accept_loop(listener, limiter.clone(), None, move |io, peer| {
        serve_tls_connection(acceptor.clone(), io, peer, app.clone(), limiter.clone())
    })
    .await
}

/// The server's TLS identity: a certificate issued now from the provisioning CA in `secrets_dir`, for the
/// server's address and this host's name. `None` (with an error logged saying what to do) when there is no
/// provisioning CA: the node API is then not served.
pub fn server_identity(
    secrets_dir: &std::path::Path,
    server: std::net::Ipv4Addr,
) -> Option<ServerCert> {
    let ca = match crate::pki::provisioning::load_ca(secrets_dir) {
        Ok(ca) => ca,
        Err(e) => {
            tracing::error!(
                "no HTTPS node API: {e}. Nodes cannot enroll or report after the boot loader; run `imgbuild secrets \
                 init` (it adds the provisioning CA to an existing secrets directory), rebuild the images so they \
                 carry its certificate, and restart the server"
            );
            return None;
        }
    };
    let mut names = Vec::new();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            names.push(h.to_string());
        }
    }
    match crate::pki::provisioning::server_cert(&ca, &[server.into()], &names) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!("no HTTPS node API: cannot issue the server certificate: {e}");
            None
        }
    }
}
