//! The parts of OCI and Docker v2 manifests, indexes and image configs imgbuild reads: which manifest of an index
//! is for an architecture, and which blobs an image manifest names.

use serde::Deserialize;

/// The media types `imgbuild fetch` accepts for a tag, best first.
pub const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// A content descriptor: media type, digest, size (and a platform in an index).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the content.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
    /// The platform (index entries only).
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, ... (Go's names, which are Debian's for these two).
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `v8` for arm64, if given.
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest or an index, told apart by their fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnyManifest {
    /// The declared media type, if any.
    #[serde(default)]
    pub media_type: Option<String>,
    /// An index's manifests.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// An image manifest's config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// An image manifest's layers.
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

/// The image config fields imgbuild checks.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    /// The architecture the image is built for.
    #[serde(default)]
    pub architecture: String,
    /// The operating system.
    #[serde(default)]
    pub os: String,
}

impl AnyManifest {
    /// Parses manifest JSON.
    pub fn parse(data: &[u8]) -> Result<AnyManifest, String> {
        serde_json::from_slice(data).map_err(|e| e.to_string())
    }

    /// Whether this is an index (a manifest list).
    pub fn is_index(&self) -> bool {
        self.manifests.is_some()
    }

    /// The media type to record for it in an OCI layout's index.
    pub fn kind(&self) -> &str {
        match &self.media_type {
            Some(m) => m,
            None if self.is_index() => ACCEPTED[0],
            None => ACCEPTED[2],
        }
    }

    /// An index's manifest for linux/`arch`, or the platforms it offers.
    pub fn pick(&self, arch: &str) -> Result<&Descriptor, String> {
        let all = self.manifests.as_deref().unwrap_or_default();
        all.iter()
            .find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    p.os == "linux"
                        && p.architecture == arch
                        && (arch != "arm64" || matches!(p.variant.as_deref(), None | Some("v8")))
                })
            })
            .ok_or_else(|| {
                let v: Vec<String> = all
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                if v.is_empty() {
                    "nothing".into()
                } else {
                    v.join(", ")
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_picks_the_linux_manifest_of_the_architecture() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"architecture":"amd64","os":"windows"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#;
        let m = AnyManifest::parse(idx).unwrap();
        assert!(m.is_index());
        assert_eq!(m.pick("amd64").unwrap().digest, "sha256:bb");
        assert_eq!(m.pick("arm64").unwrap().digest, "sha256:cc");
        let e = m.pick("riscv64").unwrap_err();
        assert!(
            e.contains("linux/arm64") && e.contains("windows/amd64"),
            "{e}"
        );
    }
}
