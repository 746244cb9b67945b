//! Every class of configuration mistake gives a message naming the file, line, key and what would be valid.

use std::path::Path;

use imgbuild::config::{self, ConfigError, Problem};

const EXAMPLE: &str = include_str!("../cluster.toml");

/// Loads the example with `from` replaced by `to` (exactly once) and returns the problems.
fn problems_with(from: &str, to: &str) -> (String, Vec<Problem>) {
    assert_eq!(
        EXAMPLE.matches(from).count(),
        1,
        "test edit {from:?} must match the example exactly once"
    );
    let src = EXAMPLE.replacen(from, to, 1);
    match config::load_str(Path::new("cluster.toml"), &src, Path::new(".")) {
        Ok(_) => panic!("edit {from:?} -> {to:?} was accepted"),
        Err(ConfigError::Invalid(p)) => (src, p),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Asserts one problem has `key`, a message containing `needle`, and points at the line holding `at`.
fn assert_problem(src: &str, problems: &[Problem], key: &str, needle: &str, at: &str) {
    let p = problems
        .iter()
        .find(|p| p.key == key && p.message.contains(needle))
        .unwrap_or_else(|| {
            panic!("no problem with key {key:?} containing {needle:?}; got:\n{problems:#?}")
        });
    let want_line = src
        .lines()
        .position(|l| l.contains(at))
        .expect("anchor present")
        + 1;
    assert_eq!(p.line, Some(want_line), "{p}");
    assert!(p.column.is_some(), "{p}");
    let shown = p.to_string();
    assert!(
        shown.starts_with(&format!("cluster.toml:{want_line}:")),
        "{shown}"
    );
    assert!(shown.contains(key), "{shown}");
}

#[test]
fn the_example_is_valid() {
    let c = config::load_str(Path::new("cluster.toml"), EXAMPLE, Path::new("."))
        .expect("example valid");
    assert_eq!(c.machines.len(), 7);
    assert_eq!(c.first_master().unwrap().hostname, "master-1");
}

#[test]
fn malformed_mac() {
    let (src, p) = problems_with("mac = \"52:54:00:77:00:21\"", "mac = \"52:54:00:77:0g:21\"");
    assert_problem(
        &src,
        &p,
        "machines[3].mac",
        "is not a MAC address; expected six hex pairs",
        "0g:21",
    );
}

#[test]
fn duplicate_mac() {
    let (src, p) = problems_with("mac = \"52:54:00:77:00:22\"", "mac = \"52:54:00:77:00:21\"");
    let line = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("52:54:00:77:00:21"))
        .nth(1)
        .unwrap()
        .0
        + 1;
    let d = p
        .iter()
        .find(|x| x.key == "machines[4].mac")
        .expect("duplicate reported");
    assert!(
        d.message
            .contains("duplicate MAC 52:54:00:77:00:21: machines[3] already has it"),
        "{d}"
    );
    assert_eq!(d.line, Some(line));
}

#[test]
fn duplicate_ip_and_hostname() {
    let (src, p) = problems_with(
        "hostname = \"worker-2\"\nrole = \"worker\"\nip = \"10.77.0.22\"",
        "hostname = \"worker-1\"\nrole = \"worker\"\nip = \"10.77.0.21\"",
    );
    let host = p
        .iter()
        .find(|x| x.key == "machines[4].hostname")
        .expect("dup hostname");
    assert!(
        host.message
            .contains("duplicate hostname \"worker-1\": machines[3] already has it"),
        "{host}"
    );
    let ip = p
        .iter()
        .find(|x| x.key == "machines[4].ip")
        .expect("dup ip");
    assert!(ip.message.contains("duplicate address 10.77.0.21"), "{ip}");
    assert!(
        ip.line.unwrap() > host.line.unwrap(),
        "ip line after hostname line"
    );
    let _ = src;
}

#[test]
fn unknown_role() {
    let (src, p) = problems_with(
        "role = \"storage\"\nip = \"10.77.0.31\"",
        "role = \"etcd\"\nip = \"10.77.0.31\"",
    );
    assert_problem(
        &src,
        &p,
        "machines[5].role",
        "unknown role \"etcd\"; valid roles are master, worker, storage",
        "\"etcd\"",
    );
}

#[test]
fn unknown_arch() {
    let (src, p) = problems_with(
        "role = \"storage\"\nip = \"10.77.0.31\"",
        "role = \"storage\"\narch = \"aarch64\"\nip = \"10.77.0.31\"",
    );
    assert_problem(
        &src,
        &p,
        "machines[5].arch",
        "unknown architecture \"aarch64\"; valid architectures are amd64, arm64",
        "\"aarch64\"",
    );
}

#[test]
fn even_number_of_masters() {
    let (_, p) = problems_with(
        "hostname = \"master-3\"\nrole = \"master\"",
        "hostname = \"master-3\"\nrole = \"worker\"",
    );
    let m = p
        .iter()
        .find(|x| x.key == "machines")
        .expect("masters problem");
    assert!(
        m.message.contains("2 masters") && m.message.contains("odd number"),
        "{m}"
    );
}

#[test]
fn zero_masters() {
    let src = EXAMPLE.replace("role = \"master\"", "role = \"worker\"");
    let err = config::load_str(Path::new("cluster.toml"), &src, Path::new(".")).unwrap_err();
    let m = err
        .problems()
        .iter()
        .find(|x| x.key == "machines")
        .expect("masters problem");
    assert!(m.message.contains("no machine has role \"master\""), "{m}");
}

#[test]
fn static_ip_outside_subnet() {
    let (src, p) = problems_with("ip = \"10.77.0.32\"", "ip = \"10.78.0.32\"");
    assert_problem(
        &src,
        &p,
        "machines[6].ip",
        "10.78.0.32 is not a host address in the provisioning subnet 10.77.0.0/24",
        "10.78.0.32",
    );
}

#[test]
fn static_ip_inside_unknown_pool() {
    let src = EXAMPLE.replace(
        "# unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.250\" }",
        "unknown_pool = { start = \"10.77.0.20\", end = \"10.77.0.29\" }",
    );
    let err = config::load_str(Path::new("cluster.toml"), &src, Path::new(".")).unwrap_err();
    let p = err
        .problems()
        .iter()
        .find(|x| x.key == "machines[3].ip")
        .expect("pool overlap");
    assert!(
        p.message
            .contains("10.77.0.21 is inside the unknown-machine pool 10.77.0.20-10.77.0.29"),
        "{p}"
    );
}

#[test]
fn vip_on_a_machine_address() {
    let (src, p) = problems_with("vip = \"10.77.0.10\"", "vip = \"10.77.0.12\"");
    assert_problem(
        &src,
        &p,
        "control_plane.vip",
        "the VIP 10.77.0.12 is also machines[1].ip (master-2)",
        "vip = \"10.77.0.12\"",
    );
}

#[test]
fn metallb_pool_overlapping_machines() {
    let (src, p) = problems_with(
        "addresses = [\"10.77.100.0/24\"]",
        "addresses = [\"10.77.0.0/27\"]",
    );
    assert_problem(
        &src,
        &p,
        "metallb.pools[0].addresses[0]",
        "contains 10.77.0.11 (master-1)",
        "10.77.0.0/27",
    );
    assert!(p.iter().any(|x| {
        x.message
            .contains("contains the control-plane VIP 10.77.0.10")
    }));
}

#[test]
fn asn_out_of_range() {
    let (src, p) = problems_with("asn = 64500\nhold_time", "asn = 4294967295\nhold_time");
    assert_problem(
        &src,
        &p,
        "metallb.peers[0].asn",
        "AS number 4294967295 is out of range; expected 1 to 4294967294",
        "4294967295",
    );
    let (src, p) = problems_with("asn = 64512", "asn = 0");
    assert_problem(
        &src,
        &p,
        "metallb.asn",
        "AS number 0 is out of range",
        "asn = 0",
    );
}

#[test]
fn kubernetes_version_not_xyz() {
    let (src, p) = problems_with(
        "kubernetes_version = \"1.36.3\"",
        "kubernetes_version = \"1.36\"",
    );
    assert_problem(
        &src,
        &p,
        "cluster.kubernetes_version",
        "\"1.36\" is not a Kubernetes version of the form x.y.z",
        "kubernetes_version",
    );
}

#[test]
fn artifact_without_source() {
    let (src, p) = problems_with(
        "url = \"https://github.com/kubernetes-sigs/cri-tools/releases/download/v{version}/crictl-v{version}-linux-{arch}.tar.gz\"\n",
        "",
    );
    assert_problem(
        &src,
        &p,
        "artifacts.crictl",
        "artifact \"crictl\" has no source; add url = ",
        "[artifacts.crictl]",
    );
}

#[test]
fn toml_syntax_error_has_line_and_column() {
    let (src, p) = problems_with("port = 6443", "port = = 6443");
    assert_eq!(p.len(), 1);
    let line = src
        .lines()
        .position(|l| l.contains("port = = 6443"))
        .unwrap()
        + 1;
    assert_eq!(p[0].line, Some(line), "{}", p[0]);
    assert!(p[0].column.is_some());
}

#[test]
fn misspelt_key_names_the_valid_ones() {
    let (_, p) = problems_with("hostname = \"worker-1\"", "hostnme = \"worker-1\"");
    assert_eq!(p.len(), 1);
    assert!(
        p[0].message.contains("unknown field `hostnme`") && p[0].message.contains("hostname"),
        "{}",
        p[0]
    );
    assert!(p[0].line.is_some());
}

#[test]
fn all_problems_in_one_run() {
    let src = EXAMPLE
        .replacen("mac = \"52:54:00:77:00:21\"", "mac = \"nonsense\"", 1)
        .replacen("ip = \"10.77.0.32\"", "ip = \"192.168.9.9\"", 1)
        .replacen(
            "kubernetes_version = \"1.36.3\"",
            "kubernetes_version = \"latest\"",
            1,
        )
        .replacen("asn = 64512", "asn = -5", 1);
    let err = config::load_str(Path::new("cluster.toml"), &src, Path::new(".")).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "machines[3].mac",
        "machines[6].ip",
        "cluster.kubernetes_version",
        "metallb.asn",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{} problem(s)", err.problems().len())),
        "{text}"
    );
}

