//! Replicas on a shared state (`[state] backend = "etcd"`): each replica announces itself every few seconds
//! (a key with a lease: a replica killed drops out of the list by itself) and copies every event it records
//! into the shared, bounded history with its name, so `imgbuild status` and the page on any replica show
//! every replica and which one served each stage. With the state directory (one server) nothing runs here.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::Shared;
use crate::status::Event;

/// How often a replica announces itself; it is listed for three times as long.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// One replica as it announced itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Its name (`$IMGBUILD_REPLICA` or the host name).
    pub id: String,
    /// When it last announced itself, ms since the epoch.
    pub seen_ms: u64,
    /// When it started, ms since the epoch.
    pub started_ms: u64,
    /// The imgbuild version it runs.
    pub version: String,
    /// Its `[network] server`, when it hands out unknown-pool addresses (full mode with a pool).
    #[serde(default)]
    pub dhcp_server: Option<Ipv4Addr>,
    /// Its `[state] dhcp_replicas` (the order that splits the pools), when it hands out pool addresses.
    #[serde(default)]
    pub dhcp_replicas: Vec<Ipv4Addr>,
}

/// What is wrong with how the live replicas split the unknown pools, one sentence each (empty: nothing). Two
/// replicas with the same `[network] server`, or with different `[state] dhcp_replicas` lists, could hand one
/// address to two machines: every replica then pauses its pool until the configurations agree.
pub fn pool_conflicts(live: &[ReplicaInfo]) -> Vec<String> {
    let dhcp: Vec<&ReplicaInfo> = live.iter().filter(|r| r.dhcp_server.is_some()).collect();
    let mut out = Vec::new();
    for (i, a) in dhcp.iter().enumerate() {
        for b in &dhcp[i + 1..] {
            if a.dhcp_server == b.dhcp_server {
                out.push(format!(
                    "replicas {} and {} both have [network] server {}: each replica needs its own address",
                    a.id,
                    b.id,
                    a.dhcp_server.expect("filtered")
                ));
            } else if a.dhcp_replicas != b.dhcp_replicas {
                out.push(format!(
                    "replicas {} and {} split the unknown pools differently ([state] dhcp_replicas {:?} and {:?}): \
                     give every replica's cluster.toml the same list",
                    a.id, b.id, a.dhcp_replicas, b.dhcp_replicas
                ));
            }
        }
    }
    out
}

/// This replica's announcement now.
fn info_of(s: &Shared, started_ms: u64) -> ReplicaInfo {
    let c = s.cluster();
    let pools =
        c.network.dhcp_mode == crate::config::DhcpMode::Full && c.network.any_unknown_pool();
    ReplicaInfo {
        id: s.replica.clone(),
        seen_ms: crate::status::now_ms(),
        started_ms,
        version: env!("CARGO_PKG_VERSION").into(),
        dhcp_server: pools.then_some(c.network.server),
        dhcp_replicas: if pools {
            c.state.dhcp_replicas.clone()
        } else {
            Vec::new()
        },
    }
}

/// Announces `s`, then compares the pool split of every live replica and pauses or resumes this one's pool.
fn announce_and_check(
    s: &Shared,
    started_ms: u64,
) -> Result<(), crate::pki::state_store::StateError> {
    let info = info_of(s, started_ms);
    let ttl = 3 * ANNOUNCE_EVERY.as_secs() as i64;
    s.state.announce(
        &info.id,
        &serde_json::to_vec(&info).expect("info serializes"),
        ttl,
    )?;
    let conflicts = pool_conflicts(&list(s));
    let was = s
        .pool_conflict
        .swap(!conflicts.is_empty(), Ordering::SeqCst);
    for c in &conflicts {
        tracing::error!(
            "{c}; no unknown-pool address is handed out until this is fixed (inventory machines are served)"
        );
    }
    if was && conflicts.is_empty() {
        tracing::info!(
            "the replicas agree on the unknown pool split again: pool addresses are handed out"
        );
    }
    Ok(())
}

/// An event of the shared history and the replica that recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The replica that saw (or received the report of) the event.
    pub replica: String,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// Starts announcing this replica and copying its events into the shared history (replicated backends only;
/// call from inside the tokio runtime).
pub fn spawn(shared: &Arc<Shared>) {
    if !shared.state.replicated() {
        return;
    }
    let s = shared.clone();
    let started_ms = crate::status::now_ms();
    tokio::spawn(async move {
        loop {
            let s2 = s.clone();
            let r = tokio::task::spawn_blocking(move || announce_and_check(&s2, started_ms)).await;
            if let Ok(Err(e)) = r {
                tracing::warn!("cannot announce this replica: {e}");
            }
            tokio::time::sleep(ANNOUNCE_EVERY).await;
        }
    });
    let copier = HistoryCopier::register(shared);
    let rx = shared.events.subscribe();
    tokio::spawn(copier.run(shared.clone(), rx));
}

