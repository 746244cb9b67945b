//! QEMU virtual machines that boot from the network: firmware variants, disks, serial console, KVM probe.
//!
//! amd64 VMs run `qemu-system-x86_64 -machine q35`; arm64 VMs run `qemu-system-aarch64 -machine virt -cpu
//! cortex-a57` on AAVMF (Debian's `qemu-efi-aarch64`), always under TCG, whose own PXE client fetches GRUB.
//! Every VM: one virtio NIC on a tap with the inventory's MAC as its first boot device, blank virtio disks
//! (`/dev/vda` state, `/dev/vdb` Longhorn data on storage nodes), serial console appended to a log file,
//! `-no-reboot` (a reboot ends the process; the lab starts it again with the same disks).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::spawn::SpawnTied;
use crate::config::{Arch, MacAddr};

/// OVMF as shipped by Debian's `ovmf` package.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's template UEFI variable store; each VM gets its own copy in its `dir`.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF with Secure Boot and SMM-protected variables (q35, `smm=on`): for VMs given an enrolled store.
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// AAVMF (UEFI for arm64 virt machines) as shipped by Debian's `qemu-efi-aarch64` package.
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
/// AAVMF's template UEFI variable store; each VM gets its own copy in its `dir`.
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
/// A formatted AAVMF variable store (Debian's, snakeoil keys enrolled): the template the lab clears and enrolls
/// the cluster's keys into for arm64 Secure Boot VMs (`AAVMF_VARS.fd` itself is unformatted zeros).
pub const AAVMF_VARS_FORMATTED: &str = "/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd";

/// How a VM's firmware reaches iPXE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE NIC ROM (which is iPXE already: straight to the HTTP script).
    Bios,
    /// OVMF's own PXE client (`romfile=` disables the iPXE ROM): DHCP arch 7 → TFTP snponly.efi → iPXE.
    Uefi,
    /// OVMF's UEFI HTTP Boot (arch 16): DHCP with vendor class HTTPClient → HTTP snponly.efi → iPXE.
    Http,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::Http => "http",
        })
    }
}

/// The accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm` (`-accel kvm`); used for amd64 VMs only, when [`kvm_works`].
    Kvm,
    /// QEMU's software emulator (`-accel tcg`): always for arm64, and for amd64 when KVM does not work here.
    Tcg,
}

/// One VM to start.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The VM's name (QEMU `-name`), normally the machine's hostname.
    pub name: String,
    /// The MAC address of its NIC: the inventory's, so the DHCP server knows the machine.
    pub mac: MacAddr,
    /// A second NIC with this MAC placed before the boot NIC, on a hub port of its own (no network, no boot
    /// ROM): the guest kernel probes it first, so the boot NIC is not `eth0` (multi-NIC servers in the lab).
    pub decoy_mac: Option<MacAddr>,
    /// amd64: q35 with the firmware below; arm64: `virt` on AAVMF (its PXE, or HTTP Boot for [`Firmware::Http`]).
    pub arch: Arch,
    /// The tap device (inside the namespace the VM runs in).
    pub tap: String,
    /// How the firmware reaches the boot loader.
    pub firmware: Firmware,
    /// KVM or TCG; arm64 VMs run under TCG whatever this says.
    pub accel: Accel,
    /// Guest memory in MiB (QEMU `-m`).
    pub memory_mb: u32,
    /// Disks in order: `/dev/vda`, `/dev/vdb`, ... (raw files).
    pub disks: Vec<PathBuf>,
    /// Where the serial console is appended.
    pub console_log: PathBuf,
    /// Per-VM files (the UEFI variable store copy).
    pub dir: PathBuf,
    /// A variable store with Secure Boot keys enrolled (`vm::uefi_vars`), for this VM's architecture: an amd64
    /// VM runs OVMF's Secure Boot build (q35 with SMM), an arm64 VM AAVMF (no SMM needed), from a copy of it and
    /// enforces Secure Boot. UEFI only; `None`: no Secure Boot.
    pub secure_boot_vars: Option<PathBuf>,
    /// The unix socket of this VM's software TPM (`vm::swtpm`): a TPM 2.0 CRB device; `None`: no TPM.
    pub tpm_socket: Option<PathBuf>,
    /// A directory given to the firmware as a read-only FAT disk (QEMU's vvfat) booted before the NIC: UEFI starts
    /// its `EFI/BOOT/BOOTX64.EFI` (a UKI booted from a disk instead of the network). `None`: network boot only.
    pub boot_dir: Option<PathBuf>,
}

