//! [`Unavailable`]: the store handed out when the configured one cannot be set up (for S3: no credentials, an
//! unreadable credentials file). Every call says why, so the server still starts and answers, and every
//! command names the fix.

use super::interface::{Artifact, Committed, ImageStore, StoreError, Stored};
use crate::image::manifest::{FileEntry, Manifest};

/// A store that cannot be used, and why.
#[derive(Debug, Clone)]
pub struct Unavailable {
    /// Where the store is.
    pub location: String,
    /// Why it cannot be used, and what to do.
    pub why: String,
}

impl Unavailable {
    fn err(&self) -> StoreError {
        StoreError::Unavailable {
            location: self.location.clone(),
            why: self.why.clone(),
        }
    }
}

impl ImageStore for Unavailable {
    fn location(&self) -> String {
        self.location.clone()
    }
    fn locate(&self, id: &str) -> String {
        format!("{}/manifests/{id}", self.location)
    }
    fn manifest(&self, _: &str) -> Result<Manifest, StoreError> {
        Err(self.err())
    }
    fn open(&self, _: &str, _: &str) -> Result<Artifact, StoreError> {
        Err(self.err())
    }
    fn rehash(&self, _: &str, _: &str) -> Result<FileEntry, StoreError> {
        Err(self.err())
    }
    fn staging(&self) -> Result<tempfile::TempDir, StoreError> {
        Err(self.err())
    }
    fn commit(&self, _: tempfile::TempDir, _: Manifest) -> Result<Committed, StoreError> {
        Err(self.err())
    }
    fn list(&self) -> Result<Vec<Stored>, StoreError> {
        Err(self.err())
    }
    fn remove(&self, _: &str) -> Result<(), StoreError> {
        Err(self.err())
    }
}
