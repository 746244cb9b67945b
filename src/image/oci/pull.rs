//! `imgbuild fetch` for container images: resolve each `[images.*]` tag with the OCI distribution API
//! (`oci-client`), pick the manifest of each architecture from a multi-arch index, download the manifest, config
//! and layers into the blob cache (each verified against its digest) and record the digests in `imgbuild.lock`.
//!
//! A tag whose content is already locked and cached downloads nothing (one manifest request checks the tag has
//! not moved); `offline` skips even that and only verifies the cache against the lock.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::blobs::{Blobs, digest_file, digest_of};
use super::error::{OciError, io};
use super::manifest::{ACCEPTED, AnyManifest, ImageConfig};
use crate::config::{Arch, Cluster, ContainerImage, ImageRef};
use crate::image::lock::{ImageLockEntry, Lock};

/// What one fetch did for one image and architecture.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FetchedImage {
    /// The normalised reference.
    pub reference: String,
    /// The `[images.<group>]` listing it.
    pub group: String,
    /// The Debian architecture.
    pub arch: Arch,
    /// The image manifest's digest for this architecture.
    pub manifest: String,
    /// The config's digest: the image id.
    pub config: String,
    /// Manifest, config and layers, bytes.
    pub size: u64,
    /// Everything was already cached with the locked digests: nothing downloaded.
    pub cached: bool,
    /// The lock gained this entry.
    pub lock_updated: bool,
}

/// Registries spoken to over plain HTTP: those on the loopback interface (like Docker's default), where a test
/// or a site-local mirror runs; every other registry is HTTPS.
pub fn is_loopback_registry(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

fn client(images: &[&ContainerImage]) -> Client {
    let mut plain: Vec<String> = images
        .iter()
        .map(|i| i.reference.registry.clone())
        .filter(|r| is_loopback_registry(r))
        .collect();
    plain.sort();
    plain.dedup();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        connect_timeout: Some(std::time::Duration::from_secs(20)),
        ..ClientConfig::default()
    })
}

fn oci_ref(r: &ImageRef) -> Reference {
    // oci-client writes Docker Hub as `docker.io` and maps it to its API host itself.
    Reference::with_tag(r.registry.clone(), r.repository.clone(), r.tag.clone())
}

fn not_found(env: &OciEnvelope) -> bool {
    env.errors.iter().any(|e| {
        let c = format!("{:?}", e.code).to_ascii_uppercase();
        c.contains("UNKNOWN")
    })
}

/// Maps the client's error to ours, naming the image.
fn classify(img: &ContainerImage, what: &str, e: OciDistributionError) -> OciError {
    let image = img.reference.full();
    match e {
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => OciError::Digest {
            image,
            what: what.into(),
            expected,
            actual,
        },
        OciDistributionError::ImageManifestNotFoundError(detail) => OciError::NotFound {
            image,
            group: img.group.clone(),
            detail,
        },
        OciDistributionError::RegistryError { envelope, url } if not_found(&envelope) => {
            OciError::NotFound {
                image,
                group: img.group.clone(),
                detail: format!("{url}: {envelope}"),
            }
        }
        OciDistributionError::ServerError { code: 404, url, .. } => OciError::NotFound {
            image,
            group: img.group.clone(),
            detail: format!("{url}: 404"),
        },
        e => OciError::Registry {
            image,
            detail: e.to_string(),
        },
    }
}

/// The images to fetch for `arches`: every `[images.*]` entry once (the first group listing it names it).
fn unique(cluster: &Cluster) -> Vec<&ContainerImage> {
    let mut seen = std::collections::BTreeSet::new();
    cluster
        .images
        .iter()
        .filter(|i| seen.insert(i.reference.full()))
        .collect()
}

