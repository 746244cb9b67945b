//! `manifest.json`: what an image is made of. The image id is the sha256 of this file's bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::authenticode;
use super::oci::layout::BakedImage;
use super::verity::Verity;
use crate::config::{Arch, Role};

/// The artifact files every image has.
pub const KERNEL: &str = "vmlinuz";
/// File name of the initrd (mkinitramfs output, reproducible cpio).
pub const INITRD: &str = "initrd.img";
/// File name of the root filesystem (squashfs, zstd), fetched by the initrd at boot.
pub const ROOTFS: &str = "rootfs.squashfs";
/// File name of the signed unified kernel image, present when `[secure_boot]` is enabled (amd64).
pub const UKI: &str = "uki.efi";
/// File name of the manifest in an image directory; the image id is the sha256 of its bytes.
pub const MANIFEST: &str = "manifest.json";
/// The files of an image that UEFI firmware may load as boot applications (the kernel's EFI stub, the signed
/// UKI): their Authenticode digests go into [`Manifest::boot_apps`] when they are PE images.
pub const BOOT_APPS: [&str; 2] = [KERNEL, UKI];

/// The Authenticode SHA-256 of `bytes` (lowercase hex) if they are a PE image, as [`Manifest::boot_apps`] records
/// it: the digest firmware measures into PCR 4 when it loads the file.
pub fn boot_app_digest(bytes: &[u8]) -> Option<String> {
    authenticode::sha256(bytes).ok().map(hex::encode)
}

/// Size and digest of one file of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the file's bytes, lowercase hex.
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
    /// sha256 of the db certificate (PEM) the image's `uki.efi` is signed with; absent without a UKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_cert_sha256: Option<String>,
    /// The container images baked in (`/usr/share/imgbuild/images`), sorted by reference; absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<BakedImage>,
}

/// The manifest of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format version ([`crate::image::build::FORMAT`]); bumped when the layout changes.
    pub format: u32,
    /// The role the image is for (master or worker).
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
    /// What went into the image: config, base and role-layer digests, packages, artifacts.
    pub inputs: Inputs,
    /// File name → size and sha256, for `vmlinuz`, `initrd.img`, `rootfs.squashfs` (and `uki.efi` when the
    /// image has a signed UKI).
    pub files: BTreeMap<String, FileEntry>,
    /// The dm-verity tree appended to `rootfs.squashfs`: its root hash goes on the kernel command line (signed
    /// in the UKI). Absent in images built before dm-verity (their initrd checks the sha256 instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_verity: Option<Verity>,
    /// File name → Authenticode SHA-256 (hex) of each of [`BOOT_APPS`] the image has as a PE image: what UEFI
    /// firmware measures into PCR 4 when it loads that file. Computed from the files when the image is committed
    /// (a pure function of their bytes, so rebuilds agree); TPM attestation expects exactly these
    /// (docs/attestation.md). Absent in images built before it was recorded (and for a kernel that is not a PE,
    /// such as arm64's compressed Image).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub boot_apps: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
/// The manifest of an image in the store cannot be used; the image is damaged or was modified: rebuild it.
pub enum ManifestError {
    #[error("image {id}: cannot read {path}: {source}")]
    /// The manifest could not be read (missing, permissions): the image is not there or not readable.
    Read {
        /// The image id.
        id: String,
        /// The manifest's path.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    #[error("image {id}: manifest.json is not valid: {detail}")]
    /// The manifest is not valid JSON of this format.
    Parse {
        /// The image id.
        id: String,
        /// The parser's message.
        detail: String,
    },
    #[error(
        "image {id}: manifest.json hashes to {actual}, not its id; the store was modified: rebuild the image"
    )]
    /// The manifest does not hash to its id: the store was modified; rebuild the image.
    IdMismatch {
        /// The id the image is stored under.
        id: String,
        /// The sha256 the manifest's bytes actually have.
        actual: String,
    },
    #[error("image {id}: manifest lists no {file}")]
    /// The manifest does not list a file every image has (or that was asked for).
    MissingFile {
        /// The image id.
        id: String,
        /// The file name that is not listed.
        file: String,
    },
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
