//! The server's shared state behind one interface ([`StateBackend`]), so one server or any number of
//! replicas answer nodes the same way: enrollment records, the published bootstrap token, the init-done
//! barrier, report counters, pins, the unknown pool's leases and a bounded event history.
//!
//! Two implementations, chosen by `[state] backend` in `cluster.toml` ([`open`]):
//! - [`dir::DirState`] (default): today's files — `state/enrollment.json` under `flock` on
//!   `state/enrollment.lock`, `state/barrier.json`, `state/report-counters.json`, `state/pins.toml` and
//!   `secrets/token.json` — for a single server;
//! - [`etcd::EtcdState`]: one etcd key per document under `[state] prefix`, every read-modify-write an etcd
//!   transaction (compare `mod_revision`, or `create_revision == 0` for a key that must not exist yet), watched
//!   keys pushed to every replica (`imgbuild pin` on any host takes effect on all of them at once).
//!
//! Documents are opaque bytes here (JSON or TOML, parsed by their owners: `pki::enroll`, `pki::report_state`,
//! `image::pins`); this module only guarantees that a read-modify-write is atomic with respect to every other
//! writer of the same backend.

use std::sync::Arc;

use crate::config::Cluster;
use crate::config::state::StateBackend as Kind;

mod backend;
pub mod dir;
pub mod documents;
pub mod etcd;

pub use backend::{Key, OnChange, StateBackend, StateError, Update, Write, parse_json, to_json};

/// Opens the backend `[state]` selects; `replica` names this server in the shared event history.
pub fn open(cluster: &Cluster, replica: &str) -> Result<Arc<dyn StateBackend>, StateError> {
    Ok(match cluster.state.backend {
        Kind::Dir => Arc::new(dir::DirState::new(
            &cluster.paths.state,
            &cluster.paths.secrets,
        )),
        Kind::Etcd => Arc::new(etcd::EtcdState::connect(&cluster.state, replica)?),
    })
}

/// The directory backend of `cluster` (what a single server and the CLI use when `[state] backend = "dir"`).
pub fn dir_of(cluster: &Cluster) -> Arc<dyn StateBackend> {
    Arc::new(dir::DirState::new(
        &cluster.paths.state,
        &cluster.paths.secrets,
    ))
}

/// The name this server goes by among replicas: `$IMGBUILD_REPLICA`, else the host name.
pub fn replica_id() -> String {
    if let Ok(r) = std::env::var("IMGBUILD_REPLICA")
        && !r.trim().is_empty()
    {
        return r.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "server".into())
}
