//! The status page an operator keeps open, `GET /` (HTML from `web/status.html.j2`, with `web/status.css` and
//! `web/status.js` at `/assets/`, all compiled into the binary: no build step, no CDN): a boot waterfall per node
//! on one shared time axis, the failure reason and last event inline on a failed row, enrollment and Secure Boot
//! per node, the DHCP probe's finding, the server replicas (and which one served each stage), and a node's whole
//! event history on click. Its data:
//! `GET /api/status` (the [`Report`]), `GET /api/board` (the report, the probe's finding and each node's last
//! event: what the page polls) and `GET /api/nodes/{mac}/events` (one node's events). Mounted by [`super::app`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::config::MacAddr;
use crate::netboot::dhcp::probe;
use crate::netboot::state::Shared;
use crate::status::Event;
use crate::status::report::{self, Report};
use crate::template::{self, Engine, TemplateError};

/// How often the page polls `/api/board`.
pub const REFRESH_MS: u64 = 1000;

const CSS: &str = include_str!("../../../web/status.css");
const JS: &str = include_str!("../../../web/status.js");

/// The routes of the status page and its API, with their state applied.
pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(api))
        .route("/api/board", get(board))
        .route("/api/nodes/{mac}/events", get(node_events))
        .route(
            "/assets/status.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/assets/status.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .with_state(shared)
        .layer(super::reply::server_header())
}

fn asset(ty: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The current report of a running server, with each node's enrollment (pending, spoofer refused, ...) from
/// the enrollment state.
pub fn current(shared: &Shared) -> Report {
    with_enrollment(
        shared,
        report::build(
            &shared.cluster(),
            &crate::netboot::replicas::every_replicas_events(shared),
        ),
    )
}

/// `r` with each node's enrollment label read from the enrollment state (left empty, with a warning, when the
/// state cannot be read).
fn with_enrollment(shared: &Shared, mut r: Report) -> Report {
    match crate::pki::state_store::documents::enrollment(&*shared.state) {
        Ok(st) => {
            let cluster = shared.cluster();
            for n in &mut r.nodes {
                if let Ok(mac) = n.mac.parse() {
                    n.enrollment = st.label(mac);
                    // Machines that enroll by TPM attestation say so (docs/attestation.md).
                    if cluster
                        .machine_by_mac(mac)
                        .is_some_and(|m| m.identity == crate::config::Identity::Tpm)
                    {
                        n.enrollment = Some(match n.enrollment.take() {
                            Some(l) => format!("tpm: {l}"),
                            None => "tpm".into(),
                        });
                    }
                }
            }
        }
        Err(e) => tracing::warn!("status without enrollment: {e}"),
    }
    r
}

async fn api(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(current(&shared)),
    )
        .into_response()
}

/// A node's latest event other than `failed` (what it did last before failing), shown inline on a failed row.
#[derive(Debug, Clone, Serialize)]
pub struct LastEvent {
    /// Its stage.
    pub stage: String,
    /// Its detail (may be empty).
    pub detail: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// What the page shows: the report, the DHCP probe's finding, each node's last event before a failure (by MAC),
/// and the server replicas with the one that served each stage.
#[derive(Debug, Clone, Serialize)]
pub struct Board {
    /// The boot report.
    pub report: Report,
    /// Other DHCP servers on the wire, and whether DHCP answers.
    pub lan: probe::Snapshot,
    /// The latest event of each MAC that is not `failed`.
    pub last: BTreeMap<String, LastEvent>,
    /// Every live replica and which one served each stage (`GET /api/replicas`): one with the state directory.
    pub replicas: super::replicas::Replicas,
}

/// The board for a set of events.
pub fn board_of(shared: &Shared, events: &[Event]) -> Board {
    let mut last = BTreeMap::new();
    for e in events.iter().filter(|e| e.stage != "failed") {
        last.insert(
            e.mac.to_string(),
            LastEvent {
                stage: e.stage.clone(),
                detail: e.detail.clone(),
                at_ms: e.at_ms,
            },
        );
    }
    Board {
        report: with_enrollment(shared, report::build(&shared.cluster(), events)),
        lan: shared.dhcp_probe.snapshot(),
        last,
        replicas: super::replicas::current_with(shared, events),
    }
}

/// The board now, built off the async workers: with `[state] backend = "etcd"` the replicas come from etcd
/// (blocking I/O).
async fn board_now(shared: Arc<Shared>) -> Board {
    tokio::task::spawn_blocking(move || {
        board_of(
            &shared,
            &crate::netboot::replicas::every_replicas_events(&shared),
        )
    })
    .await
    .expect("the board does not panic")
}

async fn board(State(shared): State<Arc<Shared>>) -> Response {
    let b = board_now(shared).await;
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(b)).into_response()
}

