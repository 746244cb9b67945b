//! The local read-through cache of an object-store image store, and its metrics.
//!
//! An object is cached under its key (`blobs/sha256/<digest>`, `manifests/<id>`), which names the sha256 of its
//! bytes. On a miss the bytes are fetched into a temporary file beside the final one (`.tmp*`, never a key),
//! hashed on the way, compared with the digest, fsynced, made read-only and renamed into place: a cached file
//! is whole and verified, or absent. An object whose bytes do not hash to their digest is refused
//! ([`StoreError::DigestMismatch`]), counted, logged, and never served. One fill per key at a time: requests
//! for an object being fetched wait for that fetch instead of starting their own.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};

use super::interface::{StoreError, io};

/// The cache's counters, one set per process (every object-store store of the process adds to them).
#[derive(Default)]
pub struct CacheMetrics {
    /// Objects served from the local cache.
    pub hits: Counter,
    /// Objects fetched from the bucket because the cache did not have them.
    pub misses: Counter,
    /// Bytes fetched from the bucket into the cache (verified).
    pub fill_bytes: Counter,
    /// Objects refused because their bytes did not hash to their digest.
    pub digest_refusals: Counter,
    /// Fetches from the bucket that failed (unreachable, missing, refused).
    pub fetch_errors: Counter,
}

static METRICS: LazyLock<CacheMetrics> = LazyLock::new(CacheMetrics::default);

/// The process's cache counters.
pub fn metrics() -> &'static CacheMetrics {
    &METRICS
}

/// Registers the counters in `r` (as `store_cache_hits`, `store_cache_misses`, `store_cache_fill_bytes`,
/// `store_digest_refusals`, `store_fetch_errors`).
pub fn register(r: &mut Registry) {
    let m = metrics();
    r.register(
        "store_cache_hits",
        "Image objects served from the local cache of the object store",
        m.hits.clone(),
    );
    r.register(
        "store_cache_misses",
        "Image objects fetched from the bucket because the local cache did not have them",
        m.misses.clone(),
    );
    r.register(
        "store_cache_fill_bytes",
        "Bytes fetched from the bucket into the local cache, verified",
        m.fill_bytes.clone(),
    );
    r.register(
        "store_digest_refusals",
        "Objects refused because their bytes in the bucket did not hash to their digest",
        m.digest_refusals.clone(),
    );
    r.register(
        "store_fetch_errors",
        "Fetches from the bucket that failed (unreachable, missing, refused)",
        m.fetch_errors.clone(),
    );
}

/// Where fetched bytes go: called once per chunk, in order.
pub type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> std::io::Result<()>;

/// The cache directory and the fills in progress.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    fills: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Cache {
    /// The cache in `dir` (created on the first fill).
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
            fills: Mutex::new(HashMap::new()),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `key` is (or would be) cached.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The cached file of `key`, if it is there as a regular file of `size` bytes (any size when `None`).
    fn hit(&self, key: &str, size: Option<u64>) -> Option<PathBuf> {
        let p = self.path(key);
        let m = std::fs::symlink_metadata(&p).ok()?;
        (m.is_file() && size.is_none_or(|s| s == m.len())).then_some(p)
    }

    /// The path of a verified local copy of `key`, whose bytes hash to `sha256` (and number `size`, when
    /// known). On a miss `fetch` writes the object's bytes into the sink it is given; `object` names the object
    /// in messages and logs.
    pub fn get(
        &self,
        key: &str,
        sha256: &str,
        size: Option<u64>,
        object: &str,
        fetch: impl FnOnce(Sink<'_>) -> Result<(), StoreError>,
    ) -> Result<PathBuf, StoreError> {
        if let Some(p) = self.hit(key, size) {
            metrics().hits.inc();
            tracing::debug!(%object, "served from the local cache");
            return Ok(p);
        }
        let lock = {
            let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
            fills.entry(key.to_string()).or_default().clone()
        };
        let _one_fill = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Another request may have filled it while this one waited.
        if let Some(p) = self.hit(key, size) {
            metrics().hits.inc();
            tracing::debug!(%object, "served from the local cache (filled by a concurrent request)");
            return Ok(p);
        }
        metrics().misses.inc();
        let started = std::time::Instant::now();
        let r = self.fill(key, sha256, size, object, fetch);
        self.fills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        match &r {
            Ok((_, n)) => {
                metrics().fill_bytes.inc_by(*n);
                tracing::info!(%object, bytes = n, ms = started.elapsed().as_millis() as u64, "fetched from the bucket into the local cache, sha256 verified");
            }
            Err(e @ StoreError::DigestMismatch { .. }) => {
                metrics().digest_refusals.inc();
                tracing::error!(%object, "{e}");
            }
            Err(e) => {
                metrics().fetch_errors.inc();
                tracing::warn!(%object, error = %e, "fetch from the bucket failed");
            }
        }
        r.map(|(p, _)| p)
    }

    /// Fetches into a temporary file, verifies, and renames into place; returns the path and the byte count.
    fn fill(
        &self,
        key: &str,
        sha256: &str,
        size: Option<u64>,
        object: &str,
        fetch: impl FnOnce(Sink<'_>) -> Result<(), StoreError>,
    ) -> Result<(PathBuf, u64), StoreError> {
        let dest = self.path(key);
        let parent = dest.parent().unwrap_or(&self.dir).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .tempfile_in(&parent)
            .map_err(io(&parent))?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        {
            let f = tmp.as_file_mut();
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            fetch(&mut |chunk: &[u8]| {
                h.update(chunk);
                n += chunk.len() as u64;
                w.write_all(chunk)
            })?;
            w.flush().map_err(io(&dest))?;
        }
        let actual = hex::encode(h.finalize());
        if actual != sha256 || size.is_some_and(|s| s != n) {
            // The temporary file is removed when `tmp` is dropped: nothing of it is ever served.
            return Err(StoreError::DigestMismatch {
                object: object.to_string(),
                expected: sha256.to_string(),
                actual,
            });
        }
        tmp.as_file().sync_all().map_err(io(&dest))?;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o444))
            .map_err(io(&dest))?;
        tmp.persist(&dest).map_err(|e| io(&dest)(e.error))?;
        Ok((dest, n))
    }

    /// Removes the cached copy of `key`, if any.
    pub fn forget(&self, key: &str) {
        let _ = std::fs::remove_file(self.path(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn fills_once_then_hits_and_refuses_wrong_bytes() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        let body = b"kernel bytes".to_vec();
        let key = format!("blobs/sha256/{}", sha(&body));
        let p = c
            .get(&key, &sha(&body), Some(body.len() as u64), "obj", |sink| {
                sink(&body[..4]).unwrap();
                sink(&body[4..]).unwrap();
                Ok(())
            })
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), body);
        // A hit does not fetch.
        let again = c
            .get(&key, &sha(&body), Some(body.len() as u64), "obj", |_| {
                panic!("fetched on a hit")
            })
            .unwrap();
        assert_eq!(again, p);
        // Bytes that do not hash to the key's digest are refused and leave nothing behind.
        let other = format!("blobs/sha256/{}", sha(b"x"));
        let e = c
            .get(&other, &sha(b"x"), None, "s3://b/obj", |sink| {
                sink(b"changed").unwrap();
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(e.to_string().contains("imgbuild push --force"), "{e}");
        assert!(!c.path(&other).exists());
        let left: Vec<_> = std::fs::read_dir(c.path("blobs/sha256")).unwrap().collect();
        assert_eq!(left.len(), 1, "only the verified object stays: {left:?}");
    }
}
