//! The labelled stand-ins for kubeadm and kubectl, run with bash in a temporary root: they accept the configs
//! imgbuild renders and reject broken ones with a clear message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild::config::{Cluster, Role};
use imgbuild::pki::secrets;

struct Root {
    _d: tempfile::TempDir,
    root: PathBuf,
    cluster: Cluster,
}

fn setup() -> Root {
    let d = tempfile::tempdir().unwrap();
    let cluster = common::load(d.path(), false);
    let root = d.path().join("root");
    for (name, dest) in [
        ("kubeadm", "usr/bin/kubeadm"),
        ("kubectl", "usr/bin/kubectl"),
    ] {
        let p = root.join(dest);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, common::standin(&cluster, name)).unwrap();
    }
    std::fs::create_dir_all(root.join("proc")).unwrap();
    // No imgbuild.server: reports go to the local log only.
    std::fs::write(
        root.join("proc/cmdline"),
        "console=ttyS0 imgbuild.mac=52:54:00:77:00:11\n",
    )
    .unwrap();
    Root {
        _d: d,
        root,
        cluster,
    }
}

impl Root {
    fn run(&self, tool: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("bash")
            .arg(self.root.join("usr/bin").join(tool))
            .args(args)
            .env("IMGBUILD_ROOT", &self.root)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("STAND-IN") || text.contains("stand-in"),
            "the stand-in must say what it is: {text}"
        );
        (out.status.success(), text)
    }

    fn write(&self, rel: &str, text: &str) -> String {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.join(rel).exists()
    }

    /// Writes the cluster's CA set as enrollment would.
    fn pki(&self, s: &secrets::Secrets) {
        for (name, pem) in s.ca_files() {
            self.write(&format!("etc/kubernetes/pki/{name}"), pem);
        }
    }
}

fn fill(text: &str, token: &str, hash: &str, name: &str, ip: &str) -> String {
    text.replace("@IMGBUILD_TOKEN@", token)
        .replace("@IMGBUILD_CA_HASH@", hash)
        .replace("@IMGBUILD_NODE_NAME@", name)
        .replace("@IMGBUILD_NODE_IP@", ip)
}

fn expect_err(r: &Root, tool: &str, args: &[&str], needle: &str) {
    let (ok, text) = r.run(tool, args);
    assert!(
        !ok,
        "{tool} {args:?} was accepted but must fail ({needle}): {text}"
    );
    assert!(
        text.contains(needle),
        "{tool} {args:?}: expected {needle:?} in: {text}"
    );
}

