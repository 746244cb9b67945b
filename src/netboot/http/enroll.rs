//! Enrollment: `GET /api/enroll/{mac}` hands an inventory node its bundle (secrets, token, discovery hash) once,
//! if [`pki::enroll::decide`](crate::pki::enroll::decide) allows it, over HTTPS only (`tls.rs`; plain HTTP is
//! refused). Every answer and refusal is counted (`imgbuild_enroll_requests_total{outcome}`); a served bundle is
//! recorded as an event; a refusal for a MAC outside the inventory records nothing; a second claimant is
//! remembered in the enrollment state (shown as "possible spoofer"), never as an event. [`routes`] also mounts the
//! other first-boot routes: token publication ([`super::token`]) and the init-done barrier ([`super::barrier`]).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::barrier::{self, barrier_reached};
use super::reply::{
    NO_PEER, OutcomeCounter, blocking, count, outcome_counter, peer_of, retry_after, text,
};
use super::tls::via_tls;
use super::token;
use crate::config::{MacAddr, Role};
use crate::netboot::state::Shared;
use crate::pki::enroll::{Contact, Refusal, bundle, decide};
use crate::pki::secrets;
use crate::pki::state_store::documents;
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
        Refusal::WaitBarrier { .. } | Refusal::TokenExpired { .. } | Refusal::Pending => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
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
        requests,
    };
    Router::new()
        .route("/api/enroll/{mac}", get(enroll))
        .with_state(ctx)
        .merge(barrier::routes(shared.clone()))
        .merge(token::routes(shared))
}

async fn enroll(State(ctx): State<Ctx>, UrlPath(mac): UrlPath<String>, req: Request) -> Response {
    if !via_tls(&req) {
        count(&ctx.requests, "plain-http");
        let c = ctx.shared.cluster();
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "enrollment is served over HTTPS only (it carries secrets): {}/api/enroll/<mac>, verified with the \
                 provisioning CA certificate in the image",
                c.network.https_base()
            ),
        );
    }
    let Ok(mac) = mac.parse::<MacAddr>() else {
        count(&ctx.requests, "bad-request");
        tracing::debug!(mac = %mac, "enrollment request with a malformed MAC");
        return text(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address such as 52:54:00:12:34:56"),
        );
    };
    let Some(peer) = peer_of(&req) else {
        tracing::error!("{NO_PEER}");
        return text(StatusCode::INTERNAL_SERVER_ERROR, NO_PEER);
    };
    if let Some(m) = ctx.shared.cluster().machine_by_mac(mac)
        && m.identity == crate::config::Identity::Tpm
    {
        // docs/attestation.md: a TPM machine gets its bundle only through attestation.
        count(&ctx.requests, "tpm-identity");
        return text(
            StatusCode::PRECONDITION_REQUIRED,
            format!(
                "{} ({mac}) enrolls by TPM attestation (identity = \"tpm\"): POST /api/attest/{mac}/challenge",
                m.hostname
            ),
        );
    }
    if ctx.shared.cluster().machine_by_mac(mac).is_none() {
        // Before the store's lock and any file: a flood of random MACs costs this counter only.
        let r = Refusal::UnknownMac;
        count(&ctx.requests, r.outcome());
        ctx.shared
            .events
            .refused_outside_inventory(mac, "an enrollment request");
        tracing::debug!(%mac, %peer, "{}", r.message(mac, peer));
        return text(status_of(&r), r.message(mac, peer));
    }
    blocking("enrollment", move || enroll_blocking(&ctx, mac, peer)).await
}

/// What the enrollment rules decided under the state's lock (computed without side effects: with etcd the
/// decision may be taken more than once before it commits).
enum Step<'c> {
    /// Refused or told to wait; whether the state was changed (a new pending contact, a noted claimant).
    Refused(Refusal, bool),
    /// Served: the machine, and whether this enrollment closed the start-up window.
    Served(&'c crate::config::Machine, bool),
    /// The secrets cannot be read: nothing is consumed.
    Internal(String),
}

