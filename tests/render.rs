//! Rendering the role layers: every file parses in its format, and rendering is deterministic.

use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild::config::{self, Arch, Role, profile};
use imgbuild::image::base::BaseSpec;
use imgbuild::image::build::{self, Options};
use imgbuild::image::{artifacts, initrd, tree};
use imgbuild::template::Engine;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn render_all() -> Vec<tree::Tree> {
    let cluster = config::load(&root().join("cluster.toml")).expect("example valid");
    let engine = Engine::new(&cluster.paths.profiles, &cluster.paths.ipxe);
    Role::ALL
        .iter()
        .map(|r| {
            let p = profile::resolve(&cluster.paths.profiles, *r).expect("profile resolves");
            tree::render(&cluster, &p, &engine).expect("renders")
        })
        .collect()
}

#[test]
fn every_rendered_yaml_and_toml_file_parses() {
    let mut checked = 0;
    for t in render_all() {
        for f in &t.files {
            let text = std::str::from_utf8(&f.contents).expect("text files are UTF-8");
            if f.path.ends_with(".yaml") || f.path.ends_with(".yml") {
                yaml_rust2::YamlLoader::load_from_str(text)
                    .unwrap_or_else(|e| panic!("{} ({}) is not YAML: {e}", f.path, t.role));
                checked += 1;
            } else if f.path.ends_with(".toml") {
                text.parse::<toml::Table>()
                    .unwrap_or_else(|e| panic!("{} ({}) is not TOML: {e}", f.path, t.role));
                checked += 1;
            }
            assert!(
                !text.contains("{{") && !text.contains("{%"),
                "{} has unrendered template syntax",
                f.path
            );
        }
    }
    assert!(
        checked >= 6,
        "expected YAML/TOML files in every role, checked {checked}"
    );
}

