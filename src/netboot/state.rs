//! The state every protocol loop shares (`Arc<Shared>`): the current cluster and boot decision (swapped
//! atomically on reload or re-pin), the event log and the metrics registry. DHCP, TFTP, HTTP, router
//! advertisements and the pin watcher import this module; `server.rs` creates it and spawns them.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::boot::Booter;
use super::pinwatch::PinWatch;
use crate::config::Cluster;
use crate::image::pins::PinMap;
use crate::pki::report_state::ReportState;
use crate::pki::state_store::{self, StateBackend};
use crate::status::Events;

/// State every protocol loop reads. Cheap to share (`Arc<Shared>`).
pub struct Shared {
    /// The `cluster.toml` the server was started with; re-read from here on reload (SIGHUP).
    pub config_path: PathBuf,
    cluster: ArcSwap<Cluster>,
    booter: ArcSwap<Booter>,
    /// The event log (`state/events.jsonl`): boot stages seen by DHCP, TFTP, HTTP and reported by the nodes.
    pub events: Events,
    /// Durable state of accepted node reports: the init-done barrier and each node's last report counter
    /// (`state/barrier.json`, `state/report-counters.json`), never derived from the event log.
    pub reports: ReportState,
    /// Every protocol registers its metric families here when it starts; `/metrics` encodes it.
    pub registry: std::sync::Mutex<prometheus_client::registry::Registry>,
    /// The listeners bound so far (systemd is told `READY=1` once all are).
    pub ready: super::ready::Ready,
    /// What the probes for other DHCP servers on the interface found (DHCP, `/metrics`, the status page).
    pub dhcp_probe: Arc<super::dhcp::probe::Findings>,
    /// Where enrollment, the token, the barrier, report counters, pins, the unknown pool's leases and the shared
    /// event history live (`[state]`: the state directory, or etcd shared by every replica).
    pub state: Arc<dyn StateBackend>,
    /// This server's name among replicas (`$IMGBUILD_REPLICA` or the host name), in events and `/metrics`.
    pub replica: String,
    /// The DHCP leases this server has acknowledged (filled by the DHCP journal thread): a node's unsigned
    /// reports are taken from its current lease as well as its inventory address.
    pub leases: super::known_leases::KnownLeases,
    /// Set while the live replicas disagree about how the unknown pools are split
    /// ([`super::replicas::pool_conflicts`]): the DHCP loop then hands out no pool address.
    pub pool_conflict: std::sync::atomic::AtomicBool,
    /// The one watch on the pins: [`Shared::booter`] asks it before handing out the boot decision.
    pins: PinWatch,
}

impl Shared {
    /// The state for a loaded `cluster` and its `pins`; the metrics registry starts empty with prefix `imgbuild`.
    /// The event log records only the inventory's machines (set here and again on every reload).
    pub fn new(config_path: PathBuf, cluster: Cluster, pins: PinMap, events: Events) -> Self {
        let state = state_store::dir_of(&cluster);
        Self::new_in(
            config_path,
            cluster,
            pins,
            events,
            state,
            state_store::replica_id(),
        )
    }

    /// [`Shared::new`] on the shared-state backend `state` (opened with `pki::state_store::open`), as replica
    /// `replica`.
    pub fn new_in(
        config_path: PathBuf,
        cluster: Cluster,
        pins: PinMap,
        events: Events,
        state: Arc<dyn StateBackend>,
        replica: String,
    ) -> Self {
        events.set_inventory(cluster.machines.iter().map(|m| m.mac));
        let cluster = Arc::new(cluster);
        let reports = ReportState::open_in(state.clone()).unwrap_or_else(|e| {
            tracing::error!(
                "{e}; starting with no barrier and no report counters (the barrier stays closed until the first \
                 master reports init-done again)"
            );
            ReportState::empty(state.clone())
        });
        let pins_watch = PinWatch::new(&cluster, &*state);
        Shared {
            pins: pins_watch,
            reports,
            config_path,
            booter: ArcSwap::from_pointee(Booter::new(cluster.clone(), pins)),
            cluster: ArcSwap::new(cluster),
            events,
            registry: std::sync::Mutex::new(prometheus_client::registry::Registry::with_prefix(
                "imgbuild",
            )),
            ready: Default::default(),
            dhcp_probe: Default::default(),
            state,
            replica,
            leases: Default::default(),
            pool_conflict: Default::default(),
        }
    }

    /// Registers metric families (call once per protocol at start-up); returns what `f` returns, typically the
    /// protocol's metric handles.
    pub fn register_metrics<T>(
        &self,
        f: impl FnOnce(&mut prometheus_client::registry::Registry) -> T,
    ) -> T {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn encode_metrics(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &reg)
            .expect("writing to a String cannot fail");
        out
    }

    /// The current cluster description.
    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.load_full()
    }

    /// The current boot decision, with the pins in force now: the one place the pins are re-read after an
    /// `imgbuild pin` (a stat of `state/pins.toml`, or a flag the etcd watch set; re-read only when changed).
    /// Every boot decision and the attestation's expected image go through here.
    pub fn booter(&self) -> Arc<Booter> {
        let cluster = self.cluster();
        if let Some(pins) = self.pins.changed(&cluster, &*self.state) {
            self.replace((*cluster).clone(), pins);
        }
        self.booter.load_full()
    }

    /// Replaces the cluster and pins (hot reload, re-pin). In-flight requests keep the old snapshot.
    pub fn replace(&self, cluster: Cluster, pins: PinMap) {
        self.events
            .set_inventory(cluster.machines.iter().map(|m| m.mac));
        let cluster = Arc::new(cluster);
        self.booter
            .store(Arc::new(Booter::new(cluster.clone(), pins)));
        self.cluster.store(cluster);
    }
}
