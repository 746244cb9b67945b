//! The immutable image store `images/<id>/` and the build index `cache/index/<input-key>` → id.
//!
//! An image is assembled in a temporary directory under `images/` and renamed into place; an existing id is
//! never rewritten (the temporary copy is dropped). `verify` re-hashes every file; `gc` removes images no role
//! pins, keeping the newest N.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{FileEntry, INITRD, KERNEL, MANIFEST, Manifest, ManifestError, ROOTFS};
use super::pins::{PinError, Pins};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("no image {id} in {dir}; `imgbuild images` lists the images there")]
    NoImage { id: String, dir: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// sha256 and size of a file.
pub fn hash_file(path: &Path) -> Result<FileEntry, StoreError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileEntry {
        size,
        sha256: hex::encode(h.finalize()),
    })
}

/// The image id the index remembers for an input key, if that image is still intact in the store.
pub fn lookup(index_dir: &Path, images_dir: &Path, key: &str) -> Option<(String, Manifest)> {
    let id = std::fs::read_to_string(index_dir.join(key)).ok()?;
    let id = id.trim().to_string();
    let m = Manifest::read(images_dir, &id).ok()?;
    let all_present = [KERNEL, INITRD, ROOTFS].iter().all(|f| {
        let p = images_dir.join(&id).join(f);
        match (p.metadata(), m.files.get(*f)) {
            (Ok(md), Some(e)) => md.len() == e.size,
            _ => false,
        }
    });
    all_present.then_some((id, m))
}

/// Remembers that `key` built `id`.
pub fn remember(index_dir: &Path, key: &str, id: &str) -> Result<(), StoreError> {
    std::fs::create_dir_all(index_dir).map_err(io(index_dir))?;
    let p = index_dir.join(key);
    let tmp = index_dir.join(format!(".{key}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{id}\n")).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io(&p))?;
    Ok(())
}

/// A fresh temporary directory under `images/` to assemble an image in.
pub fn staging(images_dir: &Path) -> Result<tempfile::TempDir, StoreError> {
    std::fs::create_dir_all(images_dir).map_err(io(images_dir))?;
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(images_dir)
        .map_err(io(images_dir))
}

/// Finishes an image assembled in `staging` (which holds vmlinuz, initrd.img, rootfs.squashfs): hashes them,
/// completes and writes the manifest, and renames the directory to `images/<id>`. Returns the id and whether
/// the image already existed (then nothing in the store changed).
pub fn commit(
    images_dir: &Path,
    staging: tempfile::TempDir,
    mut manifest: Manifest,
) -> Result<(String, bool), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    for f in [KERNEL, INITRD, ROOTFS] {
        let p = staging.path().join(f);
        manifest.files.insert(f.to_string(), hash_file(&p)?);
        // Read-only: the store is never written in place.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).map_err(io(&p))?;
    }
    let id = manifest.id();
    let mp = staging.path().join(MANIFEST);
    std::fs::write(&mp, manifest.to_bytes()).map_err(io(&mp))?;
    std::fs::set_permissions(&mp, std::fs::Permissions::from_mode(0o444)).map_err(io(&mp))?;
    let dest = images_dir.join(&id);
    if dest.exists() {
        // Never rewritten: the same id means the same bytes.
        return Ok((id, true));
    }
    let tmp = staging.keep();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io(&tmp))?;
    match std::fs::rename(&tmp, &dest) {
        Ok(()) => Ok((id, false)),
        // Another build of the same inputs won the race: keep its directory.
        Err(_) if dest.join(MANIFEST).is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok((id, true))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io(&dest)(e))
        }
    }
}

/// One image in the store.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub id: String,
    pub role: String,
    pub standins: bool,
    pub size: u64,
    /// Seconds since the epoch when the directory was created (its mtime).
    pub created: u64,
    /// Roles that pin this image.
    pub pinned_by: Vec<String>,
    /// Why the image is unusable, when it is.
    pub problem: Option<String>,
}

/// Every image in the store, newest first.
pub fn list(images_dir: &Path, pins: &Pins) -> Result<Vec<ImageInfo>, StoreError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(images_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(images_dir)(e)),
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let created = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let pinned_by = pins
            .iter()
            .filter(|(_, _, id)| **id == name)
            .map(|(r, a, _)| format!("{r}/{a}"))
            .collect();
        match Manifest::read(images_dir, &name) {
            Ok(m) => out.push(ImageInfo {
                size: m.files.values().map(|f| f.size).sum(),
                role: m.role.to_string(),
                standins: m.standins,
                id: name,
                created,
                pinned_by,
                problem: None,
            }),
            Err(e) => out.push(ImageInfo {
                id: name,
                role: "?".into(),
                standins: false,
                size: 0,
                created,
                pinned_by,
                problem: Some(e.to_string()),
            }),
        }
    }
    out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// The result of re-hashing one file of an image.
