//! The role layer: every file a node of a role carries, rendered from its profile's templates.
//!
//! `imgbuild profile <role> --render <dir>` writes this tree; the image builder lays it over the base rootfs.
//! Rendering is a pure function of (cluster, profile, templates): twice gives the same bytes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Cluster;
use crate::config::profile::Profile;
use crate::template::{Engine, TemplateError};

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeFile {
    /// Absolute path inside the node's root filesystem.
    pub path: String,
    /// Unix permission bits, from the profile entry's `mode` (default `0644`).
    pub mode: u32,
    /// The rendered bytes (left out of the JSON listing).
    #[serde(skip)]
    pub contents: Vec<u8>,
    /// sha256 of `contents`, lowercase hex.
    pub sha256: String,
}

/// The rendered role layer, sorted by path.
#[derive(Debug, Clone, Serialize)]
pub struct Tree {
    /// The role's name, e.g. `master`.
    pub role: String,
    /// Every file of the profile chain, sorted by path.
    pub files: Vec<TreeFile>,
}

/// The values every profile template sees.
#[derive(Serialize)]
pub struct TemplateContext<'a> {
    /// The validated `cluster.toml`, as `cluster.<section>.<key>` (e.g. `cluster.longhorn.data_path`).
    pub cluster: &'a Cluster,
    /// The role's name, e.g. `master`.
    pub role: &'a str,
    /// Debian's name of the image's architecture (`amd64`, `arm64`): the profile's.
    pub arch: &'a str,
    /// The resolved profile: packages, kernel modules and args, units, sysctls, files.
    pub profile: &'a Profile,
    /// `http://server:port`, the base URL of boot scripts and artifacts.
    pub server_url: String,
    /// `https://server:https_port`, the node API (enrollment, reports, barrier, token).
    pub api_url: String,
    /// The provisioning CA certificate (PEM, public) from `secrets/provisioning-ca.crt`, which node API calls
    /// verify the server with; empty when `imgbuild secrets init` has not run yet (the image then cannot enroll).
    pub provisioning_ca: String,
}

impl<'a> TemplateContext<'a> {
    /// The context for `profile`'s role and architecture in `cluster`.
    pub fn new(cluster: &'a Cluster, profile: &'a Profile) -> Self {
        TemplateContext {
            cluster,
            role: profile.role.as_str(),
            arch: profile.arch.as_str(),
            profile,
            server_url: cluster.network.http_base(),
            api_url: cluster.network.https_base(),
            provisioning_ca: provisioning_ca(cluster),
        }
    }
}

/// The provisioning CA certificate an image carries: read from the secrets directory (public; the key next to
/// it never is). Empty, with a warning, when there is none yet: one warning per missing file per process (`check`
/// and `build` render every role, and the same advice three times was noise).
pub fn provisioning_ca(cluster: &Cluster) -> String {
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let p = cluster.paths.provisioning_ca_cert();
    match std::fs::read_to_string(&p) {
        Ok(t) if t.contains("-----BEGIN CERTIFICATE-----") => t.trim_end().to_string(),
        _ => {
            let first = WARNED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.clone());
            if !first {
                return String::new();
            }
            tracing::warn!(
                "{} is missing: images built now cannot enroll (their node API calls have no CA to verify the \
                 server with); run `imgbuild secrets init` before building",
                p.display()
            );
            String::new()
        }
    }
}

/// Why a role layer could not be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A template failed to load or render (syntax error, undefined value, missing file).
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A rendered file (or its directory) could not be written under the output directory.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file's path on disk.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Renders every file of the profile. Besides the cluster and the profile, the one input read from disk is the
/// provisioning CA certificate (public), so a new CA gives a new role layer.
pub fn render(cluster: &Cluster, profile: &Profile, engine: &Engine) -> Result<Tree, TreeError> {
    let ctx = TemplateContext::new(cluster, profile);
    let mut files = Vec::with_capacity(profile.files.len());
    for spec in &profile.files {
        let text = engine.render(&spec.template, &ctx)?;
        let contents = text.into_bytes();
        files.push(TreeFile {
            path: spec.path.clone(),
            mode: spec.mode,
            sha256: hex::encode(Sha256::digest(&contents)),
            contents,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Tree {
        role: profile.role.to_string(),
        files,
    })
}

impl Tree {
    /// sha256 over every path, mode and content: the role layer's identity.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for f in &self.files {
            h.update(f.path.as_bytes());
            h.update([0]);
            h.update(f.mode.to_be_bytes());
            h.update(f.sha256.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    /// Writes the tree under `dir` (created if needed), with the files' modes.
    pub fn write_to(&self, dir: &Path) -> Result<(), TreeError> {
        use std::os::unix::fs::PermissionsExt;
        for f in &self.files {
            let dest = dir.join(f.path.trim_start_matches('/'));
            let io = |source| TreeError::Write {
                path: dest.display().to_string(),
                source,
            };
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::write(&dest, &f.contents).map_err(io)?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode)).map_err(io)?;
        }
        Ok(())
    }
}
