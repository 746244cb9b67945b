//! `[state]`: where a server keeps its shared state — the state directory (`dir`, the default: one server) or an
//! etcd cluster (`etcd`: any number of `imgbuild serve` replicas answering nodes the same way; docs/scale-state.md).

use std::path::PathBuf;

use serde::Serialize;

/// Which backend holds pins, enrollment records, the published token, the barrier, report counters, the
/// unknown pool's leases and the bounded event history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    /// Files under `[paths] state` (and the token under `[paths] secrets`): one server.
    #[default]
    Dir,
    /// An etcd v3 cluster shared by every replica.
    Etcd,
}

/// `[state]`: the backend and, for etcd, how to reach it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct State {
    /// `backend`: `dir` (default) or `etcd`.
    pub backend: StateBackend,
    /// `endpoints`: the etcd members' client URLs (`https://host:2379`; `http://` only on loopback).
    pub endpoints: Vec<String>,
    /// `prefix`: the key prefix of this cluster's state; default `/imgbuild/<cluster name>/`.
    pub prefix: String,
    /// `ca`: the CA certificate (PEM) that signed the etcd members' certificates; required with `https://`.
    pub ca: Option<PathBuf>,
    /// `cert`: this server's client certificate (PEM) for etcd's client-certificate authentication.
    pub cert: Option<PathBuf>,
    /// `key`: the private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// `timeout_ms`: how long one etcd request may take before the request fails (default 5000).
    pub timeout_ms: u64,
    /// `events_kept`: how many events the shared history keeps (default 10000; older ones are deleted).
    pub events_kept: u64,
    /// `dhcp_replicas`: every DHCP replica's `[network] server`, in the order that splits the unknown pools
    /// (`network.pool_share` is this server's place); empty: one server hands out whole pools.
    pub dhcp_replicas: Vec<std::net::Ipv4Addr>,
}
