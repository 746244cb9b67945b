//! `GET /api/replicas`: the shared-state backend, this replica's name, every live replica and, per node, which
//! replica served each stage (from the shared event history; with the state directory there is one server and
//! the history is its own event log). `imgbuild status` and the page show it. Also registers the per-replica
//! metric families: `imgbuild_replica_info{replica,backend}` and `imgbuild_state_requests{op}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::netboot::replicas::{self, ReplicaInfo};
use crate::netboot::state::Shared;

/// One stage of a node and the replica that served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageBy {
    /// The stage.
    pub stage: String,
    /// The replica.
    pub replica: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// The answer of `GET /api/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicas {
    /// `dir` or `etcd`.
    pub backend: String,
    /// The replica that answered.
    pub this: String,
    /// Every live replica.
    pub replicas: Vec<ReplicaInfo>,
    /// Per node (MAC), its stages in order with the replica that served each.
    pub served: BTreeMap<String, Vec<StageBy>>,
}

/// What `GET /api/replicas` says now.
pub fn current(shared: &Shared) -> Replicas {
    current_with(shared, &shared.events.snapshot())
}

/// [`current`], given this server's events (a snapshot the caller already took): with the state directory they
/// are the whole history.
pub fn current_with(shared: &Shared, events: &[crate::status::Event]) -> Replicas {
    let mut served: BTreeMap<String, Vec<StageBy>> = BTreeMap::new();
    if shared.state.replicated() {
        let kept = shared.cluster().state.events_kept as usize;
        for s in replicas::history(shared, kept) {
            served
                .entry(s.event.mac.to_string())
                .or_default()
                .push(StageBy {
                    stage: s.event.stage,
                    replica: s.replica,
                    at_ms: s.event.at_ms,
                });
        }
    } else {
        for e in events {
            served.entry(e.mac.to_string()).or_default().push(StageBy {
                stage: e.stage.clone(),
                replica: shared.replica.clone(),
                at_ms: e.at_ms,
            });
        }
    }
    Replicas {
        backend: shared.state.kind().into(),
        this: shared.replica.clone(),
        replicas: replicas::list(shared),
        served,
    }
}

async fn api(State(shared): State<Arc<Shared>>) -> Response {
    let r = tokio::task::spawn_blocking(move || current(&shared))
        .await
        .expect("the replicas answer does not panic");
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(r)).into_response()
}

/// The route, and the per-replica metric families (call once per process, with the app).
pub fn routes(shared: Arc<Shared>) -> Router {
    let info = Family::<Vec<(String, String)>, Gauge>::default();
    info.get_or_create(&vec![
        ("replica".into(), shared.replica.clone()),
        ("backend".into(), shared.state.kind().into()),
    ])
    .set(1);
    let requests = Family::<Vec<(String, String)>, Gauge>::default();
    shared.register_metrics(|r| {
        r.register(
            "replica_info",
            "This server's name among replicas and its shared-state backend",
            info,
        );
        r.register(
            "state_requests",
            "Requests this replica made to the shared-state backend, by operation (etcd only; refreshed every 2 s)",
            requests.clone(),
        );
    });
    if shared.state.replicated()
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        let s = Arc::downgrade(&shared);
        rt.spawn(async move {
            while let Some(sh) = s.upgrade() {
                for (op, n) in sh.state.requests() {
                    requests
                        .get_or_create(&vec![("op".into(), op.into())])
                        .set(n as i64);
                }
                drop(sh);
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        });
    }
    Router::new()
        .route("/api/replicas", get(api))
        .with_state(shared)
}
