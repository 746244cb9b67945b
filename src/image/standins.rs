//! `--standins`: labelled stand-in artifacts, generated from templates under `profiles/standins/`.
//!
//! These machines cannot download kubeadm, kubelet, containerd, ... For them, every artifact is replaced by a
//! small script (`profiles/standins/<artifact>.sh.j2`) or a labelled YAML file
//! (`profiles/standins/<artifact>.yaml.j2` for `*-manifest`) that says loudly it is a stand-in, checks what it is
//! given and reports what it would have done to the server. The image's manifest records `standins: true`, so
//! its id never equals a real build's. A missing template is an error naming it: never a silent fallback.
//!
//! The container runtime is real: a stand-in build adds Debian's `containerd` and `runc` ([`RUNTIME_PACKAGES`])
//! to the base, and the `containerd`/`runc` "stand-ins" at the upstream paths are labelled shims that exec them,
//! containerd with a 1.6 configuration (`profiles/standins/containerd-1.6.toml.j2`, `version = 2`) holding the
//! same settings as the 2.x one the image carries. The node imports the baked images into it and can run them.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::install::{Kind, MANIFEST_DIR, kind};
use crate::config::Cluster;
use crate::template::{Engine, TemplateError};

/// The Debian packages a stand-in build adds to the base: the real container runtime (bookworm: containerd
/// 1.6.20, runc 1.1.5), which the `containerd` and `runc` shims exec.
pub const RUNTIME_PACKAGES: &[&str] = &["containerd", "runc"];

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

#[cfg(test)]
mod tests {
    use super::*;

    fn file<'a>(s: &'a Standins, path: &str) -> &'a str {
        let f = s.files.iter().find(|f| f.path == path).unwrap();
        std::str::from_utf8(&f.contents).unwrap()
    }

    #[test]
    fn containerd_and_runc_shims_run_debians_runtime_with_a_1_6_config_of_the_same_settings() {
        let cluster = crate::config::example();
        let s = generate(&cluster, &crate::template::engine_for(&cluster)).unwrap();
        let shim = file(&s, "/usr/local/bin/containerd");
        assert!(
            shim.contains("exec \"$real\" --config \"$config16\""),
            "{shim}"
        );
        assert!(shim.contains("real=/usr/bin/containerd"), "{shim}");
        let config = shim
            .split("<<'IMGBUILD_CONTAINERD_CONFIG'\n")
            .nth(1)
            .and_then(|r| r.split("\nIMGBUILD_CONTAINERD_CONFIG\n").next())
            .expect("the shim writes the 1.6 config from a here-document");
        let v: toml::Value = toml::from_str(config).unwrap();
        assert_eq!(
            v["version"].as_integer(),
            Some(2),
            "containerd 1.6 reads version 2"
        );
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some("registry.k8s.io/pause:3.10.2")
        );
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(
            runc["options"]["BinaryName"].as_str(),
            Some("/usr/local/sbin/runc")
        );
        let runc_shim = file(&s, "/usr/local/sbin/runc");
        assert!(
            runc_shim.contains("real=/usr/sbin/runc")
                && runc_shim.contains("exec \"$real\" \"$@\""),
            "{runc_shim}"
        );
        assert_eq!(RUNTIME_PACKAGES, &["containerd", "runc"]);
    }
}
