//! Picks up `imgbuild pin` while the server runs. With the state directory: a cheap check of `state/pins.toml`
//! (mtime, inode, size) before each boot decision that depends on pins. With etcd: a watch on the pins key marks
//! them changed the moment any host re-pins, on every replica. Either way the pins are then re-read and the boot
//! decision swapped; no SIGHUP needed (SIGHUP still reloads everything).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use super::state::Shared;
use crate::image::pins::Pins;
use crate::pki::state_store::{Key, documents};

type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

/// Remembers the pins as last loaded.
pub struct PinWatch {
    last: Mutex<(PathBuf, Stamp)>,
    /// Set by the backend's watch (etcd); `None` with the state directory.
    pushed: Option<Arc<AtomicBool>>,
}

impl PinWatch {
    /// Starts watching the pins of the current cluster, as loaded by `server::prepare`.
    pub fn new(shared: &Shared) -> Self {
        let path = Pins::path(&shared.cluster());
        let s = stamp(&path);
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let pushed = match shared
            .state
            .watch(Key::Pins, Arc::new(move || f.store(true, Ordering::SeqCst)))
        {
            Ok(true) => Some(flag),
            Ok(false) => None,
            Err(e) => {
                tracing::error!("cannot watch the pins: {e}; re-pins take effect on SIGHUP");
                None
            }
        };
        PinWatch {
            last: Mutex::new((path, s)),
            pushed,
        }
    }

    /// Re-reads the pins if they changed since the last look. Returns whether they were reloaded.
    pub fn refresh(&self, shared: &Shared) -> bool {
        let cluster = shared.cluster();
        let path = Pins::path(&cluster);
        match &self.pushed {
            Some(flag) => {
                if !flag.swap(false, Ordering::SeqCst) {
                    return false;
                }
            }
            None => {
                let now = stamp(&path);
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                if last.0 == path && last.1 == now {
                    return false;
                }
                *last = (path.clone(), now);
            }
        }
        let origin = documents::pins_origin(&*shared.state, &cluster.paths.state);
        match documents::pins(&*shared.state, &cluster.paths.state) {
            Ok(p) => {
                let resolved = p.resolve(&*crate::image::store::open(&cluster));
                for ((role, arch), img) in &resolved {
                    tracing::info!(%role, %arch, image = %img.id, "pin in effect");
                    if img.standins {
                        tracing::warn!(%role, %arch, image = %img.id, "the pinned image was built with labelled STAND-IN binaries");
                    }
                }
                shared.replace((*cluster).clone(), resolved);
                tracing::info!(pins = %origin.display(), "pins changed; new boot decisions use them");
                true
            }
            Err(e) => {
                if let Some(flag) = &self.pushed {
                    flag.store(true, Ordering::SeqCst); // try again at the next decision
                }
                tracing::error!(error = %e, "pins changed but cannot be read; keeping the previous pins");
                false
            }
        }
    }
}
