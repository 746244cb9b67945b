//! Baking a role's container images into its image: the locked images of the role for the image's architecture
//! written as one OCI image layout at [`IMAGES_DIR`] (`oci-layout`, `index.json`, `blobs/sha256/`), each
//! manifest annotated with the name containerd imports it as. The same lock and cache give the same bytes: the
//! index is sorted by reference, its JSON is canonical, blobs are copies of verified cache files with fixed
//! modes (mksquashfs fixes every time).

use std::path::Path;

use serde::Serialize;

use super::blobs::{Blobs, hex_of};
use super::error::{OciError, io};
use super::pull::{entry_blobs, pin_digest, verify_locked_entry};
use crate::config::{Arch, Cluster, Role};
use crate::image::lock::{ImageLockEntry, Lock};

/// Where a role image carries its container images: an OCI image layout the first-boot import reads.
pub const IMAGES_DIR: &str = "/usr/share/imgbuild/images";

/// One image baked into a role image, as the image's manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct BakedImage {
    /// The normalised reference by tag, the name containerd imports it as.
    pub reference: String,
    /// The digest nodes run it by, `repository@digest`: the multi-arch index's when the tag names one, else the
    /// image manifest's; containerd imports the name pointing at it.
    pub digest: String,
    /// The image manifest's digest for the image's architecture.
    pub manifest: String,
    /// The config digest: the image id.
    pub config: String,
    /// Manifest, config and layers, bytes.
    pub size: u64,
}

/// The role's images for `arch` that the lock and cache hold. With `require_all` (a real build) every image of
/// the role must be fetched; otherwise (a stand-in build) the missing ones are returned by reference in the
/// second list and left out.
pub fn role_images(
    cluster: &Cluster,
    role: Role,
    arch: Arch,
    require_all: bool,
) -> Result<(Vec<BakedImage>, Vec<String>), OciError> {
    let wanted = cluster.images_for(role);
    if wanted.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let lock = Lock::load(&cluster.paths.lock)?;
    let blobs = Blobs::under(&cluster.paths.cache);
    let mut baked = Vec::new();
    let mut missing = Vec::new();
    for img in wanted {
        match verify_locked_entry(&blobs, &lock, &img.reference, arch) {
            Ok(e) => baked.push(baked_of(e)),
            Err(e) if require_all => return Err(e),
            Err(_) => missing.push(img.reference.full()),
        }
    }
    baked.sort();
    Ok((baked, missing))
}

fn baked_of(e: &ImageLockEntry) -> BakedImage {
    BakedImage {
        reference: e.reference.clone(),
        digest: pin_digest(e).to_string(),
        manifest: e.manifest.clone(),
        config: e.config.clone(),
        size: e.size,
    }
}

/// The `index.json` of the layout: one entry per image, sorted, with containerd's and OCI's name annotations.
pub fn index_json(blobs: &Blobs, images: &[BakedImage]) -> Result<Vec<u8>, OciError> {
    let mut manifests = Vec::new();
    for i in images {
        let data = blobs.read(&i.digest)?;
        let m =
            super::manifest::AnyManifest::parse(&data).map_err(|detail| OciError::Malformed {
                image: i.reference.clone(),
                detail,
            })?;
        let tag = i.reference.rsplit_once(':').map_or("", |(_, t)| t);
        manifests.push(serde_json::json!({
            "mediaType": m.kind(),
            "digest": i.digest,
            "size": data.len(),
            "annotations": {
                "io.containerd.image.name": i.reference,
                "org.opencontainers.image.ref.name": tag,
            }
        }));
    }
    let mut v = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .expect("index serializes");
    v.push(b'\n');
    Ok(v)
}

/// Writes the layout of `images` under `root` (a root filesystem) at [`IMAGES_DIR`]; returns the bytes of blobs
/// written.
pub fn write(cache: &Path, images: &[BakedImage], root: &Path) -> Result<u64, OciError> {
    use std::os::unix::fs::PermissionsExt;
    if images.is_empty() {
        return Ok(0);
    }
    let blobs = Blobs::under(cache);
    let dir = root.join(IMAGES_DIR.trim_start_matches('/'));
    let bdir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&bdir).map_err(io(&bdir))?;
    let file = |p: &Path, data: &[u8]| -> Result<(), OciError> {
        std::fs::write(p, data).map_err(io(p))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).map_err(io(p))
    };
    file(
        &dir.join("oci-layout"),
        b"{\"imageLayoutVersion\":\"1.0.0\"}\n",
    )?;
    file(&dir.join("index.json"), &index_json(&blobs, images)?)?;
    let mut total = 0;
    for i in images {
        let entry = ImageLockEntry {
            reference: i.reference.clone(),
            arch: String::new(),
            index: (i.digest != i.manifest).then(|| i.digest.clone()),
            manifest: i.manifest.clone(),
            config: i.config.clone(),
            size: i.size,
        };
        let all = entry_blobs(&blobs, &entry).map_err(|reason| OciError::Missing {
            image: i.reference.clone(),
            arch: "this".into(),
            reason,
        })?;
        for d in all {
            let to = bdir.join(hex_of(&d).expect("verified digest"));
            if to.exists() {
                continue;
            }
            let from = blobs.path(&d);
            total += std::fs::copy(&from, &to).map_err(io(&from))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))
                .map_err(io(&to))?;
        }
    }
    for d in [dir.as_path(), dir.join("blobs").as_path(), bdir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).map_err(io(d))?;
    }
    Ok(total)
}
