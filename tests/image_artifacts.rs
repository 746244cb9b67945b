//! `imgbuild fetch`, `imgbuild.lock` and the build's refusal to use what is not fetched and verified, against a
//! `file://` mirror the test builds (these machines cannot reach the upstream download sites).

mod image_fixture;

use std::process::Command;

use image_fixture::{Fixture, mirrored, own_cache, sha};
use imgbuild::config::Arch;
use imgbuild::image::artifacts;
use imgbuild::image::lock::Lock;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgbuild"))
}

fn run(f: &Fixture, args: &[&str]) -> (bool, String, String) {
    let out = bin()
        .arg("--config")
        .arg(&f.config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fetch_verifies_caches_and_locks_then_a_changed_file_is_a_loud_lock_mismatch() {
    let (f, m) = mirrored();
    let (ok, out, err) = run(&f, &["fetch"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("10 artifacts verified"), "{out}");
    assert!(
        out.contains("NOTE: upstream publishes no checksum for cni-manifest"),
        "trust on first fetch must be said: {out}"
    );
    let lock = std::fs::read_to_string(f.dir.path().join("imgbuild.lock")).unwrap();
    let kubeadm = std::fs::read(m.join("kubeadm")).unwrap();
    assert!(lock.contains(&sha(&kubeadm)), "{lock}");
    assert!(
        lock.contains("verified = \"trust-on-first-fetch\""),
        "{lock}"
    );
    assert!(lock.contains("verified = \"upstream\""), "{lock}");
    // Content-addressed cache.
    let cached = f
        .cluster()
        .paths
        .cache
        .join("artifacts")
        .join(sha(&kubeadm));
    assert_eq!(std::fs::read(cached).unwrap(), kubeadm);

    // Again: nothing downloaded, the lock unchanged.
    let (ok, out, _) = run(&f, &["fetch"]);
    assert!(ok && out.matches("cached,").count() == 10, "{out}");
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("imgbuild.lock")).unwrap(),
        lock
    );

    // The mirror's kubeadm changes (checksum file updated too, so only the lock can catch it).
    let new = b"#!/bin/sh\necho tampered\n";
    std::fs::write(m.join("kubeadm"), new).unwrap();
    std::fs::write(m.join("kubeadm.sha256"), format!("{}\n", sha(new))).unwrap();
    // Evict the cached copy so fetch must download again.
    std::fs::remove_file(
        f.cluster()
            .paths
            .cache
            .join("artifacts")
            .join(sha(&kubeadm)),
    )
    .unwrap();
    let (ok, _, err) = run(&f, &["fetch"]);
    assert!(!ok);
    assert!(err.contains("LOCK MISMATCH"), "{err}");
    assert!(
        err.contains(&sha(&kubeadm)) && err.contains(&sha(new)),
        "both digests: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("imgbuild.lock")).unwrap(),
        lock,
        "a mismatch never rewrites the lock"
    );
}

#[test]
fn fetch_refuses_a_file_that_does_not_match_upstreams_checksum() {
    let (f, m) = mirrored();
    std::fs::write(m.join("runc.amd64"), b"corrupt").unwrap();
    let (ok, _, err) = run(&f, &["fetch"]);
    assert!(!ok);
    assert!(
        err.contains("artifact runc") && err.contains("upstream's checksum file says"),
        "{err}"
    );
    assert!(err.contains(&sha(b"corrupt")), "{err}");
}

#[test]
fn build_without_fetch_names_the_missing_artifact_and_the_command_and_builds_nothing() {
    let f = Fixture::new(|s| s);
    // A fresh cache so the check is visible: nothing may be built before the error.
    let cache = own_cache(&f);
    let (ok, _, err) = run(&f, &["profile", "worker"]);
    assert!(!ok);
    assert!(err.contains("artifact cni-manifest"), "{err}");
    assert!(
        err.contains("is not fetched") && err.contains("imgbuild fetch"),
        "{err}"
    );
    assert!(
        !cache.join("base").exists(),
        "nothing built before the artifact check"
    );

    // Locked but evicted from the cache: still an error naming it.
    let (f, _m) = mirrored();
    let (ok, out, err) = run(&f, &["fetch"]);
    assert!(ok, "{out}{err}");
    let lock = imgbuild::image::lock::Lock::load(&f.dir.path().join("imgbuild.lock")).unwrap();
    let e = lock.get("crictl").unwrap();
    std::fs::remove_file(f.cluster().paths.cache.join("artifacts").join(&e.sha256)).unwrap();
    let err = imgbuild::image::artifacts::resolve(&f.cluster(), Arch::Amd64)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("artifact crictl") && err.contains("imgbuild fetch"),
        "{err}"
    );
}

