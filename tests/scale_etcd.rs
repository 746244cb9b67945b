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
    let shared = shared_replica(config, name);
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
    // The way the server boots this UEFI machine: the iPXE binary it serves, then the pinned kernel.
    let boot = attest::ipxe_boot(&cluster, kernel_digest);
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
            // Its TPM boots the iPXE → kernel chain (no Secure Boot).
            .replacen(
                "allow_unbound_initrd = false",
                "allow_unbound_initrd = true",
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
    // `imgbuild status` given a server that is down and both replicas: every replica, each that answered, the
    // one that is down named, and per node the replica that served each stage.
    let (ok, out) = imgbuild(
        &config,
        &[
            "status",
            "--server",
            "http://127.0.0.1:9",
            "--server",
            &format!("http://{}", a.plain),
            "--server",
            &format!("http://{}", b.plain),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("replicas (etcd): replica-a (answered), replica-b (answered)"),
        "{out}"
    );
    assert!(out.contains("http://127.0.0.1:9: unreachable"), "{out}");
    let w1_line = out
        .lines()
        .find(|l| l.trim_start().starts_with(W1))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(w1_line.contains("enrolled@replica-a"), "{out}");
    let m1_line = out
        .lines()
        .find(|l| l.trim_start().starts_with(M1))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(m1_line.contains("init-done@replica-a"), "{out}");
    let listed = imgbuild::netboot::replicas::list(&a.shared);
    assert!(
        listed.iter().any(|r| r.id == "replica-a") && listed.iter().any(|r| r.id == "replica-b"),
        "every replica is listed: {listed:?}"
    );
    // The page of replica-a lists both replicas, and its board says which replica served each stage.
    let (code, page) = curl(&ca, "127.0.0.1", &format!("http://{}/", a.plain), None).await;
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("server replicas (etcd state): replica-a (this page), replica-b</div>"),
        "{page}"
    );
    let (code, board) = curl(
        &ca,
        "127.0.0.1",
        &format!("http://{}/api/board", a.plain),
        None,
    )
    .await;
    assert_eq!(code, 200, "{board}");
    let board: serde_json::Value = serde_json::from_str(&board).unwrap();
    assert!(
        board["replicas"]["served"][W1].as_array().is_some_and(|v| v
            .iter()
            .any(|s| s["stage"] == "enrolled" && s["replica"] == "replica-a")),
        "{board}"
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

    // No quorum (a second member frozen: one of three answers): an event A records meanwhile cannot be written;
    // it is retried until etcd has a quorum again, then stored in the shared history exactly once.
    etcd.pause(1, true);
    let detail = "recorded while etcd had no quorum";
    a.shared.events.record(
        M1.parse().unwrap(),
        "systemd",
        detail,
        imgbuild::status::Source::Node,
    );
    eventually(30, "A retries the event's write", async || {
        metric(&a.shared, "imgbuild_shared_history_retries_total") >= 1
    })
    .await;
    etcd.pause(1, false);
    let copies = |h: Vec<imgbuild::netboot::replicas::Served>| {
        h.iter().filter(|e| e.event.detail == detail).count()
    };
    eventually(45, "the event reaches the shared history", async || {
        copies(imgbuild::netboot::replicas::history(&b.shared, 1000)) >= 1
    })
    .await;
    assert_eq!(
        copies(imgbuild::netboot::replicas::history(&b.shared, 1000)),
        1,
        "stored once, not once per try"
    );
    assert_eq!(
        metric(&a.shared, "imgbuild_shared_history_dropped_total"),
        0
    );

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

/// The value of metric `name` (no labels) in `shared`'s registry, as `/metrics` shows it (0 when absent).
fn metric(shared: &Shared, name: &str) -> u64 {
    let mut text = String::new();
    shared.register_metrics(|r| prometheus_client::encoding::text::encode(&mut text, r).unwrap());
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A replica's shared server state on etcd: its own etcd client, announcing itself like `imgbuild serve`.
fn shared_replica(config: &Path, name: &str) -> Arc<Shared> {
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
    shared
}

/// One replica's DHCP path as its socket loop runs it: the lease table (paused while the replicas disagree on
/// the split, read from the same flag) and the sans-IO packet path.
struct Dhcp {
    shared: Arc<Shared>,
    table: imgbuild::netboot::dhcp::LeaseTable,
    metrics: imgbuild::netboot::dhcp::DhcpMetrics,
}

impl Dhcp {
    fn new(shared: Arc<Shared>) -> Dhcp {
        Dhcp {
            shared,
            table: Default::default(),
            metrics: Default::default(),
        }
    }

    /// DISCOVER (`server` None) or REQUEST of `ip` from `server`, from unknown MAC `52:54:00:99:00:<n>`.
    fn send(
        &mut self,
        n: u8,
        req: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    ) -> imgbuild::netboot::dhcp::Outcome {
        use dhcproto::v4::{DhcpOption, Message, MessageType};
        let none = std::net::Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(
            0x1000 + u32::from(n),
            none,
            none,
            none,
            none,
            &[0x52, 0x54, 0, 0x99, 0, n],
        );
        let o = m.opts_mut();
        match req {
            None => {
                o.insert(DhcpOption::MessageType(MessageType::Discover));
            }
            Some((ip, server)) => {
                o.insert(DhcpOption::MessageType(MessageType::Request));
                o.insert(DhcpOption::RequestedIpAddress(ip));
                o.insert(DhcpOption::ServerIdentifier(server));
            }
        }
        self.table.pool_paused = self
            .shared
            .pool_conflict
            .load(std::sync::atomic::Ordering::Relaxed);
        let bytes = imgbuild::netboot::dhcp::packet::encode(&m);
        let now = imgbuild::netboot::dhcp::socket::unix_now();
        match imgbuild::netboot::dhcp::process(
            &bytes,
            imgbuild::netboot::dhcp::Port::Dhcp,
            &self.shared.booter(),
            &mut self.table,
            now,
            &self.metrics,
        ) {
            imgbuild::netboot::dhcp::Processed::Handled(o) => *o,
            imgbuild::netboot::dhcp::Processed::Dropped(why) => panic!("dropped: {why}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_etcd_split_the_unknown_pool_and_pause_it_when_their_splits_disagree() {
    use imgbuild::netboot::dhcp::Ignored;
    use std::net::Ipv4Addr;
    let etcd = etcd::Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let section = etcd.state_section("/imgbuild/test-pool/");
    let config = |name: &str, server: &str, list: &str| -> PathBuf {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        common::write_cluster(&d, false, |t| {
            t.replace(
                "[state]\nbackend = \"dir\"\n",
                &format!("{}dhcp_replicas = [{list}]\n", section.trim_start()),
            )
            .replace("server = \"10.77.0.1\"", &format!("server = \"{server}\""))
            .replace(
                "# unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.250\" }",
                "unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.209\" }",
            )
        })
    };
    let list = "\"10.77.0.1\", \"10.77.0.3\"";
    let servers = [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 3)];
    let mut r = [
        Dhcp::new(shared_replica(&config("a", "10.77.0.1", list), "replica-a")),
        Dhcp::new(shared_replica(&config("b", "10.77.0.3", list), "replica-b")),
    ];
    // Both announced through etcd with the same split: listed, and no conflict.
    eventually(10, "both replicas announce their pool split", async || {
        let l = imgbuild::netboot::replicas::list(&r[0].shared);
        l.iter()
            .filter(|x| x.dhcp_server.is_some() && x.dhcp_replicas.len() == 2)
            .count()
            == 2
    })
    .await;
    assert!(
        imgbuild::netboot::replicas::pool_conflicts(&imgbuild::netboot::replicas::list(
            &r[1].shared
        ))
        .is_empty()
    );

    // Eight unknown machines, each DISCOVERing to both replicas and taking the offer of the replica whose turn it
    // is; the other sees its REQUEST for another server.
    let mut acked: [Vec<Ipv4Addr>; 2] = Default::default();
    for n in 0..8u8 {
        let offers: Vec<Option<Ipv4Addr>> = r
            .iter_mut()
            .map(|d| d.send(n, None).reply.map(|x| x.msg.yiaddr()))
            .collect();
        let turn = (n % 2) as usize;
        let Some((k, ip)) = [turn, 1 - turn]
            .into_iter()
            .find_map(|k| offers[k].map(|ip| (k, ip)))
        else {
            continue;
        };
        for (j, d) in r.iter_mut().enumerate() {
            let out = d.send(n, Some((ip, servers[k])));
            if j == k {
                assert!(
                    out.reply.is_some(),
                    "replica {k} acknowledges its own offer"
                );
                acked[k].push(ip);
            } else {
                assert_eq!(out.ignored, Some(Ignored::OtherServer));
            }
        }
    }
    let block = |k: usize, ip: &Ipv4Addr| {
        let last = ip.octets()[3];
        if k == 0 {
            (200..=204).contains(&last)
        } else {
            (205..=209).contains(&last)
        }
    };
    for k in 0..2 {
        assert_eq!(acked[k].len(), 4, "{acked:?}");
        assert!(
            acked[k].iter().all(|ip| block(k, ip)),
            "replica {k} out of its block: {acked:?}"
        );
    }
    let all: std::collections::BTreeSet<_> = acked.iter().flatten().collect();
    assert_eq!(
        all.len(),
        8,
        "no address acknowledged to two machines: {acked:?}"
    );

    // A third replica whose cluster.toml splits the pool differently (it would take replica A's block): every
    // replica sees it through etcd and hands out no pool address until the lists agree; inventory machines go on.
    let _c = shared_replica(
        &config("c", "10.77.0.5", "\"10.77.0.5\", \"10.77.0.3\""),
        "replica-c",
    );
    let t0 = Instant::now();
    eventually(20, "every replica pauses its pool", async || {
        r.iter().all(|d| {
            d.shared
                .pool_conflict
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    })
    .await;
    eprintln!(
        "split conflict seen by both replicas after {:?}",
        t0.elapsed()
    );
    let conflicts = imgbuild::netboot::replicas::pool_conflicts(
        &imgbuild::netboot::replicas::list(&r[0].shared),
    );
    assert!(
        conflicts
            .iter()
            .any(|c| c.contains("replica-c") && c.contains("dhcp_replicas")),
        "{conflicts:?}"
    );
    // Each block still has a free address, yet none is offered while paused.
    let out = r[0].send(40, None);
    assert!(out.reply.is_none());
    assert_eq!(out.ignored, Some(Ignored::PoolPaused));
}

/// `[state]` over TLS: a real etcd serving clients over TLS only, with client-certificate authentication
/// (`--client-cert-auth`; a CA and certificates made by openssl for the test). A server's state and `imgbuild pin`
/// (another process, its own client) write and read through it; a client without a certificate, and one that
/// trusts another CA, are refused with an error that says what to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_over_tls_needs_the_members_ca_and_a_client_certificate() {
    let etcd = etcd::Etcd::start_tls(1);
    let dir = tempfile::tempdir().unwrap();
    let section = etcd.state_section("/imgbuild/test-tls/");
    let config = common::write_cluster(dir.path(), true, |t| {
        t.replace("[state]\nbackend = \"dir\"\n", section.trim_start())
    });
    let cluster = imgbuild::config::load(&config).unwrap();
    assert!(cluster.state.endpoints[0].starts_with("https://127.0.0.1:"));
    assert!(cluster.state.cert.is_some() && cluster.state.key.is_some());
    let state = tokio::task::block_in_place(|| state_store::open(&cluster, "tls-a")).unwrap();
    assert_eq!(state.kind(), "etcd");

    // `imgbuild pin` over TLS from another process; read back through this client.
    let id = make_image(&cluster.paths.images, Role::Worker, "tls");
    let (ok, out) = imgbuild(&config, &["pin", "worker", &id]);
    assert!(ok, "{out}");
    let pins = tokio::task::block_in_place(|| state.get(state_store::Key::Pins)).unwrap();
    assert!(
        String::from_utf8_lossy(&pins.unwrap_or_default()).contains(&id),
        "the pin written over TLS is read over TLS"
    );
    assert!(
        !cluster.paths.state.join("pins.toml").exists(),
        "pins live in etcd"
    );

    // Without a client certificate: refused by the members.
    let mut no_cert = cluster.state.clone();
    no_cert.cert = None;
    no_cert.key = None;
    let e =
        tokio::task::block_in_place(|| state_store::etcd::EtcdState::connect(&no_cert, "tls-b"))
            .expect_err("a client without a certificate is refused");
    let msg = e.to_string();
    eprintln!("without a client certificate: {msg}");
    assert!(
        msg.contains(&cluster.state.endpoints[0]) && msg.contains("client certificate"),
        "{msg}"
    );
    // Trusting another CA: the members' certificate is refused by the client.
    let other = etcd::Tls::make(&dir.path().join("other"), "another-ca");
    let mut wrong_ca = cluster.state.clone();
    wrong_ca.ca = Some(other.ca.clone());
    let e =
        tokio::task::block_in_place(|| state_store::etcd::EtcdState::connect(&wrong_ca, "tls-c"))
            .expect_err("a member certificate from another CA is refused");
    eprintln!("trusting another CA: {e}");
    assert!(
        e.to_string().contains("UnknownIssuer") && e.to_string().contains("[state] ca"),
        "{e}"
    );
    // Plain http:// to the TLS listener: no answer either.
    let mut plain = cluster.state.clone();
    plain.endpoints = vec![cluster.state.endpoints[0].replace("https://", "http://")];
    plain.ca = None;
    assert!(
        tokio::task::block_in_place(|| state_store::etcd::EtcdState::connect(&plain, "tls-d"))
            .is_err()
    );
}
