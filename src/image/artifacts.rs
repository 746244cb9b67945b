//! Artifacts (kubeadm, kubelet, containerd, ...): download, verify, keep in a content-addressed cache.
//!
//! `imgbuild fetch` downloads each `[artifacts.*]` source (`https://`, `http://`, `file://`), checks it against
//! the upstream checksum (`checksum_url`, a `.sha256` file with a bare digest or `digest  filename` lines) and
//! against `imgbuild.lock`, and stores it as `cache/artifacts/<sha256>`. A build calls [`resolve`], which never
//! downloads: every artifact must be locked and present in the cache with the locked digest.
//!
//! Architectures: `{arch}` in an artifact's `url` or `checksum_url` stands for Debian's architecture name
//! (`amd64`, `arm64`), so one `[artifacts.*]` entry names a file per architecture ([`source`]). The lock holds
//! one entry per artifact *and source URL*: the amd64 and arm64 files of an artifact are two entries (their
//! URLs differ), an artifact without `{arch}` (the YAML manifests) is one entry every architecture shares.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::lock::{Lock, LockEntry, LockError, Verified};
use crate::config::{Arch, Artifact, Cluster};

/// Why fetching (`imgbuild fetch`) or resolving (a build) an artifact failed. Every message names the artifact and
/// says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The source (or its checksum file) could not be opened or read: network, HTTP status, missing `file://` path
    /// or an unsupported scheme. Nothing was stored; fix the URL or the network and fetch again.
    #[error("artifact {name}: cannot download {url}: {detail}")]
    Download {
        /// The artifact's name, its `[artifacts.<name>]` key.
        name: String,
        /// The URL that failed (the file or its checksum file).
        url: String,
        /// The underlying error, as text.
        detail: String,
    },
    /// The upstream checksum file has no digest for this file: neither a bare digest nor a line naming it. Check
    /// `checksum_url`, or set it to `"none"` to trust the first fetch.
    #[error(
        "artifact {name}: checksum file {url} has no sha256 for {file:?} (expected a bare 64-hex digest or \"<digest>  {file}\" lines)"
    )]
    NoChecksum {
        /// The artifact's name, its `[artifacts.<name>]` key.
        name: String,
        /// The checksum file's URL.
        url: String,
        /// The file name a line had to name: the last segment of the artifact's URL.
        file: String,
    },
    /// The download's sha256 differs from the upstream checksum file: corrupt or tampered with; nothing was stored.
    #[error(
        "artifact {name}: {url} has sha256 {actual}, but upstream's checksum file says {expected}: the download is corrupt or tampered with; nothing was stored"
    )]
    UpstreamMismatch {
        /// The artifact's name, its `[artifacts.<name>]` key.
        name: String,
        /// The URL downloaded.
        url: String,
        /// The sha256 upstream publishes, lowercase hex.
        expected: String,
        /// The sha256 of the bytes received, lowercase hex.
        actual: String,
    },
    /// The download's sha256 differs from the one `imgbuild.lock` records for this URL: the file changed upstream
    /// or in the mirror. Nothing was stored; if the change is expected, remove the lock entry and fetch again.
    #[error(
        "artifact {name}: LOCK MISMATCH: {url} now has sha256 {actual}, but imgbuild.lock records {locked}. \
         The file changed upstream or in your mirror. Nothing was stored; if the change is expected, delete the \
         [[artifact]] entry for {name} from imgbuild.lock and run `imgbuild fetch` again"
    )]
    LockMismatch {
        /// The artifact's name, its `[artifacts.<name>]` key.
        name: String,
        /// The URL downloaded.
        url: String,
        /// The sha256 `imgbuild.lock` records, lowercase hex.
        locked: String,
        /// The sha256 of the bytes received, lowercase hex.
        actual: String,
    },
    /// A build needs the artifact but it is not fetched for this architecture: no lock entry, a lock entry for
    /// another version or URL, or no file in the cache. Run `imgbuild fetch`, or build with `--standins`.
    #[error(
        "artifact {name} ({version}, {arch}) is not fetched: {reason}. Run `imgbuild fetch` (or build with \
         --standins for a labelled stand-in image){hint}"
    )]
    Missing {
        /// The artifact's name, its `[artifacts.<name>]` key.
        name: String,
        /// The version `cluster.toml` asks for.
        version: String,
        /// The architecture the build needs it for.
        arch: Arch,
        /// Why it counts as not fetched (what the lock records against what `cluster.toml` asks), or that the file
        /// is absent from the cache.
        reason: String,
        /// Extra advice (why `imgbuild fetch` did not fetch it), or empty.
        hint: String,
    },
    /// The cached file `cache/artifacts/<sha256>` no longer hashes to its name and the locked digest: the cache is
    /// damaged. Delete the file and run `imgbuild fetch`.
    #[error(
        "artifact {name}: cached file {path} has sha256 {actual}, not the locked {locked}: the cache is damaged; \
         delete it and run `imgbuild fetch`"
    )]
    CacheCorrupt {
        /// The artifact's name, its `[artifacts.<name>]` key.
        name: String,
        /// The cached file.
        path: PathBuf,
        /// The sha256 `imgbuild.lock` records, lowercase hex.
        locked: String,
        /// The sha256 the cached file has now, lowercase hex.
        actual: String,
    },
    /// A file or directory of the artifact cache could not be created, written or read.
    #[error("cannot write the artifact cache {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `imgbuild.lock` could not be read, parsed or written.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// The content-addressed artifact cache: `cache/artifacts/<sha256>`.