#[test]
fn advertisement_referencing_unknown_pool_lists_the_defined_ones() {
    let (src, p) = problems_with(
        "pools = [\"services\", \"ingress\"]",
        "pools = [\"services\", \"ingres\"]",
    );
    assert_problem(
        &src,
        &p,
        "metallb.advertisements[0].pools[1]",
        "no pool named \"ingres\"; defined pools: services, ingress",
        "\"ingres\"",
    );
}

#[test]
fn a_missing_config_file_says_how_to_name_another() {
    let err = config::load(Path::new("/nonexistent/cluster.toml")).unwrap_err();
    assert!(err.to_string().contains("pass --config <file>"), "{err}");
}

#[test]
fn ntp_servers_are_addresses_or_resolvable_names_and_default_to_the_gateway() {
    // A typo in an address.
    let (src, p) = problems_with(
        "ntp = [\"10.77.0.1\"]",
        "ntp = [\"10.77.0.1\", \"10.77.0.300\"]",
    );
    assert_problem(&src, &p, "network.ntp[1]", "not an NTP server", "ntp = [");
    // An empty list would leave the nodes without a time source.
    let (src, p) = problems_with("ntp = [\"10.77.0.1\"]", "ntp = []");
    assert_problem(&src, &p, "network.ntp", "without a time source", "ntp = [");
    // A name needs a resolver.
    let src = EXAMPLE
        .replacen("ntp = [\"10.77.0.1\"]", "ntp = [\"ntp.example.net\"]", 1)
        .replacen("dns = [\"10.77.0.1\"]", "dns = []", 1);
    match config::load_str(Path::new("cluster.toml"), &src, Path::new(".")) {
        Err(ConfigError::Invalid(p)) => {
            assert_problem(&src, &p, "network.ntp[0]", "dns is empty", "ntp = [")
        }
        other => panic!("accepted: {:?}", other.map(|c| c.network.ntp)),
    }
    // Absent: the gateway; a name with a resolver is kept as written.
    let c = config::load_str(
        Path::new("cluster.toml"),
        &EXAMPLE.replacen("ntp = [\"10.77.0.1\"]", "", 1),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.network.ntp, [c.network.gateway.to_string()]);
    let c = config::load_str(
        Path::new("cluster.toml"),
        &EXAMPLE.replacen("ntp = [\"10.77.0.1\"]", "ntp = [\"ntp.example.net\"]", 1),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.network.ntp, ["ntp.example.net"]);
}

