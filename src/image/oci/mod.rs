//! Container images as pinned artifacts (docs/air-gapped.md): pulled from registries with the OCI distribution
//! API, kept in a content-addressed blob cache, locked by digest, baked into role images as an OCI image layout,
//! and moved to disconnected sites as one verified bundle.
//!
//! - [`pull`]: `imgbuild fetch` for `[images.*]`; [`manifest`]: the manifest and index fields read.
//! - [`layout`]: a role's images as an OCI image layout in its root filesystem; [`pin_refs`]: its manifests
//!   name them by digest.
//! - [`blobs`]: the blob cache `cache/oci/blobs/sha256/`; [`error`]: what went wrong, with the fix.

pub mod blobs;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod pin_refs;
pub mod pull;

pub use error::OciError;
