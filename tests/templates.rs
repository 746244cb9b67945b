//! The rendered first-boot texts: every YAML parses, kubeadm configs have the v1beta4 shape, MetalLB objects
//! validate against MetalLB's CRD schemas, Longhorn settings match Longhorn's manifest, kube-vip switches
//! from super-admin.conf to admin.conf, and the example's image lists bake, role by role, exactly what the
//! pinned versions run (kubeadm, containerd's sandbox, kube-vip, flannel, the vendored MetalLB and Longhorn).

mod common;

use std::collections::BTreeSet;

use imgbuild::config::Role;
use serde_json::{Value, json};

fn cluster(dir: &std::path::Path) -> imgbuild::config::Cluster {
    common::load(dir, false)
}

/// Fills the @IMGBUILD_…@ placeholders as the first-boot unit does.
fn fill(text: &str) -> String {
    text.replace("@IMGBUILD_TOKEN@", "abcdef.0123456789abcdef")
        .replace("@IMGBUILD_CA_HASH@", &format!("sha256:{}", "ab".repeat(32)))
        .replace("@IMGBUILD_NODE_NAME@", "master-1")
        .replace("@IMGBUILD_NODE_IP@", "10.77.0.11")
}

#[test]
fn every_rendered_yaml_parses() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let mut seen = 0;
    for role in Role::ALL {
        let t = common::render(&c, role);
        for f in &t.files {
            if f.path.ends_with(".yaml") || f.path.ends_with(".yml") {
                let text = std::str::from_utf8(&f.contents).unwrap();
                let docs = common::yaml_docs(&f.path, &fill(text));
                assert!(!docs.is_empty(), "{} has no document", f.path);
                for doc in docs {
                    assert!(
                        doc.get("kind").is_some() || f.path.ends_with("crictl.yaml"),
                        "{}: a document without kind",
                        f.path
                    );
                }
                seen += 1;
            }
        }
    }
    assert!(seen >= 10, "only {seen} YAML files rendered");
    let kc = std::fs::read_to_string(common::repo().join("profiles/pki/admin-kubeconfig.yaml.j2"))
        .unwrap();
    assert!(kc.contains("kind: Config"));
}

