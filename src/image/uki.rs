//! The signed unified kernel image (UKI) of a role: `uki.efi`, booted directly by UEFI firmware under Secure
//! Boot.
//!
//! systemd's EFI stub (`linuxx64.efi.stub` from Debian's `systemd-boot-efi`; Debian 12 has no `ukify`) with four
//! sections added by `objcopy`, each placed after the previous one at the stub's section alignment: `.osrel`
//! (os-release), `.cmdline` (the role-level command line of `ipxe/uki-cmdline.j2`, carrying the root
//! filesystem's dm-verity root hash), `.linux` (the image's kernel) and `.initrd` (its netboot initrd). The
//! joined file is signed with the db key by `osslsigncode` (Authenticode, sha256). Same inputs and key, same
//! bytes: the PE header's time stamp objcopy writes is set to `SOURCE_DATE_EPOCH` (and its checksum to 0), the
//! signature's signing time is `SOURCE_DATE_EPOCH` too, and RSA PKCS#1 v1.5 signatures are deterministic.
//! (`sbsign` would do, but it signs the current time into the signature: every signing gives other bytes.)
//!
//! The signature is part of the image: `uki.efi` is in the manifest with its sha256, so the image id names the
//! exact signed bytes served to firmware. The db certificate's sha256 is among the image's inputs: a new db
//! key gives a new UKI and so a new image id (rolling the key is a rebuild and a re-pin, see
//! docs/secure-boot.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::base::{BaseError, SOURCE_DATE_EPOCH, run};
use crate::config::{Arch, Cluster, Role};

pub use super::manifest::UKI;

/// Whether the image of `role` for `arch` carries a signed UKI: `[secure_boot]` is enabled and the role boots
/// with Secure Boot by default (`[secure_boot] roles`) or some machine of that role and architecture does. Images
/// no Secure Boot machine boots stay without one (and keep the ids they had before UKIs).
pub fn wanted(cluster: &Cluster, role: Role, arch: Arch) -> bool {
    let sb = &cluster.secure_boot;
    sb.enabled
        && (sb.roles.contains(&role)
            || cluster
                .machines
                .iter()
                .any(|m| m.role == role && m.arch == arch && m.secure_boot))
}

/// Where systemd-boot-efi puts the EFI stub for `arch` (Debian 12's paths), relative to a root.
fn stub_in_root(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
        Arch::Arm64 => "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
    }
}

/// systemd-boot-efi's EFI stub for `arch` on this (amd64) build host.
pub fn stub(arch: Arch) -> PathBuf {
    Path::new("/").join(stub_in_root(arch))
}

/// The EFI stub a UKI of `arch` is built on, for an image whose unpacked root is `root`: amd64 takes the build
/// host's `linuxx64.efi.stub`; arm64 takes `linuxaa64.efi.stub` from the arm64 image's own systemd-boot-efi
/// (`[arch.arm64]` packages in profiles/base), as an amd64 host cannot install the arm64 package.
pub fn stub_for(arch: Arch, root: &Path) -> PathBuf {
    match arch {
        Arch::Amd64 => stub(arch),
        Arch::Arm64 => root.join(stub_in_root(arch)),
    }
}

/// The objcopy that can write `arch`'s PE format: the host's (x86-64) one, or binutils-aarch64-linux-gnu's for
/// `pei-aarch64-little` (the host's objcopy does not know arm64 PE files).
pub fn objcopy(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "objcopy",
        Arch::Arm64 => "aarch64-linux-gnu-objcopy",
    }
}

/// The sha256 of the db certificate file (PEM bytes), recorded among the inputs of the image.
pub fn cert_digest(cert: &Path) -> Result<String, BaseError> {
    let b = std::fs::read(cert).map_err(|source| BaseError::Io {
        path: cert.to_path_buf(),
        source,
    })?;
    Ok(hex::encode(Sha256::digest(b)))
}

