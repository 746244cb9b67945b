//! A node that booted a signed UKI learns its machine facts after switch-root over HTTPS only: the real route
//! (`GET /api/node/{mac}`, refused over plain HTTP) and the real node-side function (`ib_machine_facts` of
//! `lib.sh`, run with bash in a node root against loopback servers) that checks every field, applies only the
//! host name, and refuses malformed or forged answers without applying anything.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imgbuild::config::{Cluster, Machine};
use imgbuild::netboot::state::Shared;
use imgbuild::pki::secrets;
use imgbuild::status::Source;

struct Lab {
    dir: tempfile::TempDir,
    cluster: Cluster,
    shared: Arc<Shared>,
    /// The real application over HTTPS (certificate from the provisioning CA) and over plain HTTP.
    api: String,
    plain: String,
}

/// `app` over HTTPS on loopback, its certificate from the provisioning CA in `secrets_dir`: the base URL.
async fn https_url(secrets_dir: &Path, app: axum::Router) -> String {
    format!(
        "https://{}",
        common::https::serve(app, secrets_dir).await.https
    )
}

async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, shared) = common::https::server_state(dir.path(), |t| t);
    // The real application over HTTPS and over plain HTTP, as `serve` runs it.
    let l = common::https::serve(
        imgbuild::netboot::http::app(shared.clone()),
        &cluster.paths.secrets,
    )
    .await;
    let (api, plain) = (
        format!("https://{}", l.https),
        format!("http://{}", l.plain),
    );
    Lab {
        dir,
        cluster,
        shared,
        api,
        plain,
    }
}

impl Lab {
    fn machine(&self, host: &str) -> Machine {
        self.cluster.machine_by_hostname(host).unwrap().clone()
    }

    /// A node root of `host`'s role after the initrd of a signed UKI: the rendered tree, the NIC, and the
    /// completed command line (the signed role-level arguments plus what DHCP gave: `dhcp_host`). The root is
    /// named by the host and the API URL's length (the tests' servers differ in it).
    fn node(&self, host: &str, api: &str, dhcp_host: &str) -> PathBuf {
        let m = self.machine(host);
        let root = self.dir.path().join(format!("{host}-{}", api.len()));
        // Rendered once per server; each case rewrites what the initrd would have written.
        if !root.exists() {
            common::render(&self.cluster, m.role)
                .write_to(&root)
                .unwrap();
        }
        let nic = root.join("sys/class/net/eth0");
        std::fs::create_dir_all(&nic).unwrap();
        std::fs::write(nic.join("address"), format!("{}\n", m.mac)).unwrap();
        std::fs::create_dir_all(root.join("run/imgbuild")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), format!("{dhcp_host}\n")).unwrap();
        std::fs::write(
            root.join("run/imgbuild/cmdline"),
            format!(
                "imgbuild.uki=1 imgbuild.server=http://127.0.0.1:9 imgbuild.api={api} imgbuild.role={} \
                 imgbuild.state_disk={} imgbuild.state_init={} net.ifnames=0 imgbuild.mac={} \
                 systemd.hostname={dhcp_host} ip={}::127.77.0.1:255.255.255.0:{dhcp_host}:eth0:off\n",
                m.role.as_str(),
                self.cluster.secure_boot.state_disk,
                u8::from(self.cluster.secure_boot.init_blank),
                m.mac,
                m.ip
            ),
        )
        .unwrap();
        // The node's requests leave from its inventory address (all of 127/8 is local).
        std::fs::create_dir_all(root.join("curlhome")).unwrap();
        std::fs::write(
            root.join("curlhome/.curlrc"),
            format!("interface = {}\n", m.ip),
        )
        .unwrap();
        root
    }
}

