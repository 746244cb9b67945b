//! `[artifacts.*]`: the binaries and manifests every image needs, each with a version and a source to fetch.

use std::collections::BTreeMap;

use super::checker::{Checker, Known, Seg, check_url, p};
use crate::config::model::Artifact;
use crate::config::raw;

/// Artifacts every image needs; each must have a source.
pub const REQUIRED_ARTIFACTS: &[&str] = &[
    "kubeadm",
    "kubelet",
    "kubectl",
    "containerd",
    "runc",
    "cni-plugins",
    "crictl",
    "cni-manifest",
    "metallb-manifest",
    "longhorn-manifest",
];

/// Checks `[artifacts]` (kubeadm's version against `cluster.kubernetes_version`); returns the valid artifacts.
pub(super) fn check(
    c: &mut Checker,
    raw_artifacts: &BTreeMap<String, raw::ArtifactRaw>,
    known: &Known,
) -> BTreeMap<String, Artifact> {
    let mut artifacts = BTreeMap::new();
    for name in REQUIRED_ARTIFACTS {
        if !raw_artifacts.contains_key(*name) {
            c.error(
                &p!["artifacts"],
                format!(
                    "artifact {name:?} is missing; add [artifacts.{name}] with a version and a url"
                ),
            );
        }
    }
    for (name, a) in raw_artifacts {
        let version = match &a.version {
            Some(v) if !v.is_empty() => v.clone(),
            _ => {
                c.error(
                    &p!["artifacts", name.as_str(), "version"],
                    format!("artifact {name:?} has no version"),
                );
                continue;
            }
        };
        let url = match &a.url {
            Some(u) if !u.is_empty() => u.replace("{version}", &version),
            _ => {
                c.error(&p!["artifacts", name.as_str()], format!("artifact {name:?} has no source; add url = \"https://...\" (or file:///... for a local mirror)"));
                continue;
            }
        };
        check_url(c, &p!["artifacts", name.as_str(), "url"], &url);
        let checksum_url = match a.checksum_url.as_deref() {
            None => Some(format!("{url}.sha256")),
            Some("none") => None,
            Some(u) => {
                let u = u.replace("{version}", &version);
                check_url(c, &p!["artifacts", name.as_str(), "checksum_url"], &u);
                Some(u)
            }
        };
        artifacts.insert(
            name.clone(),
            Artifact {
                version,
                url,
                checksum_url,
            },
        );
    }
    if let (Some(kv), Some(a)) = (known.kubernetes_version, raw_artifacts.get("kubeadm"))
        && let Some(v) = &a.version
        && v.trim_start_matches('v') != kv.to_string()
    {
        c.error(
            &p!["artifacts", "kubeadm", "version"],
            format!("kubeadm {v} does not match cluster.kubernetes_version {kv}"),
        );
    }
    artifacts
}
