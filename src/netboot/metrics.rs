//! The server's Prometheus registry: every protocol registers its own metrics struct into it, and the HTTP
//! server exposes [`Metrics::encode`] at `GET /metrics`.

use std::sync::Mutex;

use prometheus_client::registry::Registry;

/// One registry for the whole server (a field of [`super::server::Shared`]).
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            registry: Mutex::new(Registry::with_prefix("imgbuild")),
        }
    }
}

impl Metrics {
    /// Lets a protocol register its metrics (`registry.register(name, help, metric.clone())`).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut reg)
    }

    /// The OpenMetrics text of every registered metric, for `GET /metrics`.
    pub fn encode(&self) -> String {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}
