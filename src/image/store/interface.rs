//! The image store's interface, shared by every implementation: [`ImageStore`], what it hands back
//! ([`Artifact`], [`Stored`], [`Committed`]), its errors ([`StoreError`]), and the hashing helpers.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::image::manifest::{
    BOOT_APPS, FileEntry, INITRD, KERNEL, Manifest, ManifestError, ROOTFS, UKI, boot_app_digest,
};

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
    /// An object read from the object store does not hash to the digest its key (or its manifest) names: its
    /// bytes were changed in the bucket. It is never served.
    #[error(
        "{object} has sha256 {actual}, not {expected}: its bytes were changed in the bucket, so it is refused and \
         never served; push the image again from a host that has it intact (`imgbuild push --force <image-id>`), \
         or pin another image"
    )]
    DigestMismatch {
        /// The object (`s3://<bucket>/<key>`).
        object: String,
        /// The sha256 the key or the manifest names.
        expected: String,
        /// The sha256 of the bytes the store returned.
        actual: String,
    },
    /// The object store did not answer as asked (unreachable, refused the credentials, failed).
    #[error(
        "{object}: {detail}; check that the object store ([store] endpoint) is reachable and that the credentials \
         (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or [store] credentials_file) may read and write the bucket"
    )]
    Remote {
        /// The object or bucket the request was for.
        object: String,
        /// The client's error.
        detail: String,
    },
    /// The store could not be set up (for S3: no credentials, an unreadable credentials file).
    #[error("image store {location} cannot be used: {why}")]
    Unavailable {
        /// Where the store is (`s3://<bucket>`).
        location: String,
        /// Why, and what to do.
        why: String,
    },
}

/// One artifact opened for reading, checked against its image's manifest.
pub struct Artifact {
    /// The stored file (the directory store's, or the object store's verified local copy), positioned at the
    /// start. A file, not any reader: both stores write it once (a temporary file renamed into place, read-only)
    /// and never change it after, so the HTTP server may map it and hand its pages to the socket without
    /// copying them first (`netboot::http::images`).
    pub reader: std::fs::File,
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

/// Whether `s` can be an image id: 64 hex digits (so it never names a path outside the store).
pub fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The first step of every store's commit: completes `manifest` with the size and sha256 of each artifact
/// assembled in `staging` (the signed UKI only when present: it is there only with `[secure_boot]`), and with the
/// Authenticode digest of each boot application that is a PE image (`boot_apps`: what attestation expects).
/// Returns the files it hashed.
pub(crate) fn hash_staged(
    staging: &Path,
    manifest: &mut Manifest,
) -> Result<Vec<PathBuf>, StoreError> {
    let mut hashed = Vec::new();
    manifest.boot_apps.clear();
    for f in [KERNEL, INITRD, ROOTFS, UKI] {
        let p = staging.join(f);
        if f == UKI && !p.exists() {
            continue;
        }
        let entry = if BOOT_APPS.contains(&f) {
            // Small (a kernel, a UKI): read whole, as the Authenticode digest needs the PE's sections.
            let bytes = std::fs::read(&p).map_err(io(&p))?;
            if let Some(d) = boot_app_digest(&bytes) {
                manifest.boot_apps.insert(f.to_string(), d);
            }
            hash_reader(&bytes[..], &p)?
        } else {
            hash_reader(std::fs::File::open(&p).map_err(io(&p))?, &p)?
        };
        manifest.files.insert(f.to_string(), entry);
        hashed.push(p);
    }
    Ok(hashed)
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