#[test]
fn kubeadm_configs_have_the_v1beta4_shape() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let m = common::render(&c, Role::Master);
    let init = common::yaml_docs(
        "init.yaml",
        &fill(common::file(&m, "/usr/share/imgbuild/kubeadm/init.yaml")),
    );
    assert_eq!(init.len(), 2);
    let (i, cc) = (&init[0], &init[1]);
    assert_eq!(i["apiVersion"], "kubeadm.k8s.io/v1beta4");
    assert_eq!(i["kind"], "InitConfiguration");
    assert_eq!(i["bootstrapTokens"][0]["token"], "abcdef.0123456789abcdef");
    assert_eq!(i["bootstrapTokens"][0]["ttl"], "24h0m0s");
    assert_eq!(i["nodeRegistration"]["name"], "master-1");
    assert_eq!(
        i["nodeRegistration"]["kubeletExtraArgs"],
        json!([{"name": "node-ip", "value": "10.77.0.11"}]),
        "v1beta4: extra args are a list of name/value"
    );
    assert_eq!(i["localAPIEndpoint"]["advertiseAddress"], "10.77.0.11");
    assert_eq!(cc["apiVersion"], "kubeadm.k8s.io/v1beta4");
    assert_eq!(cc["kind"], "ClusterConfiguration");
    assert_eq!(cc["controlPlaneEndpoint"], "10.77.0.10:6443");
    assert_eq!(cc["kubernetesVersion"], "v1.36.3");
    assert_eq!(cc["networking"]["podSubnet"], "10.244.0.0/16");
    assert_eq!(cc["networking"]["serviceSubnet"], "10.96.0.0/12");
    assert_eq!(cc["certificatesDir"], "/etc/kubernetes/pki");
    // kubeadm derives allocate-node-cidrs and cluster-cidr from podSubnet: no extraArgs repeating them.
    assert!(
        cc["controllerManager"].is_null(),
        "{}",
        cc["controllerManager"]
    );
    // The post-control-plane phases talk through the VIP: more than kubeadm's 1-minute API timeout.
    assert_eq!(i["timeouts"]["kubernetesAPICall"], "5m0s");
    assert!(
        cc["apiServer"]["certSANs"]
            .as_array()
            .unwrap()
            .contains(&json!("10.77.0.10"))
    );

    let jcp = common::yaml_docs(
        "jcp",
        &fill(common::file(
            &m,
            "/usr/share/imgbuild/kubeadm/join-control-plane.yaml",
        )),
    );
    let j = &jcp[0];
    assert_eq!(
        (j["apiVersion"].as_str(), j["kind"].as_str()),
        (Some("kubeadm.k8s.io/v1beta4"), Some("JoinConfiguration"))
    );
    assert_eq!(
        j["discovery"]["bootstrapToken"]["apiServerEndpoint"],
        "10.77.0.10:6443"
    );
    assert_eq!(
        j["discovery"]["bootstrapToken"]["caCertHashes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        j["controlPlane"]["localAPIEndpoint"]["advertiseAddress"],
        "10.77.0.11"
    );
    assert!(
        j["controlPlane"].get("certificateKey").is_none(),
        "the shared CA replaces uploaded certs"
    );

    for role in [Role::Worker, Role::Storage] {
        let t = common::render(&c, role);
        let j = &common::yaml_docs(
            "join",
            &fill(common::file(&t, "/usr/share/imgbuild/kubeadm/join.yaml")),
        )[0];
        assert_eq!(j["kind"], "JoinConfiguration");
        assert!(j.get("controlPlane").is_none());
        assert!(
            j["discovery"]["bootstrapToken"]["caCertHashes"][0]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
    }
    // No secret or placeholder value is baked into an image: only the placeholders.
    assert!(common::file(&m, "/usr/share/imgbuild/kubeadm/init.yaml").contains("@IMGBUILD_TOKEN@"));
}

#[test]
fn kube_vip_uses_super_admin_during_init_and_admin_after() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let m = common::render(&c, Role::Master);
    let path_of = |p: &str| {
        let pod = &common::yaml_docs(p, common::file(&m, p))[0];
        assert_eq!(pod["kind"], "Pod");
        let env: Vec<(String, Value)> = pod["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
            .collect();
        assert!(env.contains(&("address".into(), json!("10.77.0.10"))));
        assert!(env.contains(&("vip_interface".into(), json!("@IMGBUILD_BOOT_NIC@"))));
        // The interface is the boot NIC, found by the node from its MAC at first boot (issue 18, item 4).
        assert!(env.contains(&("vip_arp".into(), json!("true"))));
        assert!(pod["spec"]["hostNetwork"].as_bool().unwrap());
        pod["spec"]["volumes"][0]["hostPath"]["path"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        path_of("/usr/share/imgbuild/kube-vip/kube-vip-init.yaml"),
        "/etc/kubernetes/super-admin.conf"
    );
    assert_eq!(
        path_of("/usr/share/imgbuild/kube-vip/kube-vip.yaml"),
        "/etc/kubernetes/admin.conf"
    );
}

// ---- MetalLB: a structural validator for the subset of OpenAPI v3 the CRDs use ----

fn crd_schema(file: &str, version: &str) -> Value {
    let text = std::fs::read_to_string(common::vendor(&format!("metallb-v0.16.1/crds/{file}")))
        .expect("profiles/standins/vendor/metallb-v0.16.1/crds is readable");
    let crd = &common::yaml_docs(file, &text)[0];
    crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{file} has no version {version}"))["schema"]["openAPIV3Schema"]
        .clone()
}

fn validate(schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errs.push(format!("{at}: int or string expected"));
        }
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errs.push(format!("{at}: {v} not one of {e:?}"));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = v.as_object() else {
                errs.push(format!("{at}: object expected, got {v}"));
                return;
            };
            let props = schema.get("properties").and_then(Value::as_object);
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !obj.contains_key(r.as_str().unwrap()) {
                    errs.push(format!("{at}: required field {r} missing"));
                }
            }
            if let Some(props) = props {
                for (k, val) in obj {
                    match props.get(k) {
                        Some(s) => validate(s, val, &format!("{at}.{k}"), errs),
                        None => errs.push(format!("{at}: unknown field {k:?}")),
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, val) in obj {
                    validate(ap, val, &format!("{at}.{k}"), errs);
                }
            }
        }
        Some("array") => {
            let Some(a) = v.as_array() else {
                errs.push(format!("{at}: array expected, got {v}"));
                return;
            };
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter().enumerate() {
                    validate(items, x, &format!("{at}[{i}]"), errs);
                }
            }
            if let Some(n) = schema.get("maxItems").and_then(Value::as_u64)
                && a.len() as u64 > n
            {
                errs.push(format!("{at}: more than {n} items"));
            }
        }
        Some("string") => match v.as_str() {
            Some(s) => {
                if let Some(n) = schema.get("maxLength").and_then(Value::as_u64)
                    && s.len() as u64 > n
                {
                    errs.push(format!("{at}: longer than {n}"));
                }
                if let Some(n) = schema.get("minLength").and_then(Value::as_u64)
                    && (s.len() as u64) < n
                {
                    errs.push(format!("{at}: shorter than {n}"));
                }
            }
            None => errs.push(format!("{at}: string expected, got {v}")),
        },
        Some("integer") => match v.as_i64() {
            Some(n) => {
                if let Some(min) = schema.get("minimum").and_then(Value::as_i64)
                    && n < min
                {
                    errs.push(format!("{at}: {n} < minimum {min}"));
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_i64)
                    && n > max
                {
                    errs.push(format!("{at}: {n} > maximum {max}"));
                }
            }
            None => errs.push(format!("{at}: integer expected, got {v}")),
        },
        Some("boolean") if !v.is_boolean() => errs.push(format!("{at}: boolean expected, got {v}")),
        _ => {}
    }
}

