//! The content-addressed blob cache every fetched image shares: `cache/oci/blobs/sha256/<hex>`, the layout of an
//! OCI image layout's blob directory. A blob is stored only after its bytes hash to its digest.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{OciError, io};

/// The blob cache under a cache directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    /// `cache/oci/blobs/sha256`.
    pub dir: PathBuf,
}

/// The hex part of a `sha256:<hex>` digest, if it is one.
pub fn hex_of(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `sha256:<hex>` of a file's bytes (streamed, as the artifact cache hashes its downloads).
pub fn digest_file(path: &Path) -> std::io::Result<String> {
    Ok(format!(
        "sha256:{}",
        crate::image::artifacts::sha256_file(path)?
    ))
}

impl Blobs {
    /// The blob cache of a cluster's cache directory.
    pub fn under(cache: &Path) -> Blobs {
        Blobs {
            dir: cache.join("oci").join("blobs").join("sha256"),
        }
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(hex_of(digest).unwrap_or("invalid-digest"))
    }

    /// Whether the blob is present and hashes to its digest.
    pub fn verified(&self, digest: &str) -> bool {
        let p = self.path(digest);
        hex_of(digest).is_some() && digest_file(&p).ok().as_deref() == Some(digest)
    }

    /// Stores `data` as the blob `digest` after checking it hashes to it; `image` and `what` name it in the error.
    pub fn put(&self, image: &str, what: &str, digest: &str, data: &[u8]) -> Result<(), OciError> {
        let actual = digest_of(data);
        if actual != digest {
            return Err(OciError::Digest {
                image: image.into(),
                what: what.into(),
                expected: digest.into(),
                actual,
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
        std::io::Write::write_all(&mut tmp, data).map_err(io(&self.dir))?;
        self.persist(tmp, digest)
    }

    /// Moves a verified temporary file into place as the blob `digest`.
    pub fn persist(&self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<(), OciError> {
        tmp.as_file().sync_all().map_err(io(tmp.path()))?;
        let dest = self.path(digest);
        tmp.persist(&dest).map_err(|e| OciError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Reads a blob's bytes (manifests and configs are small).
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, OciError> {
        let p = self.path(digest);
        std::fs::read(&p).map_err(io(&p))
    }
}