async fn node_events(State(shared): State<Arc<Shared>>, Path(mac): Path<String>) -> Response {
    match mac.parse::<MacAddr>() {
        Ok(m) => (
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(shared.events.for_mac(m)),
        )
            .into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)\n"),
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct Bar {
    stage: String,
    index: usize,
    left: String,
    width: String,
    title: String,
}

#[derive(Serialize)]
struct Row {
    name: String,
    mac: String,
    role: String,
    ip: String,
    boot: u32,
    enrollment: String,
    secure_boot: &'static str,
    state: String,
    last_detail: String,
    class: &'static str,
    elapsed: String,
    image: String,
    standins: bool,
    bars: Vec<Bar>,
}

/// Renders the page for a board (also used by tests). The bars are placed as the page's script places them.
pub fn render_page(engine: &Engine, board: &Board) -> Result<String, TemplateError> {
    let report = &board.report;
    let t0 = report.nodes.iter().filter_map(|n| n.started_ms).min();
    let t1 = report
        .nodes
        .iter()
        .flat_map(|n| n.stages.iter().map(|s| s.at_ms))
        .chain(
            report
                .nodes
                .iter()
                .filter(|n| n.started_ms.is_some() && !n.done && n.failed.is_none())
                .map(|_| report.generated_ms),
        )
        .max();
    let span = match (t0, t1) {
        (Some(a), Some(b)) => (b.saturating_sub(a)).max(1000) as f64,
        _ => 1000.0,
    };
    let pct = |ms: u64| format!("{:.2}", ms as f64 / span * 100.0);
    let rows: Vec<Row> = report
        .nodes
        .iter()
        .map(|n| {
            let mut prev = n.started_ms.unwrap_or(0);
            let bars = n
                .stages
                .iter()
                .map(|s| {
                    let b = Bar {
                        stage: s.stage.clone(),
                        index: report
                            .stages
                            .iter()
                            .position(|x| *x == s.stage)
                            .unwrap_or(0),
                        left: pct(prev.saturating_sub(t0.unwrap_or(0))),
                        width: pct(s.at_ms.saturating_sub(prev)),
                        title: format!("{}: +{:.1} s", s.stage, s.duration_ms as f64 / 1000.0),
                    };
                    prev = s.at_ms;
                    b
                })
                .collect();
            Row {
                name: n.name.clone(),
                mac: n.mac.clone(),
                role: n.role.clone().unwrap_or_else(|| "unknown".into()),
                ip: n.ip.clone().unwrap_or_else(|| "-".into()),
                boot: n.boot,
                enrollment: n.enrollment.clone().unwrap_or_else(|| "-".into()),
                secure_boot: match n.secure_boot {
                    Some(true) => "on",
                    Some(false) => "off",
                    None => "-",
                },
                state: n.state.clone(),
                last_detail: match (&n.failed, board.last.get(&n.mac)) {
                    (Some(_), Some(l)) if !l.detail.is_empty() => {
                        format!("{}: {}", l.stage, l.detail)
                    }
                    _ => String::new(),
                },
                class: if n.failed.is_some() {
                    "failed"
                } else if n.done {
                    "done"
                } else {
                    ""
                },
                elapsed: n
                    .elapsed_ms
                    .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                image: n
                    .image
                    .as_deref()
                    .map(|i| i.chars().take(12).collect())
                    .unwrap_or_else(|| "-".into()),
                standins: n.standins,
                bars,
            }
        })
        .collect();
    engine.render(
        "web/status.html.j2",
        &serde_json::json!({
            "report": report, "rows": rows, "lan": board.lan, "replicas": board.replicas,
            "refresh_ms": REFRESH_MS,
        }),
    )
}

async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let cluster = shared.cluster();
    let engine = template::engine_for(&cluster);
    let board = board_now(shared.clone()).await;
    match render_page(&engine, &board) {
        Ok(html) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "status page");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Events, Source};

    fn shared() -> (tempfile::TempDir, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.toml");
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster.toml")).unwrap();
        let root = env!("CARGO_MANIFEST_DIR");
        std::fs::write(
            &p,
            format!("{text}\n[paths]\nprofiles = \"{root}/profiles\"\nipxe = \"{root}/ipxe\"\n"),
        )
        .unwrap();
        let cluster = crate::config::load(&p).unwrap();
        let s = Arc::new(Shared::new(
            p,
            cluster,
            Default::default(),
            Events::in_memory(),
        ));
        (dir, s)
    }

    #[tokio::test]
    async fn page_and_api_show_stages_and_escape_details() {
        let (_d, s) = shared();
        let mac = s.cluster().machines[3].mac;
        s.events.record(mac, "dhcp-offer", "", Source::Server);
        s.events
            .record(mac, "dhcp-ack", "10.77.0.21 <b>", Source::Server);
        s.events
            .record(mac, "failed", "<script>alert(1)</script>", Source::Node);
        let app = routes(s.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let body = crate::status::client::get(&format!("http://{addr}/api/status"))
            .await
            .unwrap();
        let r: Report = serde_json::from_str(&body).unwrap();
        let w = r.nodes.iter().find(|n| n.name == "worker-1").unwrap();
        assert_eq!(w.state, "failed: <script>alert(1)</script>");
        let html = crate::status::client::get(&format!("http://{addr}/"))
            .await
            .unwrap();
        assert!(html.contains("id=\"node-worker-1\""), "{html}");
        assert!(html.contains("failed: &lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("class=\"bar s0\" data-stage=\"dhcp-offer\""),
            "{html}"
        );
        assert!(
            html.contains("last event before the failure: dhcp-ack: 10.77.0.21 &lt;b&gt;"),
            "{html}"
        );
        let evs = crate::status::client::get(&format!("http://{addr}/api/nodes/{mac}/events"))
            .await
            .unwrap();
        assert!(
            evs.contains("dhcp-offer") && evs.contains("failed"),
            "{evs}"
        );
        let js = crate::status::client::get(&format!("http://{addr}/assets/status.js"))
            .await
            .unwrap();
        assert!(js.contains("/api/board"));
        server.abort();
    }
}
