//! Container images as pinned artifacts, end to end against a local registry (Debian's docker-registry on
//! loopback, images built here from busybox-static with umoci and skopeo; nothing from a public registry):
//! `imgbuild fetch` pulls multi-arch images into the blob cache and locks their digests, a second fetch is a
//! no-op, a tampered blob is refused, a missing image and a moved tag are named with the fix, and
//! `imgbuild bundle export/import` carries cache and lock to an empty cache with the same lock and image ids.

mod image_fixture;
mod oci_registry;

use std::process::Command;

use image_fixture::{Fixture, mirrored};
use imgbuild::image::lock::Lock;
use imgbuild::image::oci::blobs::Blobs;
use oci_registry::Registry;

fn run(f: &Fixture, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
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

/// The mirrored example cluster (file:// artifacts, its own cache) with `[images.test]` listing `refs` for
/// the workers.
fn cluster_with(refs: &[String]) -> Fixture {
    let (f, _) = mirrored();
    let mut text = std::fs::read_to_string(&f.config).unwrap();
    text += &format!(
        "\n[images.test]\nroles = [\"worker\"]\nrefs = [{}]\n",
        refs.iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::fs::write(&f.config, text).unwrap();
    f
}

/// Another site with `f`'s cluster.toml (same artifact sources and images) but an empty cache and no lock.
fn other_site(f: &Fixture) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let own = f.dir.path().join("own-cache").display().to_string();
    let text = std::fs::read_to_string(&f.config).unwrap();
    assert!(text.contains(&own), "the fixture has its own cache");
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        text.replace(&own, &dir.path().join("cache").display().to_string()),
    )
    .unwrap();
    Fixture {
        dir,
        config,
        profiles: f.profiles.clone(),
    }
}

fn lock_of(f: &Fixture) -> Lock {
    Lock::load(&f.dir.path().join("imgbuild.lock")).unwrap()
}

