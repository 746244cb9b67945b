//! The HTTP server (axum): iPXE scripts, immutable image artifacts, boot loaders for UEFI HTTP Boot, events,
//! health and metrics, on `network.server:network.http_port`.
//!
//! - [`script`]: `GET /boot.ipxe?mac=`, `GET /ipxe/{mac}`, `GET /grub/{mac}` (arm64)
//! - [`images`]: `GET|HEAD /images/{id}/{file}` (strong ETag = sha256, Range, 304), and a pinned root filesystem
//!   by its dm-verity root hash (`/images/by-root-hash/{root_hash}/rootfs.squashfs`, a signed UKI's URL)
//! - [`events`]: `POST /api/events`; [`node`]: `GET /api/node/{mac}` (a machine's own facts, HTTPS only)
//! - [`attest`]: `POST /api/attest/{mac}/challenge|prove` (TPM machines; the checks are `pki::attest`)
//! - [`enroll`]: `GET /api/enroll/{mac}` (the rules are `pki::enroll`); [`token`]: `POST /api/token`;
//!   [`barrier`]: `GET /api/barrier/init-done` — [`reply`] holds what these three share
//! - [`status_page`]: `GET /` and `GET /api/status`; [`replicas`]: `GET /api/replicas` (every replica, which one
//!   served each stage)
//! - [`tls`]: the same application over HTTPS on `network.https_port` (the node API; enrollment and token
//!   publication refuse plain HTTP)
//! - `GET /boot/{name}`, `GET /healthz`, `GET /metrics` (this file)
//! - [`listener`]: the connection caps and timeouts of `[limits.http]`, under which [`run`] serves
//!
//! [`app`] builds this module's routes, merges the routers with their own state (enrollment, status page) and
//! adds the metrics layer over all of them.

pub mod app_state;
pub mod attest;
pub mod attest_expected;
pub mod barrier;
pub mod enroll;
pub mod events;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod images;
pub mod listener;
pub mod manifest_cache;
pub mod mapped;
pub mod mapping_cache;
pub mod node;
pub mod range;
pub mod replicas;
pub mod reply;
pub mod script;
pub mod status_page;
pub mod tls;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, MatchedPath, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use app_state::AppState;

use super::bootfiles::{self, BootFiles};
use super::metrics::HttpMetrics;
use super::state::Shared;

/// This module's routes (without the metrics layer).
fn routes(state: AppState) -> Router {
    Router::new()
        .route("/boot.ipxe", get(script::boot_ipxe))
        .route("/ipxe/{mac}", get(script::by_mac))
        .route("/grub/by-address", get(script::grub_by_address))
        .route("/grub/{mac}", get(script::grub_by_mac))
        .route("/images/{id}/{file}", get(images::get_artifact))
        .route(
            "/images/by-root-hash/{root_hash}/rootfs.squashfs",
            get(images::rootfs_by_root_hash),
        )
        .route("/api/node/{mac}", get(node::node_facts))
        .route("/boot/{name}", get(boot_loader))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/events", post(events::post_event))
        .with_state(state)
}

/// The whole HTTP application: every module's routes, with request metrics over all of them. Registers the
/// HTTP metric families in `shared.registry`: call once per process.
/// The routers with their own state (`enroll::routes`, `status_page::routes`) are merged here.
pub fn app(shared: Arc<Shared>) -> Router {
    let metrics = shared.register_metrics(HttpMetrics::register);
    let state = AppState {
        mappings: Arc::new(mapping_cache::MappingCache::new(metrics.clone())),
        metrics,
        boot_files: Arc::new(BootFiles::new()),
        manifests: Arc::new(manifest_cache::ManifestCache::default()),
        reports: reply::outcome_counter(
            &shared,
            "event_reports",
            "Node reports (POST /api/events) by outcome: accepted, or why refused (nothing recorded)",
        ),
        node_facts: reply::outcome_counter(
            &shared,
            "node_facts_requests",
            "Machine facts requests (GET /api/node/{mac}) by outcome: served over HTTPS, or why refused",
        ),
        shared: shared.clone(),
    };
    Router::new()
        .merge(routes(state.clone()))
        .merge(enroll::routes(shared.clone()))
        .merge(attest::routes(shared.clone()))
        .merge(status_page::routes(shared.clone()))
        .merge(replicas::routes(shared.clone()))
        .layer(axum::middleware::from_fn_with_state(state, track))
}

