//! `--standins`: labelled stand-in artifacts, generated from templates under `profiles/standins/`.
//!
//! These machines cannot download kubeadm, kubelet, containerd, ... For them, every artifact is replaced by a
//! small script (`profiles/standins/<artifact>.sh.j2`) or a labelled YAML file
//! (`profiles/standins/<artifact>.yaml.j2` for `*-manifest`) that says loudly it is a stand-in, checks what it is
//! given and reports what it would have done to the server. The image's manifest records `standins: true`, so
//! its id never equals a real build's. A missing template is an error naming it: never a silent fallback.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::install::{Kind, MANIFEST_DIR, kind};
use crate::config::Cluster;
use crate::template::{Engine, TemplateError};

/// One generated stand-in file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandinFile {
    /// The artifact it stands in for, its `[artifacts.<name>]` key.
    pub artifact: String,
    /// Absolute path in the root filesystem.
    pub path: String,
    /// Unix permission bits: 0755 for scripts, 0644 for manifests.
    pub mode: u32,
    /// The rendered script or YAML.
    pub contents: Vec<u8>,
}

/// All stand-ins of a cluster's artifacts, and the digest of each artifact's files.
#[derive(Debug, Clone, Default)]
pub struct Standins {
    /// Every generated file, for every artifact of the cluster.
    pub files: Vec<StandinFile>,
    /// Artifact name → `standin:` + sha256 over its generated files.
    pub digests: BTreeMap<String, String>,
}

/// Why `--standins` could not generate the stand-ins.
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    /// An artifact has no stand-in template under `profiles/standins/`: write one, or fetch the real artifact and
    /// build without `--standins`.
    #[error(
        "artifact {artifact}: no stand-in template {template}; --standins needs one template per artifact under profiles/standins/ (write it, or fetch the real artifact with `imgbuild fetch` and build without --standins)"
    )]
    Missing {
        /// The artifact without a stand-in, its `[artifacts.<name>]` key.
        artifact: String,
        /// The template that is missing, e.g. `profiles/standins/kubeadm.sh.j2`.
        template: String,
    },
    /// `cluster.toml` has an artifact imgbuild does not know how to install, so no stand-in can be placed: remove
    /// it, or give it one of the known names.
    #[error(
        "artifact {name}: imgbuild does not know where to install it; known artifacts are kubeadm, kubelet, kubectl, containerd, runc, cni-plugins, crictl and *-manifest"
    )]
    Unknown {
        /// The artifact's name, its `[artifacts.<name>]` key.
        name: String,
    },
    /// A stand-in template failed to load or render.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

#[derive(Serialize)]
struct Ctx<'a> {
    cluster: &'a Cluster,
    /// The artifact this stands in for (`containerd`, `cni-plugins`, ...).
    artifact: &'a str,
    /// The binary name this file is installed as (`containerd`, `bridge`, ...).
    binary: &'a str,
    /// Where it is installed.
    path: &'a str,
    /// The upstream version it stands in for.
    version: &'a str,
    server_url: String,
}

/// The template a stand-in for `artifact` is rendered from.
pub fn template_name(artifact: &str) -> Option<String> {
    match kind(artifact)? {
        Kind::Manifest => Some(format!("profiles/standins/{artifact}.yaml.j2")),
        _ => Some(format!("profiles/standins/{artifact}.sh.j2")),
    }
}

/// Renders the stand-in of every artifact of the cluster.
pub fn generate(cluster: &Cluster, engine: &Engine) -> Result<Standins, StandinError> {
    let mut out = Standins::default();
    for (name, art) in &cluster.artifacts {
        let k = kind(name).ok_or_else(|| StandinError::Unknown { name: name.clone() })?;
        let template = template_name(name).expect("known kind");
        let exists = cluster
            .paths
            .profiles
            .join(template.trim_start_matches("profiles/"))
            .is_file();
        if !exists {
            return Err(StandinError::Missing {
                artifact: name.clone(),
                template,
            });
        }
        let targets: Vec<(String, String, u32)> = match k {
            Kind::Binary(p) => vec![(
                p.rsplit('/').next().unwrap_or(p).to_string(),
                p.to_string(),
                0o755,
            )],
            Kind::Tarball {
                dir,
                standin_binaries,
                ..
            } => standin_binaries
                .iter()
                .map(|b| (b.to_string(), format!("{dir}/{b}"), 0o755))
                .collect(),
            Kind::Manifest => vec![(name.clone(), format!("{MANIFEST_DIR}/{name}.yaml"), 0o644)],
        };
        let mut h = Sha256::new();
        for (binary, path, mode) in targets {
            let ctx = Ctx {
                cluster,
                artifact: name,
                binary: &binary,
                path: &path,
                version: &art.version,
                server_url: cluster.network.http_base(),
            };
            let text = engine.render(&template, &ctx)?;
            h.update(path.as_bytes());
            h.update([0]);
            h.update(text.as_bytes());
            h.update([0]);
            out.files.push(StandinFile {
                artifact: name.clone(),
                path,
                mode,
                contents: text.into_bytes(),
            });
        }
        out.digests.insert(
            name.clone(),
            format!("standin:{}", hex::encode(h.finalize())),
        );
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
