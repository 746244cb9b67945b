//! Picks up `imgbuild pin` while the server runs: a cheap check of `state/pins.toml` (mtime, inode, size) before
//! each boot decision that depends on pins. When the file changed, the pins are re-read and the boot decision
//! swapped; no SIGHUP needed (SIGHUP still reloads everything).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use super::state::Shared;
use crate::image::pins::Pins;

type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

/// Remembers the pins file as last loaded.
pub struct PinWatch {
    last: Mutex<(PathBuf, Stamp)>,
}

impl PinWatch {
    /// Starts watching the pins file of the current cluster, as loaded by `server::prepare`.
    pub fn new(shared: &Shared) -> Self {
        let path = Pins::path(&shared.cluster());
        let s = stamp(&path);
        PinWatch {
            last: Mutex::new((path, s)),
        }
    }

    /// Re-reads the pins if the file changed since the last look. Returns whether they were reloaded.
    pub fn refresh(&self, shared: &Shared) -> bool {
        let cluster = shared.cluster();
        let path = Pins::path(&cluster);
        let now = stamp(&path);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.0 == path && last.1 == now {
                return false;
            }
            *last = (path.clone(), now);
        }
        match Pins::load(&path) {
            Ok(p) => {
                let resolved = p.resolve(&*crate::image::store::open(&cluster));
                for ((role, arch), img) in &resolved {
                    tracing::info!(%role, %arch, image = %img.id, "pin in effect");
                    if img.standins {
                        tracing::warn!(%role, %arch, image = %img.id, "the pinned image was built with labelled STAND-IN binaries");
                    }
                }
                shared.replace((*cluster).clone(), resolved);
                tracing::info!(file = %path.display(), "pins changed; new boot decisions use them");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "pins file changed but cannot be read; keeping the previous pins");
                false
            }
        }
    }
}