#[test]
fn standin_kubeadm_init_accepts_our_config_and_rejects_broken_ones() {
    let r = setup();
    let s = secrets::init(&r.cluster.paths.secrets).unwrap();
    let sec = secrets::load(&s.dir).unwrap();
    let m = common::render(&r.cluster, Role::Master);
    let good = fill(
        common::file(&m, "/usr/share/imgbuild/kubeadm/init.yaml"),
        &sec.token.token,
        &sec.discovery_hash,
        "master-1",
        "10.77.0.11",
    );

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "old API",
            "kubeadm.k8s.io/v1beta4",
            "kubeadm.k8s.io/v1beta3",
            "use kubeadm.k8s.io/v1beta4",
        ),
        (
            "token format",
            &sec.token.token,
            "abcdef.0123456789ABCDEF",
            "does not match [a-z0-9]{6}.[a-z0-9]{16}",
        ),
        (
            "extra args as a map",
            "kubeletExtraArgs:\n    - name: node-ip\n      value: \"10.77.0.11\"",
            "kubeletExtraArgs:\n    node-ip: \"10.77.0.11\"",
            "list of {name, value}",
        ),
        (
            "subnets overlap",
            "serviceSubnet: \"10.96.0.0/12\"",
            "serviceSubnet: \"10.240.0.0/12\"",
            "overlaps",
        ),
        (
            "endpoint without port",
            "controlPlaneEndpoint: \"10.77.0.10:6443\"",
            "controlPlaneEndpoint: \"10.77.0.10\"",
            "must be host:port",
        ),
        (
            "version skew",
            "kubernetesVersion: \"v1.36.3\"",
            "kubernetesVersion: \"v1.35.0\"",
            "not this kubeadm's version",
        ),
        (
            "pod subnet too small",
            "podSubnet: \"10.244.0.0/16\"",
            "podSubnet: \"10.244.0.0/25\"",
            "smaller than the node CIDR",
        ),
        (
            "service subnet too big",
            "serviceSubnet: \"10.96.0.0/12\"",
            "serviceSubnet: \"10.0.0.0/8\"",
            "too large",
        ),
        (
            "token usage",
            "      - signing",
            "      - sign",
            "not a valid usage",
        ),
        (
            "bad address",
            "advertiseAddress: \"10.77.0.11\"",
            "advertiseAddress: \"10.77.0.300\"",
            "not an IP address",
        ),
        ("bad ttl", "ttl: 24h0m0s", "ttl: one-day", "not a duration"),
        (
            "duplicate key",
            "clusterName: \"homelab\"",
            "clusterName: \"homelab\"\nclusterName: \"x\"",
            "duplicate key",
        ),
        ("tab indent", "  podSubnet:", "\tpodSubnet:", "tab"),
        (
            "node name",
            "name: \"master-1\"",
            "name: \"Master_1\"",
            "not a valid node name",
        ),
        (
            "cri socket",
            "criSocket: \"unix:///run/containerd/containerd.sock\"",
            "criSocket: \"/run/containerd/containerd.sock\"",
            "must be a URL",
        ),
    ];
    for (what, from, to, needle) in cases {
        assert!(
            good.contains(from),
            "{what}: the rendered config lacks {from:?}"
        );
        let f = r.write("run/bad.yaml", &good.replacen(from, to, 1));
        expect_err(&r, "kubeadm", &["init", "--config", &f], needle);
        // What init refuses, the strict `kubeadm config validate` refuses too.
        expect_err(
            &r,
            "kubeadm",
            &["config", "validate", "--config", &f],
            needle,
        );
    }
    // Unknown fields and kinds: real `kubeadm init --config` decodes leniently and only warns (the field or the
    // document is ignored); `kubeadm config validate` decodes strictly and refuses. The stand-in does the same.
    let lenient: &[(&str, &str, &str)] = &[
        ("certificatesDir:", "certDir:", "unknown field \"certDir\""),
        (
            "kind: ClusterConfiguration",
            "kind: ClusterConfig",
            "Kind=ClusterConfig",
        ),
    ];
    for (from, to, needle) in lenient {
        let f = r.write("run/lenient.yaml", &good.replacen(from, to, 1));
        let (ok, text) = r.run("kubeadm", &["init", "--config", &f]);
        assert!(ok, "init must only warn on {needle}: {text}");
        assert!(
            text.contains("[config] WARNING") && text.contains(needle),
            "{text}"
        );
        let (ok, text) = r.run("kubeadm", &["reset", "-f"]);
        assert!(ok, "{text}");
        assert!(!r.exists("etc/kubernetes/admin.conf"), "reset removes it");
        assert!(
            !r.exists("var/lib/etcd/member"),
            "reset empties etcd's data"
        );
        let no_kind = needle.replace("Kind=", "kind \"");
        expect_err(
            &r,
            "kubeadm",
            &["config", "validate", "--config", &f],
            if needle.starts_with("Kind=") {
                &no_kind
            } else {
                needle
            },
        );
    }
    let (ok, text) = r.run(
        "kubeadm",
        &[
            "config",
            "validate",
            "--config",
            &r.write("run/good.yaml", &good),
        ],
    );
    assert!(ok && text.contains("ok"), "{text}");
    let f = r.write("run/init.yaml", &good);
    expect_err(&r, "kubeadm", &["init"], "only with --config");
    expect_err(
        &r,
        "kubeadm",
        &["init", "--config", &f, "--pod-network-cidr=10.0.0.0/16"],
        "unknown flag: --pod-network-cidr",
    );
    expect_err(
        &r,
        "kubeadm",
        &["init", "--config", "/nonexistent.yaml"],
        "no such file",
    );
    expect_err(&r, "kubeadm", &["reset"], "only with -f/--force");
    expect_err(
        &r,
        "kubeadm",
        &["token", "create"],
        "failed to load admin kubeconfig",
    );
    // Half a CA pair is refused.
    r.write("etc/kubernetes/pki/ca.crt", &sec.ca.cert_pem);
    expect_err(
        &r,
        "kubeadm",
        &["init", "--config", &f],
        "found only one of ca.crt and ca.key",
    );
    r.pki(&sec);

    let (ok, text) = r.run("kubeadm", &["init", "--config", &f]);
    assert!(ok, "{text}");
    for p in [
        "admin.conf",
        "super-admin.conf",
        "kubelet.conf",
        "manifests/kube-apiserver.yaml",
    ] {
        assert!(r.exists(&format!("etc/kubernetes/{p}")), "{p} not written");
    }
    let reports =
        std::fs::read_to_string(r.root.join("var/lib/imgbuild-standin/reports.log")).unwrap();
    assert!(
        reports.contains("kubeadm-init")
            && reports.contains(&sec.discovery_hash)
            && reports.contains("10.77.0.10:6443"),
        "{reports}"
    );
    // Once: a second init finds the node set up.
    expect_err(&r, "kubeadm", &["init", "--config", &f], "already exists");

    // Token create/list need admin.conf, which init wrote.
    let (ok, text) = r.run(
        "kubeadm",
        &[
            "token",
            "create",
            "--kubeconfig",
            "/etc/kubernetes/admin.conf",
            "--ttl",
            "24h0m0s",
            "--description",
            "x y",
        ],
    );
    assert!(ok, "{text}");
    let tok = text
        .lines()
        .find(|l| imgbuild::pki::token::is_valid(l))
        .expect("a token line");
    assert!(imgbuild::pki::token::is_valid(tok), "{tok}");
    expect_err(
        &r,
        "kubeadm",
        &["token", "create", "--ttl", "1day"],
        "not a duration",
    );
    expect_err(
        &r,
        "kubeadm",
        &["token", "create", "Not.A.Token"],
        "was not of the form",
    );
    expect_err(
        &r,
        "kubeadm",
        &["token", "delete", "x"],
        "unknown command \"delete\"",
    );
    let (ok, text) = r.run("kubeadm", &["token", "list"]);
    assert!(
        ok && text.contains(tok) && text.contains(&sec.token.token),
        "{text}"
    );
}

