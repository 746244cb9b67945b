//! The netboot initrd: Debian's initramfs-tools with imgbuild's boot script, repacked reproducibly.
//!
//! The templates under `profiles/initrd/` are rendered into a configuration directory inside the base root
//! (`initramfs.conf` with `BOOT=imgbuild`, the module list, a hook copying the tools the script needs, and the
//! `scripts/imgbuild` boot script). `mkinitramfs` runs in the root (chroot) for the root's kernel and keeps its
//! staging directory, which [`pack_dir`] writes as a newc cpio with entries sorted, owners 0, times fixed at
//! [`SOURCE_DATE_EPOCH`](super::base::SOURCE_DATE_EPOCH) and inode numbers sequential, compressed with zstd at a
//! fixed level on one thread. Same base and templates → same bytes. The initrd depends only on the base and
//! the templates, so it is cached by their digest and shared by every role.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::base::{BaseError, SOURCE_DATE_EPOCH, run};
use crate::config::{Arch, Cluster};
use crate::template::{Engine, TemplateError};

/// Template → file in the initramfs-tools configuration directory, and its mode.
pub const TEMPLATES: &[(&str, &str, u32)] = &[
    ("profiles/initrd/initramfs.conf.j2", "initramfs.conf", 0o644),
    ("profiles/initrd/modules.j2", "modules", 0o644),
    ("profiles/initrd/hook.sh.j2", "hooks/imgbuild", 0o755),
    ("profiles/initrd/boot.sh.j2", "scripts/imgbuild", 0o755),
];

/// The directories the state partition is bound over (the partition holds one directory per path).
pub const STATE_DIRS: &[&str] = &[
    "/var/lib/etcd",
    "/var/lib/kubelet",
    "/etc/kubernetes",
    "/var/lib/containerd",
    "/var/lib/longhorn",
    "/var/lib/imgbuild",
];

/// The label of the persistent state partition.
pub const STATE_LABEL: &str = "IMGBUILD-STATE";

/// zstd level of the initrd: fast enough for a cold build, and the kernel decompresses any level.
pub const ZSTD_LEVEL: i32 = 12;

/// Why the netboot initrd could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// A template under `profiles/initrd/` failed to load or render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A command of the build (`chroot ... mkinitramfs`) could not start or failed; the message shows its output.
    #[error(transparent)]
    Command(#[from] BaseError),
    /// A file of the staging directory or the output could not be read or written.
    #[error("initrd: {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else: mkinitramfs left not exactly one staging directory, or zstd failed. Holds the explanation.
    #[error("initrd: {0}")]
    Other(String),
}

#[derive(Serialize)]
struct Ctx<'a> {
    cluster: &'a Cluster,
    /// Debian's name of the image's architecture (`amd64`, `arm64`).
    arch: &'a str,
    state_dirs: &'a [&'a str],
    state_label: &'a str,
    source_date_epoch: u64,
}

/// The rendered configuration: (relative path, mode, bytes), and its digest together with the base's.
pub struct InitrdConfig {
    /// The rendered files: path relative to the initramfs-tools configuration directory, Unix mode, contents.
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// sha256 over the files and the base's digest (and the architecture, except amd64): the initrd's cache key.
    pub digest: String,
}

/// Renders the initrd templates for `arch`. `base_digest` enters the digest (the initrd is built from the
/// base's kernel and tools), and so does the architecture (amd64 adds nothing, keeping the digests of amd64
/// initrds from before other architectures were built).
pub fn render(
    cluster: &Cluster,
    engine: &Engine,
    base_digest: &str,
    arch: Arch,
) -> Result<InitrdConfig, InitrdError> {
    let ctx = Ctx {
        cluster,
        arch: arch.as_str(),
        state_dirs: STATE_DIRS,
        state_label: STATE_LABEL,
        source_date_epoch: SOURCE_DATE_EPOCH,
    };
    let mut h = Sha256::new();
    h.update(b"imgbuild-initrd-v1\0");
    h.update(base_digest.as_bytes());
    if arch != Arch::Amd64 {
        h.update(b"\0arch\0");
        h.update(arch.as_str().as_bytes());
    }
    h.update(ZSTD_LEVEL.to_be_bytes());
    let mut files = Vec::new();
    for (tmpl, rel, mode) in TEMPLATES {
        let text = engine.render(tmpl, &ctx)?;
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(mode.to_be_bytes());
        h.update(Sha256::digest(text.as_bytes()));
        files.push((rel.to_string(), *mode, text.into_bytes()));
    }
    Ok(InitrdConfig {
        files,
        digest: hex::encode(h.finalize()),
    })
}

/// The initrd cache directory.
pub fn cache_dir(cluster: &Cluster) -> PathBuf {
    cluster.paths.cache.join("initrd")
}

