//! The immutable image store: the [`ImageStore`] interface, the build index `cache/index/<input-key>` → id,
//! and `verify`, computed over any store. The store knows nothing of pins: listing with pins and `gc` are in
//! [`super::catalog`].
//!
//! An image is its `manifest.json` (whose sha256 is the image id) and the artifacts the manifest lists
//! (`vmlinuz`, `initrd.img`, `rootfs.squashfs`). An image is assembled in a staging directory and committed
//! once; an existing id is never rewritten. `verify` re-hashes every file.
//!
//! Implementations: [`dir::DirStore`], the directory `images/<id>/` (today's store). An object-store backend
//! (S3 with a local read-through cache) is a second implementation of [`ImageStore`] in a sibling module,
//! selected in [`open`]; nothing outside this module builds an artifact's path.
//!
//! **Sync, not async.** The trait is synchronous: the CLI and the image build are synchronous, and the HTTP
//! server already does its file I/O on tokio's blocking pool (`spawn_blocking`), where it calls the store. An
//! S3 implementation fills its local cache inside [`ImageStore::open`] (blocking on its own runtime handle,
//! from that blocking thread), verifies the sha256 there, and hands back the cached file: what is served is
//! always a local, verified, seekable file, so Range requests work as with the directory store.

pub mod dir;

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{FileEntry, INITRD, KERNEL, Manifest, ManifestError, ROOTFS};
use crate::config::Cluster;

pub use dir::DirStore;

/// Why the store cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the store failed.
    #[error("image store {path}: {source}")]
    Io {
        /// The file or directory of the store the operation was on.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest cannot be read, does not hash to its id, or does not list the file.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No image has this id.
    #[error("no image {id} in {dir}; `imgbuild images` lists the images there")]
    NoImage {
        /// The id asked for.
        id: String,
        /// Where the store looked ([`ImageStore::location`]: the `images/` directory for the directory store).
        dir: String,
    },
    /// The id is not 64 hex digits (it could name a path outside the store).
    #[error("{id:?} is not an image id (64 hex digits)")]
    BadId {
        /// The text given as an id.
        id: String,
    },
    /// The name is not a plain file name.
    #[error("image {id}: {name:?} is not a file name of an image")]
    BadName {
        /// The image id.
        id: String,
        /// The file name asked for.
        name: String,
    },
    /// The manifest lists the file but the store does not have it.
    #[error("image {id} has no {name}")]
    NoFile {
        /// The image id.
        id: String,
        /// The file name the manifest lists.
        name: String,
    },
    /// A symlink (or a special file) where the store keeps a directory or a regular file.
    #[error("{what} is a symlink or not a {expected}; refusing to serve it")]
    NotRegular {
        /// The store path that was found, relative to the store (`images/<id>` or `images/<id>/<name>`).
        what: String,
        /// What the store keeps there: `"directory"` or `"regular file"`.
        expected: &'static str,
    },
    /// The stored file's size is not the manifest's: the store was modified.
    #[error(
        "image {id}: {name} is {actual} bytes but its manifest says {expected}; the store was modified: rebuild the image"
    )]
    SizeMismatch {
        /// The image id.
        id: String,
        /// The file name.
        name: String,
        /// The stored file's size, in bytes.
        actual: u64,
        /// The size the manifest records, in bytes.
        expected: u64,
    },
}

/// Anything an artifact can be read from: a file, a cached copy of an object.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// One artifact opened for reading, checked against its image's manifest.
pub struct Artifact {
    /// Positioned at the start; seekable, for Range requests.
    pub reader: Box<dyn ReadSeek>,
    /// The size from the manifest (the stored bytes have that size).
    pub size: u64,
    /// The sha256 from the manifest (the id for `manifest.json` itself).
    pub sha256: String,
}

/// One image as listed by a store: its id, when it was stored, and its manifest (or why it cannot be read).
#[derive(Debug)]
pub struct Stored {
    /// The image id.
    pub id: String,
    /// Seconds since the epoch when the image was committed.
    pub created: u64,
    /// Its manifest, or why it cannot be read (a damaged image is still listed).
    pub manifest: Result<Manifest, StoreError>,
}