/// Something needed to start a VM is missing.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file the VM needs could not be created or copied (a disk, the per-VM directory, the variable store, the
    /// QEMU stderr log), or a firmware file is not installed: install the Debian package the message names
    /// (`scripts/setup`).
    #[error("{path}: {detail}")]
    File {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong with it.
        detail: String,
    },
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> VmError {
    VmError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Creates a blank sparse raw disk of `size_bytes` unless `path` exists (a kept state disk stays as it is).
pub fn blank_disk(path: &Path, size_bytes: u64) -> Result<(), VmError> {
    if path.exists() {
        return Ok(());
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| file_err(p, e))?;
    }
    let f = std::fs::File::create(path).map_err(|e| file_err(path, e))?;
    f.set_len(size_bytes).map_err(|e| file_err(path, e))
}

/// The QEMU binary for `arch`.
pub fn binary(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// The UEFI code and variable-store templates for `arch`, with the Debian package that ships them.
fn uefi_firmware(arch: Arch) -> (&'static str, &'static str, &'static str) {
    match arch {
        Arch::Amd64 => (OVMF_CODE, OVMF_VARS, "ovmf"),
        Arch::Arm64 => (AAVMF_CODE, AAVMF_VARS, "qemu-efi-aarch64"),
    }
}

/// The QEMU arguments for `spec` (for [`binary`]). For UEFI it copies the variable store into `spec.dir` (once).
pub fn args(spec: &VmSpec) -> Result<Vec<String>, VmError> {
    std::fs::create_dir_all(&spec.dir).map_err(|e| file_err(&spec.dir, e))?;
    // arm64 is always UEFI (AAVMF).
    let secure = spec.secure_boot_vars.as_ref().filter(|_| {
        spec.arch == Arch::Arm64 || matches!(spec.firmware, Firmware::Uefi | Firmware::Http)
    });
    let machine: &[&str] = match spec.arch {
        Arch::Amd64 if secure.is_some() => &[
            "-machine",
            "q35,smm=on",
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
        ],
        Arch::Amd64 => &["-machine", "q35"],
        Arch::Arm64 => &["-machine", "virt", "-cpu", "cortex-a57"],
    };
    let mut a: Vec<String> = machine.iter().map(|s| s.to_string()).collect();
    a.extend([
        "-name".into(),
        spec.name.clone(),
        "-m".into(),
        spec.memory_mb.to_string(),
        "-smp".into(),
        "1".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-monitor".into(),
        "none".into(),
        "-chardev".into(),
        format!(
            "file,id=console,path={},append=on",
            spec.console_log.display()
        ),
        "-serial".into(),
        "chardev:console".into(),
        "-netdev".into(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
        "-object".into(),
        "rng-random,id=rng0,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-pci,rng=rng0".into(),
    ]);
    // arm64 has no BIOS: every arm64 VM runs AAVMF, whose own PXE (or HTTP Boot) client starts the boot.
    let firmware = match (spec.arch, spec.firmware) {
        (Arch::Arm64, Firmware::Bios) => Firmware::Uefi,
        (_, f) => f,
    };
    let rom = match firmware {
        Firmware::Bios => "",
        Firmware::Uefi | Firmware::Http => ",romfile=",
    };
    if let Some(decoy) = spec.decoy_mac {
        a.extend([
            "-netdev".into(),
            "hubport,id=n1,hubid=1".into(),
            "-device".into(),
            format!("virtio-net-pci,netdev=n1,mac={decoy},romfile="),
        ]);
    }
    a.push("-device".into());
    a.push(format!(
        "virtio-net-pci,netdev=n0,mac={},bootindex=1{rom}",
        spec.mac
    ));
    for (i, d) in spec.disks.iter().enumerate() {
        a.push("-drive".into());
        a.push(format!(
            "file={},format=raw,if=none,id=disk{i},cache=unsafe",
            d.display()
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-pci,drive=disk{i}"));
    }
    if let Some(dir) = &spec.boot_dir {
        a.push("-drive".into());
        a.push(format!(
            "file=fat:{},format=raw,if=none,id=esp,readonly=on",
            dir.display()
        ));
        a.push("-device".into());
        a.push("virtio-blk-pci,drive=esp,bootindex=0".into());
    }
    if let Some(sock) = &spec.tpm_socket {
        a.extend(super::swtpm::qemu_args(sock));
    }
    // KVM cannot run another architecture: arm64 VMs are always emulated.
    match (spec.accel, spec.arch) {
        (Accel::Kvm, Arch::Amd64) => a.extend(["-accel".into(), "kvm".into()]),
        _ => a.extend(["-accel".into(), "tcg".into()]),
    }
    match firmware {
        Firmware::Bios => a.extend(["-boot".into(), "n".into()]),
        Firmware::Uefi | Firmware::Http => {
            let (code, vars_template, package) = match secure {
                Some(v) if spec.arch == Arch::Amd64 => {
                    (OVMF_CODE_SECBOOT, v.to_str().unwrap_or_default(), "ovmf")
                }
                Some(v) => (
                    AAVMF_CODE,
                    v.to_str().unwrap_or_default(),
                    "qemu-efi-aarch64",
                ),
                None => uefi_firmware(spec.arch),
            };
            for f in [code, vars_template] {
                if !Path::new(f).exists() {
                    return Err(file_err(
                        Path::new(f),
                        format!("missing; install Debian's {package} package (scripts/setup)"),
                    ));
                }
            }
            let vars = spec.dir.join("UEFI_VARS.fd");
            if !vars.exists() {
                std::fs::copy(vars_template, &vars).map_err(|e| file_err(&vars, e))?;
            }
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ));
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
            if firmware == Firmware::Http {
                // Skip OVMF's PXE attempts (they time out first), leaving HTTP Boot.
                for v in ["IPv4PXESupport", "IPv6PXESupport"] {
                    a.push("-fw_cfg".into());
                    a.push(format!("name=opt/org.tianocore/{v},string=n"));
                }
            }
        }
    }
    Ok(a)
}

/// `qemu-system-<arch> <args>` as a command inside `netns`.
/// Also writes the command line to `qemu.args` in the VM's directory (the binary, then one argument per line),
/// to rerun or study a boot by hand; `bench/boot` boots the same VM against stock servers with it.
pub fn command(netns: &super::netns::Netns, spec: &VmSpec) -> Result<Command, VmError> {
    let args = args(spec)?;
    let record = spec.dir.join("qemu.args");
    let mut text = format!("{}\n", binary(spec.arch));
    for a in &args {
        text.push_str(a);
        text.push('\n');
    }
    std::fs::write(&record, text).map_err(|e| file_err(&record, e))?;
    let mut c = netns.command(binary(spec.arch));
    c.args(args);
    let err = spec.dir.join("qemu.stderr");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&err)
        .map_err(|e| file_err(&err, e))?;
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(f);
    Ok(c)
}

/// The last `n` lines of a console log, with escape sequences and carriage returns removed.
pub fn console_tail(path: &Path, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let clean = strip_ansi(&text);
    let lines: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&d) = chars.peek() {
                        chars.next();
                        if d.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether KVM really runs our firmware here: starts a tiny VM (SeaBIOS + iPXE ROM on an isolated QEMU hub, no
/// host network) with `-accel kvm` and waits up to 10 s for iPXE to start configuring its NIC. `/dev/kvm`'s
/// presence alone proves nothing (on some hosts it is a software module under which the ROM triple-faults).
/// The answer is computed once per process.
pub fn kvm_works() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        let ok = probe(Accel::Kvm, Duration::from_secs(10));
        tracing::info!(kvm = ok, "KVM probe");
        ok
    })
}