fn metallb_errors(doc: &Value) -> Vec<String> {
    let (file, version) = match (
        doc["kind"].as_str().unwrap(),
        doc["apiVersion"].as_str().unwrap(),
    ) {
        ("IPAddressPool", "metallb.io/v1beta1") => ("metallb.io_ipaddresspools.yaml", "v1beta1"),
        ("BGPAdvertisement", "metallb.io/v1beta1") => {
            ("metallb.io_bgpadvertisements.yaml", "v1beta1")
        }
        ("BGPPeer", "metallb.io/v1beta2") => ("metallb.io_bgppeers.yaml", "v1beta2"),
        (k, a) => return vec![format!("{k} {a}: not a kind/version imgbuild renders")],
    };
    let mut schema = crd_schema(file, version);
    // metadata is the API server's ObjectMeta, not part of the CRD schema.
    schema["properties"]["metadata"] = json!({"type": "object"});
    let mut errs = vec![];
    validate(&schema, doc, doc["kind"].as_str().unwrap(), &mut errs);
    errs
}

#[test]
fn metallb_objects_validate_against_the_crd_schemas() {
    let d = tempfile::tempdir().unwrap();
    // The example, plus a peer with a password (its Secret reference) and an advertisement without extras.
    let cfg = common::write_cluster(d.path(), false, |t| {
        t.replace(
            "# password = \"...\"",
            "password = \"s3cret\"\n\n[[metallb.peers]]\nname = \"router2\"\naddress = \"10.77.0.2\"\nasn = 64501",
        )
        .replace(
            "[longhorn]",
            "[[metallb.advertisements]]\nname = \"plain\"\npools = [\"ingress\"]\n\n[longhorn]",
        )
    });
    let c = imgbuild::config::load(&cfg).unwrap();
    let m = common::render(&c, Role::Master);
    let text = common::file(&m, "/usr/share/imgbuild/addons/metallb-objects.yaml");
    assert!(
        !text.contains("s3cret"),
        "a BGP password must never be in an image"
    );
    let docs = common::yaml_docs("metallb-objects.yaml", text);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "IPAddressPool",
            "IPAddressPool",
            "BGPPeer",
            "BGPPeer",
            "BGPAdvertisement",
            "BGPAdvertisement"
        ]
    );
    for doc in &docs {
        assert_eq!(doc["metadata"]["namespace"], "metallb-system");
        let errs = metallb_errors(doc);
        assert!(errs.is_empty(), "{}: {errs:?}", doc["metadata"]["name"]);
    }
    let router = &docs[2];
    assert_eq!(
        router["spec"]["passwordSecret"],
        json!({"name": "metallb-bgp-router", "namespace": "metallb-system"})
    );
    assert_eq!(router["spec"]["myASN"], 64512);
    assert!(docs[3]["spec"].get("passwordSecret").is_none());
    assert_eq!(docs[4]["spec"]["aggregationLength"], 32);
    assert_eq!(docs[4]["spec"]["communities"], json!(["64500:100"]));

    // The validator does fail: broken objects are caught.
    let mut bad = docs[2].clone();
    bad["spec"]["peerASN"] = json!("64500");
    assert!(!metallb_errors(&bad).is_empty());
    let mut bad = docs[0].clone();
    bad["spec"]["adresses"] = json!(["10.0.0.0/24"]);
    assert!(
        metallb_errors(&bad)
            .iter()
            .any(|e| e.contains("unknown field"))
    );
    let mut bad = docs[2].clone();
    bad["spec"].as_object_mut().unwrap().remove("myASN");
    assert!(
        metallb_errors(&bad).iter().any(|e| e.contains("required")),
        "{:?}",
        metallb_errors(&bad)
    );
    let mut bad = docs[2].clone();
    bad["apiVersion"] = json!("metallb.io/v1beta1");
    assert!(!metallb_errors(&bad).is_empty(), "BGPPeer is v1beta2");
}

