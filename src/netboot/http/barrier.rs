//! The init-done barrier: `GET /api/barrier/init-done` answers whether the first master has reported
//! `init-done` (joiners wait for it); [`barrier_reached`] is the same question for the enrollment route. The
//! barrier is durable server state (`state/barrier.json`, `pki::report_state`), written once when the first
//! master's *signed* `init-done` report is accepted (`events.rs`, rules in `pki::report_auth`) — never derived
//! from the event log, which anybody's refused report cannot touch either.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use super::reply::{retry_after, text};
use crate::config::Cluster;
use crate::netboot::state::Shared;
use crate::pki::enroll::fmt_ms;

/// Whether the first master has reported `init-done` (signed; recorded in durable state): when, if it has.
/// A barrier recorded for another MAC (the inventory's first master changed) does not count.
pub fn barrier_reached(shared: &Shared, cluster: &Cluster) -> Option<u64> {
    let fm = cluster.first_master()?;
    shared
        .reports
        .barrier()
        .filter(|b| b.mac == fm.mac)
        .map(|b| b.at_ms)
}

/// The barrier route.
pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/barrier/init-done", get(barrier))
        .with_state(shared)
}

async fn barrier(State(shared): State<Arc<Shared>>) -> Response {
    let cluster = shared.cluster();
    let Some(fm) = cluster.first_master() else {
        return text(
            StatusCode::NOT_FOUND,
            "the inventory has no master; there is no init-done barrier",
        );
    };
    match barrier_reached(&shared, &cluster) {
        Some(at) => text(
            StatusCode::OK,
            format!("init-done: {} reported it at {}", fm.hostname, fmt_ms(at)),
        ),
        None => retry_after(
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("waiting: {} has not reported init-done yet", fm.hostname),
            ),
            5,
        ),
    }
}