/// Adds `Server: imgbuild/<version>` to every answer; counts every request by route template and status, and the bytes of bodies of known length (streamed
/// artifact bodies count themselves as they are sent).
async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let mut resp = next.run(req).await;
    // Clients (`imgbuild status`, the lab) tell an imgbuild server from another program on the port by this.
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static(reply::SERVER));
    let m = &st.metrics;
    m.request(&route, resp.status().as_u16());
    if resp.status() == StatusCode::NOT_FOUND && route == "unmatched" {
        m.error("not_found");
    }
    if let Some(n) = resp.body().size_hint().exact() {
        m.bytes(&route, n);
    }
    resp
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.shared.encode_metrics(),
    )
        .into_response()
}

/// `GET /boot/{name}`: an allowlisted boot loader (UEFI HTTP Boot fetches `snponly.efi` here).
/// A GET of a whole boot loader from an inventory address records the `bootfile` event.
async fn boot_loader(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: axum::http::Method,
) -> Response {
    let m = &st.metrics;
    let allowed = match bootfiles::check_name(&name, st.shared.booter().boot_loader_names()) {
        Ok(n) => n,
        Err(r) => {
            m.error(r.kind());
            tracing::warn!(file = %name, reason = %r, "HTTP boot loader request refused");
            return (StatusCode::NOT_FOUND, format!("{r}: {name}\n")).into_response();
        }
    };
    let dir = st.shared.booter().boot_loader_dir(allowed);
    let files = st.boot_files.clone();
    match tokio::task::spawn_blocking(move || files.read(&dir, allowed)).await {
        Ok(Ok(bytes)) => {
            if method == axum::http::Method::GET
                && let Some(mac) = super::peers::mac_for_ip(&st.shared, peer.ip())
            {
                st.shared.events.record(
                    mac,
                    "bootfile",
                    format!("{allowed} via HTTP"),
                    crate::status::Source::Server,
                );
            }
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                bytes,
            )
                .into_response()
        }
        Ok(Err(e)) => {
            m.error("missing");
            tracing::error!(file = allowed, error = %e, "boot loader cannot be read");
            (
                StatusCode::NOT_FOUND,
                format!("{allowed} is not available on this server\n"),
            )
                .into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves [`app`] on `network.server:network.http_port` until the listener fails; when the inventory has arm64
/// machines and `network.grub_http_port` is another port, on that port too (GRUB 2.06 only fetches from 80).
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let cluster = shared.cluster();
    let net = &cluster.network;
    let mut ports = vec![(net.http_port, "network.http_port")];
    if cluster.has_arch(crate::config::Arch::Arm64) && net.grub_http_port != net.http_port {
        ports.push((
            net.grub_http_port,
            "network.grub_http_port, for GRUB on arm64 machines",
        ));
    }
    let app = app(shared.clone());
    listener::ensure_descriptors(&cluster.limits.http);
    let limiter = listener::Limiter::new(
        shared.register_metrics(listener::ListenerMetrics::register),
        {
            let shared = shared.clone();
            move || shared.cluster().limits.http
        },
    );
    let mut servers = tokio::task::JoinSet::new();
    for (port, key) in ports {
        let addr = SocketAddr::new(net.server.into(), port);
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("HTTP: cannot bind {addr} (network.server and {key}); is another server using the port?")
        })?;
        tracing::info!(%addr, "HTTP listening");
        let (app, limiter) = (app.clone(), limiter.clone());
        servers.spawn(listener::accept_loop(
            tcp,
            limiter.clone(),
            Some(listener::REFUSAL_503),
            move |io, peer| listener::serve_http(io, peer, app.clone(), limiter.clone()),
        ));
    }
    // The node API over HTTPS (tls.rs): enrollment, token, barrier and node events after the boot loader, behind
    // the same connection caps and timeouts.
    if let Some(id) = tls::server_identity(&cluster.paths.secrets, net.server) {
        let acceptor = tls::acceptor(&id)?;
        let addr = SocketAddr::new(net.server.into(), net.https_port);
        let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("HTTPS: cannot bind {addr} (network.server and network.https_port); is another server using the port?")
        })?;
        tracing::info!(%addr, "HTTPS node API listening (provisioning CA certificate)");
        let (app, limiter) = (app.clone(), limiter.clone());
        servers.spawn(listener::accept_loop(
            tcp,
            limiter.clone(),
            None,
            move |io, peer| {
                tls::serve_tls_connection(acceptor.clone(), io, peer, app.clone(), limiter.clone())
            },
        ));
    }
    shared.ready.bound("http");
    match servers.join_next().await {
        Some(r) => r.context("HTTP server task")?.context("HTTP server"),
        None => Ok(()),
    }
}
