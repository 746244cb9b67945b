//! Pins: which image each role boots (`state/pins.toml`). Upgrade or roll back = re-pin, then reboot.
//!
//! The file is replaced atomically (write to a temporary file, fsync, rename), so a crash leaves the old or the
//! new pins, never a torn file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{Manifest, ManifestError};
use crate::config::{Cluster, Role};
use crate::netboot::boot::PinnedImage;

pub const PINS_FILE: &str = "pins.toml";

/// Role → image id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    #[serde(default)]
    pub pins: BTreeMap<Role, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid pins file: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("image {id} is a {actual} image; it cannot be pinned for role {role}")]
    WrongRole {
        id: String,
        role: Role,
        actual: Role,
    },
}

impl Pins {
    pub fn path(cluster: &Cluster) -> PathBuf {
        cluster.paths.state.join(PINS_FILE)
    }

    /// Reads the pins; a missing file means nothing is pinned yet.
    pub fn load(path: &Path) -> Result<Pins, PinError> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s).map_err(|e| PinError::Parse {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Pins::default()),
            Err(source) => Err(PinError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the pins atomically.
    pub fn save(&self, path: &Path) -> Result<(), PinError> {
        let io = |source| PinError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = format!(
            "# Which image each role boots. Written by `imgbuild pin <role> <image-id>`.\n{}",
            toml::to_string(self).expect("pins serialize")
        );
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(text.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Pins `id` for `role` after checking the image exists, is intact and is of that role.
    pub fn pin(&mut self, images_dir: &Path, role: Role, id: &str) -> Result<(), PinError> {
        let m = Manifest::read(images_dir, id)?;
        if m.role != role {
            return Err(PinError::WrongRole {
                id: id.to_string(),
                role,
                actual: m.role,
            });
        }
        self.pins.insert(role, id.to_string());
        Ok(())
    }

    /// The boot decision's view: each pinned role with its image's digests. Pins whose image is missing or
    /// damaged are left out, with a warning naming the command that fixes it.
    pub fn resolve(&self, images_dir: &Path) -> BTreeMap<Role, PinnedImage> {
        let mut out = BTreeMap::new();
        for (role, id) in &self.pins {
            match Manifest::read(images_dir, id).and_then(|m| m.pinned(id)) {
                Ok(p) => {
                    out.insert(*role, p);
                }
                Err(e) => {
                    tracing::warn!(%role, error = %e, "pinned image unusable; run `imgbuild profile {role}` and `imgbuild pin {role} <id>`")
                }
            }
        }
        out
    }
}
