//! Enrollment: `GET /api/enroll/{mac}` hands an inventory node its bundle (secrets, token, discovery hash) once,
//! if [`pki::enroll::decide`](crate::pki::enroll::decide) allows it; every answer and refusal is logged,
//! counted (`imgbuild_enroll_requests_total{outcome}`) and recorded as an event. [`routes`] also mounts the
//! other first-boot routes: token publication ([`super::token`]) and the init-done barrier ([`super::barrier`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::barrier::{self, barrier_reached};
use super::reply::{
    NO_PEER, OutcomeCounter, blocking, count, outcome_counter, peer_of, retry_after, text,
};
use super::token;
use crate::config::{MacAddr, Role};
use crate::netboot::state::Shared;
use crate::pki::enroll::{Enrolled, Refusal, Store, Window, bundle, decide};
use crate::pki::secrets;
use crate::status::{Source, now_ms};

/// Retry-After for a joiner that enrolls before the barrier.
pub const RETRY_BARRIER_SECS: u64 = 10;

/// The HTTP status of a refusal.
pub fn status_of(r: &Refusal) -> StatusCode {
    match r {
        Refusal::UnknownMac | Refusal::WrongAddress { .. } | Refusal::Closed => {
            StatusCode::FORBIDDEN
        }
        Refusal::AlreadyEnrolled { .. } => StatusCode::CONFLICT,
        Refusal::WaitBarrier { .. } | Refusal::TokenExpired { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    started_ms: u64,
    auto_done: Arc<AtomicBool>,
    requests: OutcomeCounter,
}

/// The first-boot routes: enrollment, token publication and the barrier. The app must be served with
/// connect info (the TCP peer address, as `ConnectInfo<SocketAddr>`): the rules need it.
pub fn routes(shared: Arc<Shared>) -> Router {
    let requests = outcome_counter(
        &shared,
        "enroll_requests",
        "Enrollment requests by outcome (served, or why not)",
    );
    let ctx = Ctx {
        shared: shared.clone(),
        started_ms: now_ms(),
        auto_done: Arc::new(AtomicBool::new(false)),
        requests,
    };
    Router::new()
        .route("/api/enroll/{mac}", get(enroll))
        .with_state(ctx)
        .merge(barrier::routes(shared.clone()))
        .merge(token::routes(shared))
}

async fn enroll(State(ctx): State<Ctx>, UrlPath(mac): UrlPath<String>, req: Request) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        tracing::warn!(mac = %mac, "enrollment request with a malformed MAC");
        return text(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address such as 52:54:00:12:34:56"),
        );
    };
    let Some(peer) = peer_of(&req) else {
        tracing::error!("{NO_PEER}");
        return text(StatusCode::INTERNAL_SERVER_ERROR, NO_PEER);
    };
    blocking("enrollment", move || enroll_blocking(&ctx, mac, peer)).await
}

fn enroll_blocking(ctx: &Ctx, mac: MacAddr, peer: IpAddr) -> Response {
    let shared = &ctx.shared;
    let cluster = shared.cluster();
    let store = Store::for_cluster(&cluster);
    let internal = |what: String| {
        count(&ctx.requests, "error");
        tracing::error!(%mac, %peer, "enrollment failed: {what}");
        shared.events.record(
            mac,
            "failed",
            format!("enrollment failed on the server: {what}"),
            Source::Server,
        );
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("enrollment failed on the server: {what}"),
        )
    };
    let mut locked = match store.lock() {
        Ok(l) => l,
        Err(e) => return internal(e.to_string()),
    };
    let token_expires = secrets::load_token(&cluster.paths.secrets).map(|t| t.expires_unix);
    let now = now_ms();
    let window = Window {
        started_ms: ctx.started_ms,
        auto_done: ctx.auto_done.load(Ordering::SeqCst),
    };
    let barrier = barrier_reached(shared, &cluster).is_some();
    let decision = decide(
        &cluster,
        &locked.state,
        window,
        mac,
        peer,
        barrier,
        *token_expires.as_ref().unwrap_or(&u64::MAX),
        now,
    );
    let m = match decision {
        Ok(m) => m,
        Err(r) => {
            count(&ctx.requests, r.outcome());
            let msg = r.message(mac, peer);
            let resp = text(status_of(&r), msg.clone());
            return match r {
                Refusal::WaitBarrier { .. } => {
                    tracing::debug!(%mac, %peer, "{msg}");
                    retry_after(resp, RETRY_BARRIER_SECS)
                }
                Refusal::TokenExpired { .. } => {
                    tracing::warn!(%mac, %peer, "{msg}");
                    retry_after(resp, 60)
                }
                _ => {
                    if let Some(n) = shared.events.warn_limit().allow("enroll-refused") {
                        tracing::warn!(%mac, %peer, suppressed = n, "{msg}");
                    }
                    shared.events.record(mac, "failed", msg, Source::Server);
                    resp
                }
            };
        }
    };
    let secrets = match secrets::load(&cluster.paths.secrets) {
        Ok(s) => s,
        Err(e) => return internal(e.to_string()),
    };
    let b = bundle(&cluster, &secrets, m);
    locked.state.enrolled.insert(
        mac,
        Enrolled {
            hostname: m.hostname.clone(),
            ip: peer,
            at_ms: now,
        },
    );
    // Recorded before the bundle leaves: a crash after this line means the node must be re-armed, never that
    // a bundle was handed out twice.
    if let Err(e) = locked.save() {
        return internal(e.to_string());
    }
    if locked.state.all_enrolled(&cluster) && !ctx.auto_done.swap(true, Ordering::SeqCst) {
        tracing::info!(
            "every inventory node has enrolled; the start-up enrollment window is closed"
        );
    }
    drop(locked);
    let what = if b.init {
        "CA set, token, publish key (first master: kubeadm init)"
    } else if m.role == Role::Master {
        "CA set, token (kubeadm join --control-plane)"
    } else {
        "token, discovery hash (kubeadm join)"
    };
    let detail = format!(
        "enrollment bundle served to {} ({}) at {peer}: {what}",
        m.hostname, m.role
    );
    tracing::info!(%mac, %peer, "{detail}");
    count(&ctx.requests, "served");
    shared
        .events
        .record(mac, "enrolled", detail, Source::Server);
    let mut r = Json(b).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