#[test]
fn standin_kubeadm_join_checks_discovery_and_the_shared_ca() {
    let r = setup();
    let s = secrets::init(&r.cluster.paths.secrets).unwrap();
    let sec = secrets::load(&s.dir).unwrap();
    let w = common::render(&r.cluster, Role::Worker);
    let m = common::render(&r.cluster, Role::Master);
    let join = fill(
        common::file(&w, "/usr/share/imgbuild/kubeadm/join.yaml"),
        &sec.token.token,
        &sec.discovery_hash,
        "worker-1",
        "10.77.0.21",
    );
    let bad: &[(&str, &str, &str)] = &[
        (
            &sec.discovery_hash,
            "sha256:abc",
            "must be sha256:<64 lower-case hex digits>",
        ),
        ("    caCertHashes:\n", "    unused:\n", "unknown field"),
        (
            "apiServerEndpoint: \"10.77.0.10:6443\"",
            "apiServerEndpoint: \"10.77.0.10\"",
            "must be host:port",
        ),
        (&sec.token.token, "abcdef0123456789abcdef", "does not match"),
        (
            "kind: JoinConfiguration",
            "kind: InitConfiguration",
            "no JoinConfiguration",
        ),
    ];
    for (from, to, needle) in bad {
        assert!(join.contains(from), "{from}");
        let f = r.write("run/bad.yaml", &join.replacen(from, to, 1));
        expect_err(&r, "kubeadm", &["join", "--config", &f], needle);
    }
    let nohash = join.replace(
        &format!("    caCertHashes:\n      - \"{}\"\n", sec.discovery_hash),
        "",
    );
    let f = r.write("run/bad.yaml", &nohash);
    expect_err(
        &r,
        "kubeadm",
        &["join", "--config", &f],
        "caCertHashes is empty",
    );
    let f = r.write("run/join.yaml", &join);
    expect_err(
        &r,
        "kubeadm",
        &["join", "--config", &f, "--control-plane"],
        "can not mix '--config' with arguments [control-plane]",
    );
    expect_err(
        &r,
        "kubeadm",
        &["join", "--config", &f, "10.77.0.10:6443"],
        "can not mix",
    );
    let (ok, text) = r.run("kubeadm", &["join", "--config", &f]);
    assert!(ok, "{text}");
    assert!(r.exists("etc/kubernetes/kubelet.conf") && !r.exists("etc/kubernetes/admin.conf"));
    expect_err(
        &r,
        "kubeadm",
        &["join", "--config", &f],
        "kubelet.conf already exists",
    );

    // Control plane: needs the shared CAs in place, and the pinned hash must be the CA's.
    let r = setup();
    let jcp = fill(
        common::file(&m, "/usr/share/imgbuild/kubeadm/join-control-plane.yaml"),
        &sec.token.token,
        &sec.discovery_hash,
        "master-2",
        "10.77.0.12",
    );
    let f = r.write("run/jcp.yaml", &jcp);
    expect_err(
        &r,
        "kubeadm",
        &["join", "--config", &f],
        "needs the shared CAs",
    );
    let other = secrets::init(&r.root.join("other")).unwrap();
    r.pki(&secrets::load(&other.dir).unwrap());
    expect_err(
        &r,
        "kubeadm",
        &["join", "--config", &f],
        "does not match the pinned hash",
    );
    std::fs::remove_dir_all(r.root.join("etc/kubernetes/pki")).unwrap();
    r.pki(&sec);
    let (ok, text) = r.run("kubeadm", &["join", "--config", &f]);
    assert!(ok, "{text}");
    assert!(
        r.exists("etc/kubernetes/admin.conf") && r.exists("etc/kubernetes/manifests/etcd.yaml")
    );
}

