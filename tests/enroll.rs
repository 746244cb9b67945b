//! Enrollment rules and authenticated node reports over real HTTPS on loopback: curl binds the source address
//! the inventory gives a machine (the example inventory moved to 127.77.0.0/24, all local on `lo`) and verifies
//! the server with the provisioning CA; the server's whole application runs behind `tls.rs` as `serve` runs it,
//! and on a plain listener too (which must refuse secrets).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

mod common;
use std::sync::Arc;

use imgbuild::config::MacAddr;
use imgbuild::netboot::state::Shared;
use imgbuild::pki::{enroll, secrets};
use imgbuild::status::Events;

const M1: &str = "52:54:00:77:00:11";
const M2: &str = "52:54:00:77:00:12";
const W1: &str = "52:54:00:77:00:21";
const W2: &str = "52:54:00:77:00:22";

struct Lab {
    _dir: tempfile::TempDir,
    config: PathBuf,
    shared: Arc<Shared>,
    addr: SocketAddr,
    plain: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

static APP: std::sync::Mutex<Vec<(usize, axum::Router)>> = std::sync::Mutex::new(Vec::new());

/// The server's application for `shared` (built once per state: it registers its metrics).
fn app(shared: &Arc<Shared>) -> axum::Router {
    let key = Arc::as_ptr(shared) as usize;
    let mut apps = APP.lock().unwrap();
    if let Some((_, a)) = apps.iter().find(|(k, _)| *k == key) {
        return a.clone();
    }
    let a = imgbuild::netboot::http::app(shared.clone());
    apps.push((key, a.clone()));
    a
}

/// HTTPS (as `serve` runs it) and plain HTTP listeners on loopback for the same application.
async fn serve(shared: Arc<Shared>) -> (SocketAddr, SocketAddr, tokio::task::JoinHandle<()>) {
    let l = common::https::serve(app(&shared), &shared.cluster().paths.secrets).await;
    (l.https, l.plain, l.task)
}

impl Lab {
    async fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let config = common::write_cluster(dir.path(), true, |t| t);
        let cluster = imgbuild::config::load(&config).unwrap();
        secrets::init(&cluster.paths.secrets).unwrap();
        let shared = Arc::new(Shared::new(
            config.clone(),
            cluster,
            BTreeMap::new(),
            Events::in_memory(),
        ));
        let (addr, plain, server) = serve(shared.clone()).await;
        Lab {
            _dir: dir,
            config,
            shared,
            addr,
            plain,
            server,
        }
    }

    fn ca(&self) -> PathBuf {
        self.shared.cluster().paths.provisioning_ca_cert()
    }

    /// A server restart: new routes (new start time) over the same state and events.
    async fn restart(&mut self) {
        self.server.abort();
        let (addr, plain, server) = serve(self.shared.clone()).await;
        self.addr = addr;
        self.plain = plain;
        self.server = server;
    }

    fn store(&self) -> enroll::Store {
        enroll::Store::for_cluster(&self.shared.cluster())
    }

    /// curl from `src` over HTTPS, verifying the server with the provisioning CA: (status, Retry-After, body).
    async fn curl(
        &self,
        src: &str,
        path: &str,
        form: Option<&str>,
    ) -> (u16, Option<String>, String) {
        let url = format!("https://{}{}", self.addr, path);
        self.curl_url(src, &url, form).await
    }

    /// The same over plain HTTP.
    async fn curl_plain(
        &self,
        src: &str,
        path: &str,
        form: Option<&str>,
    ) -> (u16, Option<String>, String) {
        let url = format!("http://{}{}", self.plain, path);
        self.curl_url(src, &url, form).await
    }

