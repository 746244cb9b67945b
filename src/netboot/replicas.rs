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
    let s = shared.clone();
    let mut rx = shared.events.subscribe();
    tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "the shared event history fell behind; {n} events were not copied to it"
                    );
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let line = serde_json::to_vec(&Served {
                replica: s.replica.clone(),
                event: ev,
            })
            .expect("an event serializes");
            let s2 = s.clone();
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || s2.state.record_event(&line)).await
            {
                tracing::warn!("cannot copy an event to the shared history: {e}");
            }
        }
    });
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
