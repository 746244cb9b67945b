//! Manifests name the locked images by digest: in the YAML manifests a role image carries (flannel, MetalLB,
//! Longhorn, kube-vip, …), every image reference that `imgbuild.lock` records for the image's architecture —
//! any image of the cluster's `[images.*]`, not only the role's own, since the first master applies manifests
//! whose pods run on the other roles — becomes `<ref>@<digest>` with the digest the lock pins it to (the one the
//! baking roles' layouts point at), so the kubelet asks containerd for exactly that content, never for a tag a
//! registry could move. Rewritten are the values of `image:` and `value:` (a container's environment) and
//! sequence items, alone or as `--flag=<ref>` (a container's command and arguments: Longhorn's manager names
//! the engine, instance-manager, share-manager, backing-image-manager and support-bundle images there, its
//! driver deployer the CSI sidecars in its environment). A value is rewritten only when it is, as a whole, a
//! reference in the lock; references not locked, or already carrying a digest, are left as they are.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{OciError, io};
use super::pull::pin_digest;
use crate::config::{Arch, Cluster, ImageRef};
use crate::image::lock::Lock;

/// The pins for an image of `arch`: every image of the cluster's `[images.*]` (whatever its roles) that `lock`
/// records for `arch`, full normalised reference → the digest nodes run it by.
pub fn lock_pins(cluster: &Cluster, lock: &Lock, arch: Arch) -> BTreeMap<String, String> {
    cluster
        .images
        .iter()
        .filter_map(|i| {
            let r = i.reference.full();
            let e = lock.image(&r, arch.as_str())?;
            Some((r, pin_digest(e).to_string()))
        })
        .collect()
}

/// [`lock_pins`] from the cluster's `imgbuild.lock` (a missing lock pins nothing).
pub fn cluster_pins(cluster: &Cluster, arch: Arch) -> Result<BTreeMap<String, String>, OciError> {
    if cluster.images.is_empty() {
        return Ok(BTreeMap::new());
    }
    let lock = Lock::load(&cluster.paths.lock)?;
    Ok(lock_pins(cluster, &lock, arch))
}

/// `text` with every image reference found in `pins` (full normalised reference → digest) written as
/// `<value>@<digest>`, quotes and comments kept; and how many were pinned.
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

/// The mapping keys whose values are image references: a container's `image`, an environment variable's `value`.
const REF_KEYS: &[&str] = &["image", "value"];

fn pin_line(line: &str, pins: &BTreeMap<String, String>) -> Option<String> {
    let (mut start, mut end) = scalar_span(line)?;
    let v = &line[start..end];
    if v.len() >= 2
        && let Some(q @ ('"' | '\'')) = v.chars().next()
        && v.ends_with(q)
    {
        start += 1;
        end -= 1;
    }
    let v = &line[start..end];
    // `--engine-image=<ref>`: the reference after the flag.
    if v.starts_with('-')
        && let Some(eq) = v.find('=')
    {
        start += eq + 1;
    }
    let value = &line[start..end];
    if value.is_empty() || value.contains('@') {
        return None;
    }
    let reference: ImageRef = value.parse().ok()?;
    let digest = pins.get(&reference.full())?;
    Some(format!("{}@{digest}{}", &line[..end], &line[end..]))
}

/// Byte span of the scalar a YAML line holds where an image reference can be: the value of an `image:` or
/// `value:` key, or a sequence item without a key; trailing comment and blanks excluded.
fn scalar_span(line: &str) -> Option<(usize, usize)> {
    let body = line.trim_end_matches(['\n', '\r']);
    let body_end = body.len();
    let mut i = body_end - body.trim_start().len();
    let mut item = false;
    while let Some(r) = line[i..body_end].strip_prefix("- ") {
        item = true;
        i += 2 + (r.len() - r.trim_start().len());
    }
    let rest = &line[i..body_end];
    if rest.starts_with('#') {
        return None;
    }
    match key_len(rest) {
        Some((key, len)) if REF_KEYS.contains(&key) => i += len,
        Some(_) => return None,
        None if item => {}
        None => return None,
    }
    let rest = &line[i..body_end];
    let end = rest.find(" #").unwrap_or(rest.len());
    let v = rest[..end].trim_end();
    (!v.is_empty()).then_some((i, i + v.len()))
}

