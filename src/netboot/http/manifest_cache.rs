//! The manifests the artifact route has verified, kept per image ([`ManifestCache`]).
//!
//! An image is immutable and its id is its manifest's sha256, so a manifest read and checked against its id
//! once stays right for as long as the image exists. The artifact route asks this cache instead of reading and
//! hashing `manifest.json` on every request, then opens the file through [`ImageStore::open_listed`], which
//! still refuses symlinks and a size that differs from the manifest. An image whose files are gone (removed by
//! `imgbuild gc`) is forgotten at the first request that misses them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::image::manifest::Manifest;
use crate::image::store::{ImageStore, StoreError};

/// How many manifests are kept; past that the cache starts again empty (a lab has a handful of images).
const KEEP: usize = 256;

/// Verified manifests by (store location, image id).
#[derive(Default)]
pub struct ManifestCache {
    kept: Mutex<HashMap<(String, String), Arc<Manifest>>>,
}

impl ManifestCache {
    /// The manifest of image `id` in `store`: read and checked against the id at the first request, kept after.
    pub fn get(&self, store: &dyn ImageStore, id: &str) -> Result<Arc<Manifest>, StoreError> {
        let key = (store.location(), id.to_string());
        if let Some(m) = self.lock().get(&key) {
            return Ok(m.clone());
        }
        let m = Arc::new(store.manifest(id)?);
        let mut kept = self.lock();
        if kept.len() >= KEEP {
            kept.clear();
        }
        kept.insert(key, m.clone());
        Ok(m)
    }

    /// Forgets image `id` of `store` (its files are gone).
    pub fn forget(&self, store: &dyn ImageStore, id: &str) {
        self.lock().remove(&(store.location(), id.to_string()));
    }

    /// How many manifests are kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no manifest is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Manifest>>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::image::manifest::{INITRD, KERNEL, MANIFEST, ROOTFS};
    use crate::image::store::DirStore;

    #[test]
    fn a_manifest_is_verified_once_kept_and_forgotten_when_its_image_is_gone() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::new(&d.path().join("images"));
        let st = s.staging().unwrap();
        for f in [KERNEL, INITRD, ROOTFS] {
            std::fs::write(st.path().join(f), b"x").unwrap();
        }
        let m = Manifest {
            format: 1,
            role: Role::Worker,
            arch: Default::default(),
            profile: vec!["base".into(), "worker".into()],
            standins: true,
            kernel_args: vec![],
            inputs: Default::default(),
            files: Default::default(),
            rootfs_verity: None,
            boot_apps: Default::default(),
        };
        let id = s.commit(st, m).unwrap().id;
        let cache = ManifestCache::default();
        // A damaged store is refused and nothing is kept.
        assert!(cache.get(&s, &"0".repeat(64)).is_err());
        assert!(cache.is_empty());
        let first = cache.get(&s, &id).unwrap();
        assert_eq!(first.files[KERNEL].size, 1);
        // Kept: the second request does not read the file again (here it no longer hashes to the id, and the
        // kept, verified copy is still what answers).
        let mp = d.path().join("images").join(&id).join(MANIFEST);
        std::fs::set_permissions(&mp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::write(&mp, b"{}").unwrap();
        assert!(Arc::ptr_eq(&first, &cache.get(&s, &id).unwrap()));
        assert_eq!(cache.len(), 1);
        // Forgotten (its files went away): the next request reads it again, and sees the damage.
        cache.forget(&s, &id);
        assert!(cache.get(&s, &id).is_err());
        assert!(cache.is_empty());
    }
}
