//! Manifests name the baked images by digest: in the YAML manifests a role image carries (flannel, MetalLB,
//! Longhorn, kube-vip, …), every `image: <ref>` whose reference is baked into the image becomes
//! `image: <ref>@<digest>` with the digest `imgbuild.lock` pins it to (the one the layout's index points at), so
//! the kubelet asks containerd for exactly that content, never for a tag a registry could move. References that
//! are not baked, or already carry a digest, are left as they are.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{OciError, io};
use super::layout::BakedImage;
use crate::config::ImageRef;

/// `text` with every `image:` value found in `pins` (full normalised reference → digest) written as
/// `<value>@<digest>`, quotes kept; and how many were pinned.
pub fn pin_text(text: &str, pins: &BTreeMap<String, String>) -> (String, usize) {
    let mut out = String::with_capacity(text.len() + 64);
    let mut n = 0;
    for line in text.split_inclusive('\n') {
        match pin_line(line, pins) {
            Some(l) => {
                out.push_str(&l);
                n += 1;
            }
            None => out.push_str(line),
        }
    }
    (out, n)
}

fn pin_line(line: &str, pins: &BTreeMap<String, String>) -> Option<String> {
    let body = line.trim_start();
    let body = body.strip_prefix("- ").unwrap_or(body).trim_start();
    let after = body.strip_prefix("image:")?;
    let start = line.len() - after.len();
    let (value_part, end) = match after.find(" #") {
        Some(c) => (&after[..c], &after[c..]),
        None => (after, ""),
    };
    let trimmed = value_part.trim();
    let (quote, value) = match trimmed.chars().next() {
        Some(q @ ('"' | '\'')) if trimmed.len() >= 2 && trimmed.ends_with(q) => {
            (Some(q), &trimmed[1..trimmed.len() - 1])
        }
        _ => (None, trimmed),
    };
    if value.is_empty() || value.contains('@') {
        return None;
    }
    let reference: ImageRef = value.parse().ok()?;
    let digest = pins.get(&reference.full())?;
    let newline = if line.ends_with('\n') { "\n" } else { "" };
    let end = end.trim_end_matches('\n');
    let q = quote.map(String::from).unwrap_or_default();
    Some(format!(
        "{} {q}{value}@{digest}{q}{end}{newline}",
        &line[..start]
    ))
}

/// Pins the baked images in every `*.yaml`/`*.yml` file directly under `dirs` (absolute paths inside `root`;
/// a missing directory is skipped). Returns how many references were pinned.
pub fn pin_dirs(root: &Path, dirs: &[&str], baked: &[BakedImage]) -> Result<usize, OciError> {
    if baked.is_empty() {
        return Ok(0);
    }
    let pins: BTreeMap<String, String> = baked
        .iter()
        .map(|b| (b.reference.clone(), b.digest.clone()))
        .collect();
    let mut n = 0;
    for dir in dirs {
        let d = root.join(dir.trim_start_matches('/'));
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(io(&f))?;
            let (pinned, k) = pin_text(&text, &pins);
            if k > 0 {
                std::fs::write(&f, pinned).map_err(io(&f))?;
                n += k;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn pins() -> BTreeMap<String, String> {
        [
            ("ghcr.io/flannel-io/flannel:v0.27.4", D),
            ("docker.io/library/busybox:1.36", D),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn baked_references_get_their_digest_in_every_yaml_form() {
        let text = "spec:\n  containers:\n  - name: f\n    image: ghcr.io/flannel-io/flannel:v0.27.4\n\
                    \x20   image: \"ghcr.io/flannel-io/flannel:v0.27.4\" # flannel\n\
                    \x20 - image: 'busybox:1.36'\n";
        let (out, n) = pin_text(text, &pins());
        assert_eq!(n, 3);
        assert_eq!(
            out,
            format!(
                "spec:\n  containers:\n  - name: f\n    image: ghcr.io/flannel-io/flannel:v0.27.4@{D}\n\
                 \x20   image: \"ghcr.io/flannel-io/flannel:v0.27.4@{D}\" # flannel\n\
                 \x20 - image: 'busybox:1.36@{D}'\n"
            )
        );
        // Idempotent: a pinned reference is left alone.
        assert_eq!(pin_text(&out, &pins()), (out.clone(), 0));
    }

    #[test]
    fn references_not_baked_and_other_keys_are_left_as_they_are() {
        let text = "image: quay.io/metallb/speaker:v0.16.1\nimagePullPolicy: IfNotPresent\n\
                    name: ghcr.io/flannel-io/flannel:v0.27.4\nimage:\nimage: ${IMAGE}\n";
        assert_eq!(pin_text(text, &pins()), (text.to_string(), 0));
    }
}
