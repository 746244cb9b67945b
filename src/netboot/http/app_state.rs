//! The state the handlers of this module's own routes share ([`AppState`]): the server state plus HTTP-only
//! caches. Its own file so the handlers (`script`, `images`, `events`) import it without importing `mod.rs`,
//! which imports them.

use std::sync::Arc;

use crate::netboot::bootfiles::BootFiles;
use crate::netboot::metrics::HttpMetrics;
use crate::netboot::pinwatch::PinWatch;
use crate::netboot::state::Shared;

/// What the handlers share: the server state plus HTTP-only caches.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub metrics: HttpMetrics,
    pub boot_files: Arc<BootFiles>,
    pub pins: Arc<PinWatch>,
}