/// Builds the initrd inside `root` (an unpacked base) and writes it to `out`. Leaves `root` as it found it.
pub fn build(
    root: &Path,
    kernel_version: &str,
    cfg: &InitrdConfig,
    out: &Path,
) -> Result<(), InitrdError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitrdError::Io { path, source }
    };
    let work_rel = "tmp/imgbuild-initrd";
    let work = root.join(work_rel);
    let _ = std::fs::remove_dir_all(&work);
    for (rel, mode, bytes) in &cfg.files {
        let p = work.join("conf").join(rel);
        std::fs::create_dir_all(p.parent().expect("has parent")).map_err(io(&p))?;
        std::fs::write(&p, bytes).map_err(io(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).map_err(io(&p))?;
    }
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        run(Command::new("chroot")
            .arg(root)
            .arg("mkinitramfs")
            .args(["-k", "-c", "gzip", "-l", "1"])
            .arg("-d")
            .arg(format!("/{work_rel}/conf"))
            .arg("-o")
            .arg(format!("/{work_rel}/discard.img"))
            .arg(kernel_version)
            .env("TMPDIR", format!("/{work_rel}/tmp"))
            .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string())
            .env("LC_ALL", "C.UTF-8")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))?;
        let staged: Vec<PathBuf> = std::fs::read_dir(&tmp)
            .map_err(io(&tmp))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("mkinitramfs_"))
                    && p.is_dir()
            })
            .collect();
        let [dest] = staged.as_slice() else {
            return Err(InitrdError::Other(format!(
                "expected one kept mkinitramfs staging directory in {}, found {}",
                tmp.display(),
                staged.len()
            )));
        };
        let cpio = pack_dir(dest)?;
        let z = zstd::bulk::compress(&cpio, ZSTD_LEVEL)
            .map_err(|e| InitrdError::Other(format!("zstd: {e}")))?;
        // A unique temp file, renamed: concurrent builds of the same initrd both end with the same bytes.
        let dir = out.parent().unwrap_or(Path::new("."));
        let mut part = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
        part.write_all(&z).map_err(io(out))?;
        part.persist(out).map_err(|e| InitrdError::Io {
            path: out.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Writes the tree under `dir` as a newc cpio archive: paths sorted bytewise (parents first), uid/gid 0,
/// mtime [`SOURCE_DATE_EPOCH`], inode numbers in order, every regular file stored whole (no hard links).
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, InitrdError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut paths = Vec::new();
    collect(dir, dir, &mut paths)?;
    paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    let mut out: Vec<u8> = Vec::new();
    for (i, rel) in paths.iter().enumerate() {
        let full = dir.join(rel);
        let md = std::fs::symlink_metadata(&full).map_err(|source| InitrdError::Io {
            path: full.clone(),
            source,
        })?;
        let name = rel.to_string_lossy();
        let b = cpio::newc::Builder::new(&name)
            .ino(i as u32 + 1)
            .mode(md.mode())
            .uid(0)
            .gid(0)
            .mtime(SOURCE_DATE_EPOCH as u32)
            .nlink(if md.is_dir() { 2 } else { 1 });
        let ft = md.file_type();
        let data: Vec<u8> = if ft.is_symlink() {
            std::fs::read_link(&full)
                .map_err(|source| InitrdError::Io {
                    path: full.clone(),
                    source,
                })?
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else if ft.is_file() {
            std::fs::read(&full).map_err(|source| InitrdError::Io {
                path: full.clone(),
                source,
            })?
        } else if ft.is_dir() {
            Vec::new()
        } else {
            return Err(InitrdError::Other(format!(
                "{}: device nodes, fifos and sockets are not expected in the initrd",
                full.display()
            )));
        };
        let mut w = b.write(&mut out, data.len() as u32);
        w.write_all(&data).map_err(|source| InitrdError::Io {
            path: full.clone(),
            source,
        })?;
        w.finish().map_err(|source| InitrdError::Io {
            path: full.clone(),
            source,
        })?;
    }
    cpio::newc::trailer(&mut out).map_err(|source| InitrdError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(out)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), InitrdError> {
    let rd = std::fs::read_dir(dir).map_err(|source| InitrdError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in rd {
        let e = e.map_err(|source| InitrdError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = e.path();
        out.push(p.strip_prefix(root).expect("under root").to_path_buf());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect(root, &p, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_dir_is_sorted_and_independent_of_times_and_creation_order() {
        let mk = |order: &[&str]| {
            let d = tempfile::tempdir().unwrap();
            for n in order {
                let p = d.path().join(n);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, n.as_bytes()).unwrap();
            }
            std::os::unix::fs::symlink("b/c", d.path().join("link")).unwrap();
            d
        };
        let a = mk(&["b/c", "a", "b/a"]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = mk(&["a", "b/a", "b/c"]);
        let pa = pack_dir(a.path()).unwrap();
        assert_eq!(pa, pack_dir(b.path()).unwrap());
        // Entries come back in sorted order, parents first, with fixed owner and time.
        let mut r = &pa[..];
        let mut names = Vec::new();
        loop {
            let rd = cpio::NewcReader::new(r).unwrap();
            if rd.entry().is_trailer() {
                break;
            }
            assert_eq!(rd.entry().mtime(), SOURCE_DATE_EPOCH as u32);
            assert_eq!(rd.entry().uid(), 0);
            names.push(rd.entry().name().to_string());
            r = rd.finish().unwrap();
        }
        assert_eq!(names, ["a", "b", "b/a", "b/c", "link"]);
    }
}