/// Runs `ib_load_facts; ib_machine_facts` of the node's lib.sh: (success, stderr).
async fn machine_facts(root: &Path) -> (bool, String) {
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(". \"$IMGBUILD_LIB/lib.sh\"; ib_load_facts || exit 1; ib_machine_facts; echo \"host $IB_HOST\" >&2")
        .env("IMGBUILD_ROOT", root)
        .env("IMGBUILD_LIB", root.join("usr/lib/imgbuild"))
        .env("CURL_HOME", root.join("curlhome"))
        .env("IMGBUILD_API_TRIES", "2")
        .env("IMGBUILD_MAX_SLEEP", "1")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

async fn get(url: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

#[tokio::test]
async fn a_uki_node_gets_its_facts_over_https_only_and_takes_the_inventory_host_name() {
    let lab = lab().await;
    let m = lab.machine("worker-1");

    // DHCP gave another name (a tampered answer): the authenticated facts correct it; nothing else changes.
    let root = lab.node("worker-1", &lab.api, "dhcp-said-this");
    let before = read(&root, "run/imgbuild/cmdline");
    let (ok, log) = machine_facts(&root).await;
    assert!(ok, "{log}");
    assert!(log.contains("host worker-1"), "{log}");
    assert_eq!(read(&root, "etc/hostname"), "worker-1\n");
    let after = read(&root, "run/imgbuild/cmdline");
    assert!(after.contains(" systemd.hostname=worker-1"), "{after}");
    assert!(!after.contains("dhcp-said-this "), "{after}");
    // The signed arguments are kept as they were, word for word.
    for w in before.split_whitespace() {
        if !w.starts_with("systemd.hostname=") {
            assert!(
                after.split_whitespace().any(|a| a == w),
                "{w} lost: {after}"
            );
        }
    }
    // The server recorded the fetch from the machine's own address.
    let facts: Vec<_> = lab
        .shared
        .events
        .for_mac(m.mac)
        .into_iter()
        .filter(|e| e.stage == imgbuild::netboot::http::node::FACTS_STAGE)
        .collect();
    assert!(
        facts.len() == 1
            && facts[0].source == Source::Server
            && facts[0].detail.contains("served over HTTPS: host worker-1")
            && facts[0].detail.contains("image none pinned"),
        "{facts:?}"
    );

    // The answer itself: JSON with the inventory's facts.
    let (code, body) = get(&format!("{}/api/node/{}", lab.api, m.mac)).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hostname"], "worker-1");
    assert_eq!(v["role"], "worker");
    assert_eq!(v["ip"], m.ip.to_string());
    assert_eq!(v["state_disk"], m.state_disk);
    assert_eq!(v["image"], serde_json::Value::Null);
    // Over plain HTTP: refused, saying where to ask instead; a MAC outside the inventory: 404.
    let (code, body) = get(&format!("{}/api/node/{}", lab.plain, m.mac)).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("HTTPS only") && body.contains("/api/node/<mac>"),
        "{body}"
    );
    let (code, body) = get(&format!("{}/api/node/52:54:00:00:00:01", lab.api)).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not in the inventory"), "{body}");
    let (_, metrics) = get(&format!("{}/metrics", lab.plain)).await;
    for line in [
        "imgbuild_node_facts_requests_total{outcome=\"served\"} 2",
        "imgbuild_node_facts_requests_total{outcome=\"plain-http\"} 1",
        "imgbuild_node_facts_requests_total{outcome=\"unknown-mac\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    // A node that booted through iPXE (no imgbuild.uki=1) asks nothing: its facts were on its command line.
    let ipxe = lab.node("master-1", &lab.api, "master-1");
    let c = read(&ipxe, "run/imgbuild/cmdline").replace("imgbuild.uki=1 ", "");
    std::fs::write(ipxe.join("run/imgbuild/cmdline"), &c).unwrap();
    let (ok, log) = machine_facts(&ipxe).await;
    assert!(ok, "{log}");
    assert_eq!(read(&ipxe, "run/imgbuild/cmdline"), c);
}

/// A stand-in for the server, for the refusals: serves `body` as the facts of any MAC and keeps the node's reports.
#[derive(Clone, Default)]
struct Canned {
    body: Arc<Mutex<String>>,
    reports: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

fn canned_app(c: Canned) -> axum::Router {
    use axum::routing::{get, post};
    let body = c.body.clone();
    let reports = c.reports.clone();
    axum::Router::new()
        .route(
            "/api/node/{mac}",
            get(move || {
                let b = body.lock().unwrap().clone();
                async move { b }
            }),
        )
        .route(
            "/api/events",
            post(move |axum::Form(f): axum::Form<HashMap<String, String>>| {
                reports.lock().unwrap().push(f);
                async { "ok\n" }
            }),
        )
}

#[tokio::test]
async fn a_uki_node_refuses_malformed_or_forged_facts_and_applies_nothing() {
    let lab = lab().await;
    let m = lab.machine("worker-1");
    let canned = Canned::default();
    let api = https_url(&lab.cluster.paths.secrets, canned_app(canned.clone())).await;
    let good = serde_json::json!({
        "mac": m.mac.to_string(),
        "hostname": "worker-1",
        "role": "worker",
        "ip": m.ip.to_string(),
        "image": "ab".repeat(32),
        "state_disk": lab.cluster.secure_boot.state_disk,
        "init_blank": lab.cluster.secure_boot.init_blank,
        "secure_boot": true,
    });
    let with = |k: &str, v: serde_json::Value| {
        let mut g = good.clone();
        g[k] = v;
        g.to_string()
    };
    let without = |k: &str| {
        let mut g = good.clone();
        g.as_object_mut().unwrap().remove(k);
        g.to_string()
    };
    let other = lab.machine("master-1");
    let cases: Vec<(&str, String, &str)> = vec![
        ("not JSON", "hostname=worker-1".into(), "not a JSON object"),
        ("a JSON array", "[]".into(), "not a JSON object"),
        ("no host name", without("hostname"), "no hostname"),
        (
            "a host name with a space",
            with("hostname", "worker 1".into()),
            "not a DNS name",
        ),
        (
            "an upper-case host name",
            with("hostname", "Worker_1".into()),
            "not a DNS name",
        ),
        (
            "a label over 63 bytes",
            with("hostname", "a".repeat(64).into()),
            "not a DNS name",
        ),
        (
            "another machine's facts",
            with("mac", other.mac.to_string().into()),
            "the facts are for MAC",
        ),
        (
            "another role",
            with("role", "master".into()),
            "not this image's signed role",
        ),
        (
            "another address than DHCP's",
            with("ip", "127.77.0.99".into()),
            "not the one DHCP gave",
        ),
        ("a number as address", with("ip", 5.into()), "no ip"),
        (
            "a path as image id",
            with("image", "../../etc/passwd".into()),
            "not 64 lowercase hex",
        ),
        (
            "another state disk",
            with("state_disk", "/dev/sdb".into()),
            "not the signed command line's",
        ),
        (
            "init_blank as a string",
            with("init_blank", "true".into()),
            "no init_blank",
        ),
        (
            "init_blank other than signed",
            with("init_blank", (!lab.cluster.secure_boot.init_blank).into()),
            "imgbuild.state_init=",
        ),
    ];
    for (what, body, why) in cases {
        *canned.body.lock().unwrap() = body;
        canned.reports.lock().unwrap().clear();
        let root = lab.node("worker-1", &api, "dhcp-name");
        let before = read(&root, "run/imgbuild/cmdline");
        let (ok, log) = machine_facts(&root).await;
        assert!(!ok, "{what}: accepted\n{log}");
        assert_eq!(read(&root, "etc/hostname"), "dhcp-name\n", "{what}");
        assert_eq!(read(&root, "run/imgbuild/cmdline"), before, "{what}");
        let reports = canned.reports.lock().unwrap().clone();
        assert!(
            reports
                .iter()
                .any(|r| r.get("stage").map(String::as_str) == Some("failed")
                    && r["detail"].contains("refused the server's machine facts")
                    && r["detail"].contains(why)
                    && r["detail"].contains("nothing applied")),
            "{what}: {reports:?}\n{log}"
        );
    }
    // The good answer from the same stand-in is taken (so each refusal above is the field's, not the server's).
    *canned.body.lock().unwrap() = good.to_string();
    let root = lab.node("worker-1", &api, "dhcp-name");
    let (ok, log) = machine_facts(&root).await;
    assert!(ok, "{log}");
    assert_eq!(read(&root, "etc/hostname"), "worker-1\n");
    assert!(
        read(&root, "run/imgbuild/cmdline")
            .contains(&format!("imgbuild.image={}", "ab".repeat(32))),
        "{log}"
    );

    // The same good answer from a server whose certificate another CA issued: curl refuses it, nothing applied.
    let forger = tempfile::tempdir().unwrap();
    secrets::init(forger.path()).unwrap();
    let forged = Canned::default();
    *forged.body.lock().unwrap() = good.to_string();
    let bad_api = https_url(forger.path(), canned_app(forged.clone())).await;
    let root = lab.node("worker-1", &bad_api, "dhcp-name");
    let (ok, log) = machine_facts(&root).await;
    assert!(!ok, "a forged server's facts were accepted\n{log}");
    assert_eq!(read(&root, "etc/hostname"), "dhcp-name\n");
    assert!(
        read(&root, "run/imgbuild/node-facts.log").contains("certificate"),
        "{log}"
    );
    assert!(forged.reports.lock().unwrap().is_empty());
}