fn enroll_blocking(ctx: &Ctx, mac: MacAddr, peer: IpAddr) -> Response {
    let shared = &ctx.shared;
    let cluster = shared.cluster();
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
    let token = documents::token(&*shared.state, &cluster.paths.secrets);
    let token_expires = token.as_ref().map_or(u64::MAX, |t| t.expires_unix);
    let now = now_ms();
    let barrier = barrier_reached(shared, &cluster).is_some();
    let mut loaded: Option<Result<secrets::Secrets, String>> = None;
    let mut step = None;
    // Recorded before the bundle leaves: a crash after the update means the node must be re-armed, never that
    // a bundle was handed out twice (with etcd: the transaction that records it is the one that commits).
    let saved = documents::update_enrollment(&*shared.state, |st| {
        let (s, write) = match decide(&cluster, st, mac, peer, barrier, token_expires, now) {
            Err(r) => {
                let write = match &r {
                    // Shown on the page and in `imgbuild status` until `imgbuild enroll approve <host>`.
                    Refusal::Pending => st
                        .pending
                        .insert(
                            mac,
                            st.pending.get(&mac).cloned().unwrap_or(Contact {
                                ip: peer,
                                at_ms: now,
                            }),
                        )
                        .is_none(),
                    // A second claimant: remembered (bounded: one entry per inventory node, written at most once
                    // a minute per address) and shown as a possible spoofer, never as an event of the node.
                    Refusal::WrongAddress { .. } | Refusal::AlreadyEnrolled { .. } => {
                        st.note_refused(mac, peer, now)
                    }
                    _ => false,
                };
                (Step::Refused(r, write), write)
            }
            Ok(m) => {
                let secrets = loaded.get_or_insert_with(|| {
                    secrets::load(&cluster.paths.secrets).map_err(|e| e.to_string())
                });
                if let Err(e) = secrets {
                    (Step::Internal(e.clone()), false)
                } else {
                    let closes = st.record_enrolled(&cluster, m, peer, now);
                    (Step::Served(m, closes), true)
                }
            }
        };
        step = Some(s);
        ((), write)
    });
    let (m, closes) = match (step, saved) {
        (Some(Step::Refused(r, wrote)), saved) => {
            return refused(ctx, mac, peer, r, wrote, saved.err().map(|e| e.to_string()));
        }
        (Some(Step::Internal(e)), _) => return internal(e),
        (Some(Step::Served(m, closes)), Ok(())) => (m, closes),
        (_, Err(e)) => return internal(e.to_string()),
        (None, Ok(())) => return internal("the enrollment state was not read".into()),
    };
    if closes {
        tracing::info!(
            "every inventory node has enrolled; the start-up enrollment window is closed for good"
        );
    }
    let Some(Ok(mut secrets)) = loaded else {
        return internal("the secrets were not read".into());
    };
    if let Ok(t) = token {
        secrets.token = t; // the token in force (with replicas: the one last published through any of them)
    }
    let b = bundle(&cluster, &secrets, m, now);
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

/// The answer to a refusal decided under the lock; `wrote`: the state was changed (a new pending contact, a
/// noted claimant) and `save_error` says if writing it failed.
fn refused(
    ctx: &Ctx,
    mac: MacAddr,
    peer: IpAddr,
    r: Refusal,
    wrote: bool,
    save_error: Option<String>,
) -> Response {
    let shared = &ctx.shared;
    count(&ctx.requests, r.outcome());
    let msg = r.message(mac, peer);
    let resp = text(status_of(&r), msg.clone());
    match r {
        Refusal::WaitBarrier { .. } => {
            tracing::debug!(%mac, %peer, "{msg}");
            retry_after(resp, RETRY_BARRIER_SECS)
        }
        Refusal::TokenExpired { .. } => {
            tracing::warn!(%mac, %peer, "{msg}");
            retry_after(resp, 60)
        }
        Refusal::Pending => {
            if let Some(e) = save_error {
                tracing::error!(%mac, %peer, "enrollment failed: {e}");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("enrollment failed on the server: {e}"),
                );
            }
            if wrote && let Some(n) = shared.events.warn_limit().allow("enroll-pending") {
                tracing::warn!(%mac, %peer, suppressed = n, "{msg}");
            }
            retry_after(resp, RETRY_BARRIER_SECS)
        }
        // Nothing recorded for a MAC outside the inventory: counted only.
        Refusal::UnknownMac => {
            shared
                .events
                .refused_outside_inventory(mac, "an enrollment request");
            tracing::debug!(%mac, %peer, "{msg}");
            resp
        }
        Refusal::WrongAddress { .. } | Refusal::AlreadyEnrolled { .. } => {
            if let Some(n) = shared.events.warn_limit().allow("enroll-refused") {
                tracing::warn!(%mac, %peer, suppressed = n, "{msg}");
            }
            if let Some(e) = save_error {
                tracing::error!(%mac, "cannot remember the refused claimant: {e}");
            }
            resp
        }
        Refusal::Closed => {
            if let Some(n) = shared.events.warn_limit().allow("enroll-refused") {
                tracing::warn!(%mac, %peer, suppressed = n, "{msg}");
            }
            shared.events.record(mac, "failed", msg, Source::Server);
            resp
        }
    }
}