#[test]
fn standin_kubectl_orders_crds_and_enforces_node_restriction() {
    let r = setup();
    let kc_admin = r.write(
        "etc/kubernetes/admin.conf",
        "# standin-user: kubernetes-admin\napiVersion: v1\nkind: Config\n",
    );
    let kc_node = r.write(
        "etc/kubernetes/kubelet.conf",
        "# standin-user: system:node:storage-1\napiVersion: v1\nkind: Config\n",
    );
    let m = common::render(&r.cluster, Role::Master);
    let objs = r.write(
        "objs.yaml",
        common::file(&m, "/usr/share/imgbuild/addons/metallb-objects.yaml"),
    );
    expect_err(
        &r,
        "kubectl",
        &["--kubeconfig", &kc_admin, "apply", "-f", &objs],
        "no matches for kind \"IPAddressPool\"",
    );
    let vendor = common::vendor("metallb-v0.16.1/metallb-frr.yaml")
        .display()
        .to_string();
    metallb_then_objects_then_controller_available(&r, &kc_admin, &vendor, &objs);
    assert!(r.exists("var/lib/imgbuild-standin/kubectl/IPAddressPool/metallb-system/services"));
    assert!(r.exists("var/lib/imgbuild-standin/kubectl/BGPPeer/metallb-system/router"));
    expect_err(
        &r,
        "kubectl",
        &[
            "--kubeconfig",
            &kc_admin,
            "-n",
            "metallb-system",
            "wait",
            "--for=condition=Available",
            "deployment/nope",
        ],
        "not found",
    );
    expect_err(
        &r,
        "kubectl",
        &[
            "--kubeconfig",
            &kc_admin,
            "-n",
            "metallb-system",
            "get",
            "secret",
            "x",
        ],
        "NotFound",
    );
    let pw = r.write("pw", "secret");
    let (ok, text) = r.run(
        "kubectl",
        &[
            "--kubeconfig",
            &kc_admin,
            "-n",
            "metallb-system",
            "create",
            "secret",
            "generic",
            "x",
            "--type=kubernetes.io/basic-auth",
            &format!("--from-file=password={pw}"),
        ],
    );
    assert!(ok, "{text}");
    assert!(
        r.run(
            "kubectl",
            &[
                "--kubeconfig",
                &kc_admin,
                "-n",
                "metallb-system",
                "get",
                "secret",
                "x"
            ]
        )
        .0
    );
    expect_err(
        &r,
        "kubectl",
        &[
            "--kubeconfig",
            &kc_admin,
            "-n",
            "metallb-system",
            "create",
            "secret",
            "generic",
            "x",
            &format!("--from-file=password={pw}"),
        ],
        "AlreadyExists",
    );
    // A kubelet credential: its own node only, no kubernetes.io labels; the admin may not skip --kubeconfig.
    let (ok, text) = r.run(
        "kubectl",
        &[
            "--kubeconfig",
            &kc_node,
            "label",
            "--overwrite",
            "node",
            "storage-1",
            "node.longhorn.io/create-default-disk=config",
        ],
    );
    assert!(ok, "{text}");
    let (ok, text) = r.run(
        "kubectl",
        &[
            "--kubeconfig",
            &kc_node,
            "annotate",
            "--overwrite",
            "node",
            "storage-1",
            "node.longhorn.io/default-disks-config=[{\"path\":\"/var/lib/longhorn\"}]",
        ],
    );
    assert!(ok, "{text}");
    expect_err(
        &r,
        "kubectl",
        &[
            "--kubeconfig",
            &kc_node,
            "label",
            "node",
            "storage-2",
            "a=b",
        ],
        "Forbidden",
    );
    expect_err(
        &r,
        "kubectl",
        &[
            "--kubeconfig",
            &kc_node,
            "label",
            "node",
            "storage-1",
            "node-role.kubernetes.io/x=y",
        ],
        "NodeRestriction",
    );
    expect_err(
        &r,
        "kubectl",
        &[
            "--kubeconfig",
            &kc_node,
            "label",
            "node",
            "storage-1",
            "node.longhorn.io/create-default-disk=other",
        ],
        "--overwrite is false",
    );
    expect_err(
        &r,
        "kubectl",
        &["--kubeconfig", &kc_node, "apply", "-f", &objs],
        "Forbidden",
    );
    expect_err(&r, "kubectl", &["apply", "-f", &objs], "no --kubeconfig");
    expect_err(
        &r,
        "kubectl",
        &["--kubeconfig", &kc_admin, "delete", "node", "x"],
        "unknown command",
    );
    let _ = Path::new("");
}