pub fn cache_dir(cluster: &Cluster) -> PathBuf {
    cluster.paths.cache.join("artifacts")
}

/// Where one architecture's file of an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The download URL with `{version}` and `{arch}` substituted.
    pub url: String,
    /// The checksum file's URL, substituted the same way; `None` when `checksum_url = "none"` (the first fetch is
    /// trusted and locked).
    pub checksum_url: Option<String>,
    /// The architecture the file is for; `None` when the URL has no `{arch}` (one file for every architecture).
    pub arch: Option<Arch>,
}

/// The placeholder for Debian's architecture name in artifact URLs.
pub const ARCH_PLACEHOLDER: &str = "{arch}";

/// Whether an artifact has one file per architecture (`{arch}` in its URL).
pub fn is_per_arch(art: &Artifact) -> bool {
    art.url.contains(ARCH_PLACEHOLDER)
}

/// The source of `art` for `arch`: `{arch}` replaced in its URL and checksum URL.
pub fn source(art: &Artifact, arch: Arch) -> Source {
    let r = |u: &str| u.replace(ARCH_PLACEHOLDER, arch.as_str());
    Source {
        url: r(&art.url),
        checksum_url: art.checksum_url.as_deref().map(r),
        arch: is_per_arch(art).then_some(arch),
    }
}

/// The architectures `imgbuild fetch` fetches for: those of the cluster's machines (amd64 when it has none).
pub fn cluster_arches(cluster: &Cluster) -> Vec<Arch> {
    let mut v: Vec<Arch> = cluster.machines.iter().map(|m| m.arch).collect();
    v.sort();
    v.dedup();
    if v.is_empty() {
        v.push(Arch::Amd64);
    }
    v
}

/// The lock entry of `name` fetched from `url`.
fn lock_get<'l>(lock: &'l Lock, name: &str, url: &str) -> Option<&'l LockEntry> {
    lock.artifacts
        .iter()
        .find(|e| e.name == name && e.url == url)
}