// ---- Longhorn ----

/// Names of Longhorn settings imgbuild sets (Longhorn's setting names; the manifest's default-setting ConfigMap
/// is where they go).
const OUR_LONGHORN_SETTINGS: &[&str] = &[
    "create-default-disk-labeled-nodes",
    "default-data-path",
    "default-replica-count",
];

fn default_settings(cm: &Value) -> serde_json::Map<String, Value> {
    let inner = cm["data"]["default-setting.yaml"]
        .as_str()
        .expect("data.default-setting.yaml");
    let docs = common::yaml_docs("default-setting.yaml", inner);
    docs[0].as_object().unwrap().clone()
}

#[test]
fn longhorn_settings_match_the_vendor_manifest() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let m = common::render(&c, Role::Master);
    let ours = common::yaml_docs(
        "longhorn-settings",
        common::file(&m, "/usr/share/imgbuild/addons/longhorn-settings.yaml"),
    );
    let vendor_text =
        std::fs::read_to_string(common::vendor("longhorn-v1.12.1/longhorn.yaml")).unwrap();
    let vendor = common::yaml_docs("longhorn.yaml", &vendor_text);
    let vcm = vendor
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "longhorn-default-setting")
        .expect("the vendor manifest has longhorn-default-setting");
    let ocm = ours.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(ocm["metadata"]["name"], vcm["metadata"]["name"]);
    assert_eq!(ocm["metadata"]["namespace"], vcm["metadata"]["namespace"]);
    assert_eq!(ours[0]["kind"], "Namespace");
    assert_eq!(ours[0]["metadata"]["name"], vcm["metadata"]["namespace"]);
    let keys_o: BTreeSet<_> = ocm["data"].as_object().unwrap().keys().collect();
    let keys_v: BTreeSet<_> = vcm["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys_o, keys_v, "same data key as the vendor ConfigMap");
    let vs = default_settings(vcm);
    let os = default_settings(ocm);
    for (k, v) in &vs {
        assert_eq!(os.get(k), Some(v), "the vendor setting {k} is kept");
    }
    for k in os.keys() {
        assert!(
            vs.contains_key(k) || OUR_LONGHORN_SETTINGS.contains(&k.as_str()),
            "unexpected setting {k}"
        );
        // Setting names are lower-case words joined by '-', like the vendor's.
        assert!(
            k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
            "{k}"
        );
    }
    assert_eq!(os["create-default-disk-labeled-nodes"], "true");
    assert_eq!(os["default-data-path"], "/var/lib/longhorn");
    // Data-engine-specific settings use the JSON form the vendor uses for disable-revision-counter.
    let rc: Value = serde_json::from_str(os["default-replica-count"].as_str().unwrap()).unwrap();
    assert_eq!(rc["v1"], "2");
    // The vendor's data path is /var/lib/longhorn/ too.
    assert!(vendor_text.contains("path: /var/lib/longhorn/"));
    // Labels and the default-disks annotation applied by storage nodes.
    let s = common::render(&c, Role::Storage);
    let role = common::file(&s, "/usr/lib/imgbuild/role.sh");
    assert!(role.contains("node.longhorn.io/create-default-disk=config"));
    assert!(role.contains("node.longhorn.io/default-disks-config="));
}

