//! `[store]`: where the images are kept. `dir` (the default) is the directory `[paths] images`; `s3` is a
//! bucket of an S3-compatible object store, read through a local cache. Credentials never appear here: they come
//! from the environment or from a credentials file the section names.

use std::path::PathBuf;

use serde::Serialize;

/// `[store]`: the image store backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Store {
    /// The directory store `[paths] images` (the default).
    #[default]
    Dir,
    /// An S3 bucket with a local read-through cache.
    S3(S3Store),
}

/// `[store] backend = "s3"`: the bucket and the local cache a replica serves from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct S3Store {
    /// The endpoint URL, e.g. `https://s3.example.net` or `http://127.0.0.1:3900` (plain HTTP only on loopback).
    pub endpoint: String,
    /// The bucket the images are pushed to.
    pub bucket: String,
    /// The region the signatures name (`us-east-1` by default; Garage's default is `garage`).
    pub region: String,
    /// The local read-through cache: every object is verified by sha256 here before it is served.
    pub cache: PathBuf,
    /// An AWS-style credentials file (`[default]` with `aws_access_key_id`, `aws_secret_access_key`); `None`:
    /// the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    pub credentials_file: Option<PathBuf>,
    /// A CA certificate (PEM) the endpoint's TLS certificate may also chain to (a store behind a TLS proxy with
    /// the site's own CA); `None`: the system's roots only.
    pub ca: Option<PathBuf>,
}
