//! `manifest.json`: what an image is made of. The image id is the sha256 of this file's bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Arch, Role};

/// The artifact files every image has.
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
pub const ROOTFS: &str = "rootfs.squashfs";
pub const MANIFEST: &str = "manifest.json";

/// Size and digest of one file of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub sha256: String,
}

/// What went into the image.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inputs {
    /// sha256 of the parts of the configuration the role's files were rendered from (the role layer digest
    /// covers the rendered bytes; this names the cluster description they came from).
    pub config_digest: String,
    /// Digest of the base layer's inputs (release, mirror, snapshot, packages, SOURCE_DATE_EPOCH).
    pub base_digest: String,
    /// Digest of the rendered role layer ([`crate::image::tree::Tree::digest`]).
    pub role_layer_digest: String,
    /// Debian package → version, as installed in the rootfs.
    pub packages: BTreeMap<String, String>,
    /// Artifact name (kubeadm, containerd, ...) → sha256 of the file installed.
    pub artifacts: BTreeMap<String, String>,
}

/// The manifest of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub role: Role,
    /// The CPU architecture the image runs on (kernel, packages, artifacts). Pinned per role and architecture.
    #[serde(default)]
    pub arch: Arch,
    /// The profile chain, base first (`base`, `worker`).
    pub profile: Vec<String>,
    /// Built with labelled stand-in binaries instead of the real kubeadm/kubelet/...: never a real cluster.
    pub standins: bool,
    /// Kernel arguments of the profile; the boot decision appends them to the command line.
    pub kernel_args: Vec<String>,
    pub inputs: Inputs,
    /// File name → size and sha256, for `vmlinuz`, `initrd.img`, `rootfs.squashfs`.
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("image {id}: cannot read {path}: {source}")]
    Read {
        id: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image {id}: manifest.json is not valid: {detail}")]
    Parse { id: String, detail: String },
    #[error(
        "image {id}: manifest.json hashes to {actual}, not its id; the store was modified: rebuild the image"
    )]
    IdMismatch { id: String, actual: String },
    #[error("image {id}: manifest lists no {file}")]
    MissingFile { id: String, file: String },
}

impl Manifest {
    /// The canonical bytes (pretty JSON, keys in a fixed order, trailing newline). The id is their sha256.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// The image id these bytes give.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }

    /// Parses the bytes of image `id`'s `manifest.json`, after checking that they hash to `id`.
    pub fn from_bytes(id: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != id {
            return Err(ManifestError::IdMismatch {
                id: id.to_string(),
                actual,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Parse {
            id: id.to_string(),
            detail: e.to_string(),
        })
    }

    /// The sha256 of one of the image's files (`KERNEL`, `INITRD`, `ROOTFS`), as recorded in the manifest.
    pub fn digest_of(&self, id: &str, file: &str) -> Result<String, ManifestError> {
        self.files
            .get(file)
            .map(|f| f.sha256.clone())
            .ok_or_else(|| ManifestError::MissingFile {
                id: id.to_string(),
                file: file.to_string(),
            })
    }
}