#[test]
fn the_awk_filter_drops_only_the_vendor_default_setting() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let m = common::render(&c, Role::Master);
    let awk = d.path().join("f.awk");
    std::fs::write(
        &awk,
        common::file(&m, "/usr/lib/imgbuild/drop-longhorn-settings.awk"),
    )
    .unwrap();
    let src = common::vendor("longhorn-v1.12.1/longhorn.yaml");
    let out = std::process::Command::new("awk")
        .arg("-f")
        .arg(&awk)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success());
    let filtered = String::from_utf8(out.stdout).unwrap();
    let before = common::yaml_docs("longhorn.yaml", &std::fs::read_to_string(&src).unwrap());
    let after = common::yaml_docs("filtered", &filtered);
    assert_eq!(after.len(), before.len() - 1);
    assert!(
        !after
            .iter()
            .any(|d| d["metadata"]["name"] == "longhorn-default-setting")
    );
    assert!(
        after
            .iter()
            .any(|d| d["metadata"]["name"] == "longhorn-storageclass")
    );
}

#[test]
fn every_rendered_script_is_valid_bash() {
    let d = tempfile::tempdir().unwrap();
    let c = cluster(d.path());
    let mut n = 0;
    let mut check = |name: &str, text: &str| {
        let p = d.path().join("script.sh");
        std::fs::write(&p, text).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    };
    for role in Role::ALL {
        let t = common::render(&c, role);
        for f in &t.files {
            if f.path.starts_with("/usr/lib/imgbuild/") && !f.path.ends_with(".awk") {
                check(&f.path, std::str::from_utf8(&f.contents).unwrap());
            }
        }
    }
    for s in ["kubeadm", "kubectl"] {
        check(s, &common::standin(&c, s));
    }
    assert!(n >= 12, "{n}");
}

// ---- The default image lists against the versions pinned elsewhere ----

/// What `kubeadm config images list --kubernetes-version <v>` names besides the API server, controller manager,
/// scheduler and kube-proxy (which are at `<v>`), per Kubernetes version. Source: docs/air-gapped.md, "Where the
/// default tags come from". A new Kubernetes version needs its line here, from its kubeadm.
const KUBEADM_IMAGES: &[(&str, [&str; 3])] = &[(
    "v1.36.3",
    [
        "registry.k8s.io/etcd:3.6.8-0",
        "registry.k8s.io/coredns/coredns:v1.14.2",
        "registry.k8s.io/pause:3.10.2",
    ],
)];

/// The CNI plugin image each flannel release's `kube-flannel.yml` names, per `artifacts.cni-manifest` version
/// (flannel's manifest is not vendored). Source: docs/air-gapped.md.
const FLANNEL_CNI_PLUGIN: &[(&str, &str)] = &[(
    "0.27.4",
    "ghcr.io/flannel-io/flannel-cni-plugin:v1.8.0-flannel1",
)];

const TAINT: &str = "node-role.kubernetes.io/control-plane";

fn full(reference: &str) -> String {
    reference
        .parse::<imgbuild::config::ImageRef>()
        .unwrap_or_else(|e| panic!("{e}"))
        .full()
}

/// A string of a pod spec that names an image: a registry host (with a dot) then a repository and a tag.
fn image_like(s: &str) -> Option<String> {
    if s.contains("://") || s.contains('=') || s.contains(' ') || s.starts_with('-') {
        return None;
    }
    let (host, rest) = s.split_once('/')?;
    if !host.contains('.') || !rest.contains(':') {
        return None;
    }
    s.parse::<imgbuild::config::ImageRef>()
        .ok()
        .map(|r| r.full())
}

fn images_in(v: &Value, key: Option<&str>, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            if key == Some("image") {
                out.insert(full(s));
            } else if let Some(r) = image_like(s) {
                out.insert(r);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| images_in(x, key, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| images_in(x, Some(k), out)),
        _ => {}
    }
}

