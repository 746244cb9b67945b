//! The base layer: a Debian root filesystem made by `mmdebstrap`, cached by the digest of its inputs.
//!
//! Inputs: the architecture, release, mirror (or the snapshot.debian.org URL of `base.snapshot`), the sorted
//! package set of the role's profile plus `base.packages`, the variant and [`SOURCE_DATE_EPOCH`]. Roles with the
//! same package set and architecture share one base. The cache holds `cache/base/<digest>.tar` (mmdebstrap's
//! tarball: byte-identical across runs with the same inputs and epoch but for open-iscsi's random initiator
//! name, which the role layer replaces, docs/images.md); a file lock makes concurrent builds (and tests) share
//! one mmdebstrap run.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::profile::Profile;
use crate::config::{Arch, Cluster};

/// The fixed build time of every image: 2026-01-01T00:00:00Z. Every file time in the base, the squashfs and
/// the initrd is clamped to it, so the same inputs give the same bytes on any day. Changing it changes every id.
pub const SOURCE_DATE_EPOCH: u64 = 1_767_225_600;

/// Where binfmt_misc is mounted.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// mmdebstrap's variant: Essential and apt, plus the profile's packages.
pub const VARIANT: &str = "minbase";

/// Where mmdebstrap writes its `--dpkgopt` options inside the root (relative to it).
pub const DPKG_OPTS: &str = "etc/dpkg/dpkg.cfg.d/99mmdebstrap";

/// Everything the base layer is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseSpec {
    /// Version of this spec's layout and of how [`BaseSpec::command`] builds it; raising it changes every base
    /// digest. 2: every architecture without Debian's generic initrd (`INITRD=No`) and with dpkg's
    /// `force-unsafe-io` while building (1: amd64 built Debian's initrd, and dpkg synced every file).
    pub format: u32,
    /// The tool that builds the base: `mmdebstrap`.
    pub tool: &'static str,
    /// mmdebstrap's `--variant`, [`VARIANT`].
    pub variant: &'static str,
    /// Debian architecture (`mmdebstrap --architectures`). Left out of the JSON for amd64, so the digests of
    /// amd64 bases (and the caches keyed by them) are those from before imgbuild built other architectures;
    /// every other architecture is in the JSON, so no two architectures share a digest.
    #[serde(skip_serializing_if = "is_amd64")]
    pub arch: Arch,
    /// The Debian release (`[base] release`), e.g. `bookworm`.
    pub release: String,
    /// The mirror mmdebstrap reads (the snapshot URL when a snapshot is pinned).
    pub mirror: String,
    /// The snapshot.debian.org timestamp (`[base] snapshot`), if the package set is pinned in time.
    pub snapshot: Option<String>,
    /// Sorted, without duplicates.
    pub packages: Vec<String>,
    /// The build time every file is clamped to, [`SOURCE_DATE_EPOCH`].
    pub source_date_epoch: u64,
}

/// Why making the base layer failed, or a command of the later build steps (unpacking, chroot, mksquashfs) that
/// runs through the same helper.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The base cache (`cache/base/`), a tarball in it or its lock file could not be created, read or written.
    #[error("cannot use the base cache {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// This machine cannot run binaries of the image's architecture, which the build needs: binfmt_misc is not
    /// mounted or disabled, or no enabled qemu-user handler with the `F` flag matches. Run `./scripts/setup` as
    /// root.
    #[error(
        "cannot build an {arch} image on this {host} machine: {reason}. Its maintainer scripts and mkinitramfs \
         run {arch} binaries through qemu-user-static and binfmt_misc: run ./scripts/setup (as root), or by \
         hand: apt-get install qemu-user-static binfmt-support; mount -t binfmt_misc binfmt_misc \
         /proc/sys/fs/binfmt_misc; update-binfmts --enable {qemu}"
    )]
    ForeignArch {
        /// The architecture of the image being built.
        arch: Arch,
        /// The architecture of this machine (Debian's name, or Rust's when imgbuild builds nothing for it).
        host: String,
        /// The qemu-user handler that would run its binaries, e.g. `qemu-aarch64`.
        qemu: String,
        /// What exactly is missing, e.g. `binfmt_misc is disabled`.
        reason: String,
    },
    /// A tool mmdebstrap needs for a foreign architecture is not on `PATH`; install its package (or run
    /// `./scripts/setup`).
    #[error(
        "cannot build an {arch} image on this {host} machine: mmdebstrap needs `{tool}` for a foreign \
         architecture and it is not on PATH. Run ./scripts/setup (as root), or by hand: apt-get install {package}"
    )]
    MissingTool {
        /// The architecture of the image being built.
        arch: Arch,
        /// The architecture of this machine.
        host: String,
        /// The missing program, e.g. `arch-test`.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// An external command of the build (mmdebstrap, tar, chroot, dpkg-query, mksquashfs) could not start or exited
    /// with failure; the message shows its output.
    #[error("{command} failed ({status}); its last output:\n{tail}")]
    Command {
        /// The command line, cut at 300 characters.
        command: String,
        /// Its exit status, or why it could not start.
        status: String,
        /// The last 25 lines of its stdout and stderr (or a hint when it could not start).
        tail: String,
    },
}

