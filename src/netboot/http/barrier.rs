//! The init-done barrier: `GET /api/barrier/init-done` answers whether the first master has reported
//! `init-done` (joiners wait for it); [`barrier_reached`] is the same question for the enrollment route. The
//! barrier is durable server state (`state/barrier.json`, `pki::report_state`), written once when the first
//! master's *signed* `init-done` report is accepted (`events.rs`, rules in `pki::report_auth`) — never derived
//! from the event log, which anybody's refused report cannot touch either.
//! `GET /api/barrier/join/{mac}` is a joining master's turn: every master before it in the inventory (after the
//! first) has reported `joined`, so etcd members are added one at a time ([`join_turn`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use super::reply::{retry_after, text};
use crate::config::{Cluster, MacAddr, Role};
use crate::netboot::state::Shared;
use crate::pki::enroll::fmt_ms;
use crate::status::Source;

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

/// Whether `mac` may run its control-plane join now: `Ok(())`, or what it waits for (the first master's
/// init-done, or the earliest master before it, after the first, that has not reported `joined` yet). Masters join in inventory
/// order; a machine that is not a master only needs init-done.
pub fn join_turn(shared: &Shared, cluster: &Cluster, mac: MacAddr) -> Result<(), String> {
    let Some(me) = cluster.machine_by_mac(mac) else {
        return Err(format!("{mac} is not in the inventory"));
    };
    if barrier_reached(shared, cluster).is_none() {
        let fm = cluster.first_master().map(|m| m.hostname.as_str());
        return Err(format!(
            "{} has not reported init-done",
            fm.unwrap_or("the first master")
        ));
    }
    if me.role != Role::Master {
        return Ok(());
    }
    for m in cluster.machines_with_role(Role::Master).skip(1) {
        if m.mac == mac {
            return Ok(());
        }
        let joined = shared
            .events
            .for_mac(m.mac)
            .iter()
            .any(|e| e.stage == "joined" && e.source == Source::Node);
        if !joined {
            return Err(format!(
                "{} has not joined yet (boot it, or remove it from the inventory)",
                m.hostname
            ));
        }
    }
    Ok(())
}

/// The barrier routes.
pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/barrier/init-done", get(barrier))
        .route("/api/barrier/join/{mac}", get(join))
        .with_state(shared)
}

async fn join(State(shared): State<Arc<Shared>>, Path(mac): Path<String>) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "{mac:?} is not a MAC address; ask /api/barrier/join/<mac> with this node's MAC"
            ),
        );
    };
    let cluster = shared.cluster();
    match join_turn(&shared, &cluster, mac) {
        Ok(()) => text(StatusCode::OK, format!("{mac}: your turn to join")),
        Err(waiting) if cluster.machine_by_mac(mac).is_none() => {
            text(StatusCode::NOT_FOUND, waiting)
        }
        Err(waiting) => retry_after(
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "waiting: {waiting}; masters join the control plane one at a time, in inventory order"
                ),
            ),
            5,
        ),
    }
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