/// A workload document's pod spec: whether it tolerates the masters' `NoSchedule` taint, and every image it
/// runs or names (containers, init containers, and the images its arguments and environment hand on).
fn workload(doc: &Value) -> Option<(String, bool, BTreeSet<String>)> {
    let spec = match doc["kind"].as_str()? {
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
            &doc["spec"]["template"]["spec"]
        }
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        "Pod" => &doc["spec"],
        _ => return None,
    };
    let tolerates = spec["tolerations"].as_array().is_some_and(|ts| {
        ts.iter().any(|t| {
            let no_schedule = t["effect"].is_null() || t["effect"] == "NoSchedule";
            (t["key"] == TAINT && no_schedule) || (t["key"].is_null() && t["operator"] == "Exists")
        })
    });
    let mut images = BTreeSet::new();
    images_in(spec, None, &mut images);
    let name = format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or(""),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    Some((name, tolerates, images))
}

/// The text of the stand-ins' file at `path` in the image.
fn standin_text(standins: &imgbuild::image::standins::Standins, path: &str) -> String {
    let f = standins.files.iter().find(|f| f.path == path).unwrap();
    String::from_utf8(f.contents.clone()).unwrap()
}

/// The containerd 1.6 configuration the stand-in shim writes (its here-document), parsed.
fn containerd16_config(shim: &str) -> toml::Value {
    let conf = shim
        .split("<<'IMGBUILD_CONTAINERD_CONFIG'\n")
        .nth(1)
        .and_then(|r| r.split("\nIMGBUILD_CONTAINERD_CONFIG\n").next())
        .unwrap();
    toml::from_str(conf).unwrap()
}

