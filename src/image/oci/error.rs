//! Why pulling, verifying or baking a container image failed. Every message names the image and says what to do.

use std::path::PathBuf;

use crate::image::lock::LockError;

/// What went wrong with a container image; each variant names the image and the fix.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The registry could not be reached or answered with an error other than "not found".
    #[error(
        "image {image}: the registry did not answer: {detail}. Check the registry address and the network, or on a disconnected site bring the images with `imgbuild bundle import`"
    )]
    Registry {
        /// The image reference.
        image: String,
        /// The client's error, as text.
        detail: String,
    },
    /// The registry has no such repository or tag.
    #[error(
        "image {image} does not exist in its registry ({detail}). Check the tag in cluster.toml [images.{group}], or push the image to the registry"
    )]
    NotFound {
        /// The image reference.
        image: String,
        /// The `[images.<group>]` listing it.
        group: String,
        /// The registry's answer.
        detail: String,
    },
    /// A multi-arch index without an image for the architecture, or a single image for another one.
    #[error(
        "image {image} has no linux/{arch} image (it has: {available}). Use a tag that is built for {arch}, or remove the image from the {arch} machines' roles"
    )]
    NoPlatform {
        /// The image reference.
        image: String,
        /// The Debian architecture needed.
        arch: String,
        /// The platforms the registry offers.
        available: String,
    },
    /// A manifest or blob whose bytes do not hash to the digest that names it: corrupt or tampered with.
    #[error(
        "image {image}: {what} {expected} arrived with digest {actual}: the registry's copy is corrupt or tampered with; nothing was stored. Repair or re-push the image in the registry and run `imgbuild fetch` again"
    )]
    Digest {
        /// The image reference.
        image: String,
        /// `manifest`, `config` or `layer`.
        what: String,
        /// The digest it must have.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The tag now points at other content than `imgbuild.lock` records.
    #[error(
        "image {image} ({arch}): TAG MOVED: the registry now gives {now}, but imgbuild.lock records {locked}. Nothing was stored; if the new content is expected, delete the [[image]] entry for {image} from imgbuild.lock and run `imgbuild fetch` again"
    )]
    TagMoved {
        /// The image reference.
        image: String,
        /// The Debian architecture.
        arch: String,
        /// The digest the lock records (the index's, or the manifest's for a single-arch tag).
        locked: String,
        /// The digest the registry gives now.
        now: String,
    },
    /// A build or an offline fetch needs the image but it is not locked, or its blobs are not in the cache.
    #[error(
        "image {image} ({arch}) is not fetched: {reason}. Run `imgbuild fetch` (with a registry) or `imgbuild bundle import FILE` (on a disconnected site)"
    )]
    Missing {
        /// The image reference.
        image: String,
        /// The Debian architecture.
        arch: String,
        /// What is missing.
        reason: String,
    },
    /// A manifest that is not a JSON image manifest or index.
    #[error(
        "image {image}: the registry sent a manifest imgbuild cannot read: {detail}. Use an OCI or Docker v2 image"
    )]
    Malformed {
        /// The image reference.
        image: String,
        /// What is wrong.
        detail: String,
    },
    /// A bundle that is not one imgbuild wrote, or that was damaged on the way.
    #[error("bundle {path}: {detail}; export it again with `imgbuild bundle export`")]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A cache file or directory could not be read or written.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `imgbuild.lock` could not be read, parsed or written.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// An [`OciError::Io`] for `path`.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_path_buf(),
        source,
    }
}