/// Fetches every `[images.*]` image for each of `arches`, verifies it and updates `imgbuild.lock`; `offline`
/// contacts no registry and only checks the cache against the lock. `on_progress` gets `ref (arch)` before each.
pub fn fetch_images(
    cluster: &Cluster,
    arches: &[Arch],
    offline: bool,
    mut on_progress: impl FnMut(&str),
) -> Result<Vec<FetchedImage>, OciError> {
    let images = unique(cluster);
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let blobs = Blobs::under(&cluster.paths.cache);
    std::fs::create_dir_all(&blobs.dir).map_err(io(&blobs.dir))?;
    let mut lock = Lock::load(&cluster.paths.lock)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(&cluster.paths.cache))?;
    let client = client(&images);
    let mut out = Vec::new();
    for img in images {
        for arch in arches {
            on_progress(&format!("{} ({arch})", img.reference.full()));
            let r = if offline {
                verify_locked(&blobs, &lock, img, *arch)
            } else {
                rt.block_on(fetch_one(&client, &blobs, &lock, img, *arch))
            };
            let f = r?;
            if f.report.lock_updated {
                lock.upsert_image(f.entry.clone());
                lock.save(&cluster.paths.lock)?;
            }
            out.push(f.report);
        }
    }
    Ok(out)
}

struct One {
    entry: ImageLockEntry,
    report: FetchedImage,
}

fn report(img: &ContainerImage, arch: Arch, e: &ImageLockEntry, cached: bool, new: bool) -> One {
    One {
        entry: e.clone(),
        report: FetchedImage {
            reference: e.reference.clone(),
            group: img.group.clone(),
            arch,
            manifest: e.manifest.clone(),
            config: e.config.clone(),
            size: e.size,
            cached,
            lock_updated: new,
        },
    }
}

/// The blobs a cached image manifest names (config first), verified present; `Err` says which is missing.
pub fn cached_blobs(blobs: &Blobs, manifest: &str) -> Result<Vec<String>, String> {
    if !blobs.verified(manifest) {
        return Err(format!("its manifest {manifest} is not in the cache"));
    }
    let data = blobs.read(manifest).map_err(|e| e.to_string())?;
    let m = AnyManifest::parse(&data)?;
    let mut v = vec![manifest.to_string()];
    v.extend(m.config.iter().map(|d| d.digest.clone()));
    v.extend(m.layers.unwrap_or_default().into_iter().map(|d| d.digest));
    for d in &v[1..] {
        if !blobs.verified(d) {
            return Err(format!(
                "blob {d} is not in the cache (or no longer hashes to its name)"
            ));
        }
    }
    Ok(v)
}

/// Every blob of a locked entry (the index if any, the manifest, config and layers), verified present.
pub fn entry_blobs(blobs: &Blobs, e: &ImageLockEntry) -> Result<Vec<String>, String> {
    let mut v = Vec::new();
    if let Some(i) = &e.index {
        if !blobs.verified(i) {
            return Err(format!("its index {i} is not in the cache"));
        }
        v.push(i.clone());
    }
    v.extend(cached_blobs(blobs, &e.manifest)?);
    Ok(v)
}

/// The digest a node runs an image by: the multi-arch index's when the tag names one (the same on every
/// architecture), else the image manifest's.
pub fn pin_digest(e: &ImageLockEntry) -> &str {
    e.index.as_deref().unwrap_or(&e.manifest)
}

/// The locked entry of `img` for `arch`, with every blob present and verified in the cache.
pub fn verify_locked_entry<'l>(
    blobs: &Blobs,
    lock: &'l Lock,
    img: &ImageRef,
    arch: Arch,
) -> Result<&'l ImageLockEntry, OciError> {
    let missing = |reason: String| OciError::Missing {
        image: img.full(),
        arch: arch.to_string(),
        reason,
    };
    let e = lock
        .image(&img.full(), arch.as_str())
        .ok_or_else(|| missing("imgbuild.lock has no entry for it".into()))?;
    entry_blobs(blobs, e).map_err(missing)?;
    Ok(e)
}

fn verify_locked(
    blobs: &Blobs,
    lock: &Lock,
    img: &ContainerImage,
    arch: Arch,
) -> Result<One, OciError> {
    let e = verify_locked_entry(blobs, lock, &img.reference, arch)?;
    Ok(report(img, arch, e, true, false))
}

