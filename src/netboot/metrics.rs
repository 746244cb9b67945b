//! The TFTP and HTTP metric families. Each protocol registers its families in
//! [`crate::netboot::state::Shared::registry`] when it starts (`TftpMetrics::register`,
//! `HttpMetrics::register`) and keeps the handles; `GET /metrics` encodes the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels `route`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    /// The axum route template (e.g. `/images/{id}/{file}`), or `unmatched`.
    pub route: String,
    /// The HTTP status code, as decimal text.
    pub status: String,
}

/// Label `route`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The axum route template, or `unmatched`.
    pub route: String,
}

/// Label `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The error kind (e.g. `not_found`, `timeout`); each protocol documents its kinds on its `errors` family.
    pub kind: String,
}

/// Label `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Which limit refused (TFTP: `per_address`, `transfers`).
    pub reason: String,
}

/// TFTP counters. `file` is one of the allowlisted names (or `-` for refused names: clients choose the text).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileResult {
    /// The requested file name if allowlisted, else `-`.
    pub file: String,
    /// How the request ended: `ok`, `refused`, `failed`, ...
    pub result: String,
}

/// TFTP metrics.
#[derive(Default, Clone)]
pub struct TftpMetrics {
    /// Requests by file and result (`ok`, `refused`, `failed`, ...).
    pub requests: Family<FileResult, Counter>,
    /// Payload bytes acknowledged by clients.
    pub bytes: Counter,
    /// Transfers in progress.
    pub in_flight: Gauge,
    /// Errors by kind (`malformed`, `write_refused`, `traversal`, `absolute`, `not_allowed`, `missing`,
    /// `timeout`, `client_error`, ...).
    pub errors: Family<Kind, Counter>,
    /// DATA/OACK packets sent again after a timeout or a partial ACK.
    pub retransmits: Counter,
    /// Requests refused by a `[limits.tftp]` cap, by `reason` (`per_address`, `transfers`).
    pub refused: Family<Reason, Counter>,
    /// Transfers in flight no client has acknowledged yet (spoofed or lost requests look like this).
    pub unacknowledged: Gauge,
    /// Unacknowledged transfers ended to make room for a new request under `limits.tftp.transfers`.
    pub evicted: Counter,
    /// Transfers ended at `limits.tftp.lifetime`.
    pub lifetime_ended: Counter,
    /// Requests whose `timeout` option was above `limits.tftp.max_client_timeout` (declined; default used).
    pub timeout_clamped: Counter,
}

/// HTTP metrics.
#[derive(Default, Clone)]
pub struct HttpMetrics {
    /// Requests by route template and status code.
    pub requests: Family<RouteStatus, Counter>,
    /// Body bytes sent, by route.
    pub bytes: Family<RouteLabel, Counter>,
    /// Responses whose body is still being sent.
    pub in_flight: Gauge,
    /// Errors by kind (`not_found`, `traversal`, `bad_request`, `range_not_satisfiable`, `io`, ...).
    pub errors: Family<Kind, Counter>,
    /// Artifact files kept mapped between requests (`http::mapping_cache`, at most 64).
    pub mapped_files: Gauge,
    /// Bytes of the artifact files kept mapped (at most 1 GiB).
    pub mapped_bytes: Gauge,
}

impl TftpMetrics {
    /// Builds the TFTP families and registers them in `r` (through `Shared::register_metrics`); call once at start.
    pub fn register(r: &mut Registry) -> Self {
        let tftp = TftpMetrics::default();
        r.register(
            "tftp_requests",
            "TFTP read requests by file and result",
            tftp.requests.clone(),
        );
        r.register(
            "tftp_sent_bytes",
            "TFTP payload bytes acknowledged by clients",
            tftp.bytes.clone(),
        );
        r.register(
            "tftp_transfers_in_flight",
            "TFTP transfers in progress",
            tftp.in_flight.clone(),
        );
        r.register("tftp_errors", "TFTP errors by kind", tftp.errors.clone());
        r.register(
            "tftp_refused",
            "TFTP requests refused by a [limits.tftp] cap, by reason",
            tftp.refused.clone(),
        );
        r.register(
            "tftp_transfers_unacknowledged",
            "TFTP transfers in flight that no client has acknowledged yet",
            tftp.unacknowledged.clone(),
        );
        r.register(
            "tftp_evicted",
            "unacknowledged TFTP transfers ended to make room under limits.tftp.transfers",
            tftp.evicted.clone(),
        );
        r.register(
            "tftp_lifetime_ended",
            "TFTP transfers ended at limits.tftp.lifetime",
            tftp.lifetime_ended.clone(),
        );
        r.register(
            "tftp_timeout_clamped",
            "TFTP requests whose timeout option exceeded limits.tftp.max_client_timeout",
            tftp.timeout_clamped.clone(),
        );
        r.register(
            "tftp_retransmits",
            "TFTP packets sent again after a timeout or partial ACK",
            tftp.retransmits.clone(),
        );
        tftp
    }

    /// Counts one TFTP error of `kind` in `tftp_errors`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&Kind { kind: kind.into() }).inc();
    }

    /// Counts one TFTP read request for `file` ending in `result` in `tftp_requests`.
    pub fn request(&self, file: &str, result: &str) {
        self.requests
            .get_or_create(&FileResult {
                file: file.into(),
                result: result.into(),
            })
            .inc();
    }
}

impl HttpMetrics {
    /// Builds the HTTP families and registers them in `r` (through `Shared::register_metrics`); call once at start.
    pub fn register(r: &mut Registry) -> Self {
        let http = HttpMetrics::default();
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            http.requests.clone(),
        );
        r.register(
            "http_sent_bytes",
            "HTTP body bytes sent by route",
            http.bytes.clone(),
        );
        r.register(
            "http_transfers_in_flight",
            "HTTP responses whose body is being sent",
            http.in_flight.clone(),
        );
        r.register("http_errors", "HTTP errors by kind", http.errors.clone());
        r.register(
            "http_mapped_files",
            "Artifact files kept mapped between requests (at most 64)",
            http.mapped_files.clone(),
        );
        r.register(
            "http_mapped_bytes",
            "Bytes of the artifact files kept mapped between requests (at most 1 GiB)",
            http.mapped_bytes.clone(),
        );
        http
    }

    /// Counts one HTTP error of `kind` in `http_errors`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&Kind { kind: kind.into() }).inc();
    }

    /// Counts one HTTP response with `status` on `route` (a route template) in `http_requests`.
    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RouteStatus {
                route: route.into(),
                status: status.to_string(),
            })
            .inc();
    }

    /// Adds `n` body bytes sent on `route` to `http_sent_bytes`.
    pub fn bytes(&self, route: &str, n: u64) {
        self.bytes
            .get_or_create(&RouteLabel {
                route: route.into(),
            })
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_registered_and_encoded() {
        let mut reg = Registry::with_prefix("imgbuild");
        let t = TftpMetrics::register(&mut reg);
        let h = HttpMetrics::register(&mut reg);
        t.request("snponly.efi", "ok");
        h.request("/images/{id}/{file}", 206);
        h.error("traversal");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(r#"imgbuild_tftp_requests_total{file="snponly.efi",result="ok"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"imgbuild_http_requests_total{route="/images/{id}/{file}",status="206"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"imgbuild_http_errors_total{kind="traversal"} 1"#),
            "{out}"
        );
        assert!(out.contains("imgbuild_tftp_transfers_in_flight 0"), "{out}");
    }
}