/// A finished commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The image id (the sha256 of its manifest).
    pub id: String,
    /// The id was already in the store (then nothing in it changed).
    pub existed: bool,
}

/// Where images are kept. Written once per id; read by the HTTP server, the pins, the CLI and the status.
pub trait ImageStore: Send + Sync + std::fmt::Debug {
    /// Where the store is, for messages (a directory, a bucket).
    fn location(&self) -> String;

    /// Where one image is, for messages and build reports.
    fn locate(&self, id: &str) -> String;

    /// The manifest of image `id`, checked to hash to `id`. A missing image is [`StoreError::NoImage`].
    fn manifest(&self, id: &str) -> Result<Manifest, StoreError>;

    /// Opens `name` (`manifest.json` or a file its manifest lists) of image `id` for reading, after checking
    /// the manifest against the id and the stored size against the manifest. Names outside the manifest are
    /// refused.
    fn open(&self, id: &str, name: &str) -> Result<Artifact, StoreError>;

    /// Like [`ImageStore::open`], but trusting `manifest`, which this store returned for `id` before (from
    /// [`ImageStore::manifest`]: images never change, so a server may keep it), instead of reading and hashing
    /// the manifest again. It still refuses symlinks, names the manifest does not list and a stored size that
    /// differs from the manifest's. `manifest.json` itself is always opened through [`ImageStore::open`].
    fn open_listed(
        &self,
        id: &str,
        name: &str,
        manifest: &Manifest,
    ) -> Result<Artifact, StoreError> {
        let _ = manifest;
        self.open(id, name)
    }

    /// Reads the stored bytes of `name` of image `id` and hashes them (no check against the manifest).
    fn rehash(&self, id: &str, name: &str) -> Result<FileEntry, StoreError>;

    /// A fresh, empty local directory to assemble an image in (`vmlinuz`, `initrd.img`, `rootfs.squashfs`).
    fn staging(&self) -> Result<tempfile::TempDir, StoreError>;

    /// Finishes an image assembled in `staging`: hashes the artifacts, completes and writes the manifest, and
    /// makes the image visible under its id all at once. An existing id is left as it is.
    fn commit(
        &self,
        staging: tempfile::TempDir,
        manifest: Manifest,
    ) -> Result<Committed, StoreError>;

    /// Every committed image, in no particular order (half-written ones are never listed).
    fn list(&self) -> Result<Vec<Stored>, StoreError>;

    /// Removes image `id`.
    fn remove(&self, id: &str) -> Result<(), StoreError>;
}

/// The image store a cluster description names (today: its `paths.images` directory). Cheap for the directory
/// store, so callers open it where they use it (the HTTP handler per request, following a reload of `paths`); a
/// store holding a client and a cache would be opened once and kept in the server's shared state instead.
pub fn open(cluster: &Cluster) -> Arc<dyn ImageStore> {
    Arc::new(DirStore::new(&cluster.paths.images))
}

/// Whether `s` can be an image id: 64 hex digits (so it never names a path outside the store).
pub fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// sha256 and size of everything `r` reads (`path` names it in errors).
pub fn hash_reader(mut r: impl Read, path: &Path) -> Result<FileEntry, StoreError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io(path))?;
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
pub fn lookup(index_dir: &Path, store: &dyn ImageStore, key: &str) -> Option<(String, Manifest)> {
    let id = std::fs::read_to_string(index_dir.join(key)).ok()?;
    let id = id.trim().to_string();
    let m = store.manifest(&id).ok()?;
    let all_present = [KERNEL, INITRD, ROOTFS]
        .iter()
        .all(|f| store.open(&id, f).is_ok());
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

/// The result of re-hashing one file of an image.
#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    /// The file's name in the image.
    pub file: String,
    /// Its sha256 in the manifest.
    pub expected: String,
    /// The sha256 of the stored bytes (`None`: they cannot be read).
    pub actual: Option<String>,
    /// Digest and size match the manifest.
    pub ok: bool,
}

/// Re-hashes the manifest (against the id) and every file (against the manifest).
pub fn verify(store: &dyn ImageStore, id: &str) -> Result<Vec<FileCheck>, StoreError> {
    let m = store.manifest(id)?;
    let mut out = Vec::new();
    for (file, e) in &m.files {
        let actual = store.rehash(id, file).ok();
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