async fn fetch_one(
    client: &Client,
    blobs: &Blobs,
    lock: &Lock,
    img: &ContainerImage,
    arch: Arch,
) -> Result<One, OciError> {
    let image = img.reference.full();
    let auth = RegistryAuth::Anonymous;
    let tag = oci_ref(&img.reference);
    let (top, _) = client
        .pull_manifest_raw(&tag, &auth, ACCEPTED)
        .await
        .map_err(|e| classify(img, "manifest", e))?;
    let top_digest = digest_of(&top);
    let parsed = AnyManifest::parse(&top).map_err(|detail| OciError::Malformed {
        image: image.clone(),
        detail,
    })?;
    let (index, manifest_digest) = if parsed.is_index() {
        let d = parsed
            .pick(arch.as_str())
            .map_err(|available| OciError::NoPlatform {
                image: image.clone(),
                arch: arch.to_string(),
                available,
            })?;
        (Some(top_digest.clone()), d.digest.clone())
    } else {
        (None, top_digest.clone())
    };
    let locked = lock.image(&image, arch.as_str());
    if let Some(l) = locked {
        let was = l.index.clone().unwrap_or_else(|| l.manifest.clone());
        if was != top_digest {
            return Err(OciError::TagMoved {
                image,
                arch: arch.to_string(),
                locked: was,
                now: top_digest,
            });
        }
        if entry_blobs(blobs, l).is_ok() {
            return Ok(report(img, arch, l, true, false));
        }
    }
    // The image manifest: the tag's own, or the index entry's, fetched by digest.
    let manifest_bytes = if index.is_some() {
        let by_digest = tag.clone_with_digest(manifest_digest.clone());
        let (b, _) = client
            .pull_manifest_raw(&by_digest, &auth, &ACCEPTED[2..])
            .await
            .map_err(|e| classify(img, "manifest", e))?;
        b.to_vec()
    } else {
        top.to_vec()
    };
    if index.is_some() {
        blobs.put(&image, "index", &top_digest, &top)?;
    }
    blobs.put(&image, "manifest", &manifest_digest, &manifest_bytes)?;
    let m = AnyManifest::parse(&manifest_bytes).map_err(|detail| OciError::Malformed {
        image: image.clone(),
        detail,
    })?;
    let (Some(config), Some(layers)) = (m.config.clone(), m.layers.clone()) else {
        return Err(OciError::Malformed {
            image,
            detail: format!("{manifest_digest} is not an image manifest (no config or layers)"),
        });
    };
    let mut size = manifest_bytes.len() as u64;
    for (what, d) in std::iter::once(("config", &config)).chain(layers.iter().map(|l| ("layer", l)))
    {
        size += d.size;
        if blobs.verified(&d.digest) {
            continue;
        }
        pull_blob(client, blobs, img, &tag, what, &d.digest).await?;
    }
    // A single-arch tag must be for the architecture asked.
    let cfg: ImageConfig =
        serde_json::from_slice(&blobs.read(&config.digest)?).map_err(|e| OciError::Malformed {
            image: image.clone(),
            detail: format!("config {}: {e}", config.digest),
        })?;
    if index.is_none() && (cfg.architecture != arch.as_str() || cfg.os != "linux") {
        return Err(OciError::NoPlatform {
            image,
            arch: arch.to_string(),
            available: format!("{}/{}", cfg.os, cfg.architecture),
        });
    }
    let entry = ImageLockEntry {
        reference: image,
        arch: arch.to_string(),
        index,
        manifest: manifest_digest,
        config: config.digest.clone(),
        size,
    };
    Ok(report(img, arch, &entry, false, true))
}

async fn pull_blob(
    client: &Client,
    blobs: &Blobs,
    img: &ContainerImage,
    tag: &Reference,
    what: &str,
    digest: &str,
) -> Result<(), OciError> {
    std::fs::create_dir_all(&blobs.dir).map_err(io(&blobs.dir))?;
    let tmp = tempfile::NamedTempFile::new_in(&blobs.dir).map_err(io(&blobs.dir))?;
    let file = tokio::fs::File::from_std(tmp.reopen().map_err(io(tmp.path()))?);
    client
        .pull_blob(tag, digest, file)
        .await
        .map_err(|e| classify(img, what, e))?;
    // oci-client checks the digest as it streams; check the bytes on disk again before they enter the cache.
    let actual = digest_file(tmp.path()).map_err(io(tmp.path()))?;
    if actual != digest {
        return Err(OciError::Digest {
            image: img.reference.full(),
            what: what.into(),
            expected: digest.into(),
            actual,
        });
    }
    blobs.persist(tmp, digest)
}