/// Records `entry` for `art`: the entries of `art` for the other architectures stay while their URL is still
/// the configured one; any other entry of the name (an older version or URL) is replaced. Sorted by name, URL.
fn lock_put(lock: &mut Lock, art: &Artifact, entry: LockEntry) {
    let current: Vec<String> = Arch::ALL.iter().map(|a| source(art, *a).url).collect();
    lock.artifacts
        .retain(|e| e.name != entry.name || (e.url != entry.url && current.contains(&e.url)));
    lock.artifacts.push(entry);
    lock.artifacts
        .sort_by(|a, b| (&a.name, &a.url).cmp(&(&b.name, &b.url)));
}

/// A verified artifact file ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The artifact's name, its `[artifacts.<name>]` key (the installer picks its destination by it).
    pub name: String,
    /// The version `cluster.toml` asks for, equal to the locked version.
    pub version: String,
    /// The verified sha256 of the file, lowercase hex: the locked digest.
    pub sha256: String,
    /// The file in the cache, `cache/artifacts/<sha256>`.
    pub path: PathBuf,
}

/// What one fetch did for one artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fetched {
    /// The artifact's name, its `[artifacts.<name>]` key.
    pub name: String,
    /// The version fetched, as `cluster.toml` gives it.
    pub version: String,
    /// The architecture of the file; absent when one file serves every architecture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// The file's sha256, lowercase hex, as recorded in `imgbuild.lock`.
    pub sha256: String,
    /// The file's size in bytes.
    pub size: u64,
    /// Already in the cache with the locked digest: nothing downloaded.
    pub cached: bool,
    /// `upstream checksum` or `trusted on first fetch`.
    pub verified: String,
    /// The lock gained or changed this entry.
    pub lock_updated: bool,
}

/// Opens a URL for reading: `file://`, `http://` or `https://`.
fn open(name: &str, url: &str) -> Result<Box<dyn Read + Send>, ArtifactError> {
    let err = |detail: String| ArtifactError::Download {
        name: name.to_string(),
        url: url.to_string(),
        detail,
    };
    if let Some(path) = url.strip_prefix("file://") {
        let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        return Ok(Box::new(f));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        let resp = ureq::get(url).call().map_err(|e| err(e.to_string()))?;
        return Ok(Box::new(resp.into_body().into_reader()));
    }
    Err(err(
        "unsupported scheme; use https://, http:// or file://".into()
    ))
}

