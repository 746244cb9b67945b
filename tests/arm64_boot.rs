//! arm64 netboot through the real server: Debian has no arm64 iPXE, so arm64 machines get GRUB
//! (`grubnetaa64.efi`, made by the server with grub-mkimage from Debian's arm64 modules) and a per-machine GRUB
//! config from the boot decision (`/grub/{mac}`, served on port 80 because GRUB 2.06 cannot use another port).
//!
//! The image pinned here is assembled by the test, not by the image builder (that path has its own tests): a
//! real Debian arm64 kernel and a small initrd whose `/init` is arm64 busybox printing a marker, both extracted
//! from Debian packages by `scripts/setup` into /usr/local/lib/imgbuild/arm64/. Its `rootfs.squashfs` is a
//! placeholder the kernel never asks for. What is real: the server, AAVMF's own PXE client, TFTP, GRUB, HTTP
//! and the kernel booting on an emulated cortex-a57. Everything runs in a namespace the test creates.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imgbuild::config::{Arch, Role};
use imgbuild::vm::netns::{Children, Netns};
use imgbuild::vm::qemu::{self, Accel, Firmware, VmSpec};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const ASSETS: &str = "/usr/local/lib/imgbuild/arm64";
const ARM_WORKER_MAC: &str = common::ARM64_WORKER_MAC;
const ARM_STORAGE_MAC: &str = "52:54:00:77:00:42";
/// A second arm64 worker: in the VM boots it starts on UEFI HTTP Boot beside arm-worker-1 on PXE.
const ARM_WORKER2_MAC: &str = "52:54:00:77:00:43";
const MARKER: &str = "IMGBUILD-ARM64-INIT";

fn asset(name: &str) -> PathBuf {
    let p = Path::new(ASSETS).join(name);
    assert!(
        p.is_file(),
        "{} missing: run ./scripts/setup (it extracts Debian's arm64 kernel and busybox there)",
        p.display()
    );
    p
}

