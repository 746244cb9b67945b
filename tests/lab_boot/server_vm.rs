//! The packaged server as a real service: a Debian VM (QEMU, TCG) on the lab's bridge installs the `.deb` with
//! dpkg and starts `imgbuild.service` under systemd; a second VM PXE-boots (BIOS) from it to `joined`.
//!
//! The server VM: a Debian root made by mmdebstrap on the host (minbase, systemd, udev, chrony and the package's
//! Depends, never the package itself; cached by its inputs in `$CARGO_TARGET_TMPDIR`), booted as an ext4 disk
//! with the node image's own kernel and initramfs-tools initrd (`boot=local root=/dev/vda`), writes kept in a
//! QEMU snapshot. A second, read-only disk carries the package, the VM's cluster.toml, the lab's provisioning CA
//! (the images carry its certificate), the master image and `server-vm/setup.sh`, which a oneshot unit runs
//! (see that script). What it finds it prints on the serial console; the test reads it there, then boots
//! master-1 (the image every lab test boots: cache hit) and watches the VM's `/api/status` from the lab's
//! namespace over the bridge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::common::run_ok as run;
use super::*;

/// The fixtures: the unit and network files baked into the server's root, its chrony.conf, and setup.sh.
fn fixture(name: &str) -> PathBuf {
    Path::new(REPO).join("tests/lab_boot/server-vm").join(name)
}

/// The package's Depends, each by its first alternative's name (`libc6 (>= 2.34)` → `libc6`).
fn depends(deb: &Path) -> Vec<String> {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"))
        .trim()
        .split(',')
        .map(|d| {
            d.split('|')
                .next()
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The server VM's root disk (ext4, raw): Debian bookworm minbase with systemd, udev, chrony (the nodes' time
/// source) and `deb`'s Depends, the fixture files in place, systemd-networkd and the test unit enabled. Built
/// once per set of inputs and kept in `$CARGO_TARGET_TMPDIR/imgbuild-server-vm` (the VM writes to a snapshot).
fn server_root(deb: &Path) -> PathBuf {
    let mut include: Vec<String> = ["systemd-sysv", "udev", "chrony"]
        .map(String::from)
        .to_vec();
    include.extend(depends(deb));
    let files = [
        ("imgbuild-vmtest.service", "etc/systemd/system"),
        ("10-eth0.network", "etc/systemd/network"),
        ("chrony.conf", "etc/chrony"),
    ];
    let mut key = Sha256::new();
    key.update(include.join(",").as_bytes());
    for (name, _) in files {
        key.update(std::fs::read(fixture(name)).unwrap());
    }
    let key = hex::encode(key.finalize());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("imgbuild-server-vm");
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join(format!("root-{}.ext4", &key[..16]));
    if disk.exists() {
        eprintln!("server VM root: {} (kept)", disk.display());
        return disk;
    }
    let t0 = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let overlay = work.path().join("overlay");
    for (name, to) in files {
        std::fs::create_dir_all(overlay.join(to)).unwrap();
        std::fs::copy(fixture(name), overlay.join(to).join(name)).unwrap();
    }
    // Downloaded packages are kept between runs, like the package test's.
    let cache = dir.join("apt-cache");
    std::fs::create_dir_all(&cache).unwrap();
    // The root on tmpfs when there is one (dpkg's many small writes), then copied into the ext4 image.
    let shm = Path::new("/dev/shm");
    let rootdir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let root = rootdir.path().join("root");
    run(Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--skip=essential/unlink",
            "--dpkgopt=force-unsafe-io",
            "--aptopt=Acquire::Languages \"none\"",
        ])
        .arg(format!("--include={}", include.join(",")))
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives",
            cache.display()
        ))
        .arg(format!("--customize-hook=sync-in {} /", overlay.display()))
        .arg("--customize-hook=chroot \"$1\" systemctl enable systemd-networkd imgbuild-vmtest")
        .arg("--customize-hook=echo imgbuild-server >\"$1\"/etc/hostname")
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            cache.display()
        ))
        .arg("--customize-hook=chroot \"$1\" apt-get clean")
        .arg("bookworm")
        .arg(&root));
    let tmp = dir.join(format!("root-{}.ext4.tmp", &key[..16]));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "imgbuild-root", "-d"])
        .arg(&root)
        .arg(&tmp)
        .arg("1536M"));
    std::fs::rename(&tmp, &disk).unwrap();
    eprintln!(
        "server VM root built in {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        disk.display()
    );
    disk
}

/// `from` into `to`: a hard link where the file systems allow it, else a copy.
fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

