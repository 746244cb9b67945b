//! [`S3Store`]: images in a bucket of an S3-compatible object store (Garage, Ceph RGW, AWS), read through a
//! local cache.
//!
//! Keys are content-addressed: an artifact is `blobs/sha256/<its sha256>` (shared by every image that has the
//! same bytes), a manifest is `manifests/<image id>` (the id is the manifest's sha256). A commit or a push
//! uploads the artifacts first and the manifest last, so an image is listed (its manifest exists) only once
//! all of its artifacts are in the bucket; a half-pushed image is never visible. Reads go through the
//! [`Cache`]: the first request for an object fetches it, verifies its sha256 against its key (and its size
//! against the manifest) and keeps it; what is served is always that local, verified file.
//!
//! The trait is synchronous; the client is async. The store owns a small runtime and waits for it on the
//! calling thread (a CLI thread, or the HTTP server's blocking pool), which works inside and outside tokio.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::cache::{Cache, Sink};
use super::credentials;
use super::interface::{
    Artifact, Committed, ImageStore, StoreError, Stored, hash_staged, io, is_id,
};
use super::unavailable::Unavailable;
use crate::config::S3Store as Config;
use crate::image::manifest::{FileEntry, MANIFEST, Manifest, ManifestError};

/// Objects above this size are uploaded in parts of this size.
const PART: usize = 8 << 20;

/// The key of an artifact with digest `sha256`.
pub fn blob_key(sha256: &str) -> String {
    format!("blobs/sha256/{sha256}")
}

/// The key of the manifest of image `id`.
pub fn manifest_key(id: &str) -> String {
    format!("manifests/{id}")
}

/// One store per `[store]` table in the process, so a per-request [`super::open`] reuses client and cache.
static OPENED: LazyLock<Mutex<HashMap<Config, Arc<S3Store>>>> = LazyLock::new(Default::default);

/// The process's store for `cfg` (made on first use), or an [`Unavailable`] store saying why it cannot be.
pub fn shared(cfg: &Config) -> Arc<dyn ImageStore> {
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = opened.get(cfg) {
        return s.clone();
    }
    match S3Store::new(cfg) {
        Ok(s) => {
            let s = Arc::new(s);
            opened.insert(cfg.clone(), s.clone());
            s
        }
        Err(why) => {
            tracing::error!(bucket = %cfg.bucket, endpoint = %cfg.endpoint, "image store unavailable: {why}");
            Arc::new(Unavailable {
                location: format!("s3://{} at {}", cfg.bucket, cfg.endpoint),
                why,
            })
        }
    }
}

/// What one push did.
#[derive(Debug, Clone, Default)]
pub struct Pushed {
    /// Artifacts uploaded: (file name, bytes).
    pub uploaded: Vec<(String, u64)>,
    /// Artifacts already in the bucket with their size, not sent again.
    pub present: Vec<String>,
    /// The manifest was already there (the image was already pushed).
    pub existed: bool,
}

