//! The status page in a real browser: headless Chromium (Debian's `chromium`) loads `GET /` from the status
//! routes on loopback; a stage recorded only after the page was served must appear in the waterfall through the
//! page's own polling of `/api/board`, a failed node shows its reason and last event inline, and a node's
//! history opens; a screenshot is kept in target/tmp/status-page.png. `imgbuild status` against the routes,
//! and against something that is not an imgbuild server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::Request;
use axum::middleware::Next;
use imgbuild::netboot::http::status_page;
use imgbuild::netboot::state::Shared;
use imgbuild::status::{Events, Source};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn chromium_status_page_waterfall_grows_failed_row_shows_reason_history_on_click() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    let text = std::fs::read_to_string(format!("{REPO}/cluster.toml")).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}\n[paths]\nprofiles = \"{REPO}/profiles\"\nipxe = \"{REPO}/ipxe\"\n"),
    )
    .unwrap();
    let cluster = imgbuild::config::load(&cfg).unwrap();
    let mac = cluster.machine_by_hostname("worker-1").unwrap().mac;
    let failing = cluster.machine_by_hostname("storage-2").unwrap().mac;
    let shared = Arc::new(Shared::new(
        cfg,
        cluster,
        Default::default(),
        Events::in_memory(),
    ));
    shared.events.record(mac, "dhcp-offer", "", Source::Server);
    shared.events.record(mac, "dhcp-ack", "", Source::Server);
    shared
        .events
        .record(failing, "dhcp-offer", "", Source::Server);
    shared
        .events
        .record(failing, "state-disk", "looking for /dev/vdb", Source::Node);
    shared
        .events
        .record(failing, "failed", "no state disk", Source::Node);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    // The first /api/board request (from the page's script) records `kernel` just before it is answered: a
    // stage that arrives while the page is open.
    let s2 = shared.clone();
    let once = Arc::new(AtomicBool::new(false));
    let app = status_page::routes(shared.clone()).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let (s2, once) = (s2.clone(), once.clone());
            async move {
                if req.uri().path() == "/api/board" && !once.swap(true, Ordering::SeqCst) {
                    s2.events
                        .record(mac, "kernel", "image 0123456789abcdef", Source::Server);
                }
                next.run(req).await
            }
        },
    ));
    rt.spawn(async move { axum::serve(listener, app).await });

    let html = rt
        .block_on(imgbuild::status::client::get(&format!("http://{addr}/")))
        .unwrap();
    let bars = |doc: &str| {
        let row = doc.split("id=\"node-worker-1\"").nth(1).unwrap_or("");
        let row = row.split("</tr>").next().unwrap_or("");
        row.matches("class=\"bar ").count()
    };
    assert_eq!(
        bars(&html),
        2,
        "served: dhcp-offer and dhcp-ack bars: {html}"
    );
    assert!(
        !html.contains("data-stage=\"kernel\""),
        "kernel must not be in the served HTML yet"
    );
    // The server replicas: one, this server, with the state directory.
    let replicas_line = format!(
        "server replicas (dir state): {} (this page)</div>",
        shared.replica
    );
    assert!(html.contains(&replicas_line), "{html}");

    // The page opened on storage-2's history (the link a click makes: /#node=<mac>).
    let (dom, stderr) = common::chromium_dom(None, &format!("http://{addr}/#node={failing}"));
    assert!(
        dom.contains("id=\"node-worker-1\""),
        "no worker-1 row; chromium stderr: {stderr}\n{dom}"
    );
    assert!(
        !dom.contains("data-live=\"0\""),
        "the page never refreshed itself: {dom}"
    );
    // The waterfall grew: dhcp-offer, dhcp-ack, kernel, and the hatched bar of a node waiting for its next stage.
    assert_eq!(bars(&dom), 4, "{dom}");
    assert!(dom.contains("data-stage=\"kernel\""), "{dom}");
    assert!(dom.contains("class=\"bar waiting\""), "{dom}");
    // The failed row: its reason and the last event before it, inline.
    let row = dom
        .split("id=\"node-storage-2\"")
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    assert!(row.contains("node failed"), "{row}");
    assert!(row.contains("failed: no state disk"), "{row}");
    assert!(
        row.contains("last event before the failure: state-disk: looking for /dev/vdb"),
        "{row}"
    );
    assert!(row.contains("class=\"bar failed\""), "{row}");
    // Its whole event history.
    assert!(dom.contains("event history of storage-2"), "{dom}");
    let history = dom.split("id=\"history\"").nth(1).unwrap();
    assert_eq!(history.matches("class=\"event\"").count(), 3, "{history}");
    // Which replica served each event (from /api/board's replicas, redrawn by the script).
    assert_eq!(
        history
            .matches(&format!("<td class=\"replica\">{}</td>", shared.replica))
            .count(),
        3,
        "{history}"
    );
    assert!(dom.contains(&replicas_line), "{dom}");

    // A screenshot, kept as a test artifact.
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    common::chromium_screenshot(&format!("http://{addr}/#node={failing}"), &shot);
    let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(len > 10_000, "no screenshot at {}", shot.display());
    eprintln!("screenshot: {} ({len} bytes)", shot.display());
}

/// `imgbuild status --server URL` (table and `--json`) against the status routes on loopback.
#[test]
fn status_cli_prints_the_table_and_json_from_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::copy(format!("{REPO}/cluster.toml"), &cfg).unwrap();
    let cluster = imgbuild::config::load(&cfg).unwrap();
    let mac = cluster.machine_by_hostname("storage-2").unwrap().mac;
    let shared = Arc::new(Shared::new(
        cfg,
        cluster,
        Default::default(),
        Events::in_memory(),
    ));
    shared.events.record(mac, "dhcp-offer", "", Source::Server);
    shared
        .events
        .record(mac, "failed", "no state disk", Source::Node);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, status_page::routes(shared)).await });
    let bin = env!("CARGO_BIN_EXE_imgbuild");
    let out = std::process::Command::new(bin)
        .args(["status", "--server", &format!("http://{addr}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("storage-2"))
        .expect("storage-2 row");
    assert!(
        line.contains("failed: no state disk") && line.contains("10.77.0.32"),
        "{text}"
    );
    let out = std::process::Command::new(bin)
        .args(["status", "--json", "--server", &format!("http://{addr}")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "storage-2")
        .unwrap();
    assert_eq!(n["failed"], "no state disk");
    // No server: a clear error, exit status 1.
    let out = std::process::Command::new(bin)
        .args(["status", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach http://127.0.0.1:9/api/status")
    );
}