/// The read-only payload disk (ext4, raw) in `work`: the package, setup.sh, the VM's cluster.toml (the lab's, for
/// the VM's `eth0` and a packaged install's paths, images read from this disk), the lab's artifact lock, the
/// provisioning CA, the master image and its id.
fn payload(lab: &Lab, deb: &Path, master: &str, work: &Path) -> PathBuf {
    let p = work.join("payload");
    std::fs::create_dir_all(p.join("ca")).unwrap();
    std::fs::create_dir_all(p.join("images").join(master)).unwrap();
    link_or_copy(deb, &p.join("imgbuild.deb"));
    std::fs::copy(fixture("setup.sh"), p.join("setup.sh")).unwrap();
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&lab.config)
        .unwrap()
        .parse()
        .unwrap();
    doc["network"]["interface"] = toml_edit::value("eth0");
    for (k, v) in [
        ("profiles", "/usr/share/imgbuild/profiles"),
        ("ipxe", "/usr/share/imgbuild/ipxe"),
        ("state", "/var/lib/imgbuild/state"),
        ("secrets", "/var/lib/imgbuild/secrets"),
        ("images", "/mnt/payload/images"),
        ("cache", "/var/cache/imgbuild"),
    ] {
        doc["paths"][k] = toml_edit::value(v);
    }
    std::fs::write(p.join("cluster.toml"), doc.to_string()).unwrap();
    if lab.cluster.paths.lock.exists() {
        std::fs::copy(&lab.cluster.paths.lock, p.join("imgbuild.lock")).unwrap();
    }
    for n in [
        imgbuild::pki::provisioning::PROVISIONING_CA_CERT,
        imgbuild::pki::provisioning::PROVISIONING_CA_KEY,
    ] {
        std::fs::copy(lab.cluster.paths.secrets.join(n), p.join("ca").join(n)).unwrap();
    }
    std::fs::write(p.join("master-id"), master).unwrap();
    let mut bytes = 0;
    for e in std::fs::read_dir(lab.cluster.paths.images.join(master)).unwrap() {
        let e = e.unwrap();
        bytes += e.metadata().unwrap().len();
        link_or_copy(
            &e.path(),
            &p.join("images").join(master).join(e.file_name()),
        );
    }
    bytes += std::fs::metadata(deb).unwrap().len();
    let disk = work.join("payload.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "imgbuild-payload", "-d"])
        .arg(&p)
        .arg(&disk)
        .arg(format!("{}M", bytes / (1 << 20) * 5 / 4 + 64)));
    disk
}

/// The `IMGBUILD-VM key=value` lines of the server VM's console, by key (the last of each).
fn facts(console: &str) -> BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once("IMGBUILD-VM "))
        .map(|(_, kv)| kv.split_once('=').unwrap_or((kv, "")))
        .filter(|(k, _)| !k.contains(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn lines_with<'a>(console: &'a str, prefix: &str) -> Vec<&'a str> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(prefix))
        .map(|(_, rest)| rest)
        .collect()
}

const SERVER_MAC: &str = "52:54:00:77:00:fe";

/// Modules the node initrd loads for hardware a server VM does not have (`modprobe.blacklist=`): seconds of TCG.
const UNUSED_MODULES: &[&str] = &[
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "r8169",
    "tg3",
    "bnxt_en",
    "nvme",
    "ahci",
    "virtio_scsi",
    "dm_verity",
    "squashfs",
    "overlay",
    "efivarfs",
];