/// A cluster directory: the example cluster plus two arm64 machines, paths in a temp dir.
struct Cluster {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Cluster {
    fn new(proxy: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut text = common::example_text();
        if proxy {
            text = text.replacen("dhcp_mode = \"full\"", "dhcp_mode = \"proxy\"", 1);
            assert!(
                text.contains("dhcp_mode = \"proxy\""),
                "example cluster.toml changed"
            );
        }
        let mut text = common::with_arm64_machine(&text);
        text.push_str(&common::arm64_machine(
            "arm-storage-1",
            "storage",
            ARM_STORAGE_MAC,
            "10.77.0.42",
            false,
        ));
        text.push_str(&common::arm64_machine(
            "arm-worker-2",
            "worker",
            ARM_WORKER2_MAC,
            "10.77.0.43",
            true,
        ));
        text.push_str(&format!(
            r#"
[paths]
profiles = "{REPO}/profiles"
ipxe = "{REPO}/ipxe"
images = "images"
state = "state"
secrets = "secrets"
cache = "cache"
"#
        ));
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        Cluster { dir, config }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn imgbuild(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// Writes the arm64 worker image (real kernel, busybox initrd, placeholder rootfs) and returns its id.
    fn make_arm64_image(&self) -> String {
        let root = self.path("initrd-root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy(asset("busybox"), root.join("bin/busybox")).unwrap();
        let init = format!(
            "#!/bin/busybox sh\n/bin/busybox mkdir -p /proc\n/bin/busybox mount -t proc proc /proc\n\
             echo \"{MARKER} arch: $(/bin/busybox uname -m)\"\n\
             set -f; for w in $(/bin/busybox cat /proc/cmdline); do echo \"{MARKER} arg: $w\"; done\n\
             echo \"{MARKER} end\"\n\
             /bin/busybox poweroff -f\n"
        );
        std::fs::write(root.join("init"), init).unwrap();
        for f in ["init", "bin/busybox"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let files = [
            ("vmlinuz", std::fs::read(asset("vmlinuz")).unwrap()),
            (
                "initrd.img",
                imgbuild::image::initrd::pack_dir(&root).unwrap(),
            ),
            (
                "rootfs.squashfs",
                b"placeholder: this test's kernel never asks for a rootfs\n".to_vec(),
            ),
        ];
        let files = files.into_iter().map(|(n, b)| (n.to_string(), b)).collect();
        let spec = common::ImageSpec {
            role: Role::Worker,
            arch: Arch::Arm64,
            profile: &["arm64-boot-test"],
            standins: false,
            kernel_args: &["console=ttyAMA0", "panic=5"],
        };
        common::commit_image(&self.path("images"), &spec, &files).0
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("state/events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn stages(&self, mac: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for e in self.events() {
            let s = e["stage"].as_str().unwrap_or_default().to_string();
            if e["mac"] == mac && !seen.contains(&s) {
                seen.push(s);
            }
        }
        seen
    }
}

/// The server running on a bridge in a namespace of its own; everything goes with `children` and `ns`.
struct Lab {
    cluster: Cluster,
    id: String,
    ns: Netns,
    children: Children,
}

impl Lab {
    /// `proxy`: a dnsmasq in the namespace hands out addresses (no boot information) and imgbuild is ProxyDHCP.
    fn start(prefix: &str, proxy: bool) -> Lab {
        let cluster = Cluster::new(proxy);
        let id = cluster.make_arm64_image();
        let out = cluster.imgbuild(&["pin", "worker", &id]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("worker (arm64)"), "{said}");
        let ns = Netns::create(prefix).unwrap();
        ns.add_bridge("br0", "10.77.0.1/24").unwrap();
        let mut children = Children::new();
        if proxy {
            let mut d = ns.command("dnsmasq");
            d.args([
                "-k",
                "--port=0",
                "--bind-interfaces",
                "--no-ping",
                "--interface=br0",
            ])
            .arg("--dhcp-range=10.77.0.150,10.77.0.199,255.255.255.0,1h")
            .arg(format!("--dhcp-host={ARM_WORKER_MAC},10.77.0.41"))
            .arg(format!("--dhcp-host={ARM_WORKER2_MAC},10.77.0.43"))
            .arg(format!(
                "--dhcp-leasefile={}",
                cluster.path("dnsmasq.leases").display()
            ))
            .arg("--pid-file=")
            .arg(format!(
                "--log-facility={}",
                cluster.path("dnsmasq.log").display()
            ))
            .arg("--log-dhcp")
            .stdin(std::process::Stdio::null());
            children.spawn("dnsmasq", d).unwrap();
        }
        let mut serve = ns.command(env!("CARGO_BIN_EXE_imgbuild"));
        serve
            .arg("-c")
            .arg(&cluster.config)
            .arg("serve")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(cluster.path("serve.log")).unwrap())
            .stderr(std::fs::File::create(cluster.path("serve.err")).unwrap());
        children.spawn("serve", serve).unwrap();
        let lab = Lab {
            cluster,
            id,
            ns,
            children,
        };
        let t0 = Instant::now();
        while !lab
            .curl(&["-sf", "http://10.77.0.1/healthz"])
            .status
            .success()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the server did not listen on port 80: {}",
                lab.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        lab
    }

    fn curl(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.ns.name(), "timeout", "20", "curl"])
            .args(args)
            .output()
            .unwrap()
    }

    fn get(&self, url: &str) -> String {
        let out = self.curl(&["-s", url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.cluster.path("serve.log")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.cluster.path("serve.err")).unwrap_or_default());
        s
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.children.stop_all();
    }
}

#[test]
fn root_arm64_grub_loader_and_per_machine_config_are_served_on_tftp_and_port_80() {
    let lab = Lab::start("ibla", false);
    // The loader over TFTP (what AAVMF's PXE fetches) and over HTTP (HTTP Boot): the same arm64 EFI binary.
    let efi = lab.cluster.path("grub.efi");
    let out = lab.curl(&[
        "-s",
        "-o",
        efi.to_str().unwrap(),
        "tftp://10.77.0.1/grubnetaa64.efi",
    ]);
    assert!(out.status.success(), "TFTP fetch failed: {}", lab.log());
    let bytes = std::fs::read(&efi).unwrap();
    assert_eq!(&bytes[..2], b"MZ", "not a PE image");
    let pe = u32::from_le_bytes(bytes[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&bytes[pe..pe + 4], b"PE\0\0");
    let machine = u16::from_le_bytes(bytes[pe + 4..pe + 6].try_into().unwrap());
    assert_eq!(machine, 0xaa64, "the GRUB image is not for arm64");
    let embedded = String::from_utf8_lossy(&bytes).into_owned();
    assert!(
        embedded.contains("configfile (http,10.77.0.1)/grub/${net_default_mac}"),
        "the embedded config does not ask the server"
    );
    let out = lab.curl(&["-s", "http://10.77.0.1:8080/boot/grubnetaa64.efi"]);
    assert_eq!(out.stdout, bytes, "HTTP and TFTP serve different loaders");

    // The pinned arm64 worker: kernel and initrd of its image, from port 80, with the per-machine command line.
    let cfg = lab.get(&format!("http://10.77.0.1/grub/{ARM_WORKER_MAC}"));
    let want = format!("linux (http,10.77.0.1)/images/{}/vmlinuz?sha256=", lab.id);
    assert!(cfg.contains(&want), "{cfg}");
    assert!(
        cfg.contains(&format!(
            "initrd (http,10.77.0.1)/images/{}/initrd.img?sha256=",
            lab.id
        )),
        "{cfg}"
    );
    assert!(
        cfg.contains("systemd.hostname=arm-worker-1") && cfg.contains("console=ttyAMA0"),
        "{cfg}"
    );
    // An arm64 machine whose role has no arm64 image waits, and is told which command fixes it.
    let cfg = lab.get(&format!("http://10.77.0.1/grub/{ARM_STORAGE_MAC}"));
    assert!(
        cfg.contains("imgbuild profile storage --arch arm64") && cfg.contains("sleep 30"),
        "{cfg}"
    );
    // A MAC not in the inventory gets a message and a retry, with the quotes of the message escaped.
    let cfg = lab.get("http://10.77.0.1/grub/52:54:00:99:99:99");
    assert!(cfg.contains("not in the inventory"), "{cfg}");
    assert!(cfg.contains(r#"mac = \"52:54:00:99:99:99\""#), "{cfg}");
    // After UEFI HTTP Boot GRUB does not know its MAC: it asks by address (its inventory address), and a caller
    // at an address no machine has is told so.
    lab.ns
        .ip(&["addr", "add", "10.77.0.41/32", "dev", "br0"])
        .unwrap();
    let out = lab.curl(&[
        "-s",
        "--interface",
        "10.77.0.41",
        "http://10.77.0.1/grub/by-address",
    ]);
    let cfg = String::from_utf8_lossy(&out.stdout);
    assert!(
        cfg.contains(&want) && cfg.contains("systemd.hostname=arm-worker-1"),
        "{cfg}"
    );
    let cfg = lab.get("http://10.77.0.1/grub/by-address");
    assert!(
        cfg.contains("no machine in the inventory has address 10.77.0.1"),
        "{cfg}"
    );
    // The HTTP Boot loader asks DHCP first, then by address.
    let out = lab.curl(&["-s", "http://10.77.0.1:8080/boot/grubhttpaa64.efi"]);
    let http_loader = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        http_loader.contains("net_bootp") && http_loader.contains("/grub/by-address"),
        "the HTTP Boot loader's embedded config does not ask DHCP and then by address"
    );
    // The amd64 machines keep their iPXE scripts on the usual port; nothing is pinned for them here.
    let ipxe = lab.get("http://10.77.0.1:8080/ipxe/52:54:00:77:00:21");
    assert!(ipxe.starts_with("#!ipxe") && ipxe.contains("imgbuild profile worker --arch amd64"));
    assert_eq!(
        lab.cluster.stages(ARM_WORKER_MAC),
        vec!["grub-config".to_string()]
    );
    assert_eq!(
        lab.cluster
            .events()
            .iter()
            .filter(|e| e["mac"] == ARM_WORKER_MAC && e["stage"] == "grub-config")
            .count(),
        2,
        "by MAC and by address"
    );
}

#[test]
fn root_lab_arm64_vms_full_dhcp_pxe_and_http_boot_grub_then_the_pinned_kernel_and_initrd() {
    arm64_vm_boots(false);
}

#[test]
fn root_lab_arm64_vms_proxy_dhcp_beside_dnsmasq_pxe_and_http_boot_grub_then_boot() {
    arm64_vm_boots(true);
}

/// Two arm64 VMs on AAVMF boot side by side from the server (one run, both boot paths): arm-worker-1 by PXE
/// (TFTP `grubnetaa64.efi`), arm-worker-2 by UEFI HTTP Boot (HTTP `grubhttpaa64.efi`), each into GRUB, then the
/// pinned kernel and initrd, whose `/init` says it runs on aarch64 with the machine's command line.
fn arm64_vm_boots(proxy: bool) {
    let mut lab = Lab::start(if proxy { "iblp" } else { "iblv" }, proxy);
    let vms = [
        ("arm-worker-1", ARM_WORKER_MAC, Firmware::Uefi),
        ("arm-worker-2", ARM_WORKER2_MAC, Firmware::Http),
    ];
    let mut specs = Vec::new();
    for (i, (name, mac, firmware)) in vms.iter().enumerate() {
        let tap = format!("iblvt{i}");
        lab.ns.add_tap(&tap, "br0").unwrap();
        let vm = lab.cluster.path(&format!("vm-{name}"));
        let spec = VmSpec {
            name: name.to_string(),
            mac: mac.parse().unwrap(),
            decoy_mac: None,
            arch: Arch::Arm64,
            tap,
            firmware: *firmware,
            accel: Accel::Tcg,
            memory_mb: 1024,
            disks: vec![vm.join("state.img")],
            console_log: vm.join("console.log"),
            dir: vm.clone(),
            secure_boot_vars: None,
            tpm_socket: None,
            boot_dir: None,
        };
        std::fs::create_dir_all(&vm).unwrap();
        qemu::blank_disk(&spec.disks[0], 1 << 30).unwrap();
        lab.children
            .spawn(name, qemu::command(&lab.ns, &spec).unwrap())
            .unwrap();
        specs.push(spec);
    }
    let t0 = Instant::now();
    let console = |spec: &VmSpec| {
        String::from_utf8_lossy(&std::fs::read(&spec.console_log).unwrap_or_default()).into_owned()
    };
    // Two emulated arm64 machines on a shared 2-core host: a generous, finite limit for both.
    let limit = Duration::from_secs(420);
    let end = format!("{MARKER} end");
    let mut took = vec![None; specs.len()];
    while t0.elapsed() < limit && took.iter().any(Option::is_none) {
        for (i, spec) in specs.iter().enumerate() {
            if took[i].is_none()
                && (console(spec).contains(&end) || !lab.children.running(&spec.name))
            {
                took[i] = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (spec, took) in specs.iter().zip(&took) {
        check_arm64_boot(&lab, spec, proxy, *took);
    }
}

/// What one arm64 VM of [`arm64_vm_boots`] must have shown: its init's report on the console, the boot path's
/// stages in order, and its GRUB fetched the way its firmware implies.
fn check_arm64_boot(lab: &Lab, spec: &VmSpec, proxy: bool, took: Option<Duration>) {
    let mac = spec.mac.to_string();
    let text =
        String::from_utf8_lossy(&std::fs::read(&spec.console_log).unwrap_or_default()).into_owned();
    let end = format!("{MARKER} end");
    assert!(
        text.contains(&end),
        "{}: no {end} after {took:?}; console:\n{}\nqemu: {}\nserver:\n{}",
        spec.name,
        qemu::console_tail(&spec.console_log, 40),
        std::fs::read_to_string(spec.dir.join("qemu.stderr")).unwrap_or_default(),
        lab.log()
    );
    let report = |key: &str| -> Vec<String> {
        let prefix = format!("{MARKER} {key}: ");
        text.lines()
            .filter_map(|l| l.trim_end().split_once(&prefix).map(|(_, v)| v.to_string()))
            .collect()
    };
    let (arch, args) = (report("arch"), report("arg"));
    println!(
        "{} reached its init in {took:.1?}: arch {arch:?}, command line {args:?}",
        spec.name
    );
    assert_eq!(arch, ["aarch64"], "{text}");
    assert!(
        args.iter().any(|a| *a == format!("imgbuild.mac={mac}")),
        "{args:?}"
    );
    let seen = lab.cluster.stages(&mac);
    // The boot path up to the initrd, GRUB's way (no iPXE script).
    let mut want = common::stages("dhcp-offer", "initrd", &["ipxe-script"]);
    if proxy {
        // The address came from dnsmasq: imgbuild sent only the ProxyDHCP offer.
        want.retain(|s| *s != "dhcp-ack");
        let log = std::fs::read_to_string(lab.cluster.path("dnsmasq.log")).unwrap_or_default();
        assert!(
            log.lines()
                .any(|l| l.contains("DHCPACK") && l.contains(&mac)),
            "dnsmasq never acknowledged {}: {log}",
            spec.name
        );
    }
    let pos: Vec<usize> = want
        .iter()
        .map(|w| {
            seen.iter()
                .position(|s| s == w)
                .unwrap_or_else(|| panic!("{}: stage {w} never recorded: {seen:?}", spec.name))
        })
        .collect();
    assert!(
        pos.windows(2).all(|p| p[0] < p[1]),
        "{}: out of order: {seen:?}",
        spec.name
    );
    let events = lab.cluster.events();
    let bootfile = events
        .iter()
        .find(|e| e["mac"] == mac.as_str() && e["stage"] == "bootfile")
        .unwrap_or_else(|| panic!("{}: no bootfile event", spec.name));
    let want = if spec.firmware == Firmware::Http {
        "grubhttpaa64.efi via HTTP"
    } else {
        "grubnetaa64.efi via TFTP"
    };
    assert!(
        bootfile["detail"].as_str().unwrap_or_default() == want,
        "{}: {bootfile}",
        spec.name
    );
    println!(
        "{} console:\n{}",
        spec.name,
        text.lines()
            .filter(|l| l.contains("imgbuild") || l.contains("GRUB"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
