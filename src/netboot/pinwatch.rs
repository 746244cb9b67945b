//! Picks up `imgbuild pin` while the server runs. With the state directory: a cheap check of `state/pins.toml`
//! (mtime, inode, size). With etcd: a watch on the pins key marks them changed the moment any host re-pins, on
//! every replica. Either way the pins are then re-read; no SIGHUP needed (SIGHUP still reloads everything).
//!
//! There is one watch per server, owned by the shared state and asked inside [`crate::netboot::state::Shared::booter`]:
//! every boot decision (DHCP, TFTP, HTTP) and the attestation's expected image read the pins through that one
//! call, so none of them can see pins older than another's. This file does not know the shared state (it
//! imports this one): it answers with the new pins and the caller swaps them in.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use crate::config::Cluster;
use crate::image::pins::{PinMap, Pins};
use crate::pki::state_store::{Key, StateBackend, documents};

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
    /// Starts watching the pins of `cluster` on the shared-state backend `state` (as loaded at start-up: what
    /// changes after this is picked up).
    pub fn new(cluster: &Cluster, state: &dyn StateBackend) -> Self {
        let path = Pins::path(cluster);
        let s = stamp(&path);
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let pushed = match state.watch(Key::Pins, Arc::new(move || f.store(true, Ordering::SeqCst)))
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

    /// The pins of `cluster`, re-read and resolved, if they changed since the last look; `None` when they did not
    /// (or cannot be read: logged, the caller keeps the pins it has).
    pub fn changed(&self, cluster: &Cluster, state: &dyn StateBackend) -> Option<PinMap> {
        let path = Pins::path(cluster);
        match &self.pushed {
            Some(flag) => {
                if !flag.swap(false, Ordering::SeqCst) {
                    return None;
                }
            }
            None => {
                let now = stamp(&path);
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                if last.0 == path && last.1 == now {
                    return None;
                }
                *last = (path.clone(), now);
            }
        }
        let origin = documents::pins_origin(state, &cluster.paths.state);
        match documents::pins(state, &cluster.paths.state) {
            Ok(p) => {
                let resolved = p.resolve(&*crate::image::store::open(cluster));
                for ((role, arch), img) in &resolved {
                    tracing::info!(%role, %arch, image = %img.id, "pin in effect");
                    if img.standins {
                        tracing::warn!(%role, %arch, image = %img.id, "the pinned image was built with labelled STAND-IN binaries");
                    }
                }
                tracing::info!(pins = %origin.display(), "pins changed; new boot decisions use them");
                Some(resolved)
            }
            Err(e) => {
                if let Some(flag) = &self.pushed {
                    flag.store(true, Ordering::SeqCst); // try again at the next decision
                }
                tracing::error!(error = %e, "pins changed but cannot be read; keeping the previous pins");
                None
            }
        }
    }
}
