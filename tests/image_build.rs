//! Building real Debian images (mmdebstrap, mkinitramfs, mksquashfs; needs root for chroot): reproducibility,
//! immutability, the caches, stand-ins vs real artifacts, and the secret scan. One test checks several things
//! so the expensive builds are shared; the Debian base comes from the run's shared cache.

mod image_fixture;
mod oci_registry;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use image_fixture::{Fixture, mirrored, scan_tree, unpack_initrd};
use imgbuild::config::{Arch, Role};
use imgbuild::image::build::{self, Options, Report};
use imgbuild::image::manifest::{INITRD, KERNEL, MANIFEST, ROOTFS, UKI};
use imgbuild::image::store::{self, DirStore, ImageStore};

fn standins() -> Options {
    Options {
        standins: true,
        progress: false,
    }
}

fn build_worker(f: &Fixture, o: &Options) -> Report {
    build::build(&f.cluster(), Role::Worker, o).unwrap()
}

fn unsquash(img: &Path, dir: &Path) {
    let st = Command::new("unsquashfs")
        .args(["-no-progress", "-quiet", "-d"])
        .arg(dir)
        .arg(img)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A db key and certificate (PEM) for signing UKIs, made with openssl in `dir`: the same pair for several
/// fixtures, so their signed UKIs can be compared byte for byte.
fn db_key_pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (key, cert) = (dir.join("db.key"), dir.join("db.crt"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .args(["-subj", "/CN=imgbuild test db"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req");
    (key, cert)
}

/// `cluster.toml` text with Secure Boot on, signed by `key`/`cert`: every image then carries a signed UKI.
fn with_secure_boot(text: String, key: &Path, cert: &Path) -> String {
    let out = text.replacen(
        "[secure_boot]\nenabled = false",
        &format!(
            "[secure_boot]\nenabled = true\ndb_key = \"{}\"\ndb_cert = \"{}\"",
            key.display(),
            cert.display()
        ),
        1,
    );
    assert_ne!(
        out, text,
        "the example cluster.toml's [secure_boot] changed"
    );
    out
}

#[test]
fn root_image_builds_are_reproducible_immutable_cached_and_secret_free() {
    image_fixture::yield_to_the_lab_chain();
    // 1. A stand-in build with Secure Boot on (the image carries a signed UKI), then the same inputs into a
    //    second, empty store: same bytes, same id — the signed UKI included (same db key).
    let keys = tempfile::tempdir().unwrap();
    let (db_key, db_cert) = db_key_pair(keys.path());
    let a = Fixture::new(|s| with_secure_boot(s, &db_key, &db_cert));
    let ra = build_worker(&a, &standins());
    assert!(!ra.cached);
    let b = Fixture::new(|s| with_secure_boot(s, &db_key, &db_cert));
    let rb = build_worker(&b, &standins());
    assert!(
        !rb.cached,
        "a different store must not reuse the other's image"
    );
    assert!(
        rb.stages.iter().any(|s| s.name == "squashfs"),
        "really rebuilt: {:?}",
        rb.stages
    );
    assert_eq!(ra.id, rb.id, "same inputs, same id");
    for f in [KERNEL, INITRD, ROOTFS, UKI, MANIFEST] {
        assert_eq!(
            std::fs::read(ra.dir.join(f)).unwrap(),
            std::fs::read(rb.dir.join(f)).unwrap(),
            "{f} differs between two builds of the same inputs"
        );
    }
    let m = DirStore::new(&a.images()).manifest(&ra.id).unwrap();
    assert!(m.standins);
    // The boot applications' Authenticode digests, recorded at build (what TPM attestation expects): part of
    // the manifest, so reproducible with it.
    for f in [KERNEL, UKI] {
        let pe = std::fs::read(ra.dir.join(f)).unwrap();
        let d = hex::encode(imgbuild::image::authenticode::sha256(&pe).unwrap());
        assert_eq!(m.boot_apps.get(f), Some(&d), "{f}: {:?}", m.boot_apps);
    }
    assert_eq!(m.inputs.packages.get("busybox").map(|_| ()), Some(()));
    assert!(m.inputs.packages.contains_key("linux-image-amd64"));
    assert!(
        m.inputs
            .artifacts
            .values()
            .all(|d| d.starts_with("standin:"))
    );

    // 2. Warm: nothing changed → the cached image, no stage runs (the CLI says so and names it).
    let out = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("--config")
        .arg(&a.config)
        .args(["profile", "worker", "--standins"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "worker image {} (amd64): up to date (cached",
            ra.id
        )),
        "{text}"
    );
    assert!(
        text.contains("STAND-INS"),
        "the output says plainly it is a stand-in image: {text}"
    );

    // 3. Immutable: forcing a rebuild into the same store leaves the existing image untouched.
    let before: Vec<(u64, i64)> = [KERNEL, INITRD, ROOTFS, MANIFEST]
        .iter()
        .map(|f| {
            let md = std::fs::metadata(ra.dir.join(f)).unwrap();
            (md.ino(), md.mtime())
        })
        .collect();
    std::fs::remove_dir_all(a.cluster().paths.cache.join("index")).ok();
    let again = build_worker(&a, &standins());
    assert!(!again.cached && again.existed && again.id == ra.id);
    let after: Vec<(u64, i64)> = [KERNEL, INITRD, ROOTFS, MANIFEST]
        .iter()
        .map(|f| {
            let md = std::fs::metadata(ra.dir.join(f)).unwrap();
            (md.ino(), md.mtime())
        })
        .collect();
    assert_eq!(before, after, "an existing id is never rewritten");
    let leftovers: Vec<_> = std::fs::read_dir(a.images())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "staging dirs left: {leftovers:?}");
    assert!(
        store::verify(&DirStore::new(&a.images()), &ra.id)
            .unwrap()
            .iter()
            .all(|c| c.ok)
    );
    // verify catches a changed file (in the second store, which nothing else reads).
    let victim = rb.dir.join(INITRD);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0xff;
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, bytes).unwrap();
    let checks = store::verify(&DirStore::new(&b.images()), &rb.id).unwrap();
    assert!(
        checks.iter().any(|c| c.file == INITRD && !c.ok),
        "{checks:?}"
    );

    // 4. A role template change rebuilds only the role layer: base and initrd come from their caches.
    let hosts = a.profiles.join("base/hosts.j2");
    let mut t = std::fs::read_to_string(&hosts).unwrap();
    t.push_str("# changed by the test\n");
    std::fs::write(&hosts, t).unwrap();
    let rc = build_worker(&a, &standins());
    assert_ne!(rc.id, ra.id);
    assert_ne!(rc.role_layer_digest, ra.role_layer_digest);
    assert_eq!(rc.base_digest, ra.base_digest);
    let stage = |n: &str| rc.stages.iter().find(|s| s.name == n).unwrap().clone();
    assert!(
        stage("base").cached && stage("initrd").cached,
        "{:?}",
        rc.stages
    );

    // 5. The same role with the real (mirrored, fetched) artifacts: a different id, standins false, the
    // mirror's bytes in place.
    let (r, mdir) = mirrored();
    // Share the base with the other builds, keep the artifacts apart.
    let text = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(
        &r.config,
        text.replace(
            &r.dir.path().join("own-cache").display().to_string(),
            &image_fixture::shared_cache().display().to_string(),
        ),
    )
    .unwrap();
    // With a container image for the workers, served by a local registry (docs/air-gapped.md).
    let reg = oci_registry::Registry::start();
    let (box_index, _) = reg.push_multiarch("test/box", "v1", "box-v1");
    let box_ref = format!("{}/test/box:v1", reg.host);
    let text = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(
        &r.config,
        format!("{text}\n[images.test]\nroles = [\"worker\"]\nrefs = [\"{box_ref}\"]\n"),
    )
    .unwrap();
    imgbuild::image::artifacts::fetch_all(&r.cluster(), |_| {}).unwrap();
    // A real build refuses an image that is not fetched, naming it.
    let e = build::build(&r.cluster(), Role::Worker, &Options::default()).unwrap_err();
    assert!(
        e.to_string().contains(&box_ref) && e.to_string().contains("imgbuild fetch"),
        "{e}"
    );
    imgbuild::image::oci::pull::fetch_images(&r.cluster(), &[Arch::Amd64], false, |_| {}).unwrap();
    drop(reg);
    let rr = build_worker(&r, &Options::default());
    assert_ne!(rr.id, ra.id, "a stand-in build never has a real build's id");
    let mr = DirStore::new(&r.images()).manifest(&rr.id).unwrap();
    assert!(!mr.standins);
    assert_eq!(mr.inputs.images.len(), 1, "{:?}", mr.inputs.images);
    assert_eq!(mr.inputs.images[0].reference, box_ref);
    assert_eq!(mr.inputs.images[0].digest, box_index);
    // Rebuilt from the lock and the cache into an empty store (the registry is gone): the same bytes.
    std::fs::remove_dir_all(r.images()).unwrap();
    let rr2 = build_worker(&r, &Options::default());
    assert!(!rr2.cached && rr2.id == rr.id, "{} != {}", rr2.id, rr.id);

    // 6. Inside the images: stand-ins labelled, real files installed, units enabled, nothing machine-specific,
    // and no secret anywhere (squashfs, initrd, kernel, manifest).
    let tmp = tempfile::tempdir().unwrap();
    let sa = tmp.path().join("standin-root");
    unsquash(&ra.dir.join(ROOTFS), &sa);
    let kubelet = std::fs::read_to_string(sa.join("usr/bin/kubelet")).unwrap();
    assert!(
        kubelet.contains("STAND-IN") && kubelet.contains("NOT the real kubelet"),
        "{kubelet}"
    );
    assert!(sa.join("opt/cni/bin/bridge").is_file());
    assert!(
        sa.join("usr/share/imgbuild/manifests/cni-manifest.yaml")
            .is_file()
    );
    assert_eq!(
        std::fs::read(sa.join("etc/machine-id")).unwrap(),
        b"",
        "machine-id must be empty"
    );
    let iscsi = std::fs::read_to_string(sa.join("etc/iscsi/initiatorname.iscsi")).unwrap();
    assert!(
        iscsi.contains("GenerateName=yes") && !iscsi.contains("InitiatorName="),
        "{iscsi}"
    );
    assert!(
        std::fs::read_dir(sa.join("etc/ssh"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
            || !std::fs::read_dir(sa.join("etc/ssh")).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("ssh_host_"))
    );
    for unit in [
        "kubelet.service",
        "containerd.service",
        "imgbuild-report-systemd.service",
        "iscsid.service",
    ] {
        let wanted = ["multi-user.target.wants", "sysinit.target.wants"]
            .iter()
            .any(|t| {
                sa.join("etc/systemd/system")
                    .join(t)
                    .join(unit)
                    .symlink_metadata()
                    .is_ok()
            });
        assert!(wanted, "{unit} is not enabled by the preset");
    }
    assert!(!sa.join("boot").read_dir().unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("initrd.img")
    }));
    // The base is built with dpkg's force-unsafe-io (base::BaseSpec::command); the option must not stay in the
    // image, where a later dpkg run would skip its syncs.
    let dpkg_cfg = sa.join("etc/dpkg/dpkg.cfg.d");
    assert!(!sa.join(imgbuild::image::base::DPKG_OPTS).exists());
    for e in std::fs::read_dir(&dpkg_cfg).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(!text.contains("unsafe-io"), "{} says {text}", p.display());
    }
    let sr = tmp.path().join("real-root");
    unsquash(&rr.dir.join(ROOTFS), &sr);
    // Nothing of the build host (mmdebstrap copies its resolv.conf and hostname into the base): the resolver
    // and the time servers are cluster.toml's.
    let cluster = a.cluster();
    for root in [&sa, &sr] {
        let found = build_host_values_in(root, &cluster);
        assert!(
            found.is_empty(),
            "build-host values in the image: {found:?}"
        );
    }
    assert_eq!(
        std::fs::read(sr.join("usr/bin/kubeadm")).unwrap(),
        std::fs::read(mdir.join("kubeadm")).unwrap()
    );
    assert!(sr.join("usr/local/bin/containerd-shim-runc-v2").is_file());
    // The baked OCI layout: named for containerd, pointing at the locked index, with the amd64 blobs.
    let layout = sr.join("usr/share/imgbuild/images");
    let index = std::fs::read_to_string(layout.join("index.json")).unwrap();
    assert!(
        index.contains(&format!("\"io.containerd.image.name\": \"{box_ref}\""))
            && index.contains(&box_index),
        "{index}"
    );
    let hex = box_index.strip_prefix("sha256:").unwrap();
    assert!(layout.join("blobs/sha256").join(hex).is_file());
    assert!(layout.join("oci-layout").is_file());

    let ia = tmp.path().join("initrd");
    unpack_initrd(&ra.dir.join(INITRD), &ia);
    assert!(
        ia.join("scripts/imgbuild").is_file(),
        "BOOT=imgbuild script in the initrd"
    );
    assert!(ia.join("usr/lib/imgbuild/bin/mke2fs").is_file());
    assert!(
        !ia.join("etc/initiatorname.iscsi").exists(),
        "the base's random iSCSI initiator name must not reach the initrd"
    );

    let mut hits = scan_tree(&sa);
    hits.extend(scan_tree(&sr));
    hits.extend(scan_tree(&ia));
    for f in [KERNEL, MANIFEST] {
        hits.extend(image_fixture::scan_bytes(
            &std::fs::read(ra.dir.join(f)).unwrap(),
        ));
    }
    assert!(hits.is_empty(), "secrets in the image: {hits:#?}");
}