/// Every disagreement between `c`'s image lists and what its pinned versions run, role by role: an image a
/// pinned component runs on a role that the role's list lacks, and an image a role's list carries that nothing
/// pinned runs there.
fn default_image_mismatches(c: &imgbuild::config::Cluster) -> Vec<String> {
    use imgbuild::config::Cni;
    let every = Role::ALL.to_vec();
    let masters = vec![Role::Master];
    let others: Vec<Role> = Role::ALL
        .into_iter()
        .filter(|r| *r != Role::Master)
        .collect();
    let placed = |tolerates: bool| if tolerates { &every } else { &others };
    // (role, full reference, why)
    let mut need: Vec<(Role, String, String)> = Vec::new();
    let mut add = |roles: &[Role], image: &str, why: &str| {
        for r in roles {
            need.push((*r, full(image), why.to_string()));
        }
    };
    let mut errors = Vec::new();

    // kubeadm, at the rendered ClusterConfiguration's kubernetesVersion.
    let m = common::render(c, Role::Master);
    let init = common::yaml_docs(
        "init.yaml",
        &fill(common::file(&m, "/usr/share/imgbuild/kubeadm/init.yaml")),
    );
    let v = init[1]["kubernetesVersion"].as_str().unwrap().to_string();
    for n in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        add(&masters, &format!("registry.k8s.io/{n}:{v}"), "kubeadm");
    }
    add(
        &every,
        &format!("registry.k8s.io/kube-proxy:{v}"),
        "kubeadm",
    );
    let Some((_, [etcd, coredns, pause])) = KUBEADM_IMAGES.iter().find(|(k, _)| *k == v) else {
        errors.push(format!(
            "no kubeadm image list recorded for kubernetesVersion {v}: add the etcd, coredns and pause tags `kubeadm config images list --kubernetes-version {v}` prints to KUBEADM_IMAGES (tests/templates.rs) and the docs/air-gapped.md table"
        ));
        return errors;
    };
    add(&masters, etcd, "kubeadm's etcd");
    add(
        &every,
        coredns,
        "kubeadm's CoreDNS (tolerates the masters' taint)",
    );
    add(&every, pause, "kubeadm's and containerd's sandbox");

    // containerd's sandbox image, as every role's configuration and the stand-in's 1.6 configuration render it.
    for role in Role::ALL {
        let t = common::render(c, role);
        let conf: toml::Value =
            toml::from_str(common::file(&t, "/etc/containerd/config.toml")).unwrap();
        let sandbox = conf["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
            .as_str()
            .unwrap();
        if full(sandbox) != full(pause) {
            errors.push(format!(
                "{role:?}: containerd's sandbox image is {sandbox}, kubeadm {v} uses {pause}"
            ));
        }
        add(&[role], sandbox, "containerd's sandbox image");
    }
    let standins = imgbuild::image::standins::generate(c, &common::engine(c)).unwrap();
    let text = |path: &str| standin_text(&standins, path);
    let conf16 = containerd16_config(&text("/usr/local/bin/containerd"));
    let sandbox16 = conf16["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"]
        .as_str()
        .unwrap();
    if full(sandbox16) != full(pause) {
        errors.push(format!(
            "the stand-in containerd 1.6 configuration's sandbox image is {sandbox16}, kubeadm {v} uses {pause}"
        ));
    }

    // kube-vip's static pods.
    for p in [
        "/usr/share/imgbuild/kube-vip/kube-vip-init.yaml",
        "/usr/share/imgbuild/kube-vip/kube-vip.yaml",
    ] {
        let pod = &common::yaml_docs(p, common::file(&m, p))[0];
        let image = pod["spec"]["containers"][0]["image"].as_str().unwrap();
        if image != c.control_plane.kube_vip_image {
            errors.push(format!(
                "{p} runs {image}, control_plane.kube_vip_image is {}",
                c.control_plane.kube_vip_image
            ));
        }
        add(&masters, image, "the kube-vip static pod");
    }

    // flannel at artifacts.cni-manifest.
    if c.cluster.cni == Cni::Flannel {
        let fv = &c.artifacts["cni-manifest"].version;
        add(
            &every,
            &format!("ghcr.io/flannel-io/flannel:v{fv}"),
            "flannel's DaemonSet (tolerates every taint)",
        );
        match FLANNEL_CNI_PLUGIN.iter().find(|(k, _)| k == fv) {
            Some((_, plugin)) => add(&every, plugin, "flannel's CNI plugin init container"),
            None => errors.push(format!(
                "no flannel-cni-plugin tag recorded for flannel {fv}: add the one its kube-flannel.yml names to FLANNEL_CNI_PLUGIN (tests/templates.rs) and docs/air-gapped.md"
            )),
        }
    }

    // The vendored MetalLB and Longhorn releases, which must be the pinned ones, and the stand-in manifests.
    let mut manifests: Vec<(String, String)> = Vec::new();
    let metallb = &c.artifacts["metallb-manifest"].version;
    let longhorn = &c.artifacts["longhorn-manifest"].version;
    if *longhorn != c.longhorn.version {
        errors.push(format!(
            "artifacts.longhorn-manifest is {longhorn}, [longhorn] version {}",
            c.longhorn.version
        ));
    }
    for rel in [
        format!("metallb-v{metallb}/metallb-frr.yaml"),
        format!("longhorn-v{longhorn}/longhorn.yaml"),
    ] {
        match std::fs::read_to_string(common::vendor(&rel)) {
            Ok(t) => manifests.push((rel, t)),
            Err(_) => errors.push(format!(
                "profiles/standins/vendor/{rel} is missing: vendor the pinned release (profiles/standins/vendor/README.md)"
            )),
        }
    }
    for f in &standins.files {
        if f.path.ends_with(".yaml") {
            manifests.push((f.path.clone(), text(&f.path)));
        }
    }
    for (name, t) in &manifests {
        for doc in common::yaml_docs(name, t) {
            if let Some((w, tolerates, images)) = workload(&doc) {
                for i in images {
                    add(placed(tolerates), &i, &format!("{w} in {name}"));
                }
            }
        }
    }
    if let Ok(list) = std::fs::read_to_string(common::vendor(&format!(
        "longhorn-v{longhorn}/longhorn-images.txt"
    ))) {
        for l in list.lines().filter(|l| !l.trim().is_empty()) {
            add(
                &others,
                &format!("docker.io/{}", l.trim()),
                "Longhorn's longhorn-images.txt (Longhorn runs beside its manager, off the masters)",
            );
        }
    }

    for role in Role::ALL {
        let baked: BTreeSet<String> = c
            .images_for(role)
            .iter()
            .map(|i| i.reference.full())
            .collect();
        let needed: BTreeSet<&String> = need
            .iter()
            .filter(|(r, ..)| *r == role)
            .map(|(_, i, _)| i)
            .collect();
        for (r, i, why) in &need {
            if *r == role && !baked.contains(i) {
                let name = i.rsplit_once(':').unwrap().0;
                let listed: Vec<&String> = baked
                    .iter()
                    .filter(|b| b.rsplit_once(':').unwrap().0 == name)
                    .collect();
                errors.push(format!(
                    "{}: {i} ({why}) is not in its images (listed: {listed:?})",
                    role.as_str()
                ));
            }
        }
        for b in &baked {
            if !needed.contains(b) {
                errors.push(format!(
                    "{}: {b} is in its images but nothing pinned runs it there",
                    role.as_str()
                ));
            }
        }
    }
    errors.sort();
    errors.dedup();
    errors
}