#[test]
fn containerd_uses_the_systemd_cgroup_driver() {
    for t in render_all() {
        let f = t
            .files
            .iter()
            .find(|f| f.path == "/etc/containerd/config.toml")
            .expect("containerd config");
        let v: toml::Table = std::str::from_utf8(&f.contents).unwrap().parse().unwrap();
        let opts = &v["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
            ["options"];
        assert_eq!(opts["SystemdCgroup"].as_bool(), Some(true), "{}", t.role);
    }
}

#[test]
fn roles_carry_their_modules_and_the_nodes_resolver_and_time_come_from_cluster_toml() {
    let trees = render_all();
    let file = |role: &str, path: &str| -> Option<String> {
        trees
            .iter()
            .find(|t| t.role == role)
            .and_then(|t| t.files.iter().find(|f| f.path == path))
            .map(|f| String::from_utf8(f.contents.clone()).unwrap())
    };
    let storage_mods = file("storage", "/etc/modules-load.d/imgbuild.conf").unwrap();
    for m in ["overlay", "br_netfilter", "iscsi_tcp", "dm_crypt"] {
        assert!(storage_mods.lines().any(|l| l == m), "storage lacks {m}");
    }
    // Longhorn volumes attach on workers: iSCSI and dm-crypt there too (issue 18, item 8).
    let worker_mods = file("worker", "/etc/modules-load.d/imgbuild.conf").unwrap();
    for m in ["iscsi_tcp", "dm_crypt"] {
        assert!(worker_mods.lines().any(|l| l == m), "worker lacks {m}");
    }
    assert!(
        !file("master", "/etc/modules-load.d/imgbuild.conf")
            .unwrap()
            .contains("iscsi_tcp")
    );
    // No multipath-tools in the image, so no multipath.conf that nothing reads.
    for role in ["storage", "worker", "master"] {
        assert!(file(role, "/etc/multipath.conf").is_none(), "{role}");
        // The resolver and the NTP servers of cluster.toml (dns = ["10.77.0.1"], ntp = ["10.77.0.1"]).
        let resolv = file(role, "/etc/resolv.conf").expect("resolv.conf rendered");
        let ns: Vec<&str> = resolv
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver "))
            .collect();
        assert_eq!(ns, ["10.77.0.1"], "{role}: {resolv}");
        let ts = file(role, "/etc/systemd/timesyncd.conf.d/imgbuild.conf").unwrap();
        assert!(ts.lines().any(|l| l == "NTP=10.77.0.1"), "{role}: {ts}");
        assert!(ts.lines().any(|l| l == "FallbackNTP="), "{role}: {ts}");
    }
    let sysctl = file("worker", "/etc/sysctl.d/90-imgbuild.conf").unwrap();
    assert!(sysctl.contains("net.ipv4.ip_forward = 1"));
}

#[test]
fn rendering_twice_gives_byte_identical_trees() {
    let bin = env!("CARGO_BIN_EXE_imgbuild");
    let tmp = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for round in 0..2 {
        let dir = tmp.path().join(format!("r{round}"));
        let out = Command::new(bin)
            .args([
                "--config",
                root().join("cluster.toml").to_str().unwrap(),
                "profile",
                "storage",
                "--render",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        digests.push(dir_digest(&dir));
    }
    assert_eq!(digests[0], digests[1]);
    assert!(
        digests[0].len() >= 10,
        "rendered too few files: {}",
        digests[0].len()
    );
}

/// (relative path, mode, contents) of every file under `dir`, sorted.
fn dir_digest(dir: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    mode,
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn profiles_follow_the_architecture_kernel_package_and_serial_console() {
    let cluster = config::load(&root().join("cluster.toml")).expect("example valid");
    for role in Role::ALL {
        let amd = profile::resolve_for(&cluster.paths.profiles, role, Arch::Amd64).unwrap();
        let arm = profile::resolve_for(&cluster.paths.profiles, role, Arch::Arm64).unwrap();
        assert_eq!(amd.arch, Arch::Amd64);
        assert_eq!(arm.arch, Arch::Arm64);
        // resolve() is the amd64 profile.
        let default = profile::resolve(&cluster.paths.profiles, role).unwrap();
        assert_eq!(default.packages, amd.packages);
        assert_eq!(default.kernel_args, amd.kernel_args);

        assert!(amd.packages.iter().any(|p| p == "linux-image-amd64"));
        assert!(!amd.packages.iter().any(|p| p == "linux-image-arm64"));
        assert!(arm.packages.iter().any(|p| p == "linux-image-arm64"));
        assert!(!arm.packages.iter().any(|p| p == "linux-image-amd64"));
        // arm64 also carries systemd-boot-efi (its linuxaa64.efi.stub is what an arm64 UKI is built on; the amd64
        // build host has its own); the same packages otherwise.
        assert!(arm.packages.iter().any(|p| p == "systemd-boot-efi"));
        let other = |v: &[String]| {
            let mut v: Vec<String> = v
                .iter()
                .filter(|p| !p.starts_with("linux-image-") && *p != "systemd-boot-efi")
                .cloned()
                .collect();
            v.sort();
            v
        };
        assert_eq!(other(&amd.packages), other(&arm.packages));

        // The last console= gets /dev/console: the architecture's serial port.
        let last_console = |args: &[String]| {
            args.iter()
                .rev()
                .find(|a| a.starts_with("console="))
                .cloned()
                .unwrap()
        };
        assert_eq!(last_console(&amd.kernel_args), "console=ttyS0,115200");
        assert_eq!(last_console(&arm.kernel_args), "console=ttyAMA0,115200");
        assert!(!arm.kernel_args.iter().any(|a| a.contains("ttyS0")));
        for a in ["net.ifnames=0", "panic=30", "console=tty0"] {
            assert!(arm.kernel_args.iter().any(|x| x == a), "{role}: {a}");
        }
        // amd64's arguments are the ones from before architectures existed, in the same order.
        assert_eq!(
            amd.kernel_args[..4],
            [
                "net.ifnames=0",
                "panic=30",
                "console=tty0",
                "console=ttyS0,115200"
            ]
        );
    }
}

#[test]
fn an_unknown_architecture_in_a_profile_is_an_error_naming_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("worker")).unwrap();
    std::fs::write(
        d.path().join("worker/profile.toml"),
        "packages = [\"jq\"]\n\n[arch.riscv64]\npackages = [\"linux-image-riscv64\"]\n",
    )
    .unwrap();
    let e = profile::resolve_for(d.path(), Role::Worker, Arch::Amd64)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("worker/profile.toml:3:") && e.contains("riscv64") && e.contains("amd64, arm64"),
        "{e}"
    );
    std::fs::write(
        d.path().join("worker/profile.toml"),
        "[arch.arm64]\nkernel_package = \"linux-image-arm64\"\n",
    )
    .unwrap();
    let e = profile::resolve_for(d.path(), Role::Worker, Arch::Arm64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("kernel_package"), "{e}");
}

#[test]
fn the_architecture_is_in_every_cache_key_and_amd64_and_arm64_never_share_one() {
    let cluster = config::load(&root().join("cluster.toml")).expect("example valid");
    let engine = Engine::new(&cluster.paths.profiles, &cluster.paths.ipxe);
    let standins = Options {
        standins: true,
        progress: false,
    };
    let key = |arch| build::input_key(&cluster, Role::Worker, arch, &standins).unwrap();
    assert_ne!(key(Arch::Amd64), key(Arch::Arm64), "index keys");
    assert_eq!(key(Arch::Arm64), key(Arch::Arm64), "stable");

    let spec = |arch| {
        BaseSpec::new(
            &cluster,
            &profile::resolve_for(&cluster.paths.profiles, Role::Worker, arch).unwrap(),
        )
    };
    let (amd, arm) = (spec(Arch::Amd64), spec(Arch::Arm64));
    assert_ne!(amd.digest(), arm.digest(), "base digests");
    assert!(arm.packages.contains(&"linux-image-arm64".to_string()));
    // The three example roles still share one base per architecture.
    for role in Role::ALL {
        let p = profile::resolve_for(&cluster.paths.profiles, role, Arch::Arm64).unwrap();
        assert_eq!(BaseSpec::new(&cluster, &p).digest(), arm.digest(), "{role}");
    }

    // The initrd: a different digest even for the same base digest, and arm64 carries virtio_mmio.
    let ia = initrd::render(&cluster, &engine, &amd.digest(), Arch::Amd64).unwrap();
    let ib = initrd::render(&cluster, &engine, &amd.digest(), Arch::Arm64).unwrap();
    assert_ne!(ia.digest, ib.digest, "initrd digests");
    let modules = |c: &initrd::InitrdConfig| {
        let (_, _, b) = c.files.iter().find(|(p, _, _)| p == "modules").unwrap();
        String::from_utf8(b.clone()).unwrap()
    };
    for m in [
        "virtio_pci",
        "virtio_net",
        "virtio_blk",
        "squashfs",
        "overlay",
    ] {
        assert!(modules(&ia).lines().any(|l| l == m), "amd64 {m}");
        assert!(modules(&ib).lines().any(|l| l == m), "arm64 {m}");
    }
    assert!(modules(&ib).lines().any(|l| l == "virtio_mmio"));
    assert!(!modules(&ia).contains("virtio_mmio"));
    assert!(
        !modules(&ia).contains("\n\n"),
        "no blank lines from the arch block"
    );
}

#[test]
fn artifact_urls_name_the_architecture() {
    let cluster = config::load(&root().join("cluster.toml")).expect("example valid");
    let art = |n: &str| cluster.artifacts.get(n).unwrap();
    let kubeadm = artifacts::source(art("kubeadm"), Arch::Arm64);
    assert!(
        kubeadm.url.ends_with("/bin/linux/arm64/kubeadm"),
        "{}",
        kubeadm.url
    );
    assert_eq!(kubeadm.arch, Some(Arch::Arm64));
    let ctd = artifacts::source(art("containerd"), Arch::Amd64);
    assert!(ctd.url.ends_with("-linux-amd64.tar.gz"), "{}", ctd.url);
    assert!(
        ctd.checksum_url
            .unwrap()
            .ends_with("-linux-amd64.tar.gz.sha256sum"),
        "the checksum URL too"
    );
    // Every binary artifact has one file per architecture; the YAML manifests one for all.
    for (name, a) in &cluster.artifacts {
        assert_eq!(
            artifacts::is_per_arch(a),
            !name.ends_with("-manifest"),
            "{name}: {}",
            a.url
        );
        for arch in Arch::ALL {
            let s = artifacts::source(a, arch);
            assert!(!s.url.contains('{'), "{name}: {}", s.url);
            if artifacts::is_per_arch(a) {
                assert!(s.url.contains(arch.as_str()), "{name}: {}", s.url);
                let other = Arch::ALL.into_iter().find(|x| *x != arch).unwrap();
                assert!(!s.url.contains(other.as_str()), "{name}: {}", s.url);
            }
        }
    }
}

#[test]
fn the_cli_resolves_a_profile_for_an_architecture_and_rejects_unknown_ones() {
    let bin = env!("CARGO_BIN_EXE_imgbuild");
    let cfg = root().join("cluster.toml");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["profile", "worker", "--arch", "arm64", "--show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("for arm64")
            && text.contains("linux-image-arm64")
            && text.contains("console=ttyAMA0"),
        "{text}"
    );
    let out = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["profile", "worker", "--arch", "arm64", "--show", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["arch"], "arm64");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["build", "--arch", "sparc"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("sparc") && err.contains("amd64, arm64"),
        "{err}"
    );
}

/// The initrd's report signing (`ib_report`, `ib_hmac`, `ib_next_ctr` in profiles/initrd/boot.sh.j2), run from
/// the rendered script under busybox sh with busybox's applets (wget, od, sed, date) and coreutils' sha256sum,
/// as the initrd has them: each report it posts to a loopback listener decodes as the server decodes
/// `POST /api/events` (`EventForm`) and passes the server's rules (`check_report`) for an enrolled node with a
/// state disk, details with every character a form must escape included; the signature is
/// `report_auth::hmac_hex` (checked against RFC 4231's known answer too); the counters continue above the root
/// filesystem's last one, are stored before use and only grow. The same report unsigned is refused.
#[test]
fn initrd_signs_reports_as_the_server_verifies_and_its_counter_only_grows() {
    use imgbuild::netboot::http::events::EventForm;
    use imgbuild::pki::report_auth::{
        self, Accepted, NodeFacts, Report, ReportRefusal, Signature, check_report,
    };
    use std::io::{BufRead, BufReader, Read, Write};

    let cluster = config::load(&root().join("cluster.toml")).expect("example valid");
    let engine = Engine::new(&cluster.paths.profiles, &cluster.paths.ipxe);
    let rendered = initrd::render(&cluster, &engine, "base", Arch::Amd64).unwrap();
    let (_, _, script) = rendered
        .files
        .iter()
        .find(|(p, _, _)| p == "scripts/imgbuild")
        .expect("the boot script");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("boot.sh"), script).unwrap();
    let (applets, ib_bin, keydir) = (d.join("applets"), d.join("ib-bin"), d.join("state"));
    for p in [&applets, &ib_bin, &keydir] {
        std::fs::create_dir_all(p).unwrap();
    }
    let busybox = which("busybox");
    // busybox's applets, as the initrd has them (not the host's wget or GNU tools; busybox-static is installed).
    for a in "cat cut date od sed sleep sync timeout wget".split(' ') {
        std::os::unix::fs::symlink(&busybox, applets.join(a)).unwrap();
    }
    std::os::unix::fs::symlink(which("sha256sum"), ib_bin.join("sha256sum")).unwrap();
    let sh = |body: &str| -> String {
        let o = Command::new(&busybox)
            .args(["sh", "-c"])
            .arg(format!(
                ". ./boot.sh; IB_BIN={}; IB_KEYDIR={}; {body}",
                ib_bin.display(),
                keydir.display()
            ))
            .current_dir(d)
            .env_clear()
            .env("PATH", &applets)
            .output()
            .unwrap();
        assert!(o.status.success(), "{body}: {o:?}");
        String::from_utf8(o.stdout).unwrap()
    };

    // RFC 4231 test case 2: the sh HMAC is HMAC-SHA256.
    std::fs::write(d.join("jefe"), "Jefe\n").unwrap();
    assert_eq!(
        sh("printf 'what do ya want for nothing?' | ib_hmac jefe").trim(),
        report_auth::hmac_hex("Jefe", "what do ya want for nothing?")
    );

    // An enrolled worker: its key as the bundle delivers it, the root filesystem's last counter an hour ahead.
    let w = cluster.machine_by_hostname("worker-1").unwrap().clone();
    let (master, at) = ("master-key-text", 1_790_000_000_123u64);
    let key = report_auth::node_key(master, w.mac, at);
    std::fs::write(keydir.join("report.key"), format!("{key}\n")).unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let rootfs_last = (now() + 3600) * 1_000_000_000;
    std::fs::write(keydir.join("report.ctr"), format!("{rootfs_last}\n")).unwrap();

    // The server: a loopback listener that answers 200 and keeps each body.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let details = [
        "network up on eth0 10.77.0.21 secure_boot=off (no UEFI)",
        "a+b c&d=e;f#g %41 100% ü \\n 'q' \"dq\" $HOME `x`",
        "line one\nline two",
    ];
    let n = details.len();
    let server = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for _ in 0..n {
            let (s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let (mut len, mut line) = (0usize, String::new());
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            (&s).write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            bodies.push(body);
        }
        bodies
    });
    let mut calls = format!(
        "IB_SERVER=http://127.0.0.1:{port}; IB_MAC={}; IB_KEY=$IB_KEYDIR/report.key",
        w.mac
    );
    for (i, detail) in details.iter().enumerate() {
        std::fs::write(d.join(format!("detail{i}")), detail).unwrap();
        calls.push_str(&format!("; ib_report state-disk \"$(cat detail{i})\""));
    }
    // busybox's date reads time(2), the kernel's last tick (CLOCK_REALTIME_COARSE): for a few ms after a second
    // begins it can still say the one before, which SystemTime::now() has already left. Hence `- 1` below.
    let before = now() - 1;
    sh(&calls);
    let bodies = server.join().unwrap();

    let mut last = rootfs_last;
    for (body, detail) in bodies.iter().zip(details) {
        let req = http::Request::post("/api/events")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(body.clone()))
            .unwrap();
        let axum::Form(f): axum::Form<EventForm> =
            futures::executor::block_on(
                <axum::Form<EventForm> as axum::extract::FromRequest<()>>::from_request(req, &()),
            )
            .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(body)));
        assert_eq!(f.detail, *detail, "the detail arrives as sent");
        let (ts, ctr, sig) = (f.ts.unwrap(), f.ctr.unwrap(), f.sig.clone().unwrap());
        assert!(ts >= before && ts <= now(), "{ts}");
        assert_eq!(
            ctr,
            last + 1,
            "above the root filesystem's last counter, one by one"
        );
        last = ctr;
        let mut report = Report {
            mac: f.mac.parse().unwrap(),
            stage: &f.stage,
            detail: &f.detail,
            peer: std::net::IpAddr::V4(w.ip),
            signature: Some(Signature { ts, ctr, sig: &sig }),
        };
        let facts = NodeFacts {
            enrolled_at_ms: Some(at),
            last_ctr: Some(ctr - 1),
            lease: None,
            in_initrd: true,
        };
        assert_eq!(
            check_report(&cluster, &report, &facts, master, now()),
            Ok(Accepted::Signed { ctr })
        );
        report.signature = None;
        assert_eq!(
            check_report(&cluster, &report, &facts, master, now()),
            Err(ReportRefusal::Unsigned),
            "an enrolled node with a state disk must sign"
        );
    }
    let stored = |p: &Path| std::fs::read_to_string(p.join("report.ctr")).unwrap();
    assert_eq!(
        stored(&keydir).trim(),
        last.to_string(),
        "stored before use"
    );

    // A counter file behind the clock (or empty, or garbage): the time in s × 10^9, then one by one.
    for old in ["5\n", "", "x\n"] {
        std::fs::write(keydir.join("report.ctr"), old).unwrap();
        let t0 = now() - 1; // time(2)'s coarse clock, as above
        let out = sh("ib_next_ctr; ib_next_ctr");
        let c: Vec<u64> = out.lines().map(|l| l.parse().unwrap()).collect();
        assert!(
            c[0] >= t0 * 1_000_000_000 && c[0] <= now() * 1_000_000_000,
            "{c:?}"
        );
        assert!(c[1] > c[0], "{c:?}");
        assert_eq!(stored(&keydir).trim(), c[1].to_string());
    }
}

fn which(cmd: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|p| p.join(cmd))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{cmd} is not installed (.ci/apt-packages)"))
}