/// The first pause after a failed copy into the shared history; it doubles up to [`COPY_RETRY_MAX`].
const COPY_RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between two tries of one event.
const COPY_RETRY_MAX: Duration = Duration::from_secs(10);

/// Copies this replica's events into the shared history in order, each one until it is stored: a failed write
/// (an etcd member stopping, a leader election, a lost connection) is retried with the same key, so an event is
/// neither lost nor stored twice. While it retries, newer events wait in the event log's broadcast buffer
/// (1,024 events); older ones than that are dropped from the shared history only (each replica's own
/// `events.jsonl` keeps them) and counted. Metrics: `imgbuild_shared_history_pending` (events waiting),
/// `imgbuild_shared_history_retries_total` (failed writes retried), `imgbuild_shared_history_dropped_total`.
struct HistoryCopier {
    pending: prometheus_client::metrics::gauge::Gauge,
    retries: prometheus_client::metrics::counter::Counter,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl HistoryCopier {
    fn register(shared: &Shared) -> Self {
        let c = Self {
            pending: Default::default(),
            retries: Default::default(),
            dropped: Default::default(),
        };
        shared.register_metrics(|r| {
            r.register(
                "shared_history_pending",
                "Events of this replica waiting to be copied into the shared history (at most 1,024)",
                c.pending.clone(),
            );
            r.register(
                "shared_history_retries",
                "Writes of an event into the shared history that failed and were tried again",
                c.retries.clone(),
            );
            r.register(
                "shared_history_dropped",
                "Events never copied into the shared history: more than 1,024 waited while it could not be written \
                 (this replica's own event log keeps them)",
                c.dropped.clone(),
            );
        });
        c
    }

    async fn run(self, s: Arc<Shared>, mut rx: tokio::sync::broadcast::Receiver<Event>) {
        use tokio::sync::broadcast::error::RecvError;
        let mut seq: u64 = 0;
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    self.dropped.inc_by(n);
                    tracing::warn!(
                        missed = n,
                        "the shared event history fell behind; {n} events were not copied to it (this replica's \
                         events.jsonl has them); see imgbuild_state_requests for the failing writes"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            self.pending.set(rx.len() as i64);
            let line = serde_json::to_vec(&Served {
                replica: s.replica.clone(),
                event: ev,
            })
            .expect("an event serializes");
            let (at_ms, n) = (crate::status::now_ms(), seq);
            seq += 1;
            let mut pause = COPY_RETRY_FIRST;
            let mut failures = 0u32;
            loop {
                let (s2, line2) = (s.clone(), line.clone());
                match tokio::task::spawn_blocking(move || s2.state.record_event(at_ms, n, &line2))
                    .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        failures += 1;
                        self.retries.inc();
                        if failures == 1 {
                            tracing::warn!(
                                "cannot copy an event to the shared history: {e}; retrying until it is stored \
                                 (newer events wait)"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            "copying an event to the shared history panicked: {e}; event skipped"
                        );
                        break;
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(COPY_RETRY_MAX);
            }
            if failures > 0 {
                tracing::info!(failures, "the shared event history is written again");
            }
        }
    }
}

/// The newest `limit` events of the shared history, oldest first (empty with the state directory).
pub fn history(shared: &Shared, limit: usize) -> Vec<Served> {
    match shared.state.events(limit) {
        Ok(v) => v
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect(),
        Err(e) => {
            tracing::warn!("cannot read the shared event history: {e}");
            vec![]
        }
    }
}

/// The events every replica recorded (the shared history), for the status report and the page: a node served
/// by one replica until it died and by another afterwards shows its whole boot on either. With the state
/// directory, or when the history cannot be read (warned), this replica's own events.
pub fn every_replicas_events(shared: &Shared) -> Vec<Event> {
    if shared.state.replicated() {
        let kept = shared.cluster().state.events_kept as usize;
        let v = history(shared, kept);
        if !v.is_empty() {
            return v.into_iter().map(|s| s.event).collect();
        }
    }
    shared.events.snapshot()
}

/// Every live replica (with the state directory: this server alone).
pub fn list(shared: &Shared) -> Vec<ReplicaInfo> {
    if !shared.state.replicated() {
        return vec![info_of(shared, 0)];
    }
    let mut v: Vec<ReplicaInfo> = match shared.state.replicas() {
        Ok(v) => v
            .iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list the replicas: {e}");
            vec![]
        }
    };
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}