    async fn curl_url(
        &self,
        src: &str,
        url: &str,
        form: Option<&str>,
    ) -> (u16, Option<String>, String) {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--interface", src, "-D", "-"])
            .arg("--cacert")
            .arg(self.ca())
            .arg(url);
        if let Some(f) = form {
            cmd.args(["--data", f]);
        }
        let out = cmd.output().await.expect("curl runs");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let retry = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(|v| v.trim().to_string())
        });
        (status, retry, body.to_string())
    }

    async fn enroll(&self, src: &str, mac: &str) -> (u16, Option<String>, String) {
        self.curl(src, &format!("/api/enroll/{mac}"), None).await
    }

    fn events(&self, mac: &str, stage: &str) -> Vec<String> {
        self.shared
            .events
            .for_mac(mac.parse().unwrap())
            .into_iter()
            .filter(|e| e.stage == stage)
            .map(|e| e.detail)
            .collect()
    }

    /// Opens the barrier in the server's durable state directly (what an accepted, signed `init-done` of the
    /// first master does; `reports_are_authenticated_and_refusals_leave_no_trace` goes through the route).
    fn init_done(&self) {
        self.shared.reports.with(|i, st| {
            i.reach_barrier(
                st,
                M1.parse::<MacAddr>().unwrap(),
                imgbuild::status::now_ms(),
            )
            .unwrap();
        });
    }

    /// A report signed with `mac`'s report key (as the node scripts sign it).
    fn signed(&self, mac: &str, stage: &str, detail: &str, ctr: u64) -> String {
        use imgbuild::pki::report_auth::{hmac_hex, node_key, report_message};
        let m: MacAddr = mac.parse().unwrap();
        let at = self.store().read().unwrap().enrolled[&m].at_ms;
        let key = node_key(
            &secrets::load(&self.shared.cluster().paths.secrets)
                .unwrap()
                .report_key,
            m,
            at,
        );
        let ts = imgbuild::pki::token::now_unix();
        let sig = hmac_hex(&key, &report_message(m, stage, ts, ctr, detail));
        format!("mac={mac}&stage={stage}&detail={detail}&ts={ts}&ctr={ctr}&sig={sig}")
    }
}

