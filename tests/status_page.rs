//! The status page in a real browser: headless Chromium (Debian's `chromium`) loads `GET /` from the status
//! routes on loopback; a stage recorded only after the page was served must appear through the page's own
//! polling of `/api/status`.

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
fn chromium_status_page_updates_live_from_api_status() {
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
    let shared = Arc::new(Shared::new(
        cfg,
        cluster,
        Default::default(),
        Events::in_memory(),
    ));
    shared.events.record(mac, "dhcp-offer", "", Source::Server);
    shared.events.record(mac, "dhcp-ack", "", Source::Server);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    // The first /api/status request (from the page's script) records `kernel` just before it is answered.
    let s2 = shared.clone();
    let once = Arc::new(AtomicBool::new(false));
    let app = status_page::routes(shared.clone()).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let (s2, once) = (s2.clone(), once.clone());
            async move {
                if req.uri().path() == "/api/status" && !once.swap(true, Ordering::SeqCst) {
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
    assert!(
        !html.contains("data-stage=\"kernel\">0"),
        "kernel must not be in the served HTML yet"
    );

    let (dom, stderr) = common::chromium_dom(None, &format!("http://{addr}/"));
    assert!(
        dom.contains("id=\"node-worker-1\""),
        "no worker-1 row; chromium stderr: {stderr}\n{dom}"
    );
    assert!(
        !dom.contains("data-live=\"0\""),
        "the page never refreshed itself: {dom}"
    );
    assert!(
        dom.contains("class=\"st reached\" data-stage=\"kernel\""),
        "the kernel stage recorded after the page load did not appear: {dom}"
    );
    assert!(
        dom.contains(">kernel<"),
        "state column should say kernel: {dom}"
    );
    assert!(dom.contains("0123456789ab"), "image id column: {dom}");
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