#[test]
fn a_kube_vip_interface_if_given_is_an_interface_name() {
    let (src, p) = problems_with(
        "# interface = \"bond0\"",
        "interface = \"not an interface\"",
    );
    assert_problem(
        &src,
        &p,
        "control_plane.interface",
        "not a network interface name",
        "interface = \"not an interface\"",
    );
}

#[test]
fn event_limits_out_of_range() {
    let (src, p) = problems_with("file_bytes = 1048576", "file_bytes = 100");
    assert_problem(
        &src,
        &p,
        "limits.events.file_bytes",
        "expected 4096 to",
        "file_bytes = 100",
    );
    let (src, p) = problems_with("fsync_interval = \"200ms\"", "fsync_interval = \"1h\"");
    assert_problem(
        &src,
        &p,
        "limits.events.fsync_interval",
        "from 1ms to 10s",
        "fsync_interval = \"1h\"",
    );
    let (src, p) = problems_with("boots_per_node = 10", "boots_per_node = 0");
    assert_problem(
        &src,
        &p,
        "limits.events.boots_per_node",
        "expected 1 to 1000",
        "boots_per_node = 0",
    );
}

#[test]
fn secure_boot_on_a_machine_needs_the_section_enabled() {
    let (src, p) = problems_with(
        "hostname = \"worker-1\"\n",
        "hostname = \"worker-1\"\nsecure_boot = true\n",
    );
    assert_problem(
        &src,
        &p,
        "machines[3].secure_boot",
        "set `enabled = true` under [secure_boot]",
        "secure_boot = true",
    );
}