fn bundle(body: &str) -> enroll::Bundle {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn enrollment_rules_unknown_wrong_address_once_barrier_reset_restart() {
    let mut lab = Lab::new().await;

    // Plain HTTP: refused, whoever asks (the bundle carries secrets).
    let (s, _, body) = lab
        .curl_plain("127.77.0.11", &format!("/api/enroll/{M1}"), None)
        .await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("HTTPS only"), "{body}");

    // Unknown MAC: refused, counted, nothing recorded.
    let (s, _, body) = lab.enroll("127.77.0.11", "52:54:00:aa:bb:cc").await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("not in the inventory"), "{body}");
    assert!(
        lab.shared
            .events
            .for_mac("52:54:00:aa:bb:cc".parse().unwrap())
            .is_empty()
    );
    assert_eq!(lab.shared.events.stats().refused_not_in_inventory, 1);
    // Malformed MAC.
    assert_eq!(lab.enroll("127.77.0.11", "not-a-mac").await.0, 400);

    // The first master's MAC from another address: a spoofer.
    let (s, _, body) = lab.enroll("127.77.0.99", M1).await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains("possible spoofer") && body.contains("127.77.0.11"),
        "{body}"
    );
    // Remembered as a possible spoofer (shown on the page), not as an event of the node.
    assert!(lab.events(M1, "failed").is_empty());
    assert_eq!(
        lab.store()
            .read()
            .unwrap()
            .label(M1.parse().unwrap())
            .as_deref(),
        Some("spoofer-refused from 127.77.0.99")
    );

    // A joiner before the barrier: retry later, nothing consumed, nothing recorded.
    let (s, retry, body) = lab.enroll("127.77.0.21", W1).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("10"));
    assert!(lab.events(W1, "failed").is_empty());
    let (s, retry, _) = lab
        .curl("127.77.0.21", "/api/barrier/init-done", None)
        .await;
    assert_eq!((s, retry.as_deref()), (503, Some("5")));

    // The first master gets the CA set, the token, the publish key and init: true.
    let (s, _, body) = lab.enroll("127.77.0.11", M1).await;
    assert_eq!(s, 200, "{body}");
    let b = bundle(&body);
    let sec = secrets::load(&lab.shared.cluster().paths.secrets).unwrap();
    assert!(b.init);
    assert_eq!(b.hostname, "master-1");
    assert_eq!(b.api_endpoint, "127.77.0.10:6443");
    assert_eq!(b.token, sec.token.token);
    assert_eq!(b.discovery_hash, sec.discovery_hash);
    assert_eq!(b.publish_key.as_deref(), Some(sec.publish_key.as_str()));
    let names: Vec<&str> = b.pki.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "ca.crt",
            "ca.key",
            "etcd/ca.crt",
            "etcd/ca.key",
            "front-proxy-ca.crt",
            "front-proxy-ca.key",
            "sa.key",
            "sa.pub"
        ]
    );
    assert_eq!(b.pki["ca.key"], sec.ca.key_pem);
    assert_eq!(lab.events(M1, "enrolled").len(), 1);

    // A second fetch, even from the right address, is refused loudly.
    let (s, _, body) = lab.enroll("127.77.0.11", M1).await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body.contains("possible spoofer") && body.contains("enroll reset"),
        "{body}"
    );

    // The barrier opens when the first master reports init-done, signed with its report key.
    let (s, _, body) = lab
        .curl(
            "127.77.0.11",
            "/api/events",
            Some(&lab.signed(M1, "init-done", "ok", 1)),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        lab.curl("127.77.0.21", "/api/barrier/init-done", None)
            .await
            .0,
        200
    );

    // Another master: the CA set, no init, no publish key.
    let b = bundle(&lab.enroll("127.77.0.12", M2).await.2);
    assert!(!b.init && b.publish_key.is_none() && b.pki.len() == 8);
    // A worker: token, hash and endpoint only.
    let (s, _, body) = lab.enroll("127.77.0.21", W1).await;
    assert_eq!(s, 200, "{body}");
    let b = bundle(&body);
    assert!(!b.init && b.pki.is_empty() && b.publish_key.is_none() && b.bgp_passwords.is_empty());
    assert!(!body.contains("PRIVATE KEY"));
    assert_eq!(b.discovery_hash, sec.discovery_hash);

    let metrics = lab.shared.encode_metrics();
    for line in [
        "imgbuild_enroll_requests_total{outcome=\"unknown-mac\"} 1",
        "imgbuild_enroll_requests_total{outcome=\"wrong-address\"} 1",
        "imgbuild_enroll_requests_total{outcome=\"wait-barrier\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    assert!(
        metrics.contains("imgbuild_enroll_requests_total{outcome=\"served\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imgbuild_enroll_requests_total{outcome=\"already-enrolled\"}"),
        "{metrics}"
    );

    // Survives a restart: the state is on disk.
    lab.restart().await;
    assert_eq!(lab.enroll("127.77.0.21", W1).await.0, 409);

    // Reset re-arms exactly that node (what `imgbuild enroll --reset worker-1` does).
    {
        let mut l = lab.store().lock().unwrap();
        l.state.enrolled.remove(&W1.parse::<MacAddr>().unwrap());
        l.save().unwrap();
    }
    assert_eq!(lab.enroll("127.77.0.21", W1).await.0, 200);
    assert_eq!(lab.enroll("127.77.0.11", M1).await.0, 409);
}

#[tokio::test]
async fn enrollment_window_closes_and_opens() {
    let lab = Lab::new().await;
    lab.init_done();
    // `imgbuild enroll close`.
    {
        let mut l = lab.store().lock().unwrap();
        l.state.closed_at_ms = imgbuild::status::now_ms() + 1;
        l.state.auto_closed = true;
        l.save().unwrap();
    }
    let (s, _, body) = lab.enroll("127.77.0.22", W2).await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains("closed") && body.contains("enroll open"),
        "{body}"
    );
    // `imgbuild enroll --open 30m`.
    {
        let mut l = lab.store().lock().unwrap();
        l.state.open_until_ms = Some(imgbuild::status::now_ms() + 30 * 60 * 1000);
        l.save().unwrap();
    }
    assert_eq!(lab.enroll("127.77.0.22", W2).await.0, 200);
    // A window that has passed is closed again.
    {
        let mut l = lab.store().lock().unwrap();
        l.state.open_until_ms = Some(imgbuild::status::now_ms() - 1);
        l.save().unwrap();
    }
    assert_eq!(lab.enroll("127.77.0.21", W1).await.0, 403);
}

