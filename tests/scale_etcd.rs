//! Server replicas on one shared state: a real 3-member etcd cluster (Debian's `etcd-server`) on 127.0.0.1 and two
//! replicas of the server's whole application, each with its own etcd client, its own HTTPS listener and its own
//! in-memory state, exactly as two `imgbuild serve` hosts would hold them; real curl clients bind the inventory
//! addresses (127.77.0.0/24 on `lo`), and `imgbuild pin` / `imgbuild enroll` run as the real binary. Proves:
//! enrollment "once" across replicas under concurrent requests, the barrier and the published token seen by the
//! other replica, TPM-attested enrollment on the same shared state (a pending EK recorded through one replica, seen
//! and served through the other after `imgbuild enroll approve`, enrolled once, re-attested through the first with
//! nothing released again), a re-pin on one host served by the
//! other replica at once (etcd watch), the shared event history naming the replica that served each stage, and
//! replicas going on with one etcd member killed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod attest;
mod common;
#[path = "common/etcd.rs"]
mod etcd;

use attest::{Node, agile_log, extend};
use imgbuild::config::{Arch, MacAddr, Role};
use imgbuild::netboot::state::Shared;
use imgbuild::pki::attest::eventlog::{EV_EFI_BOOT_SERVICES_APPLICATION, EV_SEPARATOR};
use imgbuild::pki::{enroll, secrets, state_store};
use imgbuild::status::Events;
use sha2::{Digest, Sha256};

const M1: &str = "52:54:00:77:00:11";
const W1: &str = "52:54:00:77:00:21";
const W2: &str = "52:54:00:77:00:22";
/// master-2: enrolls by TPM attestation in this test.
const M2: &str = "52:54:00:77:00:12";

/// One replica: its state (its own etcd client) and its HTTPS address.
struct Replica {
    shared: Arc<Shared>,
    addr: SocketAddr,
    plain: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

async fn replica(config: &Path, name: &str) -> Replica {
    let cluster = imgbuild::config::load(config).unwrap();
    let state = state_store::open(&cluster, name).unwrap();
    assert_eq!(state.kind(), "etcd");
    let shared = Arc::new(Shared::new_in(
        config.to_path_buf(),
        cluster,
        BTreeMap::new(),
        Events::in_memory(),
        state,
        name.to_string(),
    ));
    imgbuild::netboot::replicas::spawn(&shared);
    let app = imgbuild::netboot::http::app(shared.clone());
    let l = common::https::serve(app, &shared.cluster().paths.secrets).await;
    let (addr, plain, server) = (l.https, l.plain, l.task);
    Replica {
        shared,
        addr,
        plain,
        server,
    }
}

/// curl from `src` (HTTPS verified with the provisioning CA unless `url` is http://): (status, body).
async fn curl(ca: &Path, src: &str, url: &str, form: Option<&str>) -> (u16, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "15",
        "--interface",
        src,
        "-w",
        "\n%{http_code}",
    ])
    .arg("--cacert")
    .arg(ca)
    .arg(url);
    if let Some(f) = form {
        cmd.args(["--data", f]);
    }
    let out = cmd.output().await.expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A fake-but-valid image for `role` in `images` (distinct artifact bytes, a correct manifest): its id.
fn make_image(images: &Path, role: Role, salt: &str) -> String {
    let mut files = BTreeMap::new();
    for name in ["vmlinuz", "initrd.img", "rootfs.squashfs"] {
        let b = Sha256::digest(format!("{role}{salt}{name}").as_bytes()).to_vec();
        files.insert(name.to_string(), b);
    }
    let role_name = role.to_string();
    let spec = common::ImageSpec {
        role,
        arch: Default::default(),
        profile: &["base", &role_name],
        standins: false,
        kernel_args: &["console=ttyS0,115200"],
    };
    common::commit_image(images, &spec, &files).0
}