#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    pub file: String,
    pub expected: String,
    pub actual: Option<String>,
    pub ok: bool,
}

/// Re-hashes the manifest (against the id) and every file (against the manifest).
pub fn verify(images_dir: &Path, id: &str) -> Result<Vec<FileCheck>, StoreError> {
    if !images_dir.join(id).is_dir() {
        return Err(StoreError::NoImage {
            id: id.into(),
            dir: images_dir.to_path_buf(),
        });
    }
    let m = Manifest::read(images_dir, id)?;
    let mut out = Vec::new();
    for (file, e) in &m.files {
        let actual = hash_file(&images_dir.join(id).join(file)).ok();
        out.push(FileCheck {
            file: file.clone(),
            expected: e.sha256.clone(),
            ok: actual
                .as_ref()
                .is_some_and(|a| a.sha256 == e.sha256 && a.size == e.size),
            actual: actual.map(|a| a.sha256),
        });
    }
    Ok(out)
}

/// Removes every image no role pins, except the newest `keep` of them. Returns the removed ids.
pub fn gc(images_dir: &Path, pins: &Pins, keep: usize) -> Result<Vec<String>, StoreError> {
    let all = list(images_dir, pins)?;
    let mut removed = Vec::new();
    for img in all.iter().filter(|i| i.pinned_by.is_empty()).skip(keep) {
        let p = images_dir.join(&img.id);
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
        removed.push(img.id.clone());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::image::manifest::Inputs;

    fn fake(images: &Path, n: u8, role: Role) -> String {
        let mut m = Manifest {
            format: 1,
            role,
            arch: Default::default(),
            profile: vec!["base".into(), role.to_string()],
            standins: true,
            kernel_args: vec![],
            inputs: Inputs {
                config_digest: format!("{n}"),
                ..Inputs::default()
            },
            files: BTreeMap::new(),
        };
        let st = staging(images).unwrap();
        for f in [KERNEL, INITRD, ROOTFS] {
            std::fs::write(st.path().join(f), [n]).unwrap();
        }
        m.files.clear();
        let (id, existed) = commit(images, st, m).unwrap();
        assert!(!existed);
        // Distinct creation times, oldest first.
        let t =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + n as u64);
        std::fs::File::open(images.join(&id))
            .unwrap()
            .set_modified(t)
            .unwrap();
        id
    }

    use std::collections::BTreeMap;

    #[test]
    fn gc_keeps_pinned_and_the_newest_unpinned_and_verify_rehashes() {
        let d = tempfile::tempdir().unwrap();
        let images = d.path().join("images");
        let ids: Vec<String> = (1..=4).map(|n| fake(&images, n, Role::Worker)).collect();
        let mut pins = Pins::default();
        pins.pin(&images, Role::Worker, &ids[0]).unwrap();
        let listed = list(&images, &pins).unwrap();
        assert_eq!(listed.len(), 4);
        assert_eq!(listed[0].id, ids[3], "newest first");
        assert_eq!(listed[3].pinned_by, vec!["worker/amd64".to_string()]);
        let removed = gc(&images, &pins, 1).unwrap();
        // Pinned (oldest) kept, newest unpinned kept, the two in between removed.
        assert_eq!(removed.len(), 2);
        assert!(removed.contains(&ids[1]) && removed.contains(&ids[2]));
        assert!(images.join(&ids[0]).is_dir() && images.join(&ids[3]).is_dir());
        assert!(verify(&images, &ids[3]).unwrap().iter().all(|c| c.ok));
        assert!(matches!(
            verify(&images, &ids[1]),
            Err(StoreError::NoImage { .. })
        ));
    }

    #[test]
    fn committing_an_existing_id_leaves_the_store_untouched() {
        let d = tempfile::tempdir().unwrap();
        let images = d.path().join("images");
        let id = fake(&images, 7, Role::Master);
        let before = std::fs::read(images.join(&id).join(MANIFEST)).unwrap();
        let st = staging(&images).unwrap();
        for f in [KERNEL, INITRD, ROOTFS] {
            std::fs::write(st.path().join(f), [7]).unwrap();
        }
        let m = Manifest::read(&images, &id).unwrap();
        let (id2, existed) = commit(
            &images,
            st,
            Manifest {
                files: BTreeMap::new(),
                ..m
            },
        )
        .unwrap();
        assert_eq!(id2, id);
        assert!(existed);
        assert_eq!(
            std::fs::read(images.join(&id).join(MANIFEST)).unwrap(),
            before
        );
        let names: Vec<_> = std::fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no staging dir left: {names:?}");
    }
}