#[test]
fn secure_boot_db_key_needs_its_certificate() {
    let (src, p) = problems_with("# db_key = \"keys/db.key\"", "db_key = \"keys/db.key\"");
    assert_problem(
        &src,
        &p,
        "secure_boot.db_key",
        "give both",
        "db_key = \"keys/db.key\"",
    );
}

#[test]
fn secure_boot_defaults_follow_the_roles_on_amd64_and_arm64() {
    // An arm64 worker too: AAVMF enforces Secure Boot with the cluster's keys (docs/secure-boot.md, "arm64").
    let mut src = EXAMPLE
        .replacen("enabled = false", "enabled = true", 1)
        .replacen(
            "# roles = [\"master\", \"worker\", \"storage\"]",
            "roles = [\"worker\"]",
            1,
        );
    src.push_str(
        "\n[[machines]]\nhostname = \"arm-worker-1\"\nrole = \"worker\"\narch = \"arm64\"\n\
         mac = \"52:54:00:77:00:41\"\nip = \"10.77.0.41\"\nstate_disk = \"/dev/vda\"\ninit_blank = true\n",
    );
    let c = config::load_str(Path::new("cluster.toml"), &src, Path::new("."))
        .expect("valid with secure boot");
    for m in &c.machines {
        assert_eq!(
            m.secure_boot,
            m.role == imgbuild::config::Role::Worker,
            "{}",
            m.hostname
        );
    }
    assert!(
        c.machines
            .iter()
            .any(|m| m.arch == imgbuild::config::Arch::Arm64 && m.secure_boot)
    );
    assert!(!c.secure_boot.own_db);
    assert!(c.secure_boot.db_key.ends_with("secrets/secureboot/db.key"));
}

