//! The real first-boot scripts, run with bash in one temporary root per node against the real enrollment
//! routes on loopback and the labelled kubeadm/kubectl stand-ins: the first master initializes and installs
//! the add-ons, the others wait for its init-done and join, nothing joins twice, failures are reported with
//! the command's output. (The QEMU boot tests run the same units on real nodes.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use imgbuild::config::{Cluster, Machine};
use imgbuild::netboot::state::Shared;
use imgbuild::pki::secrets;
use imgbuild::status::Source;

struct Lab {
    dir: tempfile::TempDir,
    cluster: Cluster,
    shared: Arc<Shared>,
    url: String,
    api: String,
}

async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, shared) = common::https::server_state(dir.path(), |t| {
        t.replace("# password = \"...\"", "password = \"bgp-s3cret\"")
    });
    // The server's real application over HTTPS (its certificate from the provisioning CA), as `serve` runs it.
    let l = common::https::serve(
        imgbuild::netboot::http::app(shared.clone()),
        &cluster.paths.secrets,
    )
    .await;
    let api = format!("https://{}", l.https);
    Lab {
        dir,
        cluster,
        shared,
        url: "http://127.0.0.1:9".into(),
        api,
    }
}

impl Lab {
    fn machine(&self, host: &str) -> Machine {
        self.cluster.machine_by_hostname(host).unwrap().clone()
    }

