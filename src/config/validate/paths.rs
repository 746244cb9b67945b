//! `[paths]`: where the profiles, templates, images, state, secrets and cache live, resolved against the
//! directory of `cluster.toml`.

use std::path::{Path, PathBuf};

use crate::config::model::Paths;
use crate::config::raw;

/// `[paths]`: each directory relative to `root` unless absolute, with its default name when not given.
pub(super) fn check(root: &Path, p: &raw::PathsRaw) -> Paths {
    let rel = |o: &Option<String>, d: &str| -> PathBuf { root.join(o.as_deref().unwrap_or(d)) };
    Paths {
        root: root.to_path_buf(),
        profiles: rel(&p.profiles, "profiles"),
        ipxe: rel(&p.ipxe, "ipxe"),
        images: rel(&p.images, "images"),
        state: rel(&p.state, "state"),
        secrets: rel(&p.secrets, "secrets"),
        cache: rel(&p.cache, "cache"),
        lock: root.join("imgbuild.lock"),
    }
}