/// Runs a command, turning failure into an error with the tail of its output.
pub(crate) fn run(cmd: &mut Command) -> Result<String, BaseError> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let shown = if shown.len() > 300 {
        format!("{}…", &shown[..300])
    } else {
        shown
    };
    let out = cmd.output().map_err(|e| BaseError::Command {
        command: shown.clone(),
        status: e.to_string(),
        tail: "(could not start it: is the Debian package installed? see .ci/apt-packages)".into(),
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        return Err(BaseError::Command {
            command: shown,
            status: out.status.to_string(),
            tail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_amd64(a: &Arch) -> bool {
    *a == Arch::Amd64
}

/// The architecture of the machine imgbuild runs on, if it is one imgbuild builds for.
pub fn host_arch() -> Option<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(Arch::Amd64),
        "aarch64" => Some(Arch::Arm64),
        _ => None,
    }
}

/// The ELF `e_machine` of an architecture's binaries.
fn elf_machine(arch: Arch) -> u16 {
    match arch {
        Arch::Amd64 => 0x3e,
        Arch::Arm64 => 0xb7,
    }
}

/// The qemu-user binfmt handler name of an architecture (Debian's qemu-user-static).
fn qemu_name(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-x86_64",
        Arch::Arm64 => "qemu-aarch64",
    }
}

/// The first 20 bytes of a little-endian 64-bit ELF executable (`ET_EXEC`) of `arch`: what binfmt_misc
/// matches a handler's magic against.
fn elf_header(arch: Arch) -> [u8; 20] {
    let m = elf_machine(arch).to_le_bytes();
    [
        0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, m[0], m[1],
    ]
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks that this machine can run `arch` binaries, which building an image of `arch` needs (mmdebstrap's
/// maintainer scripts, mkinitramfs and `systemctl preset` run inside the image's root). Native: always.
/// Foreign: `binfmt_misc` (its directory is `binfmt_dir`, normally `/proc/sys/fs/binfmt_misc`) must be mounted
/// and enabled, with an enabled handler whose magic matches `arch`'s ELF executables and the `F` (fix-binary)
/// flag, so it works inside a chroot that has no emulator of its own.
pub fn check_can_run(arch: Arch, binfmt_dir: &Path) -> Result<(), BaseError> {
    let host = host_arch();
    if host == Some(arch) {
        return Ok(());
    }
    let fail = |reason: String| BaseError::ForeignArch {
        arch,
        host: host.map_or(std::env::consts::ARCH.to_string(), |h| h.to_string()),
        qemu: qemu_name(arch).into(),
        reason,
    };
    let status = std::fs::read_to_string(binfmt_dir.join("status")).map_err(|_| {
        fail(format!(
            "binfmt_misc is not mounted on {}",
            binfmt_dir.display()
        ))
    })?;
    if status.trim() != "enabled" {
        return Err(fail("binfmt_misc is disabled".into()));
    }
    let header = elf_header(arch);
    let mut names: Vec<PathBuf> = std::fs::read_dir(binfmt_dir)
        .map_err(|e| fail(format!("cannot read {}: {e}", binfmt_dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n != "status" && n != "register")
        })
        .collect();
    names.sort();
    let mut disabled = None;
    for p in names {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let (Some(magic), Some(offset)) = (field("magic "), field("offset ")) else {
            continue;
        };
        let (Some(magic), Ok(offset)) = (parse_hex(&magic), offset.parse::<usize>()) else {
            continue;
        };
        let mask = field("mask ")
            .and_then(|m| parse_hex(&m))
            .unwrap_or_else(|| vec![0xff; magic.len()]);
        let matches = offset + magic.len() <= header.len()
            && magic
                .iter()
                .zip(&mask)
                .enumerate()
                .all(|(i, (m, k))| header[offset + i] & k == m & k);
        if !matches {
            continue;
        }
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if text.lines().next() != Some("enabled") {
            disabled = Some(format!("the binfmt_misc handler {name} is disabled"));
            continue;
        }
        if !field("flags:").is_some_and(|f| f.contains('F')) {
            return Err(fail(format!(
                "the binfmt_misc handler {name} lacks the F (fix-binary) flag, so it cannot run inside the \
                 image's chroot (Debian's qemu-user-static sets it)"
            )));
        }
        return Ok(());
    }
    Err(fail(disabled.unwrap_or_else(|| {
        format!(
            "no binfmt_misc handler runs {arch} binaries ({} is not registered)",
            qemu_name(arch)
        )
    })))
}

/// Whether `tool` is a file in one of the directories of the search path `path` (normally `$PATH`): how the
/// builder and the lab check for host tools before they run anything.
pub fn on_path(tool: &str, path: Option<&std::ffi::OsStr>) -> bool {
    path.is_some_and(|p| std::env::split_paths(p).any(|d| d.join(tool).is_file()))
}

/// Checks that the tools mmdebstrap calls for a foreign `arch` are installed (`arch-test`, which mmdebstrap runs to
/// see that the machine can execute `arch` binaries; without it mmdebstrap stops with "install arch-test for
/// foreign architecture support"). `path` is the search path (normally `$PATH`). Native: nothing needed.
pub fn check_foreign_tools(arch: Arch, path: Option<&std::ffi::OsStr>) -> Result<(), BaseError> {
    let host = host_arch();
    if host == Some(arch) {
        return Ok(());
    }
    if on_path("arch-test", path) {
        return Ok(());
    }
    Err(BaseError::MissingTool {
        arch,
        host: host.map_or(std::env::consts::ARCH.to_string(), |h| h.to_string()),
        tool: "arch-test",
        package: "arch-test",
    })
}

/// The Debian package a role gets when one of its machines has `identity = "tpm"`.
pub const TPM_PACKAGE: &str = "tpm2-tools";

impl BaseSpec {
    /// The base of a role: its profile's packages plus `[base] packages`, for the profile's architecture.
    pub fn new(cluster: &Cluster, profile: &Profile) -> BaseSpec {
        let mut packages: Vec<String> = profile
            .packages
            .iter()
            .chain(cluster.base.packages.iter())
            .cloned()
            .collect();
        // Machines of this role that enroll by TPM attestation run tpm2-tools at first boot
        // (docs/attestation.md); roles without one keep their base (and its cache key) unchanged.
        if cluster.machines.iter().any(|m| {
            m.role == profile.role
                && m.arch == profile.arch
                && m.identity == crate::config::Identity::Tpm
        }) {
            packages.push(TPM_PACKAGE.to_string());
        }
        packages.sort();
        packages.dedup();
        let mirror = match &cluster.base.snapshot {
            Some(ts) => format!("http://snapshot.debian.org/archive/debian/{ts}/"),
            None => cluster.base.mirror.clone(),
        };
        BaseSpec {
            format: 2,
            tool: "mmdebstrap",
            variant: VARIANT,
            arch: profile.arch,
            release: cluster.base.release.clone(),
            mirror,
            snapshot: cluster.base.snapshot.clone(),
            packages,
            source_date_epoch: SOURCE_DATE_EPOCH,
        }
    }

    /// sha256 of the canonical JSON of the spec: the base's identity and cache key.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(
            serde_json::to_vec(self).expect("spec serializes"),
        ))
    }

    /// The mmdebstrap command that builds this base into `out` (a `.tar`).
    pub fn command(&self, out: &Path) -> Command {
        let mut c = Command::new("mmdebstrap");
        c.env("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string())
            .env("LC_ALL", "C.UTF-8");
        // Read by /etc/kernel/postinst.d/initramfs-tools ("exit if kernel does not need an initramfs"): the kernel
        // package's postinst (and initramfs-tools' trigger after it) would otherwise build Debian's generic
        // MODULES=most initrd twice, ~45 s of a ~90 s amd64 base here and minutes under emulation, and the role
        // layer deletes it (the netboot initrd is imgbuild's own, see layer::scrub).
        c.env("INITRD", "No");
        c.arg(format!("--variant={}", self.variant))
            .arg(format!("--architectures={}", self.arch))
            .arg("--quiet")
            .arg("--format=tar")
            // dpkg syncs every file it unpacks; the root is a temporary directory that becomes the tarball (which
            // the cache writes durably), so those syncs buy nothing: ~17 s of the base here. mmdebstrap writes
            // --dpkgopt into the root's dpkg.cfg.d; the customize hook (before the tarball) takes it out again.
            .arg("--dpkgopt=force-unsafe-io")
            .arg(format!("--customize-hook=rm \"$1/{DPKG_OPTS}\""));
        if !self.packages.is_empty() {
            c.arg(format!("--include={}", self.packages.join(",")));
        }
        if self.snapshot.is_some() {
            // Snapshot Release files are old by design.
            c.arg("--aptopt=Acquire::Check-Valid-Until \"false\"");
        }
        c.arg(&self.release).arg(out).arg(&self.mirror);
        c
    }
}

/// A built base, ready to unpack.
#[derive(Debug, Clone)]
pub struct Base {
    /// The digest of its [`BaseSpec`], which names it in the cache.
    pub digest: String,
    /// The tarball `cache/base/<digest>.tar` mmdebstrap wrote.
    pub tarball: PathBuf,
    /// Whether this call found it in the cache.
    pub cached: bool,
}

/// The base cache directory.
pub fn cache_dir(cluster: &Cluster) -> PathBuf {
    cluster.paths.cache.join("base")
}

/// Returns the cached base for `spec`, building it with mmdebstrap first if needed. Concurrent callers (other
/// builds, other tests) wait on a file lock and share the result.
pub fn ensure(cache: &Path, spec: &BaseSpec) -> Result<Base, BaseError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BaseError::Io { path, source }
    };
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let digest = spec.digest();
    let tarball = cache.join(format!("{digest}.tar"));
    if tarball.is_file() {
        return Ok(Base {
            digest,
            tarball,
            cached: true,
        });
    }
    let lock_path = cache.join(format!("{digest}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if tarball.is_file() {
        return Ok(Base {
            digest,
            tarball,
            cached: true,
        });
    }
    // mmdebstrap picks its output format from the extension: keep `.tar` last (and say --format=tar too).
    let tmp = cache.join(format!("{digest}.tmp-{}.tar", std::process::id()));
    let spec_json = cache.join(format!("{digest}.json"));
    std::fs::write(
        &spec_json,
        serde_json::to_vec_pretty(spec).expect("spec serializes"),
    )
    .map_err(io(&spec_json))?;
    let r = run(&mut spec.command(&tmp));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if !tmp.is_file() {
        return Err(BaseError::Command {
            command: "mmdebstrap".into(),
            status: "no tarball".into(),
            tail: format!("{} is not a file", tmp.display()),
        });
    }
    std::fs::rename(&tmp, &tarball).map_err(io(&tarball))?;
    Ok(Base {
        digest,
        tarball,
        cached: false,
    })
}