#[test]
fn container_images_name_the_reference_role_and_version_at_their_line() {
    // No tag, pinned by digest, an unknown role, the control plane at another version, listed twice.
    let (src, p) = problems_with(
        "  \"registry.k8s.io/etcd:3.6.8-0\",",
        "  \"registry.k8s.io/etcd\",",
    );
    assert_problem(
        &src,
        &p,
        "images.kubernetes.refs[3]",
        "has no tag",
        "\"registry.k8s.io/etcd\"",
    );
    let (src, p) = problems_with(
        "  \"quay.io/frrouting/frr:10.5.3\",",
        "  \"quay.io/frrouting/frr@sha256:0000\",",
    );
    assert_problem(
        &src,
        &p,
        "images.node.refs[6]",
        "pinned by digest",
        "frr@sha256",
    );
    let (src, p) = problems_with(
        "roles = [\"worker\", \"storage\"]\nrefs = [\n  \"docker.io/longhornio/",
        "roles = [\"worker\", \"stroage\"]\nrefs = [\n  \"docker.io/longhornio/",
    );
    assert_problem(
        &src,
        &p,
        "images.longhorn.roles[1]",
        "expected one of: master, worker, storage",
        "\"stroage\"",
    );
    let (src, p) = problems_with(
        "  \"registry.k8s.io/kube-scheduler:v1.36.3\",",
        "  \"registry.k8s.io/kube-scheduler:v1.35.0\",",
    );
    assert_problem(
        &src,
        &p,
        "images.kubernetes.refs[2]",
        "cluster.kubernetes_version is 1.36.3",
        "kube-scheduler:v1.35.0",
    );
    // The speaker (every role) listed again in the masters' kube-vip group.
    let (src, p) = problems_with(
        "  \"ghcr.io/kube-vip/kube-vip:v1.0.1\",",
        "  \"ghcr.io/kube-vip/kube-vip:v1.0.1\",\n  \"quay.io/metallb/speaker:v0.16.1\",",
    );
    let (_, p2) = (src.clone(), p.clone());
    let dup = p2
        .iter()
        .find(|p| p.key == "images.node.refs[5]")
        .unwrap_or_else(|| panic!("{p2:#?}"));
    assert!(
        dup.message.contains("listed twice for role master")
            && dup.message.contains("images.control-plane-addons.refs[1]"),
        "{dup}"
    );
    // kube-vip's image left out of the masters' images: they would pull it.
    let (src, p) = problems_with("  \"ghcr.io/kube-vip/kube-vip:v1.0.1\",\n", "");
    let _ = src;
    assert!(
        p.iter()
            .any(|p| p.key == "images" && p.message.contains("kube_vip_image")),
        "{p:#?}"
    );
}

#[test]
fn attestation_identity_and_ek_pin_are_checked_at_their_line() {
    let (src, p) = problems_with(
        "hostname = \"worker-1\"\n",
        "hostname = \"worker-1\"\nidentity = \"tmp\"\n",
    );
    assert_problem(
        &src,
        &p,
        "machines[3].identity",
        "expected \"tpm\" or \"address\"",
        "identity = \"tmp\"",
    );
    let (src, p) = problems_with(
        "hostname = \"worker-1\"\n",
        "hostname = \"worker-1\"\nek_sha256 = \"abcd\"\n",
    );
    assert_problem(
        &src,
        &p,
        "machines[3].ek_sha256",
        "set `identity = \"tpm\"`",
        "ek_sha256 = \"abcd\"",
    );
    let (src, p) = problems_with(
        "hostname = \"worker-1\"\n",
        "hostname = \"worker-1\"\nidentity = \"tpm\"\nek_sha256 = \"abcd\"\n",
    );
    assert_problem(
        &src,
        &p,
        "machines[3].ek_sha256",
        "expected 32",
        "ek_sha256 = \"abcd\"",
    );
    let (src, p) = problems_with(
        "identity = \"address\"             # default",
        "identity = \"both\"             # default",
    );
    assert_problem(
        &src,
        &p,
        "attestation.identity",
        "expected \"tpm\" or \"address\"",
        "identity = \"both\"",
    );
    // require_secure_boot with a TPM machine that does not boot with Secure Boot.
    let (src, p) = problems_with_all(&[
        ("require_secure_boot = false", "require_secure_boot = true"),
        (
            "hostname = \"worker-1\"\n",
            "hostname = \"worker-1\"\nidentity = \"tpm\" # w1\n",
        ),
    ]);
    assert_problem(
        &src,
        &p,
        "machines[3].identity",
        "set `secure_boot = true`",
        "# w1",
    );
    // A TPM machine without Secure Boot boots the iPXE → kernel chain, whose initrd and command line no quoted
    // measurement covers: refused unless that weaker proof is accepted in so many words.
    let (src, p) = problems_with(
        "hostname = \"worker-1\"\n",
        "hostname = \"worker-1\"\nidentity = \"tpm\" # w1\n",
    );
    assert_problem(
        &src,
        &p,
        "machines[3].identity",
        "initrd (fetched over plain HTTP) and command line",
        "# w1",
    );
    assert_problem(
        &src,
        &p,
        "machines[3].identity",
        "[attestation] allow_unbound_initrd = true",
        "# w1",
    );
    let src = src.replacen(
        "allow_unbound_initrd = false",
        "allow_unbound_initrd = true",
        1,
    );
    let c = config::load_str(Path::new("cluster.toml"), &src, Path::new(".")).unwrap();
    let w = c.machine_by_hostname("worker-1").unwrap();
    assert!(w.identity == config::Identity::Tpm && !w.secure_boot);
}

