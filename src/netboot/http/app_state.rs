//! The state the handlers of this module's own routes share ([`AppState`]): the server state plus HTTP-only
//! caches. Its own file so the handlers (`script`, `images`, `events`) import it without importing `mod.rs`,
//! which imports them.

use std::sync::Arc;

use crate::netboot::bootfiles::BootFiles;
use crate::netboot::metrics::HttpMetrics;
use crate::netboot::state::Shared;

/// What the handlers share: the server state plus HTTP-only caches.
#[derive(Clone)]
pub struct AppState {
    /// The server state every protocol shares: cluster, boot decision, events, metrics registry.
    pub shared: Arc<Shared>,
    /// The HTTP metric families (`http_requests`, `http_sent_bytes`, ...), registered at start.
    pub metrics: HttpMetrics,
    /// Cache of boot loader contents served under `GET /boot/{file}`.
    pub boot_files: Arc<BootFiles>,
    /// The image manifests the artifact route has verified, kept per image (images never change).
    pub manifests: Arc<super::manifest_cache::ManifestCache>,
    /// The artifact files the artifact route has mapped, kept between requests (images never change).
    pub mappings: Arc<super::mapping_cache::MappingCache>,
    /// Node reports by outcome (`imgbuild_event_reports_total{outcome}`: accepted-address, accepted-signed, or
    /// why refused).
    pub reports: super::reply::OutcomeCounter,
    /// Machine facts requests by outcome (`imgbuild_node_facts_requests_total{outcome}`: served, plain-http,
    /// unknown-mac, bad-request).
    pub node_facts: super::reply::OutcomeCounter,
}