/// What goes into a UKI.
pub struct Parts<'a> {
    /// The EFI stub.
    pub stub: &'a Path,
    /// The objcopy for the stub's architecture ([`objcopy`]).
    pub objcopy: &'a str,
    /// os-release text (`.osrel`).
    pub osrel: &'a str,
    /// The command line (`.cmdline`).
    pub cmdline: &'a str,
    /// The kernel (`.linux`).
    pub kernel: &'a Path,
    /// The initrd (`.initrd`).
    pub initrd: &'a Path,
    /// The db private key (PEM) and its certificate (PEM) for `osslsigncode`.
    pub key: &'a Path,
    /// See `key`.
    pub cert: &'a Path,
}

/// Where a PE image's sections end (relative virtual address, rounded up to its alignment), its image base
/// and its section alignment: the first free address for a new section.
fn pe_layout(pe: &[u8]) -> Option<(u64, u64, u64)> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(pe.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(pe.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(pe.get(o..o + 8)?.try_into().ok()?));
    let pe_off = u32_at(0x3c)? as usize;
    if pe.get(pe_off..pe_off + 4)? != b"PE\0\0" {
        return None;
    }
    let coff = pe_off + 4;
    let nsect = u16_at(coff + 2)? as usize;
    let opt_size = u16_at(coff + 16)? as usize;
    let opt = coff + 20;
    // PE32+ (0x20b): ImageBase is 8 bytes at 24; SectionAlignment at 32.
    if u16_at(opt)? != 0x20b {
        return None;
    }
    let base = u64_at(opt + 24)?;
    let align = u64::from(u32_at(opt + 32)?);
    let mut end = 0u64;
    for i in 0..nsect {
        let s = opt + opt_size + i * 40;
        let vsize = u64::from(u32_at(s + 8)?);
        let va = u64::from(u32_at(s + 12)?);
        end = end.max(va + vsize);
    }
    Some((end.div_ceil(align) * align, base, align))
}

/// Sets the PE header's TimeDateStamp to [`SOURCE_DATE_EPOCH`] and its (unused by UEFI) CheckSum to 0.
fn fix_header(pe: &mut [u8]) -> bool {
    let Some(off) = pe
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    else {
        return false;
    };
    if pe.get(off..off + 4) != Some(b"PE\0\0") || pe.len() < off + 24 + 68 {
        return false;
    }
    pe[off + 8..off + 12].copy_from_slice(&(SOURCE_DATE_EPOCH as u32).to_le_bytes());
    pe[off + 24 + 64..off + 24 + 68].copy_from_slice(&[0; 4]);
    true
}