#[test]
fn default_images_match_the_pinned_versions() {
    let d = tempfile::tempdir().unwrap();
    let errors = default_image_mismatches(&cluster(d.path()));
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The comparison sees a tag that drifted from its manifest, and an image on a role its workload never runs on.
    let d = tempfile::tempdir().unwrap();
    let edited = common::write_cluster(d.path(), false, |t| {
        t.replace(
            "quay.io/frrouting/frr:10.5.3",
            "quay.io/frrouting/frr:10.5.2",
        )
        .replace(
            "roles = [\"worker\", \"storage\"]\nrefs = [\n  \"quay.io/metallb/controller",
            "roles = [\"master\"]\nrefs = [\n  \"quay.io/metallb/controller",
        )
    });
    let errors = default_image_mismatches(&imgbuild::config::load(&edited).unwrap());
    let has = |role: &str, needle: &str| {
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{role}: ")) && e.contains(needle))
    };
    assert!(
        has(
            "worker",
            "quay.io/frrouting/frr:10.5.3 (DaemonSet speaker in metallb-v0.16.1/metallb-frr.yaml) is not in its images (listed: [\"quay.io/frrouting/frr:10.5.2\"])"
        ),
        "{errors:#?}"
    );
    assert!(
        has(
            "master",
            "quay.io/frrouting/frr:10.5.2 is in its images but nothing pinned runs it there"
        ),
        "{errors:#?}"
    );
    assert!(
        has(
            "storage",
            "quay.io/metallb/controller:v0.16.1 (Deployment controller in"
        ),
        "{errors:#?}"
    );
    assert!(
        has(
            "master",
            "quay.io/metallb/controller:v0.16.1 is in its images but nothing pinned runs it there"
        ),
        "{errors:#?}"
    );
}

/// containerd's sandbox image is cluster.toml's pause image, wherever it is written: every role's containerd
/// configuration, the stand-in's containerd 1.6 configuration and the stand-in MetalLB controller. Changing the
/// tag (or the registry) in `[images.node]` changes all of them; no template keeps a literal.
#[test]
fn the_sandbox_image_follows_the_pause_image_of_cluster_toml_into_every_template() {
    let d = tempfile::tempdir().unwrap();
    let mirror = "mirror.example:5000/k8s/pause:3.99.1";
    let cfg = common::write_cluster(d.path(), false, |t| {
        t.replace("\"registry.k8s.io/pause:3.10.2\"", &format!("\"{mirror}\""))
    });
    let c = imgbuild::config::load(&cfg).unwrap();
    assert_eq!(c.sandbox_image, mirror);
    for role in Role::ALL {
        let t = common::render(&c, role);
        let conf: toml::Value =
            toml::from_str(common::file(&t, "/etc/containerd/config.toml")).unwrap();
        assert_eq!(
            conf["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some(mirror),
            "{role:?}"
        );
        for f in &t.files {
            let text = String::from_utf8_lossy(&f.contents);
            assert!(
                !text.contains("pause:3.10.2"),
                "{}: a literal pause",
                f.path
            );
        }
    }
    let standins = imgbuild::image::standins::generate(&c, &common::engine(&c)).unwrap();
    let text = |path: &str| standin_text(&standins, path);
    let conf16 = containerd16_config(&text("/usr/local/bin/containerd"));
    assert_eq!(
        conf16["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"].as_str(),
        Some(mirror)
    );
    let metallb = text("/usr/share/imgbuild/manifests/metallb-manifest.yaml");
    let controller = common::yaml_docs("metallb-manifest.yaml", &metallb)
        .into_iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "controller")
        .unwrap();
    assert_eq!(
        controller["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
        Some(mirror)
    );
    for f in &standins.files {
        let text = String::from_utf8_lossy(&f.contents);
        assert!(
            !text.contains("pause:3.10.2"),
            "{}: a literal pause",
            f.path
        );
    }
}
