//! The status page `GET /` (HTML from `web/status.html.j2`, refreshing itself from the API) and
//! `GET /api/status` (the [`Report`] as JSON): views of the server's event log (`status::report`). Mounted by
//! [`super::app`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::netboot::state::Shared;
use crate::status::report::{self, Report};
use crate::template::{self, Engine, TemplateError};

/// How often the page polls `/api/status`.
pub const REFRESH_MS: u64 = 1000;

/// The routes of the status page and its API, with their state applied.
pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(api))
        .with_state(shared)
}

/// The current report of a running server, with each node's enrollment (pending, spoofer refused, ...) from
/// the enrollment state.
pub fn current(shared: &Shared) -> Report {
    let cluster = shared.cluster();
    let mut r = report::build(&cluster, &shared.events.snapshot());
    match crate::pki::enroll::Store::for_cluster(&cluster).read() {
        Ok(st) => {
            for n in &mut r.nodes {
                if let Ok(mac) = n.mac.parse() {
                    n.enrollment = st.label(mac);
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

#[derive(Serialize)]
struct Cell {
    stage: String,
    text: String,
}

#[derive(Serialize)]
struct Row {
    name: String,
    role: String,
    ip: String,
    boot: u32,
    state: String,
    class: &'static str,
    elapsed: String,
    image: String,
    standins: bool,
    cells: Vec<Cell>,
}

/// Renders the page for a report (also used by tests).
pub fn render_page(engine: &Engine, report: &Report) -> Result<String, TemplateError> {
    let rows: Vec<Row> = report
        .nodes
        .iter()
        .map(|n| Row {
            name: n.name.clone(),
            role: n.role.clone().unwrap_or_else(|| "unknown".into()),
            ip: n.ip.clone().unwrap_or_else(|| "-".into()),
            boot: n.boot,
            state: n.state_with_enrollment(),
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
            cells: report
                .stages
                .iter()
                .map(|s| Cell {
                    stage: s.clone(),
                    text: n
                        .since_start(s)
                        .map(|ms| format!("{:.1}", ms as f64 / 1000.0))
                        .unwrap_or_default(),
                })
                .collect(),
        })
        .collect();
    engine.render(
        "web/status.html.j2",
        &serde_json::json!({ "report": report, "rows": rows, "refresh_ms": REFRESH_MS }),
    )
}

async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let cluster = shared.cluster();
    let engine = template::engine_for(&cluster);
    match render_page(&engine, &current(&shared)) {
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
        assert!(html.contains("data-stage=\"joined\""));
        server.abort();
    }
}