fn imgbuild(config: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits (at most `secs`) for `f` to hold.
async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !f().await {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The TPM part of the test below (needs the barrier reached and a live token: master-2 is a joiner).
async fn tpm_enrollment_is_shared(config: &Path, ca: &Path, a: &Replica, b: &Replica) {
    let cluster = a.shared.cluster();
    let m2: MacAddr = M2.parse().unwrap();
    let (image, _, kernel_digest) = attest::pe_kernel_image(&cluster.paths.images, Role::Master);
    let (ok, out) = imgbuild(config, &["pin", "master", &image]);
    assert!(ok, "{out}");
    // A replica picks up a re-pin at the node's next boot decision (its iPXE script), as a booting node asks.
    eventually(10, "both replicas serve the master image", async || {
        let mut both = true;
        for r in [a, b] {
            let url = format!("http://{}/ipxe/{M2}", r.plain);
            both &= curl(ca, "127.77.0.12", &url, None).await.1.contains(&image)
                && r.shared
                    .booter()
                    .pins
                    .get(&(Role::Master, Arch::Amd64))
                    .is_some_and(|p| p.id == image);
        }
        both
    })
    .await;
    let tree = common::render(&cluster, Role::Master);
    let (lib, attest_sh) = (
        common::file(&tree, "/usr/lib/imgbuild/lib.sh").to_string(),
        common::file(&tree, "/usr/lib/imgbuild/attest.sh").to_string(),
    );
    let boot = vec![
        (7, EV_SEPARATOR, [0x07; 32]),
        (4, EV_SEPARATOR, [0x04; 32]),
        (4, EV_EFI_BOOT_SERVICES_APPLICATION, kernel_digest),
    ];
    let log = agile_log(&boot);
    let node = tokio::task::block_in_place(|| {
        let n = Node::new(&lib, &attest_sh, ca, M2);
        extend(&n.tpm.tcti, &boot);
        n
    });
    let api = |r: &Replica| format!("https://{}", r.addr);

    // First contact through A: pending; the record is B's to read.
    let (code, body) = tokio::task::block_in_place(|| node.enroll(&api(a), &log));
    assert_eq!(code, "503", "{body}");
    let st = state_store::documents::enrollment(&*b.shared.state).unwrap();
    let pending = st.tpm_pending[&m2].ek_sha256.clone();
    // Still pending through B for the real node (B saw A's record: not a "new" EK).
    let (code, body) = tokio::task::block_in_place(|| node.enroll(&api(b), &log));
    assert_eq!(code, "503", "{body}");
    assert!(body.contains(&pending), "{body}");

    let (ok, out) = imgbuild(config, &["enroll", "approve", "master-2"]);
    assert!(
        ok && out.contains(&format!("TPM EK sha256:{pending} bound")),
        "{out}"
    );
    // Through B: the sealed bundle; recorded once in etcd.
    let (code, body) = tokio::task::block_in_place(|| node.enroll(&api(b), &log));
    assert_eq!(code, "200", "{body}");
    let first: enroll::Bundle = serde_json::from_str(&body).unwrap();
    let st = state_store::documents::enrollment(&*a.shared.state).unwrap();
    let at_ms = st.enrolled[&m2].at_ms;
    assert!(st.tpm_ek.contains_key(&m2) && !st.tpm_pending.contains_key(&m2));
    assert!(!first.report_key.is_empty());
    // A reboot, attesting again through A: accepted as a re-attestation (the enrollment B recorded is A's to
    // read), nothing secret released, the record unchanged.
    let (code, body) = tokio::task::block_in_place(|| node.reattest(&api(a), &log));
    assert_eq!(code, 0, "{body}");
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["reattested"], true, "{body}");
    assert!(again.get("sealed").is_none(), "{body}");
    assert_eq!(
        state_store::documents::enrollment(&*b.shared.state)
            .unwrap()
            .enrolled[&m2]
            .at_ms,
        at_ms,
        "enrolled once across both replicas"
    );
    assert!(
        a.shared
            .events
            .for_mac(m2)
            .iter()
            .any(|e| e.detail.contains("re-attested"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_etcd_enroll_once_share_barrier_token_pins_and_survive_a_dead_member() {
    let mut etcd = etcd::Etcd::start(3);
    let dir = tempfile::tempdir().unwrap();
    let section = etcd.state_section("/imgbuild/test-replicas/");
    let config = common::write_cluster(dir.path(), true, |t| {
        t.replace("[state]\nbackend = \"dir\"\n", section.trim_start())
            .replacen(
                "hostname = \"master-2\"\n",
                "hostname = \"master-2\"\nidentity = \"tpm\"\n",
                1,
            )
    });
    let cluster = imgbuild::config::load(&config).unwrap();
    secrets::init(&cluster.paths.secrets).unwrap();
    let ca = cluster.paths.provisioning_ca_cert();
    let a = replica(&config, "replica-a").await;
    let b = replica(&config, "replica-b").await;
    let url = |r: &Replica, path: &str| format!("https://{}{}", r.addr, path);

    // Enrollment "once" across replicas: 12 concurrent requests for the first master, alternating replicas.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let u = url(
            if i % 2 == 0 { &a } else { &b },
            &format!("/api/enroll/{M1}"),
        );
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            curl(&ca, "127.77.0.11", &u, None).await
        }));
    }
    let mut codes = Vec::new();
    let mut bundles = Vec::new();
    for t in tasks {
        let (code, body) = t.await.unwrap();
        if code == 200 {
            bundles.push(body);
        } else {
            assert_eq!(code, 409, "{body}");
        }
        codes.push(code);
    }
    assert_eq!(
        bundles.len(),
        1,
        "exactly one bundle across both replicas: {codes:?}"
    );
    let bundle: enroll::Bundle = serde_json::from_str(&bundles[0]).unwrap();
    assert!(bundle.init);
    // Both replicas read the one record from etcd; the directory state was never written.
    let st = state_store::documents::enrollment(&*b.shared.state).unwrap();
    assert!(st.enrolled.contains_key(&M1.parse::<MacAddr>().unwrap()));
    assert!(!cluster.paths.state.join("enrollment.json").exists());

    // The barrier: a joiner waits on B until the first master's signed init-done reaches A.
    let (code, _) = curl(
        &ca,
        "127.77.0.21",
        &url(&b, &format!("/api/enroll/{W1}")),
        None,
    )
    .await;
    assert_eq!(code, 503, "a joiner waits for the barrier");
    let key = imgbuild::pki::report_auth::node_key(
        &secrets::load(&cluster.paths.secrets).unwrap().report_key,
        M1.parse().unwrap(),
        st.enrolled[&M1.parse::<MacAddr>().unwrap()].at_ms,
    );
    let ts = imgbuild::pki::token::now_unix();
    let m1: MacAddr = M1.parse().unwrap();
    let sig = imgbuild::pki::report_auth::hmac_hex(
        &key,
        &imgbuild::pki::report_auth::report_message(m1, "init-done", ts, 1, "ok"),
    );
    let form = format!("mac={M1}&stage=init-done&detail=ok&ts={ts}&ctr=1&sig={sig}");
    let (code, body) = curl(&ca, "127.77.0.11", &url(&a, "/api/events"), Some(&form)).await;
    assert_eq!(code, 200, "{body}");
    // The same signed report replayed through the other replica: refused (the counter lives in etcd).
    let (code, body) = curl(&ca, "127.77.0.11", &url(&b, "/api/events"), Some(&form)).await;
    assert_eq!(
        code, 403,
        "a replay through the other replica is refused: {body}"
    );
    assert!(b.shared.reports.barrier().is_some(), "B sees A's barrier");

    // The token: the first master publishes a renewed token through B; a joiner enrolling through A gets it.
    let publish_key = bundle.publish_key.clone().unwrap();
    let new_token = "r3n3w3.d0123456789abcde";
    let expires = imgbuild::pki::token::now_unix() + 3600;
    let now = imgbuild::pki::token::now_unix();
    let msg = enroll::publish_message(m1, new_token, expires, now);
    let form = format!(
        "mac={M1}&token={new_token}&expires={expires}&ts={now}&sig={}",
        enroll::sign(&publish_key, &msg)
    );
    let (code, body) = curl(&ca, "127.77.0.11", &url(&b, "/api/token"), Some(&form)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&ca, "127.77.0.11", &url(&a, "/api/token"), Some(&form)).await;
    assert_eq!(code, 409, "the same publication replayed through A: {body}");
    let (code, body) = curl(
        &ca,
        "127.77.0.21",
        &url(&a, &format!("/api/enroll/{W1}")),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let w1: enroll::Bundle = serde_json::from_str(&body).unwrap();
    assert_eq!(
        w1.token, new_token,
        "A hands out the token published through B"
    );

    // TPM-attested enrollment (docs/attestation.md) on the same shared state: master-2 (identity = "tpm") attests
    // through A and its EK waits as pending; B sees it; `imgbuild enroll approve` (its own etcd client) binds it;
    // the node attests through B, then again through A ("once": one record, the same report key).
    tpm_enrollment_is_shared(&config, &ca, &a, &b).await;

    // Pins: `imgbuild pin worker <id>` on "another host" (the CLI, its own etcd client); B serves it at once.
    let id1 = make_image(&cluster.paths.images, Role::Worker, "one");
    let id2 = make_image(&cluster.paths.images, Role::Worker, "two");
    let script = |r: &Replica| format!("http://{}/ipxe/{W1}", r.plain);
    let (ok, out) = imgbuild(&config, &["pin", "worker", &id1]);
    assert!(ok, "{out}");
    assert!(
        !cluster.paths.state.join("pins.toml").exists(),
        "pins live in etcd"
    );
    eventually(10, "B serves the first pin", async || {
        curl(&ca, "127.77.0.21", &script(&b), None)
            .await
            .1
            .contains(&id1)
    })
    .await;
    let t0 = Instant::now();
    let (ok, out) = imgbuild(&config, &["pin", "worker", &id2]);
    assert!(ok, "{out}");
    eventually(5, "A and B serve the re-pin", async || {
        curl(&ca, "127.77.0.21", &script(&a), None)
            .await
            .1
            .contains(&id2)
            && curl(&ca, "127.77.0.21", &script(&b), None)
                .await
                .1
                .contains(&id2)
    })
    .await;
    eprintln!("re-pin seen by both replicas after {:?}", t0.elapsed());

    // The shared event history names the replica that saw each stage: M1's init-done reached A, worker-1's
    // enrollment was served by A; read from B.
    eventually(10, "the history holds both replicas' events", async || {
        let h = imgbuild::netboot::replicas::history(&b.shared, 1000);
        let by = |mac: &str, stage: &str| -> Vec<String> {
            h.iter()
                .filter(|e| e.event.stage == stage && e.event.mac.to_string() == mac)
                .map(|e| e.replica.clone())
                .collect()
        };
        by(M1, "init-done") == ["replica-a"]
            && by(W1, "enrolled") == ["replica-a"]
            && by(M1, "enrolled").len() == 1
    })
    .await;
    let r = imgbuild::netboot::http::replicas::current(&b.shared);
    assert_eq!((r.backend.as_str(), r.this.as_str()), ("etcd", "replica-b"));
    assert!(
        r.served[W1]
            .iter()
            .any(|s| s.stage == "enrolled" && s.replica == "replica-a")
    );
    let listed = imgbuild::netboot::replicas::list(&a.shared);
    assert!(
        listed.iter().any(|r| r.id == "replica-a") && listed.iter().any(|r| r.id == "replica-b"),
        "every replica is listed: {listed:?}"
    );

    // One etcd member killed: both replicas go on (enrollment, reports, pins).
    etcd.kill(0);
    let id3 = make_image(&cluster.paths.images, Role::Worker, "three");
    let (ok, out) = imgbuild(&config, &["pin", "worker", &id3]);
    assert!(ok, "pin with a member down: {out}");
    eventually(15, "B serves the pin made with a member down", async || {
        curl(&ca, "127.77.0.21", &script(&b), None)
            .await
            .1
            .contains(&id3)
    })
    .await;
    let (code, body) = curl(
        &ca,
        "127.77.0.22",
        &url(&b, &format!("/api/enroll/{W2}")),
        None,
    )
    .await;
    assert_eq!(code, 200, "enrollment with a member down: {body}");
    let (code, body) = curl(
        &ca,
        "127.77.0.22",
        &url(&a, &format!("/api/enroll/{W2}")),
        None,
    )
    .await;
    assert_eq!(code, 409, "still once with a member down: {body}");
    let (ok, out) = imgbuild(&config, &["enroll"]);
    assert!(ok && out.contains("worker-2"), "{out}");

    // What the shared state cost: etcd requests per replica.
    for r in [&a, &b] {
        eprintln!(
            "{} etcd requests: {:?}",
            r.shared.replica,
            r.shared.state.requests()
        );
    }
    a.server.abort();
    b.server.abort();
    drop(dir);
    let _: PathBuf = etcd.dir.path().to_path_buf();
}