#[test]
fn containerds_sandbox_image_is_the_one_pause_image_listed_for_every_role() {
    // The example: kubeadm's pause, in [images.node] (every role), is what the templates get.
    let c = config::load_str(Path::new("cluster.toml"), EXAMPLE, Path::new(".")).unwrap();
    assert_eq!(c.sandbox_image, "registry.k8s.io/pause:3.10.2");
    // A mirror's pause is taken as it is (full reference).
    let src = EXAMPLE.replacen(
        "\"registry.k8s.io/pause:3.10.2\"",
        "\"mirror.example:5000/k8s/pause:3.10.2\"",
        1,
    );
    let c = config::load_str(Path::new("cluster.toml"), &src, Path::new(".")).unwrap();
    assert_eq!(c.sandbox_image, "mirror.example:5000/k8s/pause:3.10.2");
    // A cluster that bakes none of kubeadm's images (its nodes pull them, pause with them) needs no pause.
    let start = EXAMPLE.find("[images.kubernetes]").unwrap();
    let end = EXAMPLE.find("[base]").unwrap();
    let unbaked = format!(
        "{}[images.test]\nroles = [\"worker\"]\nrefs = [\"busybox:1.36\"]\n\n{}",
        &EXAMPLE[..start],
        &EXAMPLE[end..]
    )
    .replace("  \"ghcr.io/kube-vip/kube-vip:v1.0.1\",\n", "");
    let c = config::load_str(Path::new("cluster.toml"), &unbaked, Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.sandbox_image, "registry.k8s.io/pause:3.10.2");
    // kubeadm's images baked, no pause image: containerd would pull its sandbox image.
    let (src, p) = problems_with("  \"registry.k8s.io/pause:3.10.2\",\n", "");
    assert_problem(
        &src,
        &p,
        "images",
        "no pause image is listed",
        "[images.kubernetes]",
    );
    let msg = &p.iter().find(|p| p.key == "images").unwrap().message;
    assert!(
        msg.contains("kubeadm config images list --kubernetes-version 1.36.3")
            && msg.contains("[images.node]")
            && msg.contains("registry.k8s.io/kube-apiserver:v1.36.3 in [images.kubernetes]"),
        "{msg}"
    );
    // Listed for the masters only: the workers' and storage nodes' containerd would pull it.
    let only_masters = EXAMPLE
        .replacen("  \"registry.k8s.io/pause:3.10.2\",\n", "", 1)
        .replacen(
            "  \"ghcr.io/kube-vip/kube-vip:v1.0.1\",\n",
            "  \"ghcr.io/kube-vip/kube-vip:v1.0.1\",\n  \"registry.k8s.io/pause:3.10.2\",\n",
            1,
        );
    let Err(ConfigError::Invalid(p)) =
        config::load_str(Path::new("cluster.toml"), &only_masters, Path::new("."))
    else {
        panic!("a pause image for the masters only was accepted")
    };
    assert_problem(
        &only_masters,
        &p,
        "images",
        "registry.k8s.io/pause:3.10.2 is not listed for role worker, storage",
        "[images.kubernetes]",
    );
    // Two pause images: containerd has one sandbox image (groups are read in name order, so the node
    // group's comes second).
    let (src, p) = problems_with(
        "  \"ghcr.io/kube-vip/kube-vip:v1.0.1\",\n",
        "  \"ghcr.io/kube-vip/kube-vip:v1.0.1\",\n  \"registry.k8s.io/pause:3.10\",\n",
    );
    assert_problem(
        &src,
        &p,
        "images.node.refs[0]",
        "a second pause image registry.k8s.io/pause:3.10.2: containerd runs every pod of the cluster in one sandbox image, and images.control-plane-addons.refs[1] already lists registry.k8s.io/pause:3.10",
        "\"registry.k8s.io/pause:3.10.2\",",
    );
}

