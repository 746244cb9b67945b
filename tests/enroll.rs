//! Enrollment rules over real HTTP on loopback: curl binds the source address the inventory gives a machine
//! (the example inventory moved to 127.77.0.0/24, all local on `lo`), the router runs on a loopback listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

mod common;
use std::sync::Arc;

use imgbuild::config::MacAddr;
use imgbuild::netboot::state::Shared;
use imgbuild::pki::{enroll, secrets};
use imgbuild::status::{Events, Source};

const M1: &str = "52:54:00:77:00:11";
const M2: &str = "52:54:00:77:00:12";
const W1: &str = "52:54:00:77:00:21";
const W2: &str = "52:54:00:77:00:22";

struct Lab {
    _dir: tempfile::TempDir,
    config: PathBuf,
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

async fn serve(shared: Arc<Shared>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = imgbuild::netboot::http::enroll::routes(shared);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    (addr, h)
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
        let (addr, server) = serve(shared.clone()).await;
        Lab {
            _dir: dir,
            config,
            shared,
            addr,
            server,
        }
    }

    /// A server restart: new routes (new start time) over the same state and events.
    async fn restart(&mut self) {
        self.server.abort();
        let (addr, server) = serve(self.shared.clone()).await;
        self.addr = addr;
        self.server = server;
    }

    fn store(&self) -> enroll::Store {
        enroll::Store::for_cluster(&self.shared.cluster())
    }

    /// curl from `src`: (status, Retry-After, body).
    async fn curl(
        &self,
        src: &str,
        path: &str,
        form: Option<&str>,
    ) -> (u16, Option<String>, String) {
        let url = format!("http://{}{}", self.addr, path);
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "--interface",
            src,
            "-D",
            "-",
            &url,
        ]);
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

    fn init_done(&self) {
        self.shared.events.record(
            M1.parse::<MacAddr>().unwrap(),
            "init-done",
            "kubeadm init finished",
            Source::Node,
        );
    }
}

fn bundle(body: &str) -> enroll::Bundle {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn enrollment_rules_unknown_wrong_address_once_barrier_reset_restart() {
    let mut lab = Lab::new().await;

    // Unknown MAC: refused, counted, nothing recorded for it.
    let (s, _, body) = lab.enroll("127.77.0.11", "52:54:00:aa:bb:cc").await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("not in the inventory"), "{body}");
    assert!(lab.events("52:54:00:aa:bb:cc", "failed").is_empty());
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
    assert!(lab.events(M1, "failed")[0].contains("127.77.0.99"));

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
        body.contains("possible spoofer") && body.contains("enroll --reset"),
        "{body}"
    );

    // The barrier opens when the first master reports init-done.
    lab.init_done();
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
    // `imgbuild enroll --close`.
    {
        let mut l = lab.store().lock().unwrap();
        l.state.closed_at_ms = imgbuild::status::now_ms() + 1;
        l.save().unwrap();
    }
    let (s, _, body) = lab.enroll("127.77.0.22", W2).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("closed") && body.contains("--open"), "{body}");
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
