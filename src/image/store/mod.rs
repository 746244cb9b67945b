//! The immutable image store: the [`ImageStore`] interface, the build index `cache/index/<input-key>` → id,
//! and `verify`, computed over any store. The store knows nothing of pins: listing with pins and `gc` are in
//! [`super::catalog`].
//!
//! An image is its `manifest.json` (whose sha256 is the image id) and the artifacts the manifest lists
//! (`vmlinuz`, `initrd.img`, `rootfs.squashfs`). An image is assembled in a staging directory and committed
//! once; an existing id is never rewritten. `verify` re-hashes every file.
//!
//! Implementations: [`dir::DirStore`], the directory `images/<id>/` (the default), and [`s3::S3Store`], an S3
//! bucket (content-addressed keys: `blobs/sha256/<digest>` for artifacts, `manifests/<id>` for manifests) read
//! through the local cache of [`cache`], which verifies every object's sha256 before it is served. The interface
//! itself is in `interface.rs`; [`open`] selects the implementation from `[store]`; nothing outside this module
//! builds an artifact's path.
//!
//! **Sync, not async.** The trait is synchronous: the CLI and the image build are synchronous, and the HTTP
//! server already does its file I/O on tokio's blocking pool (`spawn_blocking`), where it calls the store. An
//! S3 implementation fills its local cache inside [`ImageStore::open`] (waiting, on the calling thread, for its
//! own runtime), verifies the sha256 there, and hands back the cached file: what is served is
//! always a local, verified, seekable file, so Range requests work as with the directory store.

pub mod cache;
mod credentials;
pub mod dir;
mod interface;
pub mod s3;
mod unavailable;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::manifest::{INITRD, KERNEL, Manifest, ROOTFS};
use crate::config::{Cluster, Store};

pub use dir::DirStore;
pub use interface::{Artifact, Committed, ImageStore, StoreError, Stored, hash_reader, is_id};
pub(super) use interface::{hash_staged, io};

/// The image store a cluster description names: `[store] backend = "dir"` (the default) is its `paths.images`
/// directory, cheap to open, so callers open it where they use it (the HTTP handler per request, following a
/// reload of `paths`). `backend = "s3"` is a bucket with a local read-through cache: its client, runtime and
/// cache are made once per `[store]` table and shared by every later `open` in the process, so opening it per
/// request costs a lookup. When the S3 store cannot be made (no credentials), every call on the returned store
/// says why.
pub fn open(cluster: &Cluster) -> Arc<dyn ImageStore> {
    match &cluster.store {
        Store::Dir => Arc::new(DirStore::new(&cluster.paths.images)),
        Store::S3(cfg) => s3::shared(cfg),
    }
}

/// Registers the object-store cache's metric families (hits, misses, bytes filled, digest refusals, fetch
/// errors) in `r`; the server calls it once at start. They stay at zero with the directory store.
pub fn register_metrics(r: &mut prometheus_client::registry::Registry) {
    cache::register(r);
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