#[test]
fn the_metallb_standin_carries_metallbs_own_crds_and_takes_the_rendered_objects() {
    let r = setup();
    let engine = common::engine(&r.cluster);
    let all = imgbuild::image::standins::generate(&r.cluster, &engine).unwrap();
    let manifest = all
        .files
        .iter()
        .find(|f| f.artifact == "metallb-manifest")
        .expect("a metallb-manifest stand-in");
    let text = std::str::from_utf8(&manifest.contents).unwrap();
    assert!(text.starts_with("# STAND-IN"), "{text}");
    let docs = common::yaml_docs("metallb stand-in", text);
    // The CRDs of the three kinds imgbuild renders are MetalLB's own (vendored at v0.16.1), schemas and all.
    for file in [
        "metallb.io_ipaddresspools.yaml",
        "metallb.io_bgpadvertisements.yaml",
        "metallb.io_bgppeers.yaml",
    ] {
        let src = std::fs::read_to_string(common::vendor(&format!("metallb-v0.16.1/crds/{file}")))
            .unwrap();
        let want = &common::yaml_docs(file, &src)[0];
        assert!(
            docs.iter().any(|d| d == want),
            "the stand-in lacks MetalLB's own CRD from {file}"
        );
    }
    // The stand-in kubectl takes it, then the objects imgbuild renders, and the controller becomes Available.
    let kc = r.write(
        "etc/kubernetes/admin.conf",
        "# standin-user: kubernetes-admin\napiVersion: v1\nkind: Config\n",
    );
    let path = r.write("metallb.yaml", text);
    let m = common::render(&r.cluster, Role::Master);
    let objs = r.write(
        "objs.yaml",
        common::file(&m, "/usr/share/imgbuild/addons/metallb-objects.yaml"),
    );
    metallb_then_objects_then_controller_available(&r, &kc, &path, &objs);
}