/// A plain mapping key at the start of `rest` (`image: x`): the key and the length up to its value.
fn key_len(rest: &str) -> Option<(&str, usize)> {
    let colon = rest.find(':')?;
    let key = &rest[..colon];
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return None;
    }
    let after = &rest[colon + 1..];
    if !after.is_empty() && !after.starts_with([' ', '\t']) {
        return None;
    }
    Some((key, colon + 1 + (after.len() - after.trim_start().len())))
}

/// Pins the locked images in every `*.yaml`/`*.yml` file directly under `dirs` (absolute paths inside `root`;
/// a missing directory is skipped). Returns how many references were pinned.
pub fn pin_dirs(
    root: &Path,
    dirs: &[&str],
    pins: &BTreeMap<String, String>,
) -> Result<usize, OciError> {
    if pins.is_empty() {
        return Ok(0);
    }
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
            let (pinned, k) = pin_text(&text, pins);
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

    /// The example cluster's images, each with a digest of its own (as a lock that has them all would give).
    fn example_pins() -> (crate::config::Cluster, Lock, BTreeMap<String, String>) {
        use sha2::Digest;
        let cluster = crate::config::example();
        let mut lock = Lock::default();
        for i in &cluster.images {
            let r = i.reference.full();
            let d = |what: &str| {
                format!(
                    "sha256:{}",
                    hex::encode(sha2::Sha256::digest(format!("{what} {r}")))
                )
            };
            lock.upsert_image(crate::image::lock::ImageLockEntry {
                reference: r.clone(),
                arch: "amd64".into(),
                index: Some(d("index")),
                manifest: d("manifest"),
                config: d("config"),
                size: 1,
            });
        }
        let pins = lock_pins(&cluster, &lock, Arch::Amd64);
        (cluster, lock, pins)
    }

    #[test]
    fn pins_come_from_the_lock_for_every_role_and_only_for_the_architecture() {
        let (cluster, mut lock, pins) = example_pins();
        // Every image of every group, the Longhorn and MetalLB controller images too (not baked on masters).
        assert_eq!(pins.len(), cluster.images.len());
        for r in [
            "docker.io/longhornio/longhorn-engine:v1.12.1",
            "quay.io/metallb/controller:v0.16.1",
        ] {
            let e = lock.image(r, "amd64").unwrap();
            assert_eq!(pins[r], *e.index.as_ref().unwrap(), "the index digest");
        }
        assert!(lock_pins(&cluster, &lock, Arch::Arm64).is_empty());
        // An image the lock does not record is not pinned; an entry of the lock no group lists is not either.
        lock.images
            .retain(|e| e.reference != "quay.io/metallb/controller:v0.16.1");
        lock.upsert_image(crate::image::lock::ImageLockEntry {
            reference: "docker.io/library/busybox:1.36".into(),
            ..lock.images[0].clone()
        });
        let p = lock_pins(&cluster, &lock, Arch::Amd64);
        assert!(!p.contains_key("quay.io/metallb/controller:v0.16.1"));
        assert!(!p.contains_key("docker.io/library/busybox:1.36"));
    }

    /// Pins a vendored manifest with every example image locked: each occurrence of a locked reference (as the
    /// manifest writes it) ends up `ref@<its digest>`, nothing else changed; returns the references found.
    fn check_vendored(rel: &str) -> std::collections::BTreeSet<String> {
        let (_, _, pins) = example_pins();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("profiles/standins/vendor")
            .join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let (out, n) = pin_text(&text, &pins);
        let mut found = std::collections::BTreeSet::new();
        let mut occurrences = 0;
        for (r, d) in &pins {
            let mut rest = out.as_str();
            while let Some(at) = rest.find(r.as_str()) {
                let after = &rest[at + r.len()..];
                assert!(
                    after.starts_with(&format!("@{d}")),
                    "{rel}: {r} left by tag: {}",
                    after.lines().next().unwrap_or("")
                );
                found.insert(r.clone());
                occurrences += 1;
                rest = after;
            }
        }
        assert_eq!(n, occurrences, "{rel}: one reference per pinned line");
        // Nothing but the digests was added.
        let mut back = out.clone();
        for d in pins.values() {
            back = back.replace(&format!("@{d}"), "");
        }
        assert_eq!(back, text, "{rel}: only digests are added");
        // Every other image-looking value of the manifest is not in the lock.
        for line in out.lines() {
            if let Some((s, e)) = scalar_span(line)
                && !line[s..e].contains("@sha256:")
                && let Ok(r) = line[s..e].trim_matches(['"', '\'']).parse::<ImageRef>()
            {
                assert!(!pins.contains_key(&r.full()), "{rel}: {line}");
            }
        }
        assert_eq!(pin_text(&out, &pins), (out.clone(), 0), "idempotent");
        found
    }

    #[test]
    fn every_locked_image_of_the_vendored_longhorn_manifest_is_pinned_in_image_args_and_env() {
        let found = check_vendored("longhorn-v1.12.1/longhorn.yaml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("profiles/standins/vendor/longhorn-v1.12.1/longhorn.yaml"),
        )
        .unwrap();
        // Longhorn names its images in `image:`, in the manager's arguments and the driver deployer's
        // environment: each of those forms is pinned.
        for r in [
            "docker.io/longhornio/longhorn-manager:v1.12.1",
            "docker.io/longhornio/longhorn-ui:v1.12.1",
            "docker.io/longhornio/longhorn-engine:v1.12.1",
            "docker.io/longhornio/longhorn-instance-manager:v1.12.1",
            "docker.io/longhornio/longhorn-share-manager:v1.12.1",
            "docker.io/longhornio/backing-image-manager:v1.12.1",
            "docker.io/longhornio/support-bundle-kit:v0.0.92",
            "docker.io/longhornio/csi-attacher:v4.12.0",
            "docker.io/longhornio/csi-provisioner:v5.3.0",
            "docker.io/longhornio/csi-resizer:v2.2.1",
            "docker.io/longhornio/csi-snapshotter:v8.6.0",
            "docker.io/longhornio/csi-node-driver-registrar:v2.17.0",
            "docker.io/longhornio/livenessprobe:v2.19.0",
        ] {
            assert!(
                found.contains(r),
                "{r} not found in longhorn.yaml: {found:?}"
            );
        }
        // Every docker.io/longhornio reference the manifest holds is one of those.
        assert_eq!(
            text.matches("docker.io/longhornio/").count(),
            found
                .iter()
                .map(|r| text.matches(r.as_str()).count())
                .sum::<usize>()
        );
    }

    #[test]
    fn every_locked_image_of_the_vendored_metallb_manifest_is_pinned() {
        let found = check_vendored("metallb-v0.16.1/metallb-frr.yaml");
        let want: std::collections::BTreeSet<String> = [
            "quay.io/frrouting/frr:10.5.3",
            "quay.io/metallb/controller:v0.16.1",
            "quay.io/metallb/speaker:v0.16.1",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(found, want);
    }

    #[test]
    fn args_env_and_flag_values_are_pinned_other_keys_are_not() {
        let text = "        command:\n        - longhorn-manager\n        - --engine-image\n\
                    \x20       - \"ghcr.io/flannel-io/flannel:v0.27.4\"\n\
                    \x20       - --manager-image=busybox:1.36 # flag\n\
                    \x20         - name: CSI_ATTACHER_IMAGE\n\
                    \x20           value: \"busybox:1.36\"\n\
                    \x20       name: busybox:1.36\n\
                    \x20       - busybox:1.37\n";
        let (out, n) = pin_text(text, &pins());
        assert_eq!(n, 3, "{out}");
        assert!(out.contains(&format!("- \"ghcr.io/flannel-io/flannel:v0.27.4@{D}\"\n")));
        assert!(out.contains(&format!("- --manager-image=busybox:1.36@{D} # flag\n")));
        assert!(out.contains(&format!("value: \"busybox:1.36@{D}\"\n")));
        assert!(out.contains("name: busybox:1.36\n") && out.contains("- busybox:1.37\n"));
    }
}
