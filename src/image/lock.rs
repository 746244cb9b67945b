//! `imgbuild.lock`: the verified digest of every artifact, like `Cargo.lock`.
//!
//! `imgbuild fetch` writes it; a later fetch must match it; a build reads it and never downloads. Each entry
//! records where the file came from and how its digest was established (`upstream` checksum file or
//! `trust-on-first-fetch` when upstream publishes none).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How the digest of an entry was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verified {
    /// Checked against the checksum file upstream publishes.
    Upstream,
    /// Upstream publishes no checksum: the digest of the first download was recorded.
    TrustOnFirstFetch,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verified::Upstream => "upstream checksum",
            Verified::TrustOnFirstFetch => {
                "trusted on first fetch (upstream publishes no checksum)"
            }
        })
    }
}

/// One locked artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    /// The artifact's name, its `[artifacts.<name>]` key; an artifact with `{arch}` in its URL has one entry per
    /// architecture.
    pub name: String,
    /// The version the file was fetched for.
    pub version: String,
    /// The exact URL fetched (`{version}` and `{arch}` substituted): the entry's key with `name`.
    pub url: String,
    /// The file's sha256, lowercase hex: the name of its file in `cache/artifacts/`.
    pub sha256: String,
    /// How the digest was established: `upstream` or `trust-on-first-fetch`.
    pub verified: Verified,
}

/// The whole lock file, entries sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The lock file format version, [`LOCK_VERSION`]; another version is refused.
    pub version: u32,
    /// Every locked file, `[[artifact]]` tables in the TOML, sorted by name and URL.
    #[serde(default, rename = "artifact")]
    pub artifacts: Vec<LockEntry>,
    /// Every locked container image, `[[image]]` tables, sorted by reference and architecture.
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageLockEntry>,
}

/// One container image for one architecture, as `imgbuild fetch` resolved and verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLockEntry {
    /// The reference as `cluster.toml` writes it, normalised (`registry.k8s.io/pause:3.10.2`).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The Debian architecture the image manifest is for.
    pub arch: String,
    /// The digest of the tag's target when it is a multi-arch index (`sha256:...`); absent when the tag names a
    /// single image manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// The digest of the image manifest for `arch` (`sha256:...`): what nodes run, `repository@digest`.
    pub manifest: String,
    /// The digest of the image's config (`sha256:...`): the image id `ctr`/`crictl` show.
    pub config: String,
    /// The size in bytes of the manifest, the config and every layer together.
    pub size: u64,
}

/// Why `imgbuild.lock` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file exists but could not be read, or could not be written.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The lock file's path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the lock's shape, or has another format version: delete it and run
    /// `imgbuild fetch` to write it again.
    #[error(
        "{path} is not a valid lock file: {detail}; delete it and run `imgbuild fetch` to write it again"
    )]
    Parse {
        /// The lock file's path.
        path: PathBuf,
        /// The TOML error, or the unsupported format version.
        detail: String,
    },
}

/// The lock file format version this build writes and reads.
pub const LOCK_VERSION: u32 = 1;

impl Lock {
    /// Reads the lock; a missing file is an empty lock.
    pub fn load(path: &Path) -> Result<Lock, LockError> {
        match std::fs::read_to_string(path) {
            Ok(s) => {
                let lock: Lock = toml::from_str(&s).map_err(|e| LockError::Parse {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?;
                if lock.version != LOCK_VERSION {
                    return Err(LockError::Parse {
                        path: path.to_path_buf(),
                        detail: format!(
                            "version {} (this imgbuild reads version {LOCK_VERSION})",
                            lock.version
                        ),
                    });
                }
                Ok(lock)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock {
                version: LOCK_VERSION,
                ..Lock::default()
            }),
            Err(source) => Err(LockError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The entry of an artifact.
    pub fn get(&self, name: &str) -> Option<&LockEntry> {
        self.artifacts.iter().find(|e| e.name == name)
    }

    /// Adds or replaces the entry of `entry.name`, keeping the entries sorted.
    pub fn upsert(&mut self, entry: LockEntry) {
        self.artifacts.retain(|e| e.name != entry.name);
        self.artifacts.push(entry);
        self.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The locked image `reference` (normalised) for `arch`.
    pub fn image(&self, reference: &str, arch: &str) -> Option<&ImageLockEntry> {
        self.images
            .iter()
            .find(|e| e.reference == reference && e.arch == arch)
    }

    /// Adds or replaces the entry of (`entry.reference`, `entry.arch`), keeping the entries sorted.
    pub fn upsert_image(&mut self, entry: ImageLockEntry) {
        self.images
            .retain(|e| !(e.reference == entry.reference && e.arch == entry.arch));
        self.images.push(entry);
        self.images
            .sort_by(|a, b| (&a.reference, &a.arch).cmp(&(&b.reference, &b.arch)));
    }

    /// The file's text: a header and TOML.
    pub fn to_text(&self) -> String {
        let mut lock = self.clone();
        lock.version = LOCK_VERSION;
        lock.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
        lock.images
            .sort_by(|a, b| (&a.reference, &a.arch).cmp(&(&b.reference, &b.arch)));
        format!(
            "# imgbuild.lock: the verified sha256 of every artifact and container image. Written by `imgbuild fetch`; commit it.\n\
             # A build uses only files whose digest is recorded here.\n\n{}",
            toml::to_string(&lock).expect("lock serializes")
        )
    }

    /// Writes the lock atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(self.to_text().as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_sorted_and_rejects_other_versions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("imgbuild.lock");
        let mut l = Lock::load(&p).unwrap();
        assert!(l.artifacts.is_empty());
        for n in ["runc", "kubeadm"] {
            l.upsert(LockEntry {
                name: n.into(),
                version: "1.0.0".into(),
                url: format!("file:///m/{n}"),
                sha256: "ab".repeat(32),
                verified: Verified::Upstream,
            });
        }
        l.save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.find("kubeadm").unwrap() < text.find("runc").unwrap());
        assert_eq!(Lock::load(&p).unwrap(), {
            let mut x = l.clone();
            x.version = LOCK_VERSION;
            x
        });
        std::fs::write(&p, text.replace("version = 1\n", "version = 7\n")).unwrap();
        let e = Lock::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("version 7") && e.contains("imgbuild fetch"),
            "{e}"
        );
    }
}