/// The ELF `e_machine` of a file (None when it is not an ELF file).
fn elf_machine(path: &Path) -> Option<u16> {
    let b = std::fs::read(path).ok()?;
    (b.len() > 20 && b.starts_with(b"\x7fELF")).then(|| u16::from_le_bytes([b[18], b[19]]))
}

const EM_X86_64: u16 = 0x3e;
const EM_AARCH64: u16 = 0xb7;

#[test]
fn root_arm64_worker_image_has_an_arm64_kernel_and_aarch64_binaries_and_its_own_id() {
    // Not niced (unlike the other long image tests): the ProxyDHCP lab on the chain boots this image. At nice 10 it
    // took 1,699 s instead of 695 s beside the labs, and the chain waited for it (.ci/run, 2026-11-30).
    // Emulated through qemu-user-static (./scripts/setup): the cold base takes minutes (docs/images.md).
    let f = Fixture::new(|s| s);
    let cluster = f.cluster();
    let arm = build::build_for(&cluster, Role::Worker, Arch::Arm64, &standins()).unwrap();
    assert_eq!(arm.arch, Arch::Arm64);
    let m = DirStore::new(&f.images()).manifest(&arm.id).unwrap();
    assert_eq!(m.arch, Arch::Arm64);
    assert!(m.standins);
    assert!(m.inputs.packages.contains_key("linux-image-arm64"));
    assert!(!m.inputs.packages.contains_key("linux-image-amd64"));
    assert_eq!(
        m.kernel_args
            .iter()
            .rev()
            .find(|a| a.starts_with("console="))
            .unwrap(),
        "console=ttyAMA0,115200",
        "{:?}",
        m.kernel_args
    );

    // The kernel is an arm64 Linux Image: magic "ARM\x64" at 0x38 (behind the EFI stub's "MZ").
    let k = std::fs::read(arm.dir.join(KERNEL)).unwrap();
    assert_eq!(&k[0x38..0x3c], b"ARM\x64", "not an arm64 Image");
    assert_eq!(&k[..2], b"MZ", "EFI stub (GRUB boots it as an EFI image)");

    // The root filesystem's binaries are aarch64, its stand-ins scripts.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    unsquash(&arm.dir.join(ROOTFS), &root);
    for bin in [
        "usr/bin/dpkg",
        "usr/bin/busybox",
        "usr/lib/systemd/systemd",
        "usr/sbin/iscsid",
    ] {
        assert_eq!(elf_machine(&root.join(bin)), Some(EM_AARCH64), "{bin}");
    }
    let kubelet = std::fs::read_to_string(root.join("usr/bin/kubelet")).unwrap();
    assert!(kubelet.starts_with("#!") && kubelet.contains("STAND-IN"));
    let ld = std::fs::read_dir(root.join("usr/lib"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(ld.iter().any(|n| n == "aarch64-linux-gnu"), "{ld:?}");
    assert!(!ld.iter().any(|n| n == "x86_64-linux-gnu"), "{ld:?}");
    let boot = std::fs::read_dir(root.join("usr/lib/modules"))
        .unwrap()
        .count();
    assert_eq!(boot, 1);

    // The initrd: imgbuild's script and aarch64 tools, and the virt machine's virtio modules.
    let ia = tmp.path().join("initrd");
    unpack_initrd(&arm.dir.join(INITRD), &ia);
    assert!(ia.join("scripts/imgbuild").is_file());
    assert!(!ia.join("etc/initiatorname.iscsi").exists());
    for bin in ["usr/lib/imgbuild/bin/mke2fs", "usr/bin/busybox"] {
        assert_eq!(elf_machine(&ia.join(bin)), Some(EM_AARCH64), "initrd {bin}");
    }
    let modules = std::fs::read_to_string(ia.join("conf/modules")).unwrap_or_default();
    let kos: Vec<String> = walk(&ia.join("usr/lib/modules"))
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for m in ["virtio_net", "virtio_blk", "squashfs", "overlay"] {
        let built_in = std::fs::read_to_string(
            walk(&ia.join("usr/lib/modules"))
                .into_iter()
                .find(|p| p.ends_with("modules.builtin"))
                .unwrap_or_default(),
        )
        .unwrap_or_default()
        .contains(&format!("/{m}.ko"));
        assert!(
            built_in || kos.iter().any(|k| k.starts_with(&format!("{m}.ko"))),
            "initrd lacks {m} ({modules})"
        );
    }

    // The amd64 image of the same role and inputs: another id, another base, x86-64 binaries.
    let amd = build::build_for(&cluster, Role::Worker, Arch::Amd64, &standins()).unwrap();
    assert_eq!(amd.arch, Arch::Amd64);
    assert_ne!(amd.id, arm.id);
    assert_ne!(amd.base_digest, arm.base_digest);
    let ka = std::fs::read(amd.dir.join(KERNEL)).unwrap();
    assert_ne!(&ka[0x38..0x3c], b"ARM\x64");
    assert_eq!(&ka[0x202..0x206], b"HdrS", "an x86 bzImage");
    let ra = tmp.path().join("amd-initrd");
    unpack_initrd(&amd.dir.join(INITRD), &ra);
    assert_eq!(elf_machine(&ra.join("usr/bin/busybox")), Some(EM_X86_64));

    // Warm: the arm64 image comes from the index, not the amd64 one.
    let again = build::build_for(&cluster, Role::Worker, Arch::Arm64, &standins()).unwrap();
    assert!(again.cached && again.id == arm.id);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Where the build host's own values appear in an unpacked root: its resolv.conf nameservers (unless the cluster
/// names the same ones), hostname, machine-id, SSH host public keys; and whether resolv.conf and timesyncd say
/// what `cluster.toml` says.
fn build_host_values_in(root: &Path, cluster: &imgbuild::config::Cluster) -> Vec<String> {
    let mut found = Vec::new();
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap_or_default();
    let dns: Vec<String> = cluster.network.dns.iter().map(|d| d.to_string()).collect();
    let image_ns: Vec<String> = read("etc/resolv.conf")
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .map(|s| s.trim().to_string())
        .collect();
    if image_ns != dns {
        found.push(format!(
            "/etc/resolv.conf has nameservers {image_ns:?}, cluster.toml says {dns:?}"
        ));
    }
    for ns in std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
    {
        if !dns.contains(&ns.trim().to_string()) && image_ns.contains(&ns.trim().to_string()) {
            found.push(format!(
                "the build host's nameserver {ns} in /etc/resolv.conf"
            ));
        }
    }
    let want_ntp = format!("NTP={}", cluster.network.ntp.join(" "));
    if !read("etc/systemd/timesyncd.conf.d/imgbuild.conf")
        .lines()
        .any(|l| l == want_ntp)
    {
        found.push(format!("timesyncd does not say {want_ntp}"));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    for rel in ["etc/hostname", "etc/hosts", "etc/mailname"] {
        if !host.is_empty()
            && read(rel)
                .split(|c: char| c.is_whitespace())
                .any(|w| w == host)
            && !["worker", "master", "storage", "localhost"].contains(&host)
        {
            found.push(format!("the build host's name {host:?} in /{rel}"));
        }
    }
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    let mid = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    if mid.trim().len() == 32 {
        needles.push(("machine-id".into(), mid.trim().as_bytes().to_vec()));
    }
    for e in std::fs::read_dir("/etc/ssh")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ssh_host_") && name.ends_with(".pub") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(key) = text.split_whitespace().nth(1) {
                needles.push((format!("SSH host key {name}"), key.as_bytes().to_vec()));
            }
        }
    }
    // Literal searches through regex's memchr/SIMD engine (a dependency compiled optimised): a byte-window scan
    // in this unoptimised test crate took over half an hour over a root filesystem's /etc and /var.
    let needles: Vec<(String, regex::bytes::Regex)> = needles
        .into_iter()
        .map(|(what, n)| {
            let pattern = regex::escape(&String::from_utf8_lossy(&n));
            (what, regex::bytes::Regex::new(&pattern).unwrap())
        })
        .collect();
    for dir in ["etc", "var"] {
        for f in walk(&root.join(dir)) {
            if f.symlink_metadata().map(|m| !m.is_file()).unwrap_or(true) {
                continue;
            }
            let Ok(data) = std::fs::read(&f) else {
                continue;
            };
            for (what, n) in &needles {
                if n.is_match(&data) {
                    found.push(format!("the build host's {what} in {}", f.display()));
                }
            }
        }
    }
    found
}

#[test]
fn the_build_host_check_finds_the_hosts_resolver_and_name() {
    // The check the image test relies on must be able to fail: a root carrying this machine's resolv.conf.
    let f = Fixture::new(|s| s);
    let cluster = f.cluster();
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("etc")).unwrap();
    let host_resolv = "nameserver 192.0.2.53\n";
    std::fs::write(d.path().join("etc/resolv.conf"), host_resolv).unwrap();
    let found = build_host_values_in(d.path(), &cluster);
    assert!(
        found
            .iter()
            .any(|f| f.contains("/etc/resolv.conf has nameservers")),
        "{found:?}"
    );
    assert!(found.iter().any(|f| f.contains("timesyncd")), "{found:?}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(d.path().join("etc/hostname"), &host).unwrap();
    if !["worker", "master", "storage", "localhost"].contains(&host.trim()) {
        let found = build_host_values_in(d.path(), &cluster);
        assert!(found.iter().any(|f| f.contains("name")), "{found:?}");
    }
}

#[test]
fn secret_scan_finds_a_planted_key_and_token() {
    // The scanner the image test relies on must be able to fail.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("key.pem"),
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkVZvSXWbVQ0Ff3yS1yJ0Z1Z2Z3Z4Z5Z6Z7Z8Z9ZaoAoGCCqGSM49\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("join.yaml"),
        "token: abcdef.0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("lib.so"),
        "parser: -----BEGIN RSA PRIVATE KEY-----\", python3.11 ok",
    )
    .unwrap();
    let hits = scan_tree(d.path());
    assert_eq!(hits.len(), 2, "{hits:#?}");
    assert!(hits.iter().any(|h| h.contains("key.pem")));
    assert!(hits.iter().any(|h| h.contains("abcdef.0123456789abcdef")));
}