/// The example with Secure Boot on and `edit` applied: its problems (it must be refused).
fn secure_boot_problems(from: &str, to: &str) -> (String, Vec<Problem>) {
    let on = EXAMPLE.replacen("enabled = false", "enabled = true", 1);
    assert_eq!(on.matches(from).count(), 1, "{from:?}");
    let src = on.replacen(from, to, 1);
    match config::load_str(Path::new("cluster.toml"), &src, Path::new(".")) {
        Ok(_) => panic!("edit {from:?} -> {to:?} was accepted"),
        Err(ConfigError::Invalid(p)) => (src, p),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn a_secure_boot_machine_has_the_state_disk_and_init_blank_of_the_signed_command_line() {
    // The example as shipped, with Secure Boot on: every machine matches the role-level values.
    let on = EXAMPLE.replacen("enabled = false", "enabled = true", 1);
    let c = config::load_str(Path::new("cluster.toml"), &on, Path::new(".")).unwrap();
    assert_eq!(c.secure_boot.state_disk, "/dev/vda");
    assert!(c.secure_boot.init_blank);
    // Another role-level state disk: each Secure Boot machine's own is refused, naming both and the ways out.
    let (src, p) = secure_boot_problems(
        "state_disk = \"/dev/vda\"                     # default",
        "state_disk = \"/dev/sda\"                     # default",
    );
    assert_problem(
        &src,
        &p,
        "machines[0].state_disk",
        "differs from [secure_boot] state_disk = \"/dev/sda\"",
        "state_disk = \"/dev/vda\"",
    );
    assert!(
        p.iter()
            .any(|p| p.message.contains("`secure_boot = false`")),
        "{p:#?}"
    );
    let (src, p) = secure_boot_problems(
        "init_blank = true                           # default false",
        "init_blank = false                          # default false",
    );
    assert_problem(
        &src,
        &p,
        "machines[0].init_blank",
        "differs from [secure_boot] init_blank = false",
        "init_blank = true",
    );
    // A word the initrd could not take as a state disk.
    let (src, p) = secure_boot_problems(
        "state_disk = \"/dev/vda\"                     # default",
        "state_disk = \"/dev/vda=1\"                   # default",
    );
    assert_problem(
        &src,
        &p,
        "secure_boot.state_disk",
        "safe characters",
        "/dev/vda=1",
    );
}

/// The example with every `(from, to)` edit applied (each matching once); the problems.
fn problems_with_all(edits: &[(&str, &str)]) -> (String, Vec<Problem>) {
    let mut src = EXAMPLE.to_string();
    for (from, to) in edits {
        assert_eq!(src.matches(from).count(), 1, "test edit {from:?}");
        src = src.replacen(from, to, 1);
    }
    match config::load_str(Path::new("cluster.toml"), &src, Path::new(".")) {
        Ok(_) => panic!("edits {edits:?} were accepted"),
        Err(ConfigError::Invalid(p)) => (src, p),
        Err(e) => panic!("unexpected error {e}"),
    }
}

const POOL_OFF: &str = "# unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.250\" }";
const POOL_ON: &str = "unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.250\" }";

#[test]
fn relay_subnets_are_other_networks_with_their_router_and_pool_inside() {
    let relay = "[[network.relay_subnets]]\nsubnet = \"10.77.0.128/25\"\ngateway = \"10.77.0.129\"\n\n\
                 [[network.relay_subnets]]\nsubnet = \"10.77.8.0/24\"\ngateway = \"10.77.9.1\"\n\
                 unknown_pool = { start = \"10.77.8.10\", end = \"10.77.8.5\" }\n\n\
                 [[network.relay_subnets]]\nsubnet = \"10.77.8.128/25\"\ngateway = \"10.77.8.129\"\n\n[metallb]";
    let (src, p) = problems_with_all(&[("[metallb]", relay)]);
    assert_problem(
        &src,
        &p,
        "network.relay_subnets[0].subnet",
        "overlaps [network] subnet 10.77.0.0/24",
        "subnet = \"10.77.0.128/25\"",
    );
    assert_problem(
        &src,
        &p,
        "network.relay_subnets[1].gateway",
        "is outside 10.77.8.0/24",
        "gateway = \"10.77.9.1\"",
    );
    assert_problem(
        &src,
        &p,
        "network.relay_subnets[1].unknown_pool.end",
        "before it starts",
        "start = \"10.77.8.10\"",
    );
    assert_problem(
        &src,
        &p,
        "network.relay_subnets[2].subnet",
        "10.77.8.128/25",
        "subnet = \"10.77.8.128/25\"",
    );
    // A machine in no subnet; one at the relay subnet's gateway.
    let relay = "[[network.relay_subnets]]\nsubnet = \"10.77.8.0/24\"\ngateway = \"10.77.8.1\"\n\n[metallb]";
    let (src, p) = problems_with_all(&[
        ("[metallb]", relay),
        ("ip = \"10.77.0.31\"", "ip = \"10.77.5.31\""),
        ("ip = \"10.77.0.32\"", "ip = \"10.77.8.1\""),
    ]);
    assert_problem(
        &src,
        &p,
        "machines[5].ip",
        "or a [[network.relay_subnets]] subnet",
        "ip = \"10.77.5.31\"",
    );
    assert_problem(
        &src,
        &p,
        "machines[6].ip",
        "gateway address of the relay subnet 10.77.8.0/24",
        "ip = \"10.77.8.1\"",
    );
}

#[test]
fn replicas_on_etcd_with_a_pool_must_split_it() {
    let etcd = "[state]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]";
    let (src, p) = problems_with_all(&[(POOL_OFF, POOL_ON), ("[state]\nbackend = \"dir\"", etcd)]);
    assert_problem(
        &src,
        &p,
        "state.dhcp_replicas",
        "dhcp_replicas = [\"10.77.0.1\"",
        "[state]",
    );
    let listed = format!("{etcd}\ndhcp_replicas = [\"10.77.0.5\", \"10.77.0.6\", \"10.77.0.5\"]");
    let (src, p) =
        problems_with_all(&[(POOL_OFF, POOL_ON), ("[state]\nbackend = \"dir\"", &listed)]);
    assert_problem(
        &src,
        &p,
        "state.dhcp_replicas[2]",
        "listed twice",
        "dhcp_replicas = [",
    );
    let listed = format!("{etcd}\ndhcp_replicas = [\"10.77.0.5\", \"10.77.0.6\"]");
    let (src, p) =
        problems_with_all(&[(POOL_OFF, POOL_ON), ("[state]\nbackend = \"dir\"", &listed)]);
    assert_problem(
        &src,
        &p,
        "state.dhcp_replicas",
        "[network] server 10.77.0.1 is not in the list",
        "dhcp_replicas = [",
    );
    // Listed, and this server among them: its block of the pool.
    let listed = format!("{etcd}\ndhcp_replicas = [\"10.77.0.5\", \"10.77.0.1\"]");
    let src =
        EXAMPLE
            .replacen(POOL_OFF, POOL_ON, 1)
            .replacen("[state]\nbackend = \"dir\"", &listed, 1);
    let c = config::load_str(Path::new("cluster.toml"), &src, Path::new(".")).expect("valid");
    let share = c.network.pool_share;
    assert_eq!((share.index, share.count), (1, 2));
    let mine = c
        .network
        .unknown_pool
        .as_ref()
        .unwrap()
        .share(share)
        .unwrap();
    assert_eq!(
        (mine.start.to_string(), mine.end.to_string()),
        ("10.77.0.225".into(), "10.77.0.250".into())
    );
}