/// The file name a checksum line must name: the last path segment of the URL.
fn file_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Picks the digest for `file` from a checksum file: a bare 64-hex digest, or `<hex>  <name>` / `<hex> *<name>`
/// lines (sha256sum format; the name may carry a path).
pub fn parse_checksum(text: &str, file: &str) -> Option<String> {
    let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.len() == 1 && is_hex(lines[0]) {
        return Some(lines[0].to_ascii_lowercase());
    }
    for l in lines {
        let mut parts = l.split_whitespace();
        let (Some(hex), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = name.trim_start_matches('*');
        let base = name.rsplit('/').next().unwrap_or(name);
        if is_hex(hex) && (name == file || base == file) {
            return Some(hex.to_ascii_lowercase());
        }
    }
    None
}

/// Hex sha256 of a file's bytes, read in 1 MiB pieces.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Fetches every artifact of the cluster for the architectures of its machines ([`cluster_arches`]), verifies
/// it and updates `imgbuild.lock`.
pub fn fetch_all(
    cluster: &Cluster,
    on_progress: impl FnMut(&str),
) -> Result<Vec<Fetched>, ArtifactError> {
    fetch_all_for(cluster, &cluster_arches(cluster), on_progress)
}

/// Fetches every artifact of the cluster for each of `arches` (an artifact without `{arch}` once), verifies
/// it and updates `imgbuild.lock`. `on_progress` gets `name` or `name (arch)` before each.
pub fn fetch_all_for(
    cluster: &Cluster,
    arches: &[Arch],
    mut on_progress: impl FnMut(&str),
) -> Result<Vec<Fetched>, ArtifactError> {
    let lock_path = &cluster.paths.lock;
    let mut lock = Lock::load(lock_path)?;
    let dir = cache_dir(cluster);
    std::fs::create_dir_all(&dir).map_err(|source| ArtifactError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (name, art) in &cluster.artifacts {
        let sources: Vec<Source> = if is_per_arch(art) {
            arches.iter().map(|a| source(art, *a)).collect()
        } else {
            vec![source(art, Arch::Amd64)]
        };
        for src in sources {
            match src.arch {
                Some(a) => on_progress(&format!("{name} ({a})")),
                None => on_progress(name),
            }
            let r = fetch_one(&dir, &mut lock, name, art, &src);
            // Save what was verified so far, even when a later artifact fails.
            if r.as_ref().is_ok_and(|f| f.lock_updated) {
                lock.save(lock_path)?;
            }
            out.push(r?);
        }
    }
    Ok(out)
}

fn fetch_one(
    dir: &Path,
    lock: &mut Lock,
    name: &str,
    art: &Artifact,
    src: &Source,
) -> Result<Fetched, ArtifactError> {
    let locked = lock_get(lock, name, &src.url)
        .filter(|e| e.version == art.version)
        .cloned();
    // Already cached with the locked digest: nothing to download.
    if let Some(e) = &locked {
        let p = dir.join(&e.sha256);
        if p.is_file() && sha256_file(&p).ok().as_deref() == Some(e.sha256.as_str()) {
            return Ok(Fetched {
                name: name.into(),
                version: art.version.clone(),
                arch: src.arch,
                sha256: e.sha256.clone(),
                size: p.metadata().map(|m| m.len()).unwrap_or(0),
                cached: true,
                verified: e.verified.to_string(),
                lock_updated: false,
            });
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Io { path, source }
    };
    // Download into a temp file beside the cache, hashing as we go.
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    let mut reader = open(name, &src.url)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| ArtifactError::Download {
            name: name.into(),
            url: src.url.clone(),
            detail: e.to_string(),
        })?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(io(tmp.path()))?;
    }
    let actual = hex::encode(h.finalize());
    let verified = match &src.checksum_url {
        Some(curl) => {
            let mut text = String::new();
            open(name, curl)?
                .read_to_string(&mut text)
                .map_err(|e| ArtifactError::Download {
                    name: name.into(),
                    url: curl.clone(),
                    detail: e.to_string(),
                })?;
            let file = file_name(&src.url);
            let expected =
                parse_checksum(&text, file).ok_or_else(|| ArtifactError::NoChecksum {
                    name: name.into(),
                    url: curl.clone(),
                    file: file.into(),
                })?;
            if expected != actual {
                return Err(ArtifactError::UpstreamMismatch {
                    name: name.into(),
                    url: src.url.clone(),
                    expected,
                    actual,
                });
            }
            Verified::Upstream
        }
        None => Verified::TrustOnFirstFetch,
    };
    if let Some(e) = &locked
        && e.sha256 != actual
    {
        return Err(ArtifactError::LockMismatch {
            name: name.into(),
            url: src.url.clone(),
            locked: e.sha256.clone(),
            actual,
        });
    }
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    let dest = dir.join(&actual);
    tmp.persist(&dest).map_err(|e| ArtifactError::Io {
        path: dest.clone(),
        source: e.error,
    })?;
    if verified == Verified::TrustOnFirstFetch && locked.is_none() {
        tracing::warn!(
            artifact = name,
            sha256 = %actual,
            "upstream publishes no checksum for {name}: trusting this first download and recording its digest in imgbuild.lock"
        );
    }
    let lock_updated = locked.is_none();
    lock_put(
        lock,
        art,
        LockEntry {
            name: name.into(),
            version: art.version.clone(),
            url: src.url.clone(),
            sha256: actual.clone(),
            verified,
        },
    );
    Ok(Fetched {
        name: name.into(),
        version: art.version.clone(),
        arch: src.arch,
        sha256: actual,
        size,
        cached: false,
        verified: verified.to_string(),
        lock_updated,
    })
}

/// The locked digest of every artifact for `arch`, without touching the files (for the image's input digest).
pub fn locked_digests(
    cluster: &Cluster,
    arch: Arch,
) -> Result<BTreeMap<String, String>, ArtifactError> {
    let lock = Lock::load(&cluster.paths.lock)?;
    let mut out = BTreeMap::new();
    for (name, art) in &cluster.artifacts {
        let e = locked_entry(cluster, &lock, name, art, arch)?;
        out.insert(name.clone(), e.sha256.clone());
    }
    Ok(out)
}

fn missing(
    cluster: &Cluster,
    name: &str,
    art: &Artifact,
    arch: Arch,
    reason: String,
) -> ArtifactError {
    let hint = if cluster_arches(cluster).contains(&arch) {
        String::new()
    } else {
        format!(
            "; note that `imgbuild fetch` fetches for the architectures of the machines in cluster.toml ({}), \
             and no machine is {arch}",
            cluster_arches(cluster)
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    ArtifactError::Missing {
        name: name.into(),
        version: art.version.clone(),
        arch,
        reason,
        hint,
    }
}

fn locked_entry<'l>(
    cluster: &Cluster,
    lock: &'l Lock,
    name: &str,
    art: &Artifact,
    arch: Arch,
) -> Result<&'l LockEntry, ArtifactError> {
    let src = source(art, arch);
    let Some(e) = lock_get(lock, name, &src.url) else {
        let reason = match lock.artifacts.iter().find(|e| e.name == name) {
            Some(e) => format!(
                "imgbuild.lock records version {} from {}, but cluster.toml asks for {} from {}",
                e.version, e.url, art.version, src.url
            ),
            None => "imgbuild.lock has no entry for it".into(),
        };
        return Err(missing(cluster, name, art, arch, reason));
    };
    if e.version != art.version {
        return Err(missing(
            cluster,
            name,
            art,
            arch,
            format!(
                "imgbuild.lock records version {} from {}, but cluster.toml asks for {}",
                e.version, e.url, art.version
            ),
        ));
    }
    Ok(e)
}

/// Every artifact of the cluster for `arch`, verified: locked, present in the cache, and hashing to the locked
/// digest. Never downloads.
pub fn resolve(cluster: &Cluster, arch: Arch) -> Result<Vec<Resolved>, ArtifactError> {
    let lock = Lock::load(&cluster.paths.lock)?;
    let dir = cache_dir(cluster);
    let mut out = Vec::new();
    for (name, art) in &cluster.artifacts {
        let e = locked_entry(cluster, &lock, name, art, arch)?;
        let path = dir.join(&e.sha256);
        if !path.is_file() {
            return Err(missing(
                cluster,
                name,
                art,
                arch,
                format!("{} is not in the cache", path.display()),
            ));
        }
        let actual = sha256_file(&path).map_err(|source| ArtifactError::Io {
            path: path.clone(),
            source,
        })?;
        if actual != e.sha256 {
            return Err(ArtifactError::CacheCorrupt {
                name: name.clone(),
                path,
                locked: e.sha256.clone(),
                actual,
            });
        }
        out.push(Resolved {
            name: name.clone(),
            version: art.version.clone(),
            sha256: actual,
            path,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_files_bare_and_listed() {
        let h1 = "a".repeat(64);
        let h2 = "B".repeat(64);
        assert_eq!(
            parse_checksum(&format!("{h1}\n"), "x").as_deref(),
            Some(h1.as_str())
        );
        let list = format!("{h1}  other.tar.gz\n{h2} *bin/runc.amd64\n");
        assert_eq!(
            parse_checksum(&list, "runc.amd64"),
            Some("b".repeat(64)),
            "sha256sum binary-mode line with a path"
        );
        assert_eq!(parse_checksum(&list, "other.tar.gz"), Some(h1.clone()));
        assert_eq!(parse_checksum(&list, "missing"), None);
        assert_eq!(parse_checksum("not a digest\n", "x"), None);
    }
}