/// The accelerator to use: KVM when [`kvm_works`], else TCG.
pub fn best_accel() -> Accel {
    if kvm_works() { Accel::Kvm } else { Accel::Tcg }
}

/// [`best_accel`], remembered in `cache_dir/kvm-probe` until the host reboots (the probe costs up to 10 s).
pub fn best_accel_cached(cache_dir: &Path) -> Accel {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let file = cache_dir.join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Some((id, answer)) = text.trim().rsplit_once(' ')
        && id == boot_id.trim()
    {
        return if answer == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
    }
    let a = best_accel();
    let _ = std::fs::create_dir_all(cache_dir);
    let word = if a == Accel::Kvm { "kvm" } else { "tcg" };
    let _ = std::fs::write(&file, format!("{} {word}\n", boot_id.trim()));
    a
}

/// Boots the probe VM with `accel`; `true` when iPXE prints `Configuring (net0` within `limit`.
pub fn probe(accel: Accel, limit: Duration) -> bool {
    if accel == Accel::Kvm && !Path::new("/dev/kvm").exists() {
        return false;
    }
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let log = dir.path().join("console.log");
    let accel_arg = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", accel_arg, "-m", "128"])
        .args(["-nographic", "-no-reboot", "-monitor", "none", "-boot", "n"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .args(["-netdev", "hubport,id=n0,hubid=0"])
        .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_tied();
    let Ok(mut child) = child else {
        return false;
    };
    let start = Instant::now();
    let mut ok = false;
    while start.elapsed() < limit {
        if std::fs::read(&log)
            .map(|b| String::from_utf8_lossy(&b).contains("Configuring (net0"))
            .unwrap_or(false)
        {
            ok = true;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fw: Firmware, dir: &Path) -> VmSpec {
        VmSpec {
            name: "worker-1".into(),
            mac: "52:54:00:77:00:21".parse().unwrap(),
            decoy_mac: None,
            arch: Arch::Amd64,
            tap: "ibl0".into(),
            firmware: fw,
            accel: Accel::Tcg,
            memory_mb: 1024,
            disks: vec![dir.join("state.img"), dir.join("data.img")],
            console_log: dir.join("console.log"),
            dir: dir.join("vm"),
            secure_boot_vars: None,
            tpm_socket: None,
            boot_dir: None,
        }
    }

    #[test]
    fn a_decoy_nic_comes_first_without_network_or_rom_and_the_boot_nic_keeps_the_boot_index() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec(Firmware::Bios, d.path());
        s.decoy_mac = Some("02:00:00:77:00:21".parse().unwrap());
        let a = args(&s).unwrap().join(" ");
        let decoy = a
            .find("netdev=n1,mac=02:00:00:77:00:21,romfile=")
            .expect(&a);
        let boot = a
            .find("netdev=n0,mac=52:54:00:77:00:21,bootindex=1")
            .expect(&a);
        assert!(decoy < boot, "the decoy is probed first: {a}");
        assert!(a.contains("-netdev hubport,id=n1,hubid=1"), "{a}");
    }

    #[test]
    fn firmware_variants_make_the_right_command_line() {
        let d = tempfile::tempdir().unwrap();
        let bios = args(&spec(Firmware::Bios, d.path())).unwrap().join(" ");
        assert!(
            bios.contains("mac=52:54:00:77:00:21,bootindex=1 "),
            "{bios}"
        );
        assert!(bios.contains("-boot n") && !bios.contains("romfile") && !bios.contains("pflash"));
        assert!(bios.contains("-no-reboot") && bios.contains("-accel tcg"));
        assert!(bios.contains("virtio-blk-pci,drive=disk1"));
        assert!(!bios.contains("fat:"));
        let mut from_disk = spec(Firmware::Uefi, d.path());
        from_disk.boot_dir = Some(d.path().join("esp"));
        let disk = args(&from_disk).unwrap().join(" ");
        assert!(
            disk.contains(&format!(
                "file=fat:{},format=raw,if=none,id=esp,readonly=on -device virtio-blk-pci,drive=esp,bootindex=0",
                d.path().join("esp").display()
            )),
            "{disk}"
        );
        let uefi = args(&spec(Firmware::Uefi, d.path())).unwrap().join(" ");
        assert!(
            uefi.contains(",romfile= ") && uefi.contains("OVMF_CODE_4M.fd"),
            "{uefi}"
        );
        assert!(!uefi.contains("IPv4PXESupport"));
        assert!(d.path().join("vm/UEFI_VARS.fd").exists());
        let http = args(&spec(Firmware::Http, d.path())).unwrap().join(" ");
        assert!(http.contains("name=opt/org.tianocore/IPv4PXESupport,string=n"));
        assert!(http.contains("name=opt/org.tianocore/IPv6PXESupport,string=n"));
        if Path::new(AAVMF_CODE).exists() {
            let mut s = spec(Firmware::Bios, d.path());
            s.arch = Arch::Arm64;
            s.accel = Accel::Kvm;
            s.dir = d.path().join("arm");
            let arm = args(&s).unwrap().join(" ");
            assert!(arm.starts_with("-machine virt -cpu cortex-a57 "), "{arm}");
            assert!(
                arm.contains("AAVMF_CODE.fd") && arm.contains(",romfile= "),
                "{arm}"
            );
            assert!(
                arm.contains("-accel tcg") && !arm.contains("-boot n"),
                "{arm}"
            );
            assert_eq!(binary(s.arch), "qemu-system-aarch64");
        }
    }

    #[test]
    fn blank_disks_are_sparse_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.img");
        blank_disk(&p, 4 << 30).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 << 30);
        std::fs::write(&p, b"kept").unwrap();
        blank_disk(&p, 4 << 30).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"kept");
    }

    #[test]
    fn console_tail_strips_escapes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        std::fs::write(&p, "a\r\n\x1b[0;1mb\x1b[0m\r\n\r\nc\n").unwrap();
        assert_eq!(console_tail(&p, 2), "b\nc");
    }

    #[test]
    fn root_probe_tcg_reaches_ipxe_and_kvm_answer_is_consistent() {
        // The probe's positive path, checked with TCG (which works everywhere): iPXE starts configuring.
        assert!(probe(Accel::Tcg, Duration::from_secs(30)));
        // Whatever KVM answers, best_accel follows it.
        assert_eq!(best_accel() == Accel::Kvm, kvm_works());
    }
}
