//! Token publication: `POST /api/token`, where the first master publishes the bootstrap token it renewed
//! (form `mac`, `token`, `expires`, `ts`, `sig`; see `pki::enroll` for the signature). Accepted only from the
//! first master's MAC and address, signed with the publish key, timely, not replayed, well formed and not
//! expired; counted in `imgbuild_token_publications_total{outcome}`.

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
use crate::pki::enroll::{PUBLISH_SKEW_SECS, Store, fmt_ms, publish_message, verify};
use crate::pki::secrets;
use crate::pki::token::{self, BootstrapToken};
use crate::status::Source;

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
    pub mac: String,
    pub token: String,
    pub expires: u64,
    pub ts: u64,
    pub sig: String,
}

async fn publish(State(ctx): State<Ctx>, req: Request) -> Response {
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
    let refuse = |status: StatusCode, mac: Option<MacAddr>, why: String| {
        count(&ctx.publications, "refused");
        let msg = format!("token publication from {peer} refused: {why}");
        tracing::warn!("{msg}");
        if let Some(mac) = mac {
            shared
                .events
                .record(mac, "failed", msg.clone(), Source::Server);
        }
        text(status, msg)
    };
    let Ok(mac) = f.mac.parse::<MacAddr>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            None,
            format!("{:?} is not a MAC address", f.mac),
        );
    };
    let Some(fm) = cluster.first_master() else {
        return refuse(
            StatusCode::FORBIDDEN,
            Some(mac),
            "the inventory has no master".into(),
        );
    };
    if mac != fm.mac || peer != IpAddr::V4(fm.ip) {
        return refuse(
            StatusCode::FORBIDDEN,
            Some(mac),
            format!(
                "only the first master {} ({}, {}) publishes tokens — possible spoofer",
                fm.hostname, fm.mac, fm.ip
            ),
        );
    }
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
    if !verify(
        &key,
        &publish_message(mac, &f.token, f.expires, f.ts),
        &f.sig,
    ) {
        return refuse(
            StatusCode::FORBIDDEN,
            Some(mac),
            "bad signature — possible spoofer".into(),
        );
    }
    let now = token::now_unix();
    if f.ts.abs_diff(now) > PUBLISH_SKEW_SECS {
        return refuse(
            StatusCode::FORBIDDEN,
            Some(mac),
            format!(
                "timestamp {} is more than {PUBLISH_SKEW_SECS}s from the server's clock {now}; check the node's time",
                f.ts
            ),
        );
    }
    if !token::is_valid(&f.token) {
        return refuse(
            StatusCode::BAD_REQUEST,
            Some(mac),
            "the token is not of the form [a-z0-9]{6}.[a-z0-9]{16}".into(),
        );
    }
    if f.expires <= now {
        return refuse(
            StatusCode::BAD_REQUEST,
            Some(mac),
            format!("the token's expiry {} has passed", f.expires),
        );
    }
    // The store's lock serializes publications with enrollments.
    let store = Store::for_cluster(&cluster);
    let _locked = match store.lock() {
        Ok(l) => l,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, Some(mac), e.to_string()),
    };
    let current = secrets::load_token(dir).ok();
    if let Some(cur) = &current
        && f.ts <= cur.published_unix
    {
        return refuse(
            StatusCode::CONFLICT,
            Some(mac),
            format!(
                "timestamp {} is not newer than the last publication ({}) — a replay?",
                f.ts, cur.published_unix
            ),
        );
    }
    let t = BootstrapToken {
        token: f.token.clone(),
        expires_unix: f.expires,
        source: format!("published by {}", fm.hostname),
        published_unix: f.ts,
    };
    if let Err(e) = secrets::save_token(dir, &t) {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, Some(mac), e.to_string());
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