#[tokio::test]
async fn start_up_window_ends_when_every_node_has_enrolled() {
    let lab = Lab::new().await;
    lab.init_done();
    let cluster = lab.shared.cluster();
    for m in &cluster.machines {
        let (s, _, body) = lab.enroll(&m.ip.to_string(), &m.mac.to_string()).await;
        assert_eq!(s, 200, "{}: {body}", m.hostname);
    }
    // Re-arming one node does not reopen the start-up window: the operator opens one.
    {
        let mut l = lab.store().lock().unwrap();
        l.state.enrolled.remove(&W2.parse::<MacAddr>().unwrap());
        l.save().unwrap();
    }
    let (s, _, body) = lab.enroll("127.77.0.22", W2).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("closed"), "{body}");
}

fn openssl_sig(key: &str, msg: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(msg.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn token_publication_is_authenticated_and_late_joiners_get_the_new_token() {
    let lab = Lab::new().await;
    let dir = lab.shared.cluster().paths.secrets.clone();
    let key = secrets::load(&dir).unwrap().publish_key;
    let now = imgbuild::pki::token::now_unix();
    let new_token = "abcdef.0123456789abcdef";
    let expires = now + 86400;
    let msg = enroll::publish_message(M1.parse().unwrap(), new_token, expires, now);
    // The node signs with openssl; the server's signature is the same.
    let sig = openssl_sig(&key, &msg);
    assert_eq!(sig, enroll::sign(&key, &msg));
    let form = format!("mac={M1}&token={new_token}&expires={expires}&ts={now}&sig={sig}");

    // From another address, or for another MAC: refused.
    let (s, _, body) = lab.curl("127.77.0.21", "/api/token", Some(&form)).await;
    assert_eq!(s, 403, "{body}");
    let other = format!("mac={W1}&token={new_token}&expires={expires}&ts={now}&sig={sig}");
    assert_eq!(
        lab.curl("127.77.0.21", "/api/token", Some(&other)).await.0,
        403
    );
    // A bad signature.
    let bad = form.replace(&sig, &enroll::sign("wrong key", &msg));
    let (s, _, body) = lab.curl("127.77.0.11", "/api/token", Some(&bad)).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("bad signature"), "{body}");
    // A stale timestamp.
    let old = now - 3600;
    let stale_msg = enroll::publish_message(M1.parse().unwrap(), new_token, expires, old);
    let stale = format!(
        "mac={M1}&token={new_token}&expires={expires}&ts={old}&sig={}",
        enroll::sign(&key, &stale_msg)
    );
    assert_eq!(
        lab.curl("127.77.0.11", "/api/token", Some(&stale)).await.0,
        403
    );
    // A malformed token, correctly signed.
    let t2 = "ABCDEF.0123456789abcdef";
    let m2 = enroll::publish_message(M1.parse().unwrap(), t2, expires, now);
    let f2 = format!(
        "mac={M1}&token={t2}&expires={expires}&ts={now}&sig={}",
        enroll::sign(&key, &m2)
    );
    assert_eq!(
        lab.curl("127.77.0.11", "/api/token", Some(&f2)).await.0,
        400
    );
    // Missing fields.
    assert_eq!(
        lab.curl("127.77.0.11", "/api/token", Some("mac=x")).await.0,
        400
    );

    // The real one.
    let (s, _, body) = lab.curl("127.77.0.11", "/api/token", Some(&form)).await;
    assert_eq!(s, 200, "{body}");
    let stored = secrets::load_token(&dir).unwrap();
    assert_eq!(
        (stored.token.as_str(), stored.expires_unix),
        (new_token, expires)
    );
    // Replayed: refused.
    assert_eq!(
        lab.curl("127.77.0.11", "/api/token", Some(&form)).await.0,
        409
    );

    let metrics = lab.shared.encode_metrics();
    assert!(
        metrics.contains("imgbuild_token_publications_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imgbuild_token_publications_total{outcome=\"refused\"} 7"),
        "{metrics}"
    );

    // A worker enrolling later gets the published token.
    lab.init_done();
    let b = bundle(&lab.enroll("127.77.0.21", W1).await.2);
    assert_eq!(b.token, new_token);
    assert_eq!(b.token_expires_unix, expires);

    // An expired stored token holds joiners back (503) without consuming their enrollment.
    let mut t = stored.clone();
    t.expires_unix = now - 10;
    secrets::save_token(&dir, &t).unwrap();
    let (s, retry, body) = lab.enroll("127.77.0.22", W2).await;
    assert_eq!((s, retry.as_deref()), (503, Some("60")), "{body}");
    assert!(body.contains("expired"), "{body}");
    let _ = &lab.config;
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A host at a non-inventory address posts `init-done` for the first master and `failed` for a worker: the
/// barrier stays closed, the status shows neither, both are counted. Signed reports: accepted once, a replay
/// and a forgery refused; the barrier is durable state, not the event log. Then 4,000 requests for random MACs
/// (enrollment and events): the state directory grows by less than 64 KiB and no status row appears.
#[tokio::test]
async fn reports_are_authenticated_and_refusals_leave_no_trace() {
    let lab = Lab::new().await;
    let state = lab.shared.cluster().paths.state.clone();
    for (mac, stage) in [(M1, "init-done"), (W1, "failed")] {
        let form = format!("mac={mac}&stage={stage}&detail=forged");
        assert_eq!(
            lab.curl("127.77.0.99", "/api/events", Some(&form)).await.0,
            403
        );
        assert_eq!(
            lab.curl_plain("127.77.0.99", "/api/events", Some(&form))
                .await
                .0,
            403
        );
    }
    // Unsigned init-done even from the first master's own address: refused.
    let own = format!("mac={M1}&stage=init-done&detail=x");
    assert_eq!(
        lab.curl("127.77.0.11", "/api/events", Some(&own)).await.0,
        403
    );
    assert_eq!(
        lab.curl("127.77.0.21", "/api/barrier/init-done", None)
            .await
            .0,
        503
    );
    assert!(
        lab.shared.events.snapshot().is_empty(),
        "refused reports record nothing"
    );
    let (_, _, body) = lab.curl("127.77.0.21", "/api/status", None).await;
    let r: imgbuild::status::Report = serde_json::from_str(&body).unwrap();
    assert!(
        r.nodes
            .iter()
            .all(|n| n.stage.is_none() && n.failed.is_none()),
        "{body}"
    );
    let metrics = lab.shared.encode_metrics();
    for line in [
        "imgbuild_event_reports_total{outcome=\"wrong-address\"} 2",
        "imgbuild_event_reports_total{outcome=\"not-first-master\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }

    // Enrolled: unsigned reports of the root filesystem's stages are refused, signed ones accepted once.
    assert_eq!(lab.enroll("127.77.0.11", M1).await.0, 200);
    let unsigned = format!("mac={M1}&stage=systemd&detail=x");
    assert_eq!(
        lab.curl("127.77.0.11", "/api/events", Some(&unsigned))
            .await
            .0,
        403
    );
    // The initrd's stages too (its initrd signs them with the key on the state disk): a wiped disk means re-arm.
    let unsigned = format!("mac={M1}&stage=initrd&detail=x");
    let (s, _, body) = lab
        .curl("127.77.0.11", "/api/events", Some(&unsigned))
        .await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("enroll reset"), "{body}");
    let good = lab.signed(M1, "init-done", "done", 5);
    let forged = good.replace("detail=done", "detail=other");
    assert_eq!(
        lab.curl("127.77.0.99", "/api/events", Some(&forged))
            .await
            .0,
        403
    );
    assert_eq!(
        lab.curl("127.77.0.99", "/api/events", Some(&good)).await.0,
        200
    );
    let (s, _, body) = lab.curl("127.77.0.11", "/api/events", Some(&good)).await;
    assert_eq!(s, 403, "a replay: {body}");
    assert!(body.contains("replay"), "{body}");
    assert_eq!(
        lab.curl("127.77.0.21", "/api/barrier/init-done", None)
            .await
            .0,
        200
    );
    assert!(state.join("barrier.json").exists());
    // Durable: a new server state over the same directory still has the barrier and refuses the replay.
    let again = imgbuild::pki::report_state::ReportState::open(&state).unwrap();
    assert!(again.barrier().is_some());
    again.with(|i, _| {
        let at = lab.store().read().unwrap().enrolled[&M1.parse().unwrap()].at_ms;
        assert_eq!(i.last_ctr(M1.parse().unwrap(), at), Some(5));
    });

    // The flood: 2,000 enrollment requests and 2,000 events for random MACs, over one connection each.
    let before = dir_bytes(&state);
    let cfg = lab._dir.path().join("flood.curlrc");
    let mut text = String::new();
    let common = format!(
        "silent\ninterface = \"127.77.0.99\"\ncacert = \"{}\"\noutput = \"/dev/null\"\n",
        lab.ca().display()
    );
    for i in 0..2000u32 {
        let mac = format!("02:{:02x}:{:02x}:00:00:{:02x}", i >> 8, i & 0xff, i % 7);
        if i > 0 {
            text.push_str("next\n");
        }
        text.push_str(&format!(
            "{common}url = \"https://{}/api/enroll/{mac}\"\nnext\n",
            lab.addr
        ));
        text.push_str(&format!(
            "{common}url = \"https://{}/api/events\"\ndata = \"mac={mac}&stage=failed&detail=flood\"\n",
            lab.addr
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    let t0 = std::time::Instant::now();
    let out = tokio::process::Command::new("curl")
        .arg("-K")
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grown = dir_bytes(&state).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "the state directory grew by {grown} bytes"
    );
    let r = imgbuild::netboot::http::status_page::current(&lab.shared);
    assert_eq!(
        r.nodes.len(),
        lab.shared.cluster().machines.len(),
        "no status row for a random MAC"
    );
    let metrics = lab.shared.encode_metrics();
    assert!(
        metrics.contains("imgbuild_event_reports_total{outcome=\"unknown-mac\"} 2000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imgbuild_enroll_requests_total{outcome=\"unknown-mac\"} 2000"),
        "{metrics}"
    );
    eprintln!(
        "4,000 requests in {:?}; state grew by {grown} bytes",
        t0.elapsed()
    );
}

/// Before enrollment a node's unsigned report is taken from its inventory address or from the address of the
/// DHCP lease the server acknowledged to it (fed here as the DHCP journal thread feeds it, after the fsync), and
/// from no other: not from another node's lease, not once the lease is released or has ended. Each refusal is
/// counted as `wrong-address` and names both addresses.
#[tokio::test]
async fn unsigned_reports_come_from_the_inventory_address_or_the_current_lease_only() {
    use imgbuild::netboot::dhcp::leases::Record;
    let lab = Lab::new().await;
    let now = imgbuild::pki::token::now_unix();
    let w2: MacAddr = W2.parse().unwrap();
    let lease = |mac: MacAddr, ip: &str, expires: u64| Record::Grant {
        mac,
        ip: ip.parse().unwrap(),
        expires,
        at: now,
    };
    let report = |mac: &str| format!("mac={mac}&stage=initrd&detail=lease");
    lab.shared
        .leases
        .replay(&lease(w2, "127.77.0.150", now + 600));

    let (s, _, body) = lab
        .curl("127.77.0.150", "/api/events", Some(&report(W2)))
        .await;
    assert_eq!(s, 200, "from its lease: {body}");
    assert_eq!(
        imgbuild::netboot::peers::mac_for_ip(&lab.shared, "127.77.0.150".parse().unwrap()),
        Some(w2),
        "the lease names the machine behind the address"
    );
    let (s, _, body) = lab
        .curl("127.77.0.22", "/api/events", Some(&report(W2)))
        .await;
    assert_eq!(s, 200, "from its inventory address: {body}");
    let (s, _, body) = lab
        .curl("127.77.0.151", "/api/events", Some(&report(W2)))
        .await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains("its address is 127.77.0.22 (or 127.77.0.150, its current DHCP lease)"),
        "{body}"
    );
    // Another node's lease is not yours.
    let (s, _, body) = lab
        .curl("127.77.0.150", "/api/events", Some(&report(W1)))
        .await;
    assert_eq!(s, 403, "{body}");
    // Released: refused from the address at once.
    lab.shared.leases.replay(&Record::Release {
        mac: w2,
        ip: "127.77.0.150".parse().unwrap(),
        at: now,
    });
    let (s, _, body) = lab
        .curl("127.77.0.150", "/api/events", Some(&report(W2)))
        .await;
    assert_eq!(s, 403, "released: {body}");
    // Ended: a lease that expired no longer counts.
    lab.shared
        .leases
        .replay(&lease(w2, "127.77.0.152", now - 1));
    let (s, _, body) = lab
        .curl("127.77.0.152", "/api/events", Some(&report(W2)))
        .await;
    assert_eq!(s, 403, "ended: {body}");

    assert_eq!(lab.events(W2, "initrd").len(), 2, "only the two accepted");
    assert!(lab.events(W1, "initrd").is_empty());
    let metrics = lab.shared.encode_metrics();
    for line in [
        "imgbuild_event_reports_total{outcome=\"accepted-address\"} 2",
        "imgbuild_event_reports_total{outcome=\"wrong-address\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

/// A node whose image carries another CA refuses the server (curl: certificate problem), and the server's
/// certificate names its address.
#[tokio::test]
async fn a_node_with_a_wrong_ca_refuses_the_server() {
    let lab = Lab::new().await;
    let other = lab._dir.path().join("other-ca.crt");
    std::fs::write(
        &other,
        imgbuild::pki::provisioning::new_ca().unwrap().cert_pem,
    )
    .unwrap();
    let url = format!("https://{}/api/enroll/{M1}", lab.addr);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--interface", "127.77.0.11", "--cacert"])
        .arg(&other)
        .arg(&url)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(60),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lab.store().read().unwrap().enrolled.is_empty(),
        "nothing was handed out"
    );
    assert_eq!(
        lab.enroll("127.77.0.11", M1).await.0,
        200,
        "the right CA works"
    );
}

/// `[enrollment] approve = true`: a first contact waits as pending (on /api/status) until
/// `imgbuild enroll approve <host>`; a second claimant is refused and shown as a possible spoofer.
#[tokio::test]
async fn approval_mode_holds_first_contacts_and_shows_spoofers() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_cluster(dir.path(), true, |t| {
        t.replace("approve = false", "approve = true")
    });
    let cluster = imgbuild::config::load(&config).unwrap();
    assert!(cluster.enrollment.approve);
    secrets::init(&cluster.paths.secrets).unwrap();
    let shared = Arc::new(Shared::new(
        config.clone(),
        cluster,
        BTreeMap::new(),
        Events::in_memory(),
    ));
    let (addr, plain, server) = serve(shared.clone()).await;
    let lab = Lab {
        _dir: dir,
        config,
        shared,
        addr,
        plain,
        server,
    };
    let (s, retry, body) = lab.enroll("127.77.0.11", M1).await;
    assert_eq!((s, retry.as_deref()), (503, Some("10")), "{body}");
    assert!(body.contains("enroll approve"), "{body}");
    let status = |lab: &Lab| {
        let r = imgbuild::netboot::http::status_page::current(&lab.shared);
        r.nodes.iter().find(|n| n.mac == M1).unwrap().clone()
    };
    assert_eq!(status(&lab).enrollment.as_deref(), Some("pending"));
    assert!(
        imgbuild::status::report::table(&imgbuild::netboot::http::status_page::current(
            &lab.shared
        ))
        .contains("[enrollment: pending]")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("-c")
        .arg(&lab.config)
        .args(["enroll", "approve", "master-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved"));
    assert_eq!(lab.enroll("127.77.0.11", M1).await.0, 200);
    assert_eq!(status(&lab).enrollment.as_deref(), Some("enrolled"));
    // A second claimant.
    assert_eq!(lab.enroll("127.77.0.98", M1).await.0, 403);
    assert_eq!(
        status(&lab).enrollment.as_deref(),
        Some("spoofer-refused from 127.77.0.98")
    );
}