/// Joins the parts on the stub (in `work`) and signs the result into `out`.
pub fn make(parts: &Parts, work: &Path, out: &Path) -> Result<(), BaseError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BaseError::Io { path, source }
    };
    let stub = std::fs::read(parts.stub).map_err(io(parts.stub))?;
    let (mut next, base, align) = pe_layout(&stub).ok_or_else(|| BaseError::Command {
        command: format!("reading {}", parts.stub.display()),
        status: "not a PE32+ EFI stub".into(),
        tail: "install systemd-boot-efi (Debian 12 ships linuxx64.efi.stub; arm64 images carry \
               linuxaa64.efi.stub from their own systemd-boot-efi)"
            .into(),
    })?;
    std::fs::create_dir_all(work).map_err(io(work))?;
    let osrel = work.join("osrel");
    std::fs::write(&osrel, parts.osrel).map_err(io(&osrel))?;
    let cmdline = work.join("cmdline");
    std::fs::write(&cmdline, parts.cmdline).map_err(io(&cmdline))?;
    let mut cmd = Command::new(parts.objcopy);
    for (name, file) in [
        (".osrel", osrel.as_path()),
        (".cmdline", cmdline.as_path()),
        (".linux", parts.kernel),
        (".initrd", parts.initrd),
    ] {
        let size = std::fs::metadata(file).map_err(io(file))?.len();
        cmd.arg("--add-section")
            .arg(format!("{name}={}", file.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={:#x}", base + next));
        next = (next + size).div_ceil(align) * align;
    }
    let unsigned = work.join("uki.unsigned.efi");
    run(cmd.arg(parts.stub).arg(&unsigned))?;
    // objcopy stamps the PE header with the current time (binutils 2.40 ignores SOURCE_DATE_EPOCH here) and
    // recomputes the checksum over it: fix both so the same parts give the same bytes.
    let mut pe = std::fs::read(&unsigned).map_err(io(&unsigned))?;
    if !fix_header(&mut pe) {
        return Err(BaseError::Command {
            command: format!("objcopy … {}", unsigned.display()),
            status: "wrote no PE32+ file".into(),
            tail: String::new(),
        });
    }
    std::fs::write(&unsigned, &pe).map_err(io(&unsigned))?;
    // osslsigncode with a fixed signing time: sbsign (sbsigntool 0.9.4) puts the current time in the signature's
    // signed attributes, so two signings of the same file differ.
    run(Command::new("osslsigncode")
        .arg("sign")
        .arg("-certs")
        .arg(parts.cert)
        .arg("-key")
        .arg(parts.key)
        .args(["-h", "sha256", "-time", &SOURCE_DATE_EPOCH.to_string()])
        .arg("-in")
        .arg(&unsigned)
        .arg("-out")
        .arg(out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_layout_is_read_from_its_pe_header() {
        let s = stub(Arch::Amd64);
        let Ok(bytes) = std::fs::read(&s) else {
            eprintln!("{} missing (systemd-boot-efi): skipped", s.display());
            return;
        };
        let (end, base, align) = pe_layout(&bytes).unwrap();
        assert!(align.is_power_of_two(), "{align}");
        assert_eq!(end % align, 0);
        assert!(end > 0x1000, "{end:#x}");
        assert_eq!(base % 0x1000, 0);
        assert_eq!(pe_layout(b"MZ not a PE file at all, far too short"), None);
    }

    fn openssl_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (k, c) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.crt")),
        );
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name}"), "-keyout"])
            .arg(&k)
            .arg("-out")
            .arg(&c)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        (k, c)
    }

    /// Two UKIs of the same parts and key are the same bytes and verify against the key's certificate; another
    /// key's certificate does not verify them.
    #[test]
    fn a_uki_is_reproducible_and_signed_by_the_db_key() {
        let s = stub(Arch::Amd64);
        if !s.is_file()
            || !crate::image::base::on_path("osslsigncode", std::env::var_os("PATH").as_deref())
        {
            eprintln!("systemd-boot-efi or osslsigncode missing: skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (key, cert) = openssl_pair(d.path(), "db");
        let (_, other) = openssl_pair(d.path(), "other");
        let kernel = d.path().join("vmlinuz");
        let initrd = d.path().join("initrd.img");
        std::fs::write(&kernel, vec![0x4du8; 300_001]).unwrap();
        std::fs::write(&initrd, vec![0x1fu8; 123_457]).unwrap();
        let parts = Parts {
            stub: &s,
            objcopy: objcopy(Arch::Amd64),
            osrel: "ID=debian\n",
            cmdline: "ip=dhcp imgbuild.uki=1",
            kernel: &kernel,
            initrd: &initrd,
            key: &key,
            cert: &cert,
        };
        let (a, b) = (d.path().join("a.efi"), d.path().join("b.efi"));
        make(&parts, &d.path().join("wa"), &a).unwrap();
        // objcopy writes the current second into the header: build the second one in another second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        make(&parts, &d.path().join("wb"), &b).unwrap();
        let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let diff: Vec<usize> = (0..ba.len().min(bb.len()))
            .filter(|&i| ba[i] != bb[i])
            .collect();
        assert!(
            diff.is_empty() && ba.len() == bb.len(),
            "the two UKIs differ at {diff:x?} (sizes {} and {})",
            ba.len(),
            bb.len()
        );
        let verify = |c: &Path| {
            Command::new("sbverify")
                .arg("--cert")
                .arg(c)
                .arg(&a)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify(&cert));
        assert!(!verify(&other));
        let out = Command::new("objdump").arg("-h").arg(&a).output().unwrap();
        let heads = String::from_utf8_lossy(&out.stdout);
        for sect in [".osrel", ".cmdline", ".linux", ".initrd"] {
            assert!(heads.contains(sect), "{heads}");
        }
    }
}