    /// A node's root: its role's rendered tree, the stand-ins, the pinned manifests, /proc/cmdline.
    fn node(&self, host: &str) -> PathBuf {
        let m = self.machine(host);
        let root = self.dir.path().join(host);
        if root.exists() {
            return root;
        }
        common::render(&self.cluster, m.role)
            .write_to(&root)
            .unwrap();
        for name in ["kubeadm", "kubectl"] {
            let p = root.join("usr/bin").join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, common::standin(&self.cluster, name)).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let man = root.join("usr/share/imgbuild/manifests");
        std::fs::create_dir_all(&man).unwrap();
        std::fs::write(
            man.join("cni-manifest.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kube-flannel-cfg\n  namespace: kube-flannel\ndata:\n  net-conf.json: |\n    { \"Network\": \"10.244.0.0/16\" }\n",
        )
        .unwrap();
        std::fs::copy(
            common::vendor("metallb-v0.16.1/metallb-frr.yaml"),
            man.join("metallb-manifest.yaml"),
        )
        .unwrap();
        std::fs::copy(
            common::vendor("longhorn-v1.12.1/longhorn.yaml"),
            man.join("longhorn-manifest.yaml"),
        )
        .unwrap();
        // Two NICs, the node booted from the second: everything must use eth1, found by the MAC.
        for (nic, mac) in [
            ("eth0", "52:54:00:99:99:99".to_string()),
            ("eth1", m.mac.to_string()),
        ] {
            let d = root.join("sys/class/net").join(nic);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
        }
        // kube-vip's image: crictl needs a running containerd, so a test-only shim logs every call and answers
        // `inspecti` as crictl does against containerd (present: its status as JSON, exit 0; absent: crictl's
        // fatal "no such image", exit 1), with the images listed in test-shim-containerd-images as present.
        std::fs::write(
            root.join("usr/bin/crictl"),
            "#!/bin/bash\n# test-only shim for crictl\necho \"$*\" >>\"$IMGBUILD_ROOT/test-shim-crictl.log\"\n\
             if [ \"$1\" = inspecti ]; then\n\
             \x20 ref=\"${@: -1}\"\n\
             \x20 if grep -qxF \"$ref\" \"$IMGBUILD_ROOT/test-shim-containerd-images\" 2>/dev/null; then\n\
             \x20   printf '{\\n  \"status\": {\\n    \"id\": \"sha256:%064d\",\\n    \"repoTags\": [\\n      \"%s\"\\n    ]\\n  }\\n}\\n' 1 \"$ref\"\n\
             \x20   exit 0\n\
             \x20 fi\n\
             \x20 echo \"time=\\\"$(date -u +%FT%TZ)\\\" level=fatal msg=\\\"no such image \\\\\\\"$ref\\\\\\\" present\\\"\" >&2\n\
             \x20 exit 1\n\
             fi\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("usr/bin/crictl"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        self.set_cmdline(host, "");
        std::fs::create_dir_all(root.join("proc")).unwrap();
        // The node's HTTP requests leave from its inventory address (all of 127/8 is local).
        std::fs::create_dir_all(root.join("curlhome")).unwrap();
        std::fs::write(
            root.join("curlhome/.curlrc"),
            format!("interface = {}\n", m.ip),
        )
        .unwrap();
        root
    }

    /// Writes the node's kernel command line, with `extra` arguments (e.g. the stand-in's fault injection).
    fn set_cmdline(&self, host: &str, extra: &str) {
        let m = self.machine(host);
        let root = self.dir.path().join(host);
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(
            root.join("proc/cmdline"),
            format!(
                "BOOTIF={} ip={}::127.77.0.1:255.255.255.0:{host}::off systemd.hostname={host} imgbuild.server={} imgbuild.api={} imgbuild.mac={} imgbuild.role={} imgbuild.kubeadm_ignore_preflight=NumCPU,Mem net.ifnames=0 {extra}\n",
                m.mac.bootif(),
                m.ip,
                self.url,
                self.api,
                m.mac,
                m.role
            ),
        )
        .unwrap();
    }

    async fn firstboot(&self, host: &str) -> (bool, String) {
        let root = self.node(host);
        let out = tokio::process::Command::new(root.join("usr/lib/imgbuild/firstboot"))
            .env("IMGBUILD_ROOT", &root)
            .env("IMGBUILD_LIB", root.join("usr/lib/imgbuild"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    root.join("usr/bin").display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env("CURL_HOME", root.join("curlhome"))
            .env("IMGBUILD_ENROLL_TRIES", "2")
            .env("IMGBUILD_BARRIER_TRIES", "2")
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

    /// The node-reported stages of a host (the units' own reports, not the stand-ins').
    fn stages(&self, host: &str) -> Vec<String> {
        self.shared
            .events
            .for_mac(self.machine(host).mac)
            .into_iter()
            .filter(|e| e.source == Source::Node && !e.detail.starts_with("STAND-IN"))
            .map(|e| e.stage)
            .collect()
    }

    fn details(&self, host: &str, stage: &str) -> Vec<String> {
        self.shared
            .events
            .for_mac(self.machine(host).mac)
            .into_iter()
            .filter(|e| e.stage == stage)
            .map(|e| e.detail)
            .collect()
    }
}

/// The first master's first-boot steps, in order: `firstboot-started` through `joined`, without the steps of a
/// joining node.
fn first_master_stages() -> Vec<&'static str> {
    common::stages(
        "firstboot-started",
        "joined",
        &["kubeadm-join", "longhorn-node"],
    )
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[tokio::test]
async fn firstboot_init_then_joins_in_order_with_standins() {
    let lab = lab().await;

    // A worker before the first master: the server holds it back, its bounded wait gives up with a report.
    let (ok, log) = lab.firstboot("worker-1").await;
    assert!(!ok, "{log}");
    assert!(
        lab.details("worker-1", "failed")
            .iter()
            .any(|d| d.contains("no bundle after 2 tries") && d.contains("init-done")),
        "{:?}",
        lab.details("worker-1", "failed")
    );

    // The first master.
    let (ok, log) = lab.firstboot("master-1").await;
    assert!(
        ok,
        "master-1 failed:\n{log}\nevents: {:?}",
        lab.shared.events.for_mac(lab.machine("master-1").mac)
    );
    assert_eq!(lab.stages("master-1"), first_master_stages());
    let m1 = lab.node("master-1");
    // kube-vip ran on super-admin.conf during init and on admin.conf after, on the NIC the node booted from
    // (eth1 here: its MAC is the inventory's), its image pulled before kubeadm ran.
    let kv = read(&m1, "etc/kubernetes/manifests/kube-vip.yaml");
    assert!(kv.contains("path: /etc/kubernetes/admin.conf"), "{kv}");
    assert!(kv.contains("value: \"eth1\""), "{kv}");
    assert!(!kv.contains("@IMGBUILD_"), "{kv}");
    // Not in containerd (not baked): crictl was asked, then the image pulled, and the step says so.
    let crictl = read(&m1, "test-shim-crictl.log");
    let vip = &lab.cluster.control_plane.kube_vip_image;
    assert!(
        crictl.contains(&format!("inspecti -q {vip}\npull {vip}\n")),
        "kube-vip's image is looked up, then pulled: {crictl}"
    );
    assert_eq!(
        lab.details("master-1", "kube-vip"),
        [format!(
            "{vip} was not in containerd (not baked): pulled from its registry"
        )]
    );
    // Every node reports its NIC, resolver and time source at first boot (from cluster.toml, not the host).
    let started = lab.details("master-1", "firstboot-started");
    let net = &lab.cluster.network;
    assert!(
        started[0].contains(&format!(
            "nic eth1 (no address); resolver {}; time source NTP {}",
            net.dns[0], net.ntp[0]
        )) && started[0].contains("clock offset to the server "),
        "{started:?}"
    );
    // The default StorageClass carries the configured replica count (2), not the manifest's 3.
    let lh = read(&m1, "run/imgbuild/longhorn-manifest.yaml");
    assert!(
        lh.contains("      numberOfReplicas: \"2\"\n"),
        "StorageClass not patched"
    );
    assert!(!lh.contains("numberOfReplicas: \"3\""));
    // kubeadm init used the pre-distributed CA.
    let sec = secrets::load(&lab.cluster.paths.secrets).unwrap();
    assert_eq!(read(&m1, "etc/kubernetes/pki/ca.key"), sec.ca.key_pem);
    let standin = read(&m1, "var/lib/imgbuild-standin/reports.log");
    assert!(
        standin.contains(&format!("pre-distributed CA {}", sec.discovery_hash)),
        "{standin}"
    );
    assert!(
        standin.contains("controlPlaneEndpoint 127.77.0.10:6443"),
        "{standin}"
    );
    // The token kubeadm init created was published (signed) to the server.
    assert_eq!(sec.token.source, "published by master-1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m1.join("var/lib/imgbuild/enrollment.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the bundle on the state partition is private"
    );
    // The add-ons: CNI with the cluster's pod CIDR, MetalLB objects after their CRDs, the BGP password as a
    // Secret made at run time, Longhorn settings.
    let objs = m1.join("var/lib/imgbuild-standin/kubectl");
    for o in [
        "ConfigMap/kube-flannel/kube-flannel-cfg",
        "IPAddressPool/metallb-system/services",
        "BGPPeer/metallb-system/router",
        "BGPAdvertisement/metallb-system/services-to-router",
        "Secret/metallb-system/metallb-bgp-router",
        "ConfigMap/longhorn-system/longhorn-default-setting",
        "Deployment/longhorn-system/longhorn-driver-deployer",
    ] {
        assert!(objs.join(o).exists(), "{o} not applied");
    }
    assert!(
        !lab.dir
            .path()
            .join("master-1/run/imgbuild/bgp-router.pw")
            .exists(),
        "the password file is removed"
    );
    let filtered = read(&m1, "run/imgbuild/longhorn-manifest.yaml");
    assert!(!filtered.contains("name: longhorn-default-setting"));

    // master-3 before master-2 has joined: its turn does not come (masters join etcd one at a time).
    let (ok, _) = lab.firstboot("master-3").await;
    assert!(!ok);
    assert!(
        lab.details("master-3", "failed")
            .iter()
            .any(|d| d.contains("master-2 has not joined yet")),
        "{:?}",
        lab.details("master-3", "failed")
    );
    assert!(!lab.stages("master-3").contains(&"kubeadm-join".to_string()));

    // The other nodes after the barrier.
    for host in ["worker-1", "master-2", "master-3"] {
        if host == "worker-1" {
            // Its first attempt failed before enrollment; a later boot (here: the operator restarting the
            // unit) enrolls and joins.
        }
        let (ok, log) = lab.firstboot(host).await;
        assert!(ok, "{host} failed:\n{log}");
        let st = lab.stages(host);
        // This boot's steps (master-3 had one failed attempt before).
        let from = st.iter().rposition(|s| s == "enrolled").unwrap_or(0);
        let tail: Vec<&str> = st[from..].iter().map(String::as_str).collect();
        let want: &[&str] = if host.starts_with("master-") {
            &["enrolled", "kube-vip", "kubeadm-join", "joined"]
        } else {
            &["enrolled", "kubeadm-join", "joined"]
        };
        assert_eq!(tail, want, "{host}: {st:?}");
    }
    // A storage node: iscsid and the mounted data disk are the host's business; in this temporary root
    // test-only shims named for what they replace answer `systemctl` and `mountpoint` and log their calls.
    let st = lab.node("storage-1");
    for (tool, body) in [
        (
            "systemctl",
            "echo \"$*\" >>\"$IMGBUILD_ROOT/test-shim-systemctl.log\"\n",
        ),
        (
            "mountpoint",
            "echo \"$*\" >>\"$IMGBUILD_ROOT/test-shim-mountpoint.log\"\n",
        ),
    ] {
        let p = st.join("usr/bin").join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/bash\n# test-only shim for {tool}\n{body}"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ok, log) = lab.firstboot("storage-1").await;
    assert!(ok, "storage-1 failed:\n{log}");
    let stages = lab.stages("storage-1");
    assert_eq!(
        stages[stages.len() - 3..],
        common::stages("kubeadm-join", "joined", &[])[..],
        "{stages:?}"
    );
    assert!(read(&st, "test-shim-systemctl.log").contains("start iscsid.service"));
    assert!(read(&st, "test-shim-mountpoint.log").contains("/var/lib/longhorn"));
    let labels = read(
        &st,
        "var/lib/imgbuild-standin/kubectl/Node/-/storage-1.label",
    );
    assert_eq!(labels.trim(), "node.longhorn.io/create-default-disk=config");
    let ann = read(
        &st,
        "var/lib/imgbuild-standin/kubectl/Node/-/storage-1.annotate",
    );
    assert_eq!(
        ann.trim(),
        r#"node.longhorn.io/default-disks-config=[{"path":"/var/lib/longhorn","allowScheduling":true}]"#
    );
    assert!(
        read(&st, "var/lib/imgbuild-standin/calls.log").contains("--kubeconfig"),
        "labels applied with the node's own kubelet.conf"
    );

    let m2 = lab.node("master-2");
    assert!(read(&m2, "var/lib/imgbuild-standin/reports.log").contains("join the control plane"));
    assert!(
        read(&m2, "var/lib/imgbuild-standin/calls.log")
            .contains("--ignore-preflight-errors=NumCPU,Mem")
    );
    let w1 = lab.node("worker-1");
    assert!(w1.join("etc/kubernetes/kubelet.conf").exists());
    assert!(
        !w1.join("etc/kubernetes/pki/ca.key").exists(),
        "a worker never receives a CA key"
    );

    // The order, from the server's events: the first master's init-done before any join.
    let all = lab.shared.events.snapshot();
    let init_done = all
        .iter()
        .position(|e| e.stage == "init-done" && e.source == Source::Node)
        .unwrap();
    let first_join = all
        .iter()
        .position(|e| e.stage == "kubeadm-join" && e.source == Source::Node)
        .unwrap();
    assert!(init_done < first_join);
    // master-3's join started only after master-2 had joined.
    let pos = |host: &str, stage: &str| {
        let mac = lab.machine(host).mac;
        all.iter()
            .position(|e| e.mac == mac && e.stage == stage && e.source == Source::Node)
            .unwrap()
    };
    assert!(pos("master-2", "joined") < pos("master-3", "kubeadm-join"));

    // A second boot does not join again, and no kubeadm runs.
    let calls_before = read(&m1, "var/lib/imgbuild-standin/calls.log");
    let (ok, log) = lab.firstboot("master-1").await;
    assert!(ok, "{log}");
    assert_eq!(
        read(&m1, "var/lib/imgbuild-standin/calls.log"),
        calls_before
    );
    assert!(
        lab.details("master-1", "joined")
            .last()
            .unwrap()
            .contains("already joined")
    );

    // A spoofer with worker-1's MAC after it enrolled: refused loudly by the server.
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            "127.77.0.21",
            "--cacert",
        ])
        .arg(lab.cluster.paths.provisioning_ca_cert())
        .arg(format!(
            "{}/api/enroll/{}",
            lab.api,
            lab.machine("worker-1").mac
        ))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "409");

    // No secret in any step log or event: the bootstrap token (kubeadm init printed it in its join command)
    // and the CA keys stay out.
    let token = secrets::load(&lab.cluster.paths.secrets)
        .unwrap()
        .token
        .token;
    let init_log = read(&lab.node("master-1"), "run/imgbuild/kubeadm-init.log");
    assert!(!init_log.is_empty());
    for host in ["master-1", "master-2", "worker-1"] {
        let dir = lab.node(host).join("run/imgbuild");
        for e in std::fs::read_dir(&dir).unwrap() {
            let t = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
            assert!(!t.contains(&token), "{host}: a step log holds the token");
            assert!(!t.contains("PRIVATE KEY"), "{host}: a step log holds a key");
        }
    }
    for e in lab.shared.events.snapshot() {
        assert!(!e.detail.contains(&token), "event {e:?} holds the token");
    }
}

#[tokio::test]
async fn a_failing_kubeadm_is_reported_with_its_output() {
    let lab = lab().await;
    let (ok, log) = lab.firstboot("master-1").await;
    assert!(ok, "{log}");
    // worker-2's image carries a broken join config: kubeadm (the stand-in) refuses it.
    let root = lab.node("worker-2");
    let p = root.join("usr/share/imgbuild/kubeadm/join.yaml");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "apiServerEndpoint: \"127.77.0.10:6443\"",
        "apiServerEndpoint: \"127.77.0.10\"",
    );
    std::fs::write(&p, text).unwrap();
    let (ok, _) = lab.firstboot("worker-2").await;
    assert!(!ok);
    // The unit's own report (the stand-in reports its refusal too, labelled).
    let failed: Vec<String> = lab
        .details("worker-2", "failed")
        .into_iter()
        .filter(|d| !d.starts_with("STAND-IN"))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        // The strict `kubeadm config validate` before the join refuses it.
        failed[0].starts_with("kubeadm-join: `kubeadm config validate --config"),
        "{}",
        failed[0]
    );
    assert!(failed[0].contains("failed (exit 1)"), "{}", failed[0]);
    assert!(
        failed[0].contains("must be host:port"),
        "the output tail is in the report: {}",
        failed[0]
    );
    assert!(!lab.stages("worker-2").contains(&"joined".to_string()));
    assert!(!root.join("var/lib/imgbuild/joined").exists());
}

/// What `imgbuild --standins` images carry instead of the upstream manifests must still take the first master
/// all the way: the stand-in MetalLB manifest has the namespace, the CRDs and the `controller` Deployment the
/// first boot waits on (the lab boots exactly these images).
#[tokio::test]
async fn first_master_completes_with_the_images_standin_manifests() {
    let lab = lab().await;
    let m1 = lab.node("master-1");
    let engine =
        imgbuild::template::Engine::new(&lab.cluster.paths.profiles, &lab.cluster.paths.ipxe);
    let standins = imgbuild::image::standins::generate(&lab.cluster, &engine).unwrap();
    let mut replaced = 0;
    for f in standins
        .files
        .iter()
        .filter(|f| f.path.starts_with("/usr/share/imgbuild/manifests/"))
    {
        std::fs::write(m1.join(f.path.trim_start_matches('/')), &f.contents).unwrap();
        replaced += 1;
    }
    assert_eq!(replaced, 3, "cni, metallb and longhorn stand-in manifests");
    let (ok, log) = lab.firstboot("master-1").await;
    assert!(
        ok,
        "master-1 failed with the stand-in manifests:\n{log}\nevents: {:?}",
        lab.shared.events.for_mac(lab.machine("master-1").mac)
    );
    assert_eq!(lab.stages("master-1"), first_master_stages());
}

/// An interrupted kubeadm (the stand-in fails once half-way, leaving static pods, kubeconfigs and etcd data, as a
/// power cut would) is reset on the next attempt and retried: the node reaches `joined` with kube-vip's manifest
/// in place (the reset empties /etc/kubernetes/manifests). Without the reset, the stand-in's preflight, like the
/// real one, would refuse every later attempt.
#[tokio::test]
async fn an_interrupted_kubeadm_init_or_join_is_reset_and_retried_with_kube_vip_in_place() {
    let lab = lab().await;
    for (host, stage) in [
        ("master-1", "kubeadm-init"),
        ("master-2", "kubeadm-join"),
        ("worker-1", "kubeadm-join"),
    ] {
        let root = lab.node(host);
        // kube-vip's image baked and imported: the masters use it and never pull (containerd's CRI PullImage
        // would ask the registry even for an image it has).
        std::fs::write(
            root.join("test-shim-containerd-images"),
            format!("{}\n", lab.cluster.control_plane.kube_vip_image),
        )
        .unwrap();
        lab.set_cmdline(host, &format!("imgbuild.standin_fail_once={stage}"));
        let (ok, _) = lab.firstboot(host).await;
        assert!(!ok, "{host}: the injected failure");
        assert!(
            lab.details(host, "failed")
                .iter()
                .any(|d| d.contains("injected failure half-way")),
            "{host}: {:?}",
            lab.details(host, "failed")
        );
        assert!(!root.join("var/lib/imgbuild/joined").exists());
        // The next boot.
        let (ok, log) = lab.firstboot(host).await;
        assert!(ok, "{host} did not recover:\n{log}");
        assert!(
            lab.details(host, stage)
                .iter()
                .any(|d| d.contains("did not finish; kubeadm reset -f before retrying")),
            "{host}: {:?}",
            lab.details(host, stage)
        );
        let calls = read(&root, "var/lib/imgbuild-standin/calls.log");
        assert!(calls.contains("kubeadm reset -f"), "{calls}");
        assert!(root.join("var/lib/imgbuild/joined").exists());
        if host.starts_with("master-") {
            assert!(
                lab.details(host, "joined")
                    .iter()
                    .any(|d| d.contains("kube-vip manifest in place, vip_interface eth1")),
                "{:?}",
                lab.details(host, "joined")
            );
            let kv = read(&root, "etc/kubernetes/manifests/kube-vip.yaml");
            assert!(kv.contains("path: /etc/kubernetes/admin.conf"), "{kv}");
            assert!(kv.contains("value: \"eth1\""), "{kv}");
            assert!(root.join("etc/kubernetes/manifests/etcd.yaml").exists());
            let vip = &lab.cluster.control_plane.kube_vip_image;
            let crictl = read(&root, "test-shim-crictl.log");
            assert!(
                crictl.contains(&format!("inspecti -q {vip}")) && !crictl.contains("pull"),
                "{host}: the baked image is not pulled: {crictl}"
            );
            let zeros = "0".repeat(63);
            assert!(
                lab.details(host, "kube-vip").contains(&format!(
                    "{vip} already in containerd (image id sha256:{zeros}1): not pulled"
                )),
                "{host}: {:?}",
                lab.details(host, "kube-vip")
            );
        }
    }
}

/// Token renewal fails (the first master's clock is an hour behind inside token-renew, so the server refuses
/// the publication as skewed): the step fails and is reported, and no bootstrap token appears in the step log,
/// `events.jsonl`, `/api/status` or the page.
#[tokio::test]
async fn failing_token_renewal_on_clock_skew_leaks_no_token() {
    let lab = lab().await;
    let root = lab.node("master-1");
    let shim = root.join("usr/bin/date");
    std::fs::write(
        &shim,
        "#!/bin/bash\n# test shim: an hour behind for token-renew's timestamp only\n\
         if [ \"${1:-}\" = +%s ] && tr '\\0' ' ' </proc/$PPID/cmdline | grep -q token-renew; then\n\
         echo $(( $(/bin/date +%s) - 3600 )); else exec /bin/date \"$@\"; fi\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, log) = lab.firstboot("master-1").await;
    assert!(!ok, "the publication must fail: {log}");
    let failed: Vec<String> = lab
        .details("master-1", "failed")
        .into_iter()
        .filter(|d| !d.starts_with("STAND-IN"))
        .collect();
    assert!(
        failed.iter().any(|d| d.starts_with("init-done:")),
        "{failed:?}"
    );
    assert!(!lab.stages("master-1").contains(&"init-done".to_string()));
    let token = secrets::load(&lab.cluster.paths.secrets)
        .unwrap()
        .token
        .token;
    let secret_half = token.split('.').nth(1).unwrap().to_string();
    let events = std::fs::read_to_string(lab.cluster.paths.state.join("events.jsonl")).unwrap();
    assert!(events.contains("init-done"), "{events}");
    let report = imgbuild::netboot::http::status_page::current(&lab.shared);
    let status = serde_json::to_string(&report).unwrap();
    let page = imgbuild::netboot::http::status_page::render_page(
        &imgbuild::template::engine_for(&lab.cluster),
        &imgbuild::netboot::http::status_page::board_of(&lab.shared, &lab.shared.events.snapshot()),
    )
    .unwrap();
    let step_log = read(&root, "run/imgbuild/init-done.log");
    for (what, text) in [
        ("events.jsonl", &events),
        ("/api/status", &status),
        ("the page", &page),
        ("the step log", &step_log),
    ] {
        assert!(
            !text.contains(&secret_half),
            "{what} holds the token: {text}"
        );
    }
}