/// With the stand-in kubectl as `kubeconfig`'s user: applies the MetalLB manifest at `manifest`, then the objects
/// imgbuild renders (`objs`), then waits for MetalLB's controller to become Available; each step must succeed.
fn metallb_then_objects_then_controller_available(
    r: &Root,
    kubeconfig: &str,
    manifest: &str,
    objs: &str,
) {
    for file in [manifest, objs] {
        let (ok, out) = r.run(
            "kubectl",
            &["--kubeconfig", kubeconfig, "apply", "-f", file],
        );
        assert!(ok, "applying {file}: {out}");
    }
    let (ok, out) = r.run(
        "kubectl",
        &[
            "--kubeconfig",
            kubeconfig,
            "-n",
            "metallb-system",
            "wait",
            "--for=condition=Available",
            "deployment/controller",
            "--timeout=60s",
        ],
    );
    assert!(ok, "{out}");
}

/// The equivalent of `kubeadm config validate` (strict decoding: unknown fields and kinds are errors, then the
/// value checks) on every kubeadm config every role's image carries, filled as the first boot fills them. Real
/// `kubeadm init/join --config` would only warn about an unknown field, so this is where a typo must fail.
#[test]
fn every_rendered_kubeadm_config_passes_the_strict_validate() {
    let r = setup();
    let s = secrets::init(&r.cluster.paths.secrets).unwrap();
    let sec = secrets::load(&s.dir).unwrap();
    let mut checked = Vec::new();
    for role in [Role::Master, Role::Worker, Role::Storage] {
        let tree = common::render(&r.cluster, role);
        for f in tree
            .files
            .iter()
            .filter(|f| f.path.starts_with("/usr/share/imgbuild/kubeadm/"))
        {
            let text = fill(
                std::str::from_utf8(&f.contents).unwrap(),
                &sec.token.token,
                &sec.discovery_hash,
                "node-1",
                "10.77.0.11",
            );
            let p = r.write("run/validate.yaml", &text);
            let (ok, out) = r.run("kubeadm", &["config", "validate", "--config", &p]);
            assert!(ok, "{role:?} {}: {out}", f.path);
            assert!(!out.contains("WARNING"), "{role:?} {}: {out}", f.path);
            checked.push(format!("{role:?}{}", f.path));
        }
    }
    assert_eq!(
        checked.len(),
        5,
        "init + join-control-plane + join on masters, join on workers and storage: {checked:?}"
    );
}

