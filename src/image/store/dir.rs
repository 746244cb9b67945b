//! [`DirStore`]: images as directories `images/<id>/` on a local filesystem, each written once.
//!
//! An image is assembled in a temporary directory `images/.tmp-*` (never listed: its name is not an id) and
//! renamed to `images/<id>` when complete, so an image appears whole or not at all. Files are made read-only.
//! Reading refuses symlinks (an image directory or an artifact that points elsewhere) and any file whose size
//! differs from its manifest entry.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{
    Artifact, Committed, ImageStore, StoreError, Stored, hash_reader, hash_staged, io, is_id,
};
use crate::image::manifest::{FileEntry, MANIFEST, Manifest, ManifestError};

/// The directory store `images/`.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// The store in directory `dir` (created on the first commit).
    pub fn new(dir: &Path) -> DirStore {
        DirStore {
            dir: dir.to_path_buf(),
        }
    }

    /// `images/<id>`, after checking that `id` cannot leave the store.
    fn image_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !is_id(id) {
            return Err(StoreError::BadId { id: id.into() });
        }
        Ok(self.dir.join(id))
    }

    /// `images/<id>/<name>`, after checking both parts.
    fn file(&self, id: &str, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.image_dir(id)?;
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
            return Err(StoreError::BadName {
                id: id.into(),
                name: name.into(),
            });
        }
        Ok(dir.join(name))
    }

    /// Reads `images/<id>/manifest.json` and checks that it hashes to `id`.
    fn read_manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        let path = self.file(id, MANIFEST)?;
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Read {
            id: id.to_string(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(Manifest::from_bytes(id, &bytes)?)
    }

    /// The image directory itself must be a real directory inside the store, not a symlink out of it.
    fn check_image_dir(&self, id: &str) -> Result<(), StoreError> {
        let dmeta =
            std::fs::symlink_metadata(self.image_dir(id)?).map_err(|_| self.no_image(id))?;
        if dmeta.file_type().is_symlink() || !dmeta.is_dir() {
            return Err(StoreError::NotRegular {
                what: format!("images/{id}"),
                expected: "directory",
            });
        }
        Ok(())
    }

    fn no_image(&self, id: &str) -> StoreError {
        StoreError::NoImage {
            id: id.into(),
            dir: self.location(),
        }
    }
}

impl ImageStore for DirStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn locate(&self, id: &str) -> String {
        self.dir.join(id).display().to_string()
    }

    fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        if !self.image_dir(id)?.is_dir() {
            return Err(self.no_image(id));
        }
        self.read_manifest(id)
    }

    fn open(&self, id: &str, name: &str) -> Result<Artifact, StoreError> {
        let path = self.file(id, name)?;
        self.check_image_dir(id)?;
        let fmeta = std::fs::symlink_metadata(&path).map_err(|_| StoreError::NoFile {
            id: id.into(),
            name: name.into(),
        })?;
        if fmeta.file_type().is_symlink() || !fmeta.is_file() {
            return Err(StoreError::NotRegular {
                what: format!("images/{id}/{name}"),
                expected: "regular file",
            });
        }
        let m = self.read_manifest(id)?;
        let (size, sha256) = if name == MANIFEST {
            (fmeta.len(), id.to_string())
        } else {
            let e = m
                .files
                .get(name)
                .ok_or_else(|| ManifestError::MissingFile {
                    id: id.into(),
                    file: name.into(),
                })?;
            (e.size, e.sha256.clone())
        };
        if fmeta.len() != size {
            return Err(StoreError::SizeMismatch {
                id: id.into(),
                name: name.into(),
                actual: fmeta.len(),
                expected: size,
            });
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Artifact {
            reader: f,
            size,
            sha256,
        })
    }

    fn open_listed(
        &self,
        id: &str,
        name: &str,
        manifest: &Manifest,
    ) -> Result<Artifact, StoreError> {
        if name == MANIFEST {
            return self.open(id, name);
        }
        let path = self.file(id, name)?;
        self.check_image_dir(id)?;
        let e = manifest
            .files
            .get(name)
            .ok_or_else(|| ManifestError::MissingFile {
                id: id.into(),
                file: name.into(),
            })?;
        let not_regular = || StoreError::NotRegular {
            what: format!("images/{id}/{name}"),
            expected: "regular file",
        };
        // One open (refusing a symlink as the last component: ELOOP) and one fstat, instead of two lstats, the
        // manifest read and hashed, and the open. O_NONBLOCK: a FIFO put there must not hang the open.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::ELOOP) => not_regular(),
                Some(libc::ENOENT) => StoreError::NoFile {
                    id: id.into(),
                    name: name.into(),
                },
                _ => io(&path)(err),
            })?;
        let fmeta = f.metadata().map_err(io(&path))?;
        if !fmeta.is_file() {
            return Err(not_regular());
        }
        if fmeta.len() != e.size {
            return Err(StoreError::SizeMismatch {
                id: id.into(),
                name: name.into(),
                actual: fmeta.len(),
                expected: e.size,
            });
        }
        Ok(Artifact {
            reader: f,
            size: e.size,
            sha256: e.sha256.clone(),
        })
    }

    fn rehash(&self, id: &str, name: &str) -> Result<FileEntry, StoreError> {
        let path = self.file(id, name)?;
        let f = std::fs::File::open(&path).map_err(io(&path))?;
        hash_reader(f, &path)
    }

    fn staging(&self) -> Result<tempfile::TempDir, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.dir)
            .map_err(io(&self.dir))
    }

    fn commit(
        &self,
        staging: tempfile::TempDir,
        mut manifest: Manifest,
    ) -> Result<Committed, StoreError> {
        for p in hash_staged(staging.path(), &mut manifest)? {
            // Read-only: the store is never written in place.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).map_err(io(&p))?;
        }
        let id = manifest.id();
        let mp = staging.path().join(MANIFEST);
        std::fs::write(&mp, manifest.to_bytes()).map_err(io(&mp))?;
        std::fs::set_permissions(&mp, std::fs::Permissions::from_mode(0o444)).map_err(io(&mp))?;
        let dest = self.dir.join(&id);
        let existed = Committed {
            id: id.clone(),
            existed: true,
        };
        if dest.exists() {
            // Never rewritten: the same id means the same bytes.
            return Ok(existed);
        }
        let tmp = staging.keep();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io(&tmp))?;
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(Committed { id, existed: false }),
            // Another build of the same inputs won the race: keep its directory.
            Err(_) if dest.join(MANIFEST).is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(existed)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(io(&dest)(e))
            }
        }
    }

    fn list(&self) -> Result<Vec<Stored>, StoreError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                if !is_id(&id) {
                    return None;
                }
                let created = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let manifest = self.read_manifest(&id);
                Some(Stored {
                    id,
                    created,
                    manifest,
                })
            })
            .collect())
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        let p = self.image_dir(id)?;
        std::fs::remove_dir_all(&p).map_err(io(&p))
    }
}

#[cfg(test)]
mod tests;
