//! The base layer: a Debian root filesystem made by `mmdebstrap`, cached by the digest of its inputs.
//!
//! Inputs: release, mirror (or the snapshot.debian.org URL of `base.snapshot`), the sorted package set of the
//! role's profile plus `base.packages`, the variant and [`SOURCE_DATE_EPOCH`]. Roles with the same package set
//! share one base. The cache holds `cache/base/<digest>.tar` (mmdebstrap's tarball, byte-identical across runs
//! with the same inputs and epoch); a file lock makes concurrent builds (and tests) share one mmdebstrap run.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Cluster;
use crate::config::profile::Profile;

/// The fixed build time of every image: 2026-01-01T00:00:00Z. Every file time in the base, the squashfs and
/// the initrd is clamped to it, so the same inputs give the same bytes on any day. Changing it changes every id.
pub const SOURCE_DATE_EPOCH: u64 = 1_767_225_600;

/// mmdebstrap's variant: Essential and apt, plus the profile's packages.
pub const VARIANT: &str = "minbase";

/// Everything the base layer is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseSpec {
    pub format: u32,
    pub tool: &'static str,
    pub variant: &'static str,
    pub release: String,
    /// The mirror mmdebstrap reads (the snapshot URL when a snapshot is pinned).
    pub mirror: String,
    pub snapshot: Option<String>,
    /// Sorted, without duplicates.
    pub packages: Vec<String>,
    pub source_date_epoch: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("cannot use the base cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}); its last output:\n{tail}")]
    Command {
        command: String,
        status: String,
        tail: String,
    },
}

/// Runs a command, turning failure into an error with the tail of its output.
pub(crate) fn run(cmd: &mut Command) -> Result<String, BaseError> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let shown = if shown.len() > 300 {
        format!("{}…", &shown[..300])
    } else {
        shown
    };
    let out = cmd.output().map_err(|e| BaseError::Command {
        command: shown.clone(),
        status: e.to_string(),
        tail: "(could not start it: is the Debian package installed? see .ci/apt-packages)".into(),
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        return Err(BaseError::Command {
            command: shown,
            status: out.status.to_string(),
            tail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl BaseSpec {
    /// The base of a role: its profile's packages plus `[base] packages`.
    pub fn new(cluster: &Cluster, profile: &Profile) -> BaseSpec {
        let mut packages: Vec<String> = profile
            .packages
            .iter()
            .chain(cluster.base.packages.iter())
            .cloned()
            .collect();
        packages.sort();
        packages.dedup();
        let mirror = match &cluster.base.snapshot {
            Some(ts) => format!("http://snapshot.debian.org/archive/debian/{ts}/"),
            None => cluster.base.mirror.clone(),
        };
        BaseSpec {
            format: 1,
            tool: "mmdebstrap",
            variant: VARIANT,
            release: cluster.base.release.clone(),
            mirror,
            snapshot: cluster.base.snapshot.clone(),
            packages,
            source_date_epoch: SOURCE_DATE_EPOCH,
        }
    }

    /// sha256 of the canonical JSON of the spec: the base's identity and cache key.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(
            serde_json::to_vec(self).expect("spec serializes"),
        ))
    }

    /// The mmdebstrap command that builds this base into `out` (a `.tar`).
    pub fn command(&self, out: &Path) -> Command {
        let mut c = Command::new("mmdebstrap");
        c.env("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string())
            .env("LC_ALL", "C.UTF-8")
            .arg(format!("--variant={}", self.variant))
            .arg("--quiet")
            .arg("--format=tar");
        if !self.packages.is_empty() {
            c.arg(format!("--include={}", self.packages.join(",")));
        }
        if self.snapshot.is_some() {
            // Snapshot Release files are old by design.
            c.arg("--aptopt=Acquire::Check-Valid-Until \"false\"");
        }
        c.arg(&self.release).arg(out).arg(&self.mirror);
        c
    }
}

/// A built base, ready to unpack.
#[derive(Debug, Clone)]
pub struct Base {
    pub digest: String,
    pub tarball: PathBuf,
    /// Whether this call found it in the cache.
    pub cached: bool,
}

/// The base cache directory.
pub fn cache_dir(cluster: &Cluster) -> PathBuf {
    cluster.paths.cache.join("base")
}

/// Returns the cached base for `spec`, building it with mmdebstrap first if needed. Concurrent callers (other
/// builds, other tests) wait on a file lock and share the result.
pub fn ensure(cache: &Path, spec: &BaseSpec) -> Result<Base, BaseError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BaseError::Io { path, source }
    };
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let digest = spec.digest();
    let tarball = cache.join(format!("{digest}.tar"));
    if tarball.is_file() {
        return Ok(Base {
            digest,
            tarball,
            cached: true,
        });
    }
    let lock_path = cache.join(format!("{digest}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if tarball.is_file() {
        return Ok(Base {
            digest,
            tarball,
            cached: true,
        });
    }
    // mmdebstrap picks its output format from the extension: keep `.tar` last (and say --format=tar too).
    let tmp = cache.join(format!("{digest}.tmp-{}.tar", std::process::id()));
    let spec_json = cache.join(format!("{digest}.json"));
    std::fs::write(
        &spec_json,
        serde_json::to_vec_pretty(spec).expect("spec serializes"),
    )
    .map_err(io(&spec_json))?;
    let r = run(&mut spec.command(&tmp));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if !tmp.is_file() {
        return Err(BaseError::Command {
            command: "mmdebstrap".into(),
            status: "no tarball".into(),
            tail: format!("{} is not a file", tmp.display()),
        });
    }
    std::fs::rename(&tmp, &tarball).map_err(io(&tarball))?;
    Ok(Base {
        digest,
        tarball,
        cached: false,
    })
}

/// Unpacks a base tarball into `dir` with numeric owners and extended attributes (file capabilities).
pub fn unpack(base: &Base, dir: &Path) -> Result<(), BaseError> {
    std::fs::create_dir_all(dir).map_err(|source| BaseError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("-xf")
        .arg(&base.tarball)
        .arg("-C")
        .arg(dir))?;
    Ok(())
}
