//! The images of a store as the operator sees them: each with the roles that pin it (`imgbuild images`), and
//! garbage collection of the unpinned ones (`imgbuild gc`). Computed over any [`ImageStore`]; the store itself
//! knows nothing of pins.

use serde::Serialize;

use super::pins::Pins;
use super::store::{ImageStore, StoreError};

/// One image in the store.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// The image id.
    pub id: String,
    /// The role it was built for (`?` when its manifest cannot be read).
    pub role: String,
    /// Built with labelled stand-in binaries.
    pub standins: bool,
    /// The artifacts' total size in bytes.
    pub size: u64,
    /// Seconds since the epoch when the image was committed.
    pub created: u64,
    /// Roles that pin this image.
    pub pinned_by: Vec<String>,
    /// Why the image is unusable, when it is.
    pub problem: Option<String>,
}

/// Every image in the store, newest first.
pub fn list(store: &dyn ImageStore, pins: &Pins) -> Result<Vec<ImageInfo>, StoreError> {
    let mut out: Vec<ImageInfo> = store
        .list()?
        .into_iter()
        .map(|s| {
            let pinned_by = pins
                .iter()
                .filter(|(_, _, id)| **id == s.id)
                .map(|(r, a, _)| format!("{r}/{a}"))
                .collect();
            match s.manifest {
                Ok(m) => ImageInfo {
                    size: m.files.values().map(|f| f.size).sum(),
                    role: m.role.to_string(),
                    standins: m.standins,
                    id: s.id,
                    created: s.created,
                    pinned_by,
                    problem: None,
                },
                Err(e) => ImageInfo {
                    id: s.id,
                    role: "?".into(),
                    standins: false,
                    size: 0,
                    created: s.created,
                    pinned_by,
                    problem: Some(e.to_string()),
                },
            }
        })
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Removes every image no role pins, except the newest `keep` of them. Returns the removed ids.
pub fn gc(store: &dyn ImageStore, pins: &Pins, keep: usize) -> Result<Vec<String>, StoreError> {
    let all = list(store, pins)?;
    let mut removed = Vec::new();
    for img in all.iter().filter(|i| i.pinned_by.is_empty()).skip(keep) {
        store.remove(&img.id)?;
        removed.push(img.id.clone());
    }
    Ok(removed)
}
