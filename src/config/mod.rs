//! The cluster description (`cluster.toml`) and the role profiles (`profiles/`): parsing and validation.
//!
//! Everything imgbuild does is driven from here. [`load`] returns either a fully valid [`Cluster`] or a
//! [`ConfigError`] listing every problem with its file, line, column and key.

pub mod error;
pub mod image_ref;
pub mod limits;
pub mod mac;
pub mod model;
pub mod network;
pub mod profile;
mod raw;
pub mod state;
pub mod store;
pub(crate) mod validate;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use error::{ConfigError, Problem};
pub use image_ref::ImageRef;
pub use limits::{DhcpLimits, EventLimits, HttpLimits, Limits, TftpLimits};
pub use mac::MacAddr;
pub use model::*;
pub use store::{S3Store, Store};
pub use validate::REQUIRED_ARTIFACTS;

/// The file imgbuild reads when `--config` names none.
pub const DEFAULT_CONFIG: &str = "cluster.toml";

/// Reads and validates a cluster description from disk.
pub fn load(path: &Path) -> Result<Cluster, ConfigError> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        source: std::sync::Arc::new(e),
    })?;
    let root = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    load_str(path, &src, &root)
}

/// Validates a cluster description held in memory; `path` is used in messages, `root` resolves relative paths.
pub fn load_str(path: &Path, src: &str, root: &Path) -> Result<Cluster, ConfigError> {
    let mut checker = validate::Checker::new(path, src);
    let raw: raw::File = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let (line, column) = match e.span() {
                Some(sp) => {
                    let (l, c) = error::line_col(src, sp.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            return Err(ConfigError::Invalid(vec![Problem {
                file: path.to_path_buf(),
                line,
                column,
                key: String::new(),
                message: e.message().trim().to_string(),
            }]));
        }
    };
    let digest = hex::encode(Sha256::digest(src.as_bytes()));
    match validate::validate(&mut checker, raw, root, digest) {
        Some(c) => Ok(c),
        None => Err(ConfigError::Invalid(checker.problems)),
    }
}

/// The repository's example `cluster.toml`, loaded: the cluster unit tests check rules against.
#[cfg(test)]
pub(crate) fn example() -> Cluster {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(root.join("cluster.toml")).expect("the example cluster.toml");
    load_str(&root.join("cluster.toml"), &src, root).expect("the example cluster.toml is valid")
}
