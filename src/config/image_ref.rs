//! Container image references as `[images.<group>]` writes them (`registry.k8s.io/pause:3.10.2`): parsed and
//! normalised the way Docker and containerd do. The groups themselves are `model::ContainerImage`; their
//! validation is `validate/images.rs`.

use serde::Serialize;

/// A registry image reference by tag, normalised the way Docker and containerd do (`busybox:1` is
/// `docker.io/library/busybox:1`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ImageRef {
    /// The registry host, with its port if any (`registry.k8s.io`, `docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path in the registry (`kube-apiserver`, `library/busybox`, `longhornio/longhorn-manager`).
    pub repository: String,
    /// The tag (`v1.36.3`).
    pub tag: String,
}

impl ImageRef {
    /// The full normalised reference, `registry/repository:tag`: the name containerd and the kubelet know the
    /// image by once imported.
    pub fn full(&self) -> String {
        format!("{}/{}:{}", self.registry, self.repository, self.tag)
    }

    /// `registry/repository` without the tag.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The reference by digest, `registry/repository@<digest>`: what manifests name to run exactly the locked
    /// content.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}/{}@{}", self.registry, self.repository, digest)
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full())
    }
}

/// Why a text is not an image reference imgbuild accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// Empty, or a character or component a registry reference cannot have.
    #[error(
        "{0:?} is not an image reference; expected [registry/]repository:tag such as registry.k8s.io/pause:3.10.2"
    )]
    Malformed(String),
    /// No tag: the tag says which version to fetch; the lock records its digest.
    #[error(
        "{0:?} has no tag; write the version as a tag (repository:tag): `imgbuild fetch` records its digest in imgbuild.lock"
    )]
    NoTag(String),
    /// Pinned by digest in `cluster.toml`: the lock pins, the file names the version.
    #[error(
        "{0:?} is pinned by digest; write it by tag (repository:tag): `imgbuild fetch` records the digest in imgbuild.lock and a moved tag is reported against it"
    )]
    Digest(String),
}

fn valid_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn valid_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && (s.as_bytes()[0].is_ascii_alphanumeric() || s.as_bytes()[0] == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl std::str::FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(text: &str) -> Result<ImageRef, ImageRefError> {
        let bad = || ImageRefError::Malformed(text.to_string());
        if text.contains('@') {
            return Err(ImageRefError::Digest(text.to_string()));
        }
        let (first, rest) = match text.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => (Some(h), r),
            _ => (None, text),
        };
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) => (p, t),
            None => return Err(ImageRefError::NoTag(text.to_string())),
        };
        if !valid_tag(tag) || !path.split('/').all(valid_component) {
            return Err(bad());
        }
        let registry = match first {
            Some(h)
                if h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':')) =>
            {
                h.to_string()
            }
            Some(_) => return Err(bad()),
            None => "docker.io".to_string(),
        };
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_docker_and_refuse_digests_and_missing_tags() {
        let r: ImageRef = "busybox:1.36".parse().unwrap();
        assert_eq!(r.full(), "docker.io/library/busybox:1.36");
        let r: ImageRef = "longhornio/longhorn-manager:v1.12.1".parse().unwrap();
        assert_eq!(r.full(), "docker.io/longhornio/longhorn-manager:v1.12.1");
        let r: ImageRef = "127.0.0.1:5000/test/box:v1".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            ("127.0.0.1:5000", "test/box", "v1")
        );
        assert_eq!(
            r.with_digest("sha256:ab"),
            "127.0.0.1:5000/test/box@sha256:ab"
        );
        assert!(matches!(
            "registry.k8s.io/pause".parse::<ImageRef>(),
            Err(ImageRefError::NoTag(_))
        ));
        assert!(matches!(
            "registry.k8s.io/pause:3.10@sha256:00".parse::<ImageRef>(),
            Err(ImageRefError::Digest(_))
        ));
        assert!(matches!(
            "Registry.k8s.io/Pause:3".parse::<ImageRef>(),
            Err(ImageRefError::Malformed(_))
        ));
        assert!("".parse::<ImageRef>().is_err());
    }
}