#[test]
fn root_lab_packaged_service_in_a_debian_vm_runs_sandboxed_under_systemd_and_boots_a_master_to_joined()
 {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &["master-1"], Firmware::Bios, DhcpMode::Full);
    o.external_server = true;
    o.timeout = Duration::from_secs(10 * 60);
    let mut lab = Lab::prepare(o).unwrap();
    let master = lab
        .images
        .iter()
        .find(|(r, a, _)| *r == Role::Master && *a == Arch::Amd64)
        .unwrap()
        .2
        .clone();
    eprintln!(
        "lab prepared (master image {master}) after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let work = tempfile::tempdir().unwrap();
    let deb = run(Command::new(Path::new(REPO).join("scripts/package"))
        .arg(work.path().join("deb"))
        .env("IMGBUILD_BIN", env!("CARGO_BIN_EXE_imgbuild")));
    let deb = PathBuf::from(deb.lines().last().unwrap().trim());
    let root = server_root(&deb);
    let payload = payload(&lab, &deb, &master, work.path());
    eprintln!(
        "package, root and payload ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The server VM: the master image's kernel and initrd (initramfs-tools: `boot=local` mounts /dev/vda).
    let image = lab.cluster.paths.images.join(&master);
    // ttyS0: kernel and systemd (`server.log`, which the lab shows when a node fails); ttyS1: setup.sh's facts.
    let console = lab.opts.dir.join("server.log");
    let facts_log = lab.opts.dir.join("server-facts.log");
    lab.add_tap("iblsrv").unwrap();
    let args: Vec<String> = [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        &format!("file:{}", console.display()),
        "-serial",
        &format!("file:{}", facts_log.display()),
        "-kernel",
        &image.join("vmlinuz").display().to_string(),
        "-initrd",
        &image.join("initrd.img").display().to_string(),
        "-append",
        &format!(
            "boot=local root=/dev/vda rw rootfstype=ext4 console=ttyS0,115200 net.ifnames=0 panic=-1 \
             cryptomgr.notests modprobe.blacklist={}",
            UNUSED_MODULES.join(",")
        ),
        "-netdev",
        "tap,id=n0,ifname=iblsrv,script=no,downscript=no",
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={SERVER_MAC}"),
        "-drive",
        &format!("file={},format=raw,if=virtio,snapshot=on", root.display()),
        "-drive",
        &format!("file={},format=raw,if=virtio,readonly=on", payload.display()),
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0",
    ]
    .map(String::from)
    .to_vec();
    let booted = Instant::now();
    lab.spawn_in_netns(
        "vm:server",
        "qemu-system-x86_64",
        &args,
        &lab.opts.dir.join("server-qemu.log"),
    )
    .unwrap();
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let limit = Duration::from_secs(8 * 60);
    let con = loop {
        let con = read(&facts_log);
        let f = facts(&con);
        if f.contains_key("ready") || f.contains_key("failed") {
            break con;
        }
        assert!(
            lab.process_running("vm:server"),
            "the server VM stopped:\n{}",
            imgbuild::vm::qemu::console_tail(&console, 60)
        );
        assert!(
            booted.elapsed() < limit,
            "the server VM did not finish its steps within {limit:?}:\n{}\n{}",
            imgbuild::vm::qemu::console_tail(&console, 60),
            read(&facts_log)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let f = facts(&con);
    let fact = |k: &str| {
        f.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("the server VM did not report {k}:\n{con}"))
    };
    assert!(!f.contains_key("failed"), "in the server VM:\n{con}");
    eprintln!(
        "server VM: booted {}s, service started at {}s, ready {:.1}s after QEMU started",
        fact("booted"),
        fact("started"),
        booted.elapsed().as_secs_f64()
    );
    assert_eq!(fact("installed"), env!("CARGO_PKG_VERSION"));
    // Not enabled by the package: a DHCP server must not answer before its operator configured it.
    assert_eq!(fact("unit-enabled"), "disabled");
    // Started under systemd as a notify service (so `systemctl start` returned after READY=1), with a watchdog.
    assert_eq!(fact("unit.Type"), "notify");
    assert_eq!(fact("unit.ActiveState"), "active");
    assert_eq!(fact("unit.SubState"), "running");
    assert_eq!(fact("unit.NRestarts"), "0");
    assert_eq!(fact("unit.WatchdogUSec"), "30s");
    assert_eq!(fact("unit.User"), "imgbuild");
    assert_eq!(fact("comm"), "imgbuild");
    // Its own system user, not root; exactly CAP_NET_BIND_SERVICE (10) and CAP_NET_RAW (13), nothing to gain.
    let uid: u32 = fact("imgbuild-uid").parse().unwrap();
    assert!(
        uid != 0 && uid < 1000,
        "imgbuild is not a system user: {uid}"
    );
    for k in ["proc.Uid", "proc.Gid"] {
        let ids: Vec<&str> = f[k].split_whitespace().collect();
        assert_eq!(ids.len(), 4, "{k}: {}", f[k]);
        if k == "proc.Uid" {
            assert!(ids.iter().all(|u| *u == uid.to_string()), "{k}: {}", f[k]);
        }
        assert!(ids.iter().all(|u| *u != "0"), "{k}: {}", f[k]);
    }
    for k in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(fact(&format!("proc.{k}")), "0000000000002400", "{k}");
    }
    assert_eq!(fact("proc.CapInh"), "0000000000002400");
    assert_eq!(fact("proc.NoNewPrivs"), "1");
    assert_eq!(fact("proc.Seccomp"), "2", "SystemCallFilter= is in force");
    // Secrets made by `imgbuild secrets init` in the VM: the imgbuild user's alone.
    let secrets = lines_with(&con, "IMGBUILD-VM secret=");
    assert!(secrets.len() > 3, "{con}");
    for s in &secrets {
        let mut w = s.split_whitespace();
        let (mode, owner, path) = (w.next().unwrap(), w.next().unwrap(), w.next().unwrap());
        let mode = u32::from_str_radix(mode, 8).unwrap();
        assert_eq!(owner, "imgbuild:imgbuild", "{s}");
        assert_eq!(mode & 0o077, 0, "{path} is readable by others: {s}");
        if path == "/var/lib/imgbuild/secrets" {
            assert_eq!(mode, 0o700, "{s}");
        }
    }
    // `systemctl reload`: SIGHUP, the same process serving on.
    let pid = fact("MainPID");
    assert_eq!(fact("after-reload"), format!("active pid={pid}"));

    // The client: master-1 PXE-boots (BIOS, full DHCP) from the VM's server and forms the cluster alone.
    lab.start_vm("master-1").unwrap();
    let limit = lab.opts.timeout;
    let report = lab
        .wait(&["master-1".to_string()], 1, limit, |n| n.done)
        .unwrap_or_else(|f| panic!("{f}"));
    println!("{}", imgbuild::vm::lab::summary(&report, lab.standins));
    let n = node(&report, "master-1");
    assert_eq!(n.state, "joined", "{n:?}");
    assert_eq!(n.image.as_deref(), Some(master.as_str()));
    assert_eq!(n.joins, 1);
    assert_eq!(n.enrollment.as_deref(), Some("enrolled"), "{n:?}");
    for stage in boot_path() {
        assert!(
            n.stages.iter().any(|s| s.stage == stage),
            "master-1: stage {stage} missing: {:?}",
            n.stages
        );
    }
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
}