/// The kubelet stand-in (bash) and the kube-vip stand-in image's entrypoint (busybox sh) parse.
#[test]
fn the_kubelet_and_kube_vip_standins_are_valid_shell() {
    let r = setup();
    let s = imgbuild::image::standins::generate(&r.cluster, &common::engine(&r.cluster)).unwrap();
    let kubelet = s
        .files
        .iter()
        .find(|f| f.path == "/usr/bin/kubelet")
        .unwrap();
    let text = std::str::from_utf8(&kubelet.contents).unwrap();
    assert!(
        text.contains("staticPodPath") && text.contains("ctr"),
        "{text}"
    );
    let k = r.write("kubelet", text);
    let v = r.write("kube-vip", &kube_vip_entrypoint(&r.cluster));
    for (shell, file) in [("bash", &k), ("busybox", &v)] {
        let mut c = Command::new(shell);
        if shell == "busybox" {
            c.arg("sh");
        }
        let out = c.arg("-n").arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The stand-in kube-vip entrypoint, rendered for the pinned version (`v1.0.1`, the default image's tag).
fn kube_vip_entrypoint(cluster: &Cluster) -> String {
    let version = cluster
        .control_plane
        .kube_vip_image
        .rsplit_once(":v")
        .unwrap()
        .1
        .to_string();
    common::engine(cluster)
        .render(
            "profiles/standins/kube-vip-entrypoint.sh.j2",
            &serde_json::json!({ "version": version }),
        )
        .unwrap()
}

/// The kube-vip stand-in, run with busybox in a network namespace of its own with the environment of the master
/// image's rendered static pod (kube-vip.yaml, its NIC filled in): it puts the VIP as a deprecated /32 on
/// `vip_interface`, announces it by gratuitous ARP (reply and request, seen by tcpdump on the peer), answers ARP
/// for it at the NIC's MAC, removes it on SIGTERM; and it refuses what kube-vip v1.0.1 refuses.
#[test]
fn root_standin_kube_vip_puts_the_vip_on_its_interface_and_refuses_what_kube_vip_refuses() {
    let r = setup();
    let tree = common::render(&r.cluster, Role::Master);
    let manifest = common::file(&tree, "/usr/share/imgbuild/kube-vip/kube-vip.yaml")
        .replace("@IMGBUILD_BOOT_NIC@", "nic0");
    let pod = &common::yaml_docs("kube-vip.yaml", &manifest)[0];
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["args"][0], "manager");
    let mut env = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let v = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("spec.nodeName") => "master-1".to_string(),
            Some(other) => panic!("fieldPath {other}"),
            None => e["value"].as_str().unwrap().to_string(),
        };
        env.push(format!("{}='{v}'", e["name"].as_str().unwrap()));
    }
    let vip = r.cluster.control_plane.vip.to_string();
    assert!(env.contains(&format!("address='{vip}'")), "{env:?}");
    let entry = r.write("kube-vip", &kube_vip_entrypoint(&r.cluster));
    // The files the pod sees: admin.conf (the kubeadm stand-in's shape) and the kubelet's hosts file.
    r.write(
        "etc/kubernetes/admin.conf",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: https://10.77.0.10:6443\ncurrent-context: kubernetes-admin@kubernetes\n",
    );
    r.write(
        "etc/hosts",
        "127.0.0.1\tlocalhost\n\n# Entries added by HostAliases.\n127.0.0.1\tkubernetes\n",
    );
    let bin = r.root.join("bb");
    std::fs::create_dir_all(&bin).unwrap();
    for a in [
        "arping", "awk", "cat", "date", "expr", "grep", "head", "hostname", "ip", "sed", "sleep",
        "tr", "usleep", "sh",
    ] {
        std::os::unix::fs::symlink("/bin/busybox", bin.join(a)).unwrap();
    }
    let run = |extra: &str| {
        format!(
            "env -i PATH={bin} IMGBUILD_ROOT={root} {env} {extra} /bin/busybox sh {entry} manager",
            bin = bin.display(),
            root = r.root.display(),
            env = env.join(" ")
        )
    };
    let refusals = [
        ("cp_enable=false", "no features are enabled"),
        (
            "vip_arp=yes",
            "vip_arp: strconv.ParseBool: parsing \"yes\": invalid syntax",
        ),
        ("vip_interface=nic9", "nic9 is not valid interface"),
        ("vip_interface=down0", "down0 is not up"),
        (
            "vip_leaseduration=3",
            "leaseDuration must be greater than renewDeadline",
        ),
        ("port=70000", "port: strconv.Parse"),
        (
            "vip_subnet=auto",
            "auto subnet discovery cannot be used if VIP address was provided",
        ),
        (
            "IMGBUILD_ROOT=/nonexistent",
            "unable to load in-cluster configuration",
        ),
    ];
    let cap = r.root.join("arp.txt");
    // The peer (the LAN) in a namespace of its own: ARP from an address of the same host would be ignored.
    let mut script = format!(
        "set -u\nmount -t sysfs sysfs /sys\nip link set lo up\n\
         unshare -n sleep 120 &\nP=$!\n\
         until [ \"$(readlink /proc/$P/ns/net)\" != \"$(readlink /proc/self/ns/net)\" ]; do sleep 0.05; done\n\
         peer() {{ nsenter -t $P -n \"$@\"; }}\n\
         ip link add nic0 type veth peer name peer0 netns $P\nip link add down0 type veth peer name down1\n\
         ip link set nic0 up\nip addr add 10.77.0.11/24 dev nic0\n\
         peer ip link set peer0 up\npeer ip addr add 10.77.0.1/24 dev peer0\n\
         peer tcpdump -i peer0 -n -e -l arp >{cap} 2>/dev/null &\nT=$!\nsleep 1\n",
        cap = cap.display()
    );
    for (i, (extra, _)) in refusals.iter().enumerate() {
        script.push_str(&format!(
            "echo \"CASE {i} $( (timeout 20 {} 2>&1; echo rc=$?) | tr '\\n' ' ')\"\n",
            run(extra)
        ));
    }
    script.push_str(&format!(
        "{} >{log} 2>&1 &\nK=$!\n\
         for i in $(seq 1 100); do ip -o addr show dev nic0 | grep -q ' {vip}/32 ' && break; sleep 0.1; done\n\
         echo \"ADDR $(ip -o addr show dev nic0 | grep ' {vip}/')\"\n\
         sleep 4\n\
         echo \"ARPING $(peer busybox arping -f -w 3 -I peer0 {vip} | tr '\\n' ' ')\"\n\
         echo \"MAC $(cat /sys/class/net/nic0/address)\"\n\
         kill -TERM $K; wait $K\n\
         echo \"AFTER $(ip -o addr show dev nic0 | grep -c ' {vip}/')\"\n\
         kill $T; wait $T; kill $P\n\
         cat {log} {cap}\n",
        run(""),
        log = r.root.join("kube-vip.log").display(),
        cap = cap.display()
    ));
    let out = Command::new("unshare")
        .args(["-n", "-m", "bash", "-c", &script])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for (i, (extra, needle)) in refusals.iter().enumerate() {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("CASE {i} ")))
            .unwrap_or_else(|| panic!("case {i} did not run: {text}"));
        assert!(
            line.contains(needle) && !line.contains("rc=0") && line.contains("STAND-IN"),
            "with {extra} the stand-in must refuse ({needle}): {line}"
        );
    }
    let line = |p: &str| {
        text.lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no {p} line: {text}"))
            .to_string()
    };
    let mac = line("MAC ").trim_start_matches("MAC ").trim().to_string();
    let addr = line("ADDR ");
    assert!(
        addr.contains(&format!("inet {vip}/32 ")) && addr.contains("deprecated"),
        "the VIP as a /32 with preferred_lft 0 on nic0: {text}"
    );
    // Gratuitous ARP from nic0's MAC, reply then request (sender = target = VIP), and an ARP request answered.
    assert!(
        text.contains(&format!("{mac} > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Reply {vip} is-at {mac}"))
            && text.contains(&format!("{mac} > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has {vip} (ff:ff:ff:ff:ff:ff) tell {vip}")),
        "no gratuitous ARP for {vip} from nic0 ({mac}): {text}"
    );
    let arping = line("ARPING ").to_lowercase();
    assert!(
        arping.contains(&format!("[{mac}]")),
        "the VIP {vip} answers ARP at nic0's MAC {mac}: {text}"
    );
    assert_eq!(
        line("AFTER ").trim(),
        "AFTER 0",
        "SIGTERM removes the VIP: {text}"
    );
    assert!(
        text.contains("capabilities CapEff=")
            && text.contains("Starting Kube-vip Manager with the ARP engine"),
        "{text}"
    );
}