/// The S3 image store.
pub struct S3Store {
    cfg: Config,
    client: Arc<AmazonS3>,
    rt: Option<tokio::runtime::Runtime>,
    cache: Cache,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "S3Store({}, cache {})",
            self.location(),
            self.cache.dir().display()
        )
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime may block; from inside another runtime that panics, so let it go in the background.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl S3Store {
    /// The store for `cfg`: a client with the credentials from the environment or the credentials file, and
    /// the cache directory. Nothing is contacted yet.
    pub fn new(cfg: &Config) -> Result<S3Store, String> {
        let creds = credentials::load(cfg.credentials_file.as_deref())?;
        // Plain HTTP only where validation allowed it (loopback); set here, as these options replace the
        // builder's.
        let mut options = ClientOptions::new()
            .with_allow_http(cfg.endpoint.starts_with("http://"))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(300));
        if let Some(ca) = &cfg.ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read [store] ca {}: {e}", ca.display()))?;
            let cert = object_store::Certificate::from_pem(&pem).map_err(|e| {
                format!(
                    "[store] ca {} is not a PEM certificate ({e}): name the CA that signed the store's certificate",
                    ca.display()
                )
            })?;
            options = options.with_root_certificate(cert);
        }
        let mut b = AmazonS3Builder::new()
            .with_endpoint(&cfg.endpoint)
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(creds.key_id)
            .with_secret_access_key(creds.secret)
            .with_client_options(options)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            });
        if let Some(t) = creds.token {
            b = b.with_token(t);
        }
        let client = b
            .build()
            .map_err(|e| format!("cannot set up the S3 client: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imgbuild-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the S3 client's runtime: {e}"))?;
        Ok(S3Store {
            cfg: cfg.clone(),
            client: Arc::new(client),
            rt: Some(rt),
            cache: Cache::new(&cfg.cache),
        })
    }

    /// Runs `fut` on the store's runtime and waits for it on this thread (inside or outside tokio).
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt
            .as_ref()
            .expect("runtime present until drop")
            .spawn(async move {
                let _ = tx.send(fut.await);
            });
        rx.recv().expect("the object store's runtime ended")
    }

    /// `s3://<bucket>/<key>`, for messages.
    fn object(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.cfg.bucket)
    }

    fn remote(&self, key: &str, e: object_store::Error) -> StoreError {
        StoreError::Remote {
            object: self.object(key),
            detail: e.to_string(),
        }
    }

    /// Streams object `key` into `sink`; a missing object is `missing()`.
    fn download(
        &self,
        key: &str,
        sink: Sink<'_>,
        missing: impl FnOnce() -> StoreError,
    ) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<object_store::Result<Bytes>>(8);
        let client = self.client.clone();
        let k = Key::from(key);
        self.rt
            .as_ref()
            .expect("runtime present until drop")
            .spawn(async move {
                match client.get(&k).await {
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                    Ok(r) => {
                        let mut s = r.into_stream();
                        while let Some(c) = s.next().await {
                            let stop = c.is_err();
                            if tx.send(c).is_err() || stop {
                                break;
                            }
                        }
                    }
                }
            });
        for chunk in rx {
            match chunk {
                Ok(b) => sink(&b).map_err(io(&self.cache.path(key)))?,
                Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                Err(e) => return Err(self.remote(key, e)),
            }
        }
        Ok(())
    }

    /// The verified cached copy of `key` (digest `sha256`, `size` bytes when known), fetched on a miss.
    fn fill(
        &self,
        key: &str,
        sha256: &str,
        size: Option<u64>,
        missing: impl FnOnce() -> StoreError,
    ) -> Result<PathBuf, StoreError> {
        let object = self.object(key);
        self.cache.get(key, sha256, size, &object, |sink| {
            self.download(key, sink, missing)
        })
    }

    /// The size of object `key`, or `None` when it is not in the bucket.
    fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let client = self.client.clone();
        let k = Key::from(key);
        match self.run(async move { client.head(&k).await }) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.remote(key, e)),
        }
    }

    /// Uploads what `r` reads to `key`, in parts above [`PART`] bytes, hashing on the way; the object is only
    /// completed when the bytes hash to `sha256`. `progress` gets the bytes sent so far.
    fn upload(
        &self,
        key: &str,
        mut r: impl Read,
        sha256: &str,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        use sha2::{Digest, Sha256};
        let src = PathBuf::from(key);
        let mut h = Sha256::new();
        let mut first = vec![0u8; PART];
        let n = read_full(&mut r, &mut first).map_err(io(&src))?;
        first.truncate(n);
        h.update(&first);
        let k = Key::from(key);
        let mismatch = |actual: String| StoreError::DigestMismatch {
            object: format!("the local copy of {key}"),
            expected: sha256.to_string(),
            actual,
        };
        if n < PART {
            let actual = hex::encode(h.finalize());
            if actual != sha256 {
                return Err(mismatch(actual));
            }
            let client = self.client.clone();
            let payload = PutPayload::from(Bytes::from(first));
            self.run(async move { client.put(&k, payload).await })
                .map_err(|e| self.remote(key, e))?;
            progress(n as u64);
            return Ok(n as u64);
        }
        let client = self.client.clone();
        let k2 = k.clone();
        let mut up = self
            .run(async move { client.put_multipart(&k2).await })
            .map_err(|e| self.remote(key, e))?;
        let mut sent = 0u64;
        let mut part = first;
        loop {
            let len = part.len();
            let fut = up.put_part(PutPayload::from(Bytes::from(part)));
            if let Err(e) = self.run(fut) {
                let _ = self.run(async move { up.abort().await });
                return Err(self.remote(key, e));
            }
            sent += len as u64;
            progress(sent);
            let mut next = vec![0u8; PART];
            let n = read_full(&mut r, &mut next).map_err(io(&src))?;
            if n == 0 {
                break;
            }
            next.truncate(n);
            h.update(&next);
            part = next;
        }
        let actual = hex::encode(h.finalize());
        if actual != sha256 {
            let _ = self.run(async move { up.abort().await });
            return Err(mismatch(actual));
        }
        self.run(async move { up.complete().await })
            .map_err(|e| self.remote(key, e))?;
        Ok(sent)
    }

    /// Pushes image `id` from `src` (a local store): each artifact not yet in the bucket (every one with
    /// `force`), then the manifest last, so the image becomes visible only when whole. Pushing again is
    /// harmless. `progress` gets (file, bytes sent of this file, its size).
    pub fn push(
        &self,
        src: &dyn ImageStore,
        id: &str,
        force: bool,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<Pushed, StoreError> {
        let m = src.manifest(id)?;
        let mut out = Pushed::default();
        for (name, e) in &m.files {
            let key = blob_key(&e.sha256);
            if !force && self.head(&key)? == Some(e.size) {
                tracing::info!(image = id, file = %name, object = %self.object(&key), "already in the bucket");
                progress(name, e.size, e.size);
                out.present.push(name.clone());
                continue;
            }
            let a = src.open(id, name)?;
            let n = self.upload(&key, a.reader, &e.sha256, &mut |n| {
                progress(name, n, e.size)
            })?;
            tracing::info!(image = id, file = %name, bytes = n, object = %self.object(&key), "uploaded");
            out.uploaded.push((name.clone(), n));
        }
        let key = manifest_key(id);
        if !force && self.head(&key)?.is_some() {
            out.existed = true;
        } else {
            let a = src.open(id, MANIFEST)?;
            let size = a.size;
            self.upload(&key, a.reader, id, &mut |n| progress(MANIFEST, n, size))?;
            tracing::info!(image = id, object = %self.object(&key), "manifest uploaded last: the image is visible");
        }
        Ok(out)
    }

    /// Pulls image `id` from the bucket (through the verified cache) into the directory store `dest`.
    pub fn pull(
        &self,
        id: &str,
        dest: &super::DirStore,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<Committed, StoreError> {
        let m = self.manifest(id)?;
        let staging = dest.staging()?;
        for name in m.files.keys() {
            let a = self.open(id, name)?;
            let to = staging.path().join(name);
            let mut f = std::fs::File::create(&to).map_err(io(&to))?;
            let n = std::io::copy(&mut { a.reader }, &mut f).map_err(io(&to))?;
            progress(name, n, a.size);
        }
        let c = dest.commit(staging, m)?;
        if c.id != id {
            return Err(StoreError::Manifest(ManifestError::IdMismatch {
                id: id.to_string(),
                actual: c.id,
            }));
        }
        Ok(c)
    }

    /// Hashes object `key` as the bucket has it now (no cache).
    fn rehash_object(
        &self,
        key: &str,
        missing: impl FnOnce() -> StoreError,
    ) -> Result<FileEntry, StoreError> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut size = 0u64;
        self.download(
            key,
            &mut |c| {
                h.update(c);
                size += c.len() as u64;
                Ok(())
            },
            missing,
        )?;
        Ok(FileEntry {
            size,
            sha256: hex::encode(h.finalize()),
        })
    }

    /// The ids of every manifest in the bucket, with their upload time (seconds since the epoch).
    fn manifests(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.client.clone();
        let listed: Vec<_> = self.run(async move {
            client
                .list(Some(&Key::from("manifests")))
                .collect::<Vec<_>>()
                .await
        });
        let mut out = Vec::new();
        for m in listed {
            let m = m.map_err(|e| self.remote("manifests/", e))?;
            if let Some(id) = m.location.filename().filter(|f| is_id(f)) {
                out.push((id.to_string(), m.last_modified.timestamp().max(0) as u64));
            }
        }
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let client = self.client.clone();
        let k = Key::from(key);
        match self.run(async move { client.delete(&k).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.remote(key, e)),
        }
    }

    fn no_image(&self, id: &str) -> StoreError {
        StoreError::NoImage {
            id: id.into(),
            dir: self.location(),
        }
    }

    fn check_id(id: &str) -> Result<(), StoreError> {
        if is_id(id) {
            Ok(())
        } else {
            Err(StoreError::BadId { id: id.into() })
        }
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl ImageStore for S3Store {
    fn location(&self) -> String {
        format!("s3://{} at {}", self.cfg.bucket, self.cfg.endpoint)
    }

    fn locate(&self, id: &str) -> String {
        self.object(&manifest_key(id))
    }

    fn manifest(&self, id: &str) -> Result<Manifest, StoreError> {
        Self::check_id(id)?;
        let key = manifest_key(id);
        let p = self.fill(&key, id, None, || self.no_image(id))?;
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        Ok(Manifest::from_bytes(id, &bytes)?)
    }

    fn open(&self, id: &str, name: &str) -> Result<Artifact, StoreError> {
        let m = self.manifest(id)?;
        let (path, size, sha256) = if name == MANIFEST {
            let p = self.cache.path(&manifest_key(id));
            let size = std::fs::metadata(&p).map_err(io(&p))?.len();
            (p, size, id.to_string())
        } else {
            let e = m.files.get(name).ok_or_else(|| StoreError::NoFile {
                id: id.into(),
                name: name.into(),
            })?;
            let p = self.fill(&blob_key(&e.sha256), &e.sha256, Some(e.size), || {
                StoreError::NoFile {
                    id: id.into(),
                    name: name.into(),
                }
            })?;
            (p, e.size, e.sha256.clone())
        };
        let f = std::fs::File::open(&path).map_err(io(&path))?;
        let actual = f.metadata().map_err(io(&path))?.len();
        if actual != size {
            return Err(StoreError::SizeMismatch {
                id: id.into(),
                name: name.into(),
                actual,
                expected: size,
            });
        }
        Ok(Artifact {
            reader: f,
            size,
            sha256,
        })
    }

    /// Re-hashes the object as the bucket has it now (not the cached copy): `verify` checks the bucket.
    fn rehash(&self, id: &str, name: &str) -> Result<FileEntry, StoreError> {
        Self::check_id(id)?;
        if name == MANIFEST {
            return self.rehash_object(&manifest_key(id), || self.no_image(id));
        }
        let m = self.manifest(id)?;
        let e = m.files.get(name).ok_or_else(|| StoreError::NoFile {
            id: id.into(),
            name: name.into(),
        })?;
        self.rehash_object(&blob_key(&e.sha256), || StoreError::NoFile {
            id: id.into(),
            name: name.into(),
        })
    }

    fn staging(&self) -> Result<tempfile::TempDir, StoreError> {
        let d = self.cache.dir().join("staging");
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&d)
            .map_err(io(&d))
    }

    /// Uploads the artifacts (those not already in the bucket), then the manifest last.
    fn commit(
        &self,
        staging: tempfile::TempDir,
        mut manifest: Manifest,
    ) -> Result<Committed, StoreError> {
        hash_staged(staging.path(), &mut manifest)?;
        let bytes = manifest.to_bytes();
        let id = manifest.id();
        let mp = staging.path().join(MANIFEST);
        std::fs::write(&mp, &bytes).map_err(io(&mp))?;
        // Push from the staging directory, seen as a directory store holding this one image.
        let views = self.cache.dir().join("staging");
        let view = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&views)
            .map_err(io(&views))?;
        let dir = view.path().join(&id);
        let staged = staging.keep();
        std::fs::rename(&staged, &dir).map_err(io(&dir))?;
        let pushed = self.push(
            &super::DirStore::new(view.path()),
            &id,
            false,
            &mut |_, _, _| {},
        )?;
        Ok(Committed {
            id,
            existed: pushed.existed,
        })
    }

    fn list(&self) -> Result<Vec<Stored>, StoreError> {
        Ok(self
            .manifests()?
            .into_iter()
            .map(|(id, created)| {
                let manifest = self.manifest(&id);
                Stored {
                    id,
                    created,
                    manifest,
                }
            })
            .collect())
    }

    /// Removes the manifest first (the image is gone at once), then the artifacts no other image lists.
    fn remove(&self, id: &str) -> Result<(), StoreError> {
        let m = self.manifest(id)?;
        let key = manifest_key(id);
        self.delete(&key)?;
        self.cache.forget(&key);
        let mut kept = BTreeSet::new();
        for (other, _) in self.manifests()? {
            if let Ok(om) = self.manifest(&other) {
                kept.extend(om.files.values().map(|e| e.sha256.clone()));
            }
        }
        for e in m.files.values().filter(|e| !kept.contains(&e.sha256)) {
            let k = blob_key(&e.sha256);
            self.delete(&k)?;
            self.cache.forget(&k);
        }
        Ok(())
    }
}
