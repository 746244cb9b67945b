//! Token publication: `POST /api/token` (HTTPS only), where the first master publishes the bootstrap token it renewed
//! (form `mac`, `token`, `expires`, `ts`, `sig`; see `pki::enroll` for the signature). Accepted only from the
//! first master's MAC and address, signed with the publish key, timely, well formed, not expired and not
//! replayed (the rules: `pki::enroll::{publisher, check_publication, check_newer}`); counted in
//! `imgbuild_token_publications_total{outcome}`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::{Form, Router};
use serde::Deserialize;

use super::reply::{NO_PEER, OutcomeCounter, blocking, count, outcome_counter, peer_of, text};
use crate::config::MacAddr;
use crate::netboot::state::Shared;
use crate::pki::enroll::{
    Publication, PublishRefusal, check_newer, check_publication, fmt_ms, publisher,
};
use crate::pki::state_store::documents;
use crate::pki::token::{self, BootstrapToken};

/// The HTTP status of a refused publication.
pub fn status_of(r: &PublishRefusal) -> StatusCode {
    match r {
        PublishRefusal::NoMaster
        | PublishRefusal::NotFirstMaster { .. }
        | PublishRefusal::BadSignature
        | PublishRefusal::Skew { .. } => StatusCode::FORBIDDEN,
        PublishRefusal::MalformedToken | PublishRefusal::Expired { .. } => StatusCode::BAD_REQUEST,
        PublishRefusal::Replay { .. } => StatusCode::CONFLICT,
    }
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    publications: OutcomeCounter,
}

/// The token publication route (registers its metric family).
pub fn routes(shared: Arc<Shared>) -> Router {
    let publications = outcome_counter(
        &shared,
        "token_publications",
        "Bootstrap token publications by outcome",
    );
    Router::new()
        .route("/api/token", post(publish))
        .with_state(Ctx {
            shared,
            publications,
        })
}

/// The form of `POST /api/token`.
#[derive(Debug, Deserialize)]
pub struct PublishForm {
    /// The publisher's MAC; must be the first master's.
    pub mac: String,
    /// The renewed bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: String,
    /// The token's expiry, in seconds since the Unix epoch.
    pub expires: u64,
    /// When the publication was signed, in seconds since the Unix epoch.
    pub ts: u64,
    /// Hex HMAC-SHA256 over [`crate::pki::enroll::publish_message`], keyed with the publish key's text.
    pub sig: String,
}

async fn publish(State(ctx): State<Ctx>, req: Request) -> Response {
    if !super::tls::via_tls(&req) {
        count(&ctx.publications, "plain-http");
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "token publication is accepted over HTTPS only (it carries the bootstrap token): {}/api/token",
                ctx.shared.cluster().network.https_base()
            ),
        );
    }
    let Some(peer) = peer_of(&req) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, NO_PEER);
    };
    let form = match Form::<PublishForm>::from_request(req, &()).await {
        Ok(f) => f.0,
        Err(e) => {
            let e = e.body_text();
            count(&ctx.publications, "refused");
            tracing::warn!(%peer, "token publication with a malformed body: {e}");
            return text(
                StatusCode::BAD_REQUEST,
                format!("{e}; expected form fields mac, token, expires, ts, sig"),
            );
        }
    };
    blocking("token", move || publish_blocking(&ctx, peer, form)).await
}

fn publish_blocking(ctx: &Ctx, peer: IpAddr, f: PublishForm) -> Response {
    let shared = &ctx.shared;
    let cluster = shared.cluster();
    // A refusal is counted and logged, never recorded as an event of the node: whoever sends a bad
    // publication must not be able to mark the first master failed.
    let refuse = |status: StatusCode, _mac: Option<MacAddr>, why: String| {
        count(&ctx.publications, "refused");
        let msg = format!("token publication from {peer} refused: {why}");
        tracing::warn!("{msg}");
        text(status, msg)
    };
    let Ok(mac) = f.mac.parse::<MacAddr>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            None,
            format!("{:?} is not a MAC address", f.mac),
        );
    };
    let fm = match publisher(&cluster, mac, peer) {
        Ok(fm) => fm,
        Err(r) => return refuse(status_of(&r), Some(mac), r.message()),
    };
    let dir = &cluster.paths.secrets;
    let key = match std::fs::read_to_string(dir.join("publish.key")) {
        Ok(k) => k.trim().to_string(),
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(mac),
                format!("cannot read the publish key: {e}"),
            );
        }
    };
    let publication = Publication {
        mac,
        token: &f.token,
        expires: f.expires,
        ts: f.ts,
        sig: &f.sig,
    };
    if let Err(r) = check_publication(&key, &publication, token::now_unix()) {
        return refuse(status_of(&r), Some(mac), r.message());
    }
    let t = BootstrapToken {
        token: f.token.clone(),
        expires_unix: f.expires,
        source: format!("published by {}", fm.hostname),
        published_unix: f.ts,
    };
    // Serialized with enrollments (the directory backend's lock; an etcd transaction with replicas).
    let verdict = documents::publish_token(&*shared.state, dir, &t, |last| {
        check_newer(f.ts, last.map(|t| t.published_unix))
    });
    match verdict {
        Ok(Ok(())) => {}
        Ok(Err(r)) => return refuse(status_of(&r), Some(mac), r.message()),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, Some(mac), e.to_string()),
    }
    let id = f.token.split('.').next().unwrap_or_default();
    let detail = format!(
        "bootstrap token {id}.… published by {}, valid until {}",
        fm.hostname,
        fmt_ms(f.expires * 1000)
    );
    tracing::info!("{detail}");
    count(&ctx.publications, "accepted");
    text(StatusCode::OK, detail)
}