#[test]
fn standins_need_a_template_per_artifact_and_say_which_is_missing() {
    let f = Fixture::new(|s| s);
    std::fs::remove_file(f.profiles.join("standins/runc.sh.j2")).unwrap();
    let (ok, _, err) = run(&f, &["profile", "worker", "--standins"]);
    assert!(!ok);
    assert!(err.contains("profiles/standins/runc.sh.j2"), "{err}");
}

#[test]
fn real_artifacts_install_where_the_node_expects_them() {
    let (f, m) = mirrored();
    let (ok, out, err) = run(&f, &["fetch"]);
    assert!(ok, "{out}{err}");
    let root = tempfile::tempdir().unwrap();
    for a in imgbuild::image::artifacts::resolve(&f.cluster(), Arch::Amd64).unwrap() {
        imgbuild::image::install::install_real(root.path(), &a.name, &a.path).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [
        ("usr/bin/kubeadm", 0o755),
        ("usr/bin/kubelet", 0o755),
        ("usr/bin/kubectl", 0o755),
        ("usr/local/sbin/runc", 0o755),
        ("usr/local/bin/containerd", 0o755),
        ("usr/local/bin/containerd-shim-runc-v2", 0o755),
        ("usr/local/bin/crictl", 0o755),
        ("opt/cni/bin/bridge", 0o755),
        ("usr/share/imgbuild/manifests/metallb-manifest.yaml", 0o644),
    ] {
        let md = std::fs::metadata(root.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(md.permissions().mode() & 0o777, mode, "{p}");
    }
    assert_eq!(
        std::fs::read(root.path().join("usr/bin/kubeadm")).unwrap(),
        std::fs::read(m.join("kubeadm")).unwrap()
    );
}

#[test]
fn arch_placeholders_fetch_and_lock_one_file_per_architecture() {
    let (f, m) = mirrored();
    // runc gets one file per architecture, like the example cluster's `runc.{arch}`.
    let arm = b"#!/bin/sh\necho mirror runc arm64\n";
    let amd = std::fs::read(m.join("runc.amd64")).unwrap();
    std::fs::write(m.join("runc.arm64"), arm).unwrap();
    std::fs::write(
        m.join("runc.sha256sum"),
        format!("{}  runc.arm64\n{}  runc.amd64\n", sha(arm), sha(&amd)),
    )
    .unwrap();
    let text = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(&f.config, text.replace("/runc.amd64\"", "/runc.{arch}\"")).unwrap();
    let cluster = f.cluster();
    let lock_path = f.dir.path().join("imgbuild.lock");
    let runc_entries = || {
        Lock::load(&lock_path)
            .unwrap()
            .artifacts
            .into_iter()
            .filter(|e| e.name == "runc")
            .map(|e| {
                (
                    e.url.rsplit('/').next().unwrap().to_string(),
                    e.version,
                    e.sha256,
                )
            })
            .collect::<Vec<_>>()
    };

    // The example's machines are amd64: `imgbuild fetch` fetches amd64's runc only.
    let fetched = artifacts::fetch_all(&cluster, |_| {}).unwrap();
    assert_eq!(fetched.len(), 10);
    assert_eq!(
        fetched.iter().find(|x| x.name == "runc").unwrap().arch,
        Some(Arch::Amd64)
    );
    assert_eq!(
        fetched
            .iter()
            .find(|x| x.name == "cni-manifest")
            .unwrap()
            .arch,
        None,
        "no {{arch}}: one file for every architecture"
    );
    let err = artifacts::resolve(&cluster, Arch::Arm64)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("artifact runc (1.3.3, arm64) is not fetched")
            && err.contains("imgbuild fetch")
            && err.contains("no machine is arm64"),
        "{err}"
    );

    // Both architectures: two lock entries for runc, one for everything else.
    let fetched = artifacts::fetch_all_for(&cluster, &[Arch::Amd64, Arch::Arm64], |_| {}).unwrap();
    assert_eq!(fetched.len(), 11);
    assert_eq!(
        runc_entries(),
        [
            ("runc.amd64".into(), "1.3.3".into(), sha(&amd)),
            ("runc.arm64".into(), "1.3.3".into(), sha(arm)),
        ]
    );
    let lock = Lock::load(&lock_path).unwrap();
    assert_eq!(
        lock.artifacts
            .iter()
            .filter(|e| e.name == "kubeadm")
            .count(),
        1
    );
    let runc = |arch| {
        artifacts::resolve(&cluster, arch)
            .unwrap()
            .into_iter()
            .find(|r| r.name == "runc")
            .unwrap()
    };
    assert_eq!(std::fs::read(runc(Arch::Arm64).path).unwrap(), arm);
    assert_eq!(std::fs::read(runc(Arch::Amd64).path).unwrap(), amd);
    let (da, db) = (
        artifacts::locked_digests(&cluster, Arch::Amd64).unwrap(),
        artifacts::locked_digests(&cluster, Arch::Arm64).unwrap(),
    );
    let differ: Vec<&String> = da.keys().filter(|k| da[*k] != db[*k]).collect();
    assert_eq!(differ, ["runc"]);

    // Fetching one architecture again leaves the other's entry alone; nothing is downloaded.
    let again = artifacts::fetch_all_for(&cluster, &[Arch::Amd64], |_| {}).unwrap();
    assert!(again.iter().all(|x| x.cached && !x.lock_updated));
    assert_eq!(runc_entries().len(), 2);

    // A new version re-locks the architecture fetched; the other one's entry is then stale and says so.
    let text = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(
        &f.config,
        text.replace(
            "[artifacts.runc]\nversion = \"1.3.3\"",
            "[artifacts.runc]\nversion = \"1.3.4\"",
        ),
    )
    .unwrap();
    let cluster = f.cluster();
    artifacts::fetch_all_for(&cluster, &[Arch::Amd64], |_| {}).unwrap();
    assert_eq!(
        runc_entries(),
        [
            ("runc.amd64".into(), "1.3.4".into(), sha(&amd)),
            ("runc.arm64".into(), "1.3.3".into(), sha(arm)),
        ]
    );
    let err = artifacts::resolve(&cluster, Arch::Arm64)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("records version 1.3.3") && err.contains("asks for 1.3.4"),
        "{err}"
    );
}

