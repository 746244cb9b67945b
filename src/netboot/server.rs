//! `imgbuild serve`: the state shared by DHCP, TFTP and HTTP, and the task that runs them together.
//!
//! Each protocol module exposes `run(shared) -> anyhow::Result<()>`; this file starts them and owns hot
//! reload (SIGHUP / a changed `cluster.toml`): the cluster and the boot decision are swapped atomically.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::boot::{Booter, PinnedImage};
use crate::config::{Cluster, Role};
use crate::status::Events;

/// State every protocol loop reads. Cheap to share (`Arc<Shared>`).
pub struct Shared {
    pub config_path: PathBuf,
    cluster: ArcSwap<Cluster>,
    booter: ArcSwap<Booter>,
    pub events: Events,
}

impl Shared {
    pub fn new(config_path: PathBuf, cluster: Cluster, pins: BTreeMap<Role, PinnedImage>, events: Events) -> Self {
        let cluster = Arc::new(cluster);
        Shared {
            config_path,
            booter: ArcSwap::from_pointee(Booter::new(cluster.clone(), pins)),
            cluster: ArcSwap::new(cluster),
            events,
        }
    }

    /// The current cluster description.
    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.load_full()
    }

    /// The current boot decision.
    pub fn booter(&self) -> Arc<Booter> {
        self.booter.load_full()
    }

    /// Replaces the cluster and pins (hot reload, re-pin). In-flight requests keep the old snapshot.
    pub fn replace(&self, cluster: Cluster, pins: BTreeMap<Role, PinnedImage>) {
        let cluster = Arc::new(cluster);
        self.booter.store(Arc::new(Booter::new(cluster.clone(), pins)));
        self.cluster.store(cluster);
    }
}