#[test]
fn fetch_locks_multi_arch_images_a_second_fetch_is_a_no_op_and_a_bundle_carries_cache_and_lock() {
    let reg = Registry::start();
    let arches = oci_registry::arches();
    let arch_arg = arches.join(",");
    let (box_index, box_images) = reg.push_multiarch("test/box", "v1", "box-v1");
    let (tool_index, tool_images) = reg.push_multiarch("test/tool", "v1", "tool-v1");
    let box_ref = format!("{}/test/box:v1", reg.host);
    let tool_ref = format!("{}/test/tool:v1", reg.host);
    let f = cluster_with(&[box_ref.clone(), tool_ref.clone()]);

    // First fetch: every image for every architecture, from the index to the platform's manifest.
    let (ok, out, err) = run(&f, &["fetch", "--arch", &arch_arg]);
    assert!(ok, "{out}{err}");
    let n = 2 * arches.len();
    assert!(
        out.contains(&format!("{n} images verified ({n} downloaded)")),
        "{out}"
    );
    let lock = lock_of(&f);
    assert_eq!(lock.images.len(), n, "{:?}", lock.images);
    for (reference, index, images) in [
        (&box_ref, &box_index, &box_images),
        (&tool_ref, &tool_index, &tool_images),
    ] {
        for (arch, manifest, config) in images {
            let e = lock
                .image(reference, arch)
                .unwrap_or_else(|| panic!("no lock entry for {reference} {arch}"));
            assert_eq!(e.index.as_ref(), Some(index), "{e:?}");
            assert_eq!(&e.manifest, manifest, "{e:?}");
            assert_eq!(&e.config, config, "{e:?}");
        }
    }
    let cache = f.cluster().paths.cache;
    let blobs = Blobs::under(&cache);
    for (_, m, c) in box_images.iter().chain(&tool_images) {
        assert!(blobs.verified(m) && blobs.verified(c));
    }
    let lock_text = std::fs::read_to_string(f.dir.path().join("imgbuild.lock")).unwrap();

    // Again: nothing downloaded, the lock unchanged; offline: the cache alone checks out against the lock.
    let (ok, out, err) = run(&f, &["fetch", "--arch", &arch_arg]);
    assert!(
        ok && out.contains(&format!("{n} images verified (0 downloaded)")),
        "{out}{err}"
    );
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("imgbuild.lock")).unwrap(),
        lock_text
    );
    let (ok, out, err) = run(&f, &["fetch", "--offline", "--arch", &arch_arg]);
    assert!(ok, "{out}{err}");

    // Bundle: exported twice, the same bytes; imported into an empty cache beside no lock: the same lock and
    // the same image ids, and an offline fetch there succeeds.
    let bundle = f.dir.path().join("site.bundle");
    let (ok, out, err) = run(&f, &["bundle", "export", bundle.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let first = std::fs::read(&bundle).unwrap();
    let (ok, _, err) = run(&f, &["bundle", "export", bundle.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        std::fs::read(&bundle).unwrap() == first,
        "bundle export is not reproducible"
    );
    let sha = out
        .lines()
        .find_map(|l| l.strip_prefix("bundle sha256 "))
        .unwrap()
        .to_string();
    let g = other_site(&f);
    // A damaged copy is refused before anything enters the lock.
    let mut damaged = first.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let bad = g.dir.path().join("damaged.bundle");
    std::fs::write(&bad, &damaged).unwrap();
    let (ok, _, err) = run(&g, &["bundle", "import", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("damaged"), "{err}");
    assert!(!g.dir.path().join("imgbuild.lock").exists());
    let (ok, out, err) = run(
        &g,
        &[
            "bundle",
            "import",
            bundle.to_str().unwrap(),
            "--sha256",
            &sha,
        ],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(g.dir.path().join("imgbuild.lock")).unwrap(),
        lock_text,
        "the imported lock differs"
    );
    let ids = |l: &Lock| -> Vec<(String, String, String)> {
        l.images
            .iter()
            .map(|e| (e.reference.clone(), e.arch.clone(), e.config.clone()))
            .collect()
    };
    assert_eq!(ids(&lock_of(&g)), ids(&lock));
    drop(reg);
    // The registry is gone: the disconnected site has everything.
    let (ok, out, err) = run(&g, &["fetch", "--offline", "--arch", &arch_arg]);
    assert!(
        ok && out.contains(&format!("{n} images verified (0 downloaded)")),
        "{out}{err}"
    );
}

#[test]
fn a_tampered_blob_is_refused_a_missing_image_is_named_and_a_moved_tag_is_reported_against_the_lock()
 {
    let reg = Registry::start();
    let (_, images) = reg.push_multiarch("test/box", "v1", "box-v1");
    let box_ref = format!("{}/test/box:v1", reg.host);

    // The registry's copy of the amd64 layer is changed on disk: the download does not hash to its digest.
    let (_, manifest, _) = images.iter().find(|(a, _, _)| a == "amd64").unwrap();
    let m: serde_json::Value = serde_json::from_slice(&reg.get(
        &format!("/v2/test/box/manifests/{manifest}"),
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let file = reg.blob_file(&layer);
    let original = std::fs::read(&file).unwrap();
    let mut bad = original.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    std::fs::write(&file, &bad).unwrap();
    let f = cluster_with(std::slice::from_ref(&box_ref));
    let (ok, out, err) = run(&f, &["fetch", "--arch", "amd64"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&box_ref) && err.contains("tampered") && err.contains(&layer),
        "{err}"
    );
    assert!(
        !Blobs::under(&f.cluster().paths.cache).path(&layer).exists(),
        "a tampered blob entered the cache"
    );
    assert!(lock_of(&f).image(&box_ref, "amd64").is_none());
    std::fs::write(&file, &original).unwrap();
    let (ok, out, err) = run(&f, &["fetch", "--arch", "amd64"]);
    assert!(ok, "{out}{err}");
    let locked = lock_of(&f).image(&box_ref, "amd64").unwrap().clone();

    // An image the registry does not have: named, with where to fix it.
    let none_ref = format!("{}/test/none:v1", reg.host);
    let g = cluster_with(std::slice::from_ref(&none_ref));
    let (ok, _, err) = run(&g, &["fetch", "--arch", "amd64"]);
    assert!(
        !ok && err.contains(&none_ref) && err.contains("[images.test]"),
        "{err}"
    );

    // The tag moves to other content: reported against the lock, nothing changed.
    let (new_index, _) = reg.push_multiarch("test/box", "v1", "box-v2");
    let lock_text = std::fs::read_to_string(f.dir.path().join("imgbuild.lock")).unwrap();
    let (ok, _, err) = run(&f, &["fetch", "--arch", "amd64"]);
    assert!(!ok, "a moved tag must fail the fetch");
    assert!(
        err.contains("TAG MOVED")
            && err.contains(&box_ref)
            && err.contains(locked.index.as_deref().unwrap())
            && err.contains(&new_index),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(f.dir.path().join("imgbuild.lock")).unwrap(),
        lock_text
    );
}

/// Debian's containerd on a private socket and root under `dir`, started by PID, stopped on drop.
struct Containerd {
    child: std::process::Child,
    sock: std::path::PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    fn start(dir: &std::path::Path) -> Containerd {
        let sock = dir.join("containerd.sock");
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{1}\"\n",
                dir.display(),
                sock.display()
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd runs (apt-get install containerd runc)");
        let c = Containerd { child, sock };
        let t0 = std::time::Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "containerd did not answer within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        c
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap()
    }
}

#[test]
fn root_a_baked_image_layout_imports_into_real_containerd_which_runs_a_container_from_it() {
    use imgbuild::config::{Arch, Role};
    use imgbuild::image::oci::layout;
    let reg = Registry::start();
    let (index, _) = reg.push_multiarch("test/box", "v1", "hello from the baked image");
    let box_ref = format!("{}/test/box:v1", reg.host);
    let f = cluster_with(std::slice::from_ref(&box_ref));
    let (ok, out, err) = run(&f, &["fetch", "--arch", "amd64"]);
    assert!(ok, "{out}{err}");
    // Stop the registry: from here on nothing can be pulled.
    drop(reg);

    // The layout exactly as the build bakes it into a worker's root, and the import script the worker runs.
    let cluster = f.cluster();
    let (images, missing) = layout::role_images(&cluster, Role::Worker, Arch::Amd64, true).unwrap();
    assert!(
        missing.is_empty() && images.len() == 1,
        "{images:?} {missing:?}"
    );
    let root = f.dir.path().join("root");
    layout::write(&cluster.paths.cache, &images, &root).unwrap();
    let profile =
        imgbuild::config::profile::resolve(&cluster.paths.profiles, Role::Worker).unwrap();
    let tree = imgbuild::image::tree::render(
        &cluster,
        &profile,
        &imgbuild::template::engine_for(&cluster),
    )
    .unwrap();
    let script = tree
        .files
        .iter()
        .find(|x| x.path == "/usr/lib/imgbuild/import-images")
        .expect("the worker carries the import script");
    let script_path = f.dir.path().join("import-images");
    std::fs::write(&script_path, &script.contents).unwrap();
    let reports = f.dir.path().join("reports");
    let reporter = f.dir.path().join("report");
    std::fs::write(
        &reporter,
        format!(
            "#!/bin/sh\nprintf '%s|%s\\n' \"$1\" \"$2\" >>{}\n",
            reports.display()
        ),
    )
    .unwrap();
    for p in [&script_path, &reporter] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    let cdir = tempfile::tempdir().unwrap();
    let ctd = Containerd::start(cdir.path());
    let out = Command::new("sh")
        .arg(&script_path)
        .env(
            "IMGBUILD_IMAGES_DIR",
            root.join("usr/share/imgbuild/images"),
        )
        .env("IMGBUILD_REPORT", &reporter)
        .env("CONTAINERD_ADDRESS", &ctd.sock)
        .output()
        .unwrap();
    let reported = std::fs::read_to_string(&reports).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}{}{reported}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        reported.starts_with("images-imported|1 images from "),
        "{reported}"
    );
    // Known to containerd by the name and pointing at the locked index.
    let ls = ctd.ctr(&["-n", "k8s.io", "images", "ls"]);
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&box_ref) && l.contains(&index)),
        "{ls}"
    );
    // The crictl stand-in answers `inspecti` from this real containerd as crictl does (the first master asks it
    // before deciding to pull kube-vip's image): present, its status with the locked image id; absent, crictl's
    // "no such image" and exit 1.
    let standins =
        imgbuild::image::standins::generate(&cluster, &imgbuild::template::engine_for(&cluster))
            .unwrap();
    let crictl = standins
        .files
        .iter()
        .find(|x| x.path == "/usr/local/bin/crictl")
        .expect("the crictl stand-in");
    let crictl_path = f.dir.path().join("crictl");
    std::fs::write(&crictl_path, &crictl.contents).unwrap();
    let inspecti = |r: &str| {
        Command::new("sh")
            .arg(&crictl_path)
            .args(["inspecti", "-q", r])
            .env("CONTAINERD_ADDRESS", &ctd.sock)
            .env("IMGBUILD_ROOT", f.dir.path())
            .output()
            .unwrap()
    };
    let present = inspecti(&box_ref);
    let status: serde_json::Value = serde_json::from_slice(&present.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&present.stdout),
            String::from_utf8_lossy(&present.stderr)
        )
    });
    assert!(present.status.success());
    let lock = Lock::load(&cluster.paths.lock).unwrap();
    let locked = lock.image(&box_ref, "amd64").unwrap();
    assert_eq!(status["status"]["id"], locked.config.as_str(), "{status}");
    assert_eq!(status["status"]["repoTags"][0], box_ref.as_str());
    let name = box_ref.rsplit_once(':').unwrap().0;
    assert_eq!(
        status["status"]["repoDigests"][0],
        format!("{name}@{index}").as_str()
    );
    let none_ref = format!("{name}:absent");
    let absent = inspecti(&none_ref);
    let err = String::from_utf8_lossy(&absent.stderr);
    assert_eq!(absent.status.code(), Some(1), "{err}");
    assert!(
        absent.stdout.is_empty()
            && err.contains(&format!(
                "level=fatal msg=\"no such image \\\"{none_ref}\\\" present\""
            )),
        "{err}"
    );

    // runc runs a container from it, with the registry gone.
    let run_out = ctd.ctr(&["-n", "k8s.io", "run", "--rm", &box_ref, "imgbuild-test"]);
    assert!(
        run_out.status.success()
            && String::from_utf8_lossy(&run_out.stdout).contains("hello from the baked image"),
        "{}{}",
        String::from_utf8_lossy(&run_out.stdout),
        String::from_utf8_lossy(&run_out.stderr)
    );
}