#[test]
fn fetch_for_an_arch_the_mirror_lacks_names_it_and_the_table_shows_each_file_s_arch() {
    let (f, _m) = mirrored();
    // runc becomes a per-architecture artifact; the test mirror holds only runc.amd64.
    let text = std::fs::read_to_string(&f.config).unwrap();
    assert!(text.contains("/runc.amd64\""), "fixture changed");
    std::fs::write(&f.config, text.replace("/runc.amd64\"", "/runc.{arch}\"")).unwrap();
    let (ok, out, err) = run(&f, &["fetch", "--arch", "arm64"]);
    assert!(!ok, "{out}");
    assert!(err.contains("runc.arm64"), "{err}");
    let (ok, out, err) = run(&f, &["fetch", "--arch", "amd64"]);
    assert!(ok, "{out}{err}");
    let runc = out.lines().find(|l| l.starts_with("runc ")).unwrap();
    assert!(runc.contains(" amd64 "), "{runc}");
    let kubeadm = out.lines().find(|l| l.starts_with("kubeadm ")).unwrap();
    assert!(kubeadm.contains(" any "), "{kubeadm}");
    let (ok, _, err) = run(&f, &["fetch", "--arch", "riscv64"]);
    assert!(
        !ok && err.contains("valid architectures are amd64, arm64"),
        "{err}"
    );
}