/// Unpacks a base tarball into `dir` with numeric owners and extended attributes (file capabilities).
pub fn unpack(base: &Base, dir: &Path) -> Result<(), BaseError> {
    std::fs::create_dir_all(dir).map_err(|source| BaseError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("-xf")
        .arg(&base.tarball)
        .arg("-C")
        .arg(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake binfmt_misc directory with Debian's qemu-aarch64 handler (flags as given, enabled or not).
    fn binfmt(handler: Option<(&str, bool)>, status: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("status"), format!("{status}\n")).unwrap();
        std::fs::write(d.path().join("register"), "").unwrap();
        // Another handler that must not count.
        std::fs::write(
            d.path().join("python3.11"),
            "enabled\ninterpreter /usr/bin/python3.11\nflags: \noffset 0\nmagic a70d0d0a\n",
        )
        .unwrap();
        if let Some((flags, enabled)) = handler {
            std::fs::write(
                d.path().join("qemu-aarch64"),
                format!(
                    "{}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\noffset 0\n\
                     magic 7f454c460201010000000000000000000200b700\n\
                     mask ffffffffffffff00fffffffffffffffffeffffff\n",
                    if enabled { "enabled" } else { "disabled" }
                ),
            )
            .unwrap();
        }
        d
    }

    #[test]
    fn foreign_builds_need_a_mounted_binfmt_misc_with_an_enabled_fix_binary_handler() {
        if host_arch() != Some(Arch::Amd64) {
            return;
        }
        // Native: nothing is needed, whatever binfmt_misc holds.
        check_can_run(Arch::Amd64, Path::new("/nonexistent")).unwrap();

        let ok = binfmt(Some(("PF", true)), "enabled");
        check_can_run(Arch::Arm64, ok.path()).unwrap();

        let cases = [
            (None, "enabled", "qemu-aarch64 is not registered"),
            (Some(("PF", false)), "enabled", "qemu-aarch64 is disabled"),
            (
                Some(("P", true)),
                "enabled",
                "lacks the F (fix-binary) flag",
            ),
            (Some(("PF", true)), "disabled", "binfmt_misc is disabled"),
        ];
        for (handler, status, want) in cases {
            let d = binfmt(handler, status);
            let e = check_can_run(Arch::Arm64, d.path())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(
                e.contains("./scripts/setup") && e.contains("qemu-user-static"),
                "names the fix: {e}"
            );
        }
        let e = check_can_run(Arch::Arm64, Path::new("/nonexistent/binfmt_misc"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot build an arm64 image on this amd64 machine")
                && e.contains("binfmt_misc is not mounted")
                && e.contains("mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc")
                && e.contains("update-binfmts --enable qemu-aarch64"),
            "{e}"
        );
    }

    #[test]
    fn the_architecture_is_in_the_spec_digest_and_the_command_and_no_arch_builds_debians_initrd() {
        let spec = |arch| BaseSpec {
            format: 2,
            tool: "mmdebstrap",
            variant: VARIANT,
            arch,
            release: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            snapshot: None,
            packages: vec!["busybox".into()],
            source_date_epoch: SOURCE_DATE_EPOCH,
        };
        let (a, b) = (spec(Arch::Amd64), spec(Arch::Arm64));
        assert_ne!(a.digest(), b.digest());
        // amd64's JSON leaves the field out (as before architectures existed; format 2 changed its digest anyway).
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("arch"), "{json}");
        assert!(
            serde_json::to_string(&b)
                .unwrap()
                .contains("\"arch\":\"arm64\"")
        );
        let args = |s: &BaseSpec| {
            s.command(Path::new("/x.tar"))
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert!(args(&a).contains(&"--architectures=amd64".to_string()));
        assert!(args(&b).contains(&"--architectures=arm64".to_string()));
        let initrd_env = |s: &BaseSpec| {
            s.command(Path::new("/x.tar"))
                .get_envs()
                .any(|(k, v)| k == "INITRD" && v == Some(std::ffi::OsStr::new("No")))
        };
        assert!(initrd_env(&a) && initrd_env(&b));
        // dpkg's unsafe I/O while building, and the option file it leaves taken out before the tarball.
        for s in [&a, &b] {
            let args = args(s);
            assert!(
                args.contains(&"--dpkgopt=force-unsafe-io".to_string()),
                "{args:?}"
            );
            assert!(
                args.contains(&format!("--customize-hook=rm \"$1/{DPKG_OPTS}\"")),
                "{args:?}"
            );
            // The hook comes before the positional arguments (release, output, mirror).
            assert_eq!(
                &args[args.len() - 3..],
                ["bookworm", "/x.tar", "http://deb.debian.org/debian"]
            );
        }
    }

    #[test]
    fn a_foreign_build_without_arch_test_names_the_package() {
        let empty = tempfile::tempdir().unwrap();
        let foreign = if host_arch() == Some(Arch::Arm64) {
            Arch::Amd64
        } else {
            Arch::Arm64
        };
        let e = check_foreign_tools(foreign, Some(empty.path().as_os_str())).unwrap_err();
        assert!(e.to_string().contains("apt-get install arch-test"), "{e}");
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("arch-test"), "#!/bin/sh\n").unwrap();
        check_foreign_tools(foreign, Some(bin.path().as_os_str())).unwrap();
        if let Some(native) = host_arch() {
            check_foreign_tools(native, None).unwrap();
        }
    }
}
