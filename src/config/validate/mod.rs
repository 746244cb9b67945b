//! Semantic validation: from the raw file to a typed [`Cluster`], collecting every problem on the way.
//!
//! One function per `cluster.toml` section (`cluster.rs`, `network.rs`, `control_plane.rs`, `machines.rs`,
//! `metallb.rs`, `longhorn.rs`, `artifacts.rs`, `base.rs`, `paths.rs`, `limits.rs` (tftp, dhcp),
//! `limits_events.rs`, `limits_http.rs`, `secure_boot.rs`, `attestation.rs`, `state.rs`, `store.rs`), run in the order of [`validate`], which
//! is the order problems are reported in. They share what `checker.rs` holds: the [`Checker`] (the problems
//! found so far and where a key sits in the text), key paths and `Known` (the values later sections check
//! against, such as the provisioning subnet).

use std::path::Path;

use super::model::Cluster;
use super::raw;

mod artifacts;
mod attestation;
mod base;
mod checker;
mod cluster;
mod control_plane;
mod images;
mod limits;
mod limits_events;
mod limits_http;
mod longhorn;
mod machines;
mod metallb;
mod network;
mod paths;
mod secure_boot;
mod state;
mod store;

pub use artifacts::REQUIRED_ARTIFACTS;
pub use checker::{Checker, Seg};

/// Validates the raw file. `root` is the directory the relative paths are resolved against.
pub fn validate(c: &mut Checker, f: raw::File, root: &Path, digest: String) -> Option<Cluster> {
    let mut known = checker::Known::default();
    let cluster = cluster::check(c, &f.cluster, &mut known);
    let mut network = network::check(c, &f.network, &mut known);
    // Reported after the network's own problems: the pod network must also stay clear of its subnet.
    cluster::check_ranges(c, &known);
    let control_plane = control_plane::check(c, &f.control_plane, &mut known);
    let mut machines = machines::check(c, &f.machines, &known);
    let metallb = metallb::check(c, &f.metallb, &machines, &known);
    let longhorn = longhorn::check(c, &f.longhorn, &f.machines);
    let artifacts = artifacts::check(c, &f.artifacts, &known);
    let (images, sandbox_image) =
        images::check(c, &f.images, &known, &f.control_plane.kube_vip_image);
    let base = base::check(c, &f.base);
    let paths = paths::check(root, &f.paths);
    let limits = limits::check(c, &f.limits);
    let event_limits = limits_events::check(c, &f.limits.events);
    let http_limits = limits_http::check(c, &f.limits.http);
    let secure_boot = secure_boot::check(c, &f.secure_boot, root, &paths.secrets);
    let mut state = state::check(c, &f.state, root, &f.cluster.name);
    if let Some(n) = network.as_mut() {
        state.dhcp_replicas = network::check_share(c, &f.state, &state.backend, n);
    }
    let store = store::check(c, &f.store, root, &paths);
    if let Some(sb) = &secure_boot {
        secure_boot::resolve_machines(c, sb, &f.machines, &mut machines);
    }
    let attestation = attestation::check(c, &f.attestation, root);
    if let Some(a) = &attestation {
        attestation::resolve_machines(c, a, &f.machines, &mut machines);
    }

    if !c.problems.is_empty() {
        return None;
    }
    Some(Cluster {
        path: c.file.clone(),
        digest,
        cluster: cluster?,
        control_plane: control_plane?,
        network: network?,
        metallb: metallb?,
        longhorn: longhorn?,
        machines,
        artifacts,
        images,
        sandbox_image: sandbox_image?,
        base,
        paths,
        limits: super::limits::Limits {
            events: event_limits?,
            http: http_limits,
            ..limits
        },
        enrollment: super::model::Enrollment {
            approve: f.enrollment.approve,
        },
        secure_boot: secure_boot?,
        attestation: attestation?,
        state,
        store: store?,
    })
}
