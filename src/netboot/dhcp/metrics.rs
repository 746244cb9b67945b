//! The DHCP server's Prometheus metrics (names under the `imgbuild_dhcp_` prefix).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::core::Ignored;
use super::packet::Malformed;

/// One label, e.g. `("reason", "truncated")`.
pub type Label = [(&'static str, &'static str); 1];

/// Counters of the DHCP loop. Cloning shares the same counters.
#[derive(Clone)]
pub struct DhcpMetrics {
    /// Datagrams dropped as malformed, by `reason` ([`Malformed::as_str`]).
    pub dropped: Family<Label, Counter>,
    /// Valid requests, by DHCP message `type`.
    pub requests: Family<Label, Counter>,
    /// Replies sent, by `type` (offer, ack, nak).
    pub replies: Family<Label, Counter>,
    /// Valid requests that got no answer, by `reason` ([`Ignored::as_str`]).
    pub ignored: Family<Label, Counter>,
    /// Replies not sent because the lease journal could not be written.
    pub journal_errors: Counter,
    /// Leases not expired.
    pub leases: Gauge,
    /// Addresses kept out of use by DECLINEs (capped by `limits.dhcp.declined`).
    pub declined: Gauge,
    /// Seconds each lease journal write + fdatasync took (ACKs wait for it).
    pub journal_sync_seconds: Histogram,
    /// Unreadable lines skipped when the lease journal was loaded at start.
    pub journal_skipped_lines: Gauge,
    /// Seconds the journal thread spent on each step of a background compaction (taking the snapshot; swapping
    /// in the compacted file): ACKs wait for these, not for the rewrite.
    pub journal_compaction_seconds: Histogram,
    /// Compactions that failed (the journal stayed in use; retried 10 000 lines later).
    pub journal_compaction_failures: Counter,
}

impl Default for DhcpMetrics {
    fn default() -> Self {
        DhcpMetrics {
            dropped: Family::default(),
            requests: Family::default(),
            replies: Family::default(),
            ignored: Family::default(),
            journal_errors: Counter::default(),
            leases: Gauge::default(),
            declined: Gauge::default(),
            // 0.1 ms .. ~6.5 s
            journal_sync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            journal_skipped_lines: Gauge::default(),
            journal_compaction_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            journal_compaction_failures: Counter::default(),
        }
    }
}

impl DhcpMetrics {
    /// Registers every metric (under `dhcp_` inside the registry's prefix).
    pub fn register(&self, reg: &mut Registry) {
        let sub = reg.sub_registry_with_prefix("dhcp");
        sub.register(
            "dropped",
            "Malformed datagrams dropped, by reason",
            self.dropped.clone(),
        );
        sub.register(
            "requests",
            "Valid DHCP requests, by message type",
            self.requests.clone(),
        );
        sub.register(
            "replies",
            "DHCP replies sent, by message type",
            self.replies.clone(),
        );
        sub.register(
            "ignored",
            "Valid requests left unanswered, by reason",
            self.ignored.clone(),
        );
        sub.register(
            "journal_errors",
            "Replies withheld because the lease journal could not be synced",
            self.journal_errors.clone(),
        );
        sub.register("leases", "Leases not expired", self.leases.clone());
        sub.register(
            "declined_addresses",
            "Addresses kept out of use after DECLINEs (limits.dhcp.declined caps them)",
            self.declined.clone(),
        );
        sub.register(
            "journal_sync_seconds",
            "Time of each lease journal write and fdatasync (ACKs wait for it)",
            self.journal_sync_seconds.clone(),
        );
        sub.register(
            "journal_skipped_lines",
            "Unreadable lines (not JSON, not a record, not UTF-8) skipped when the lease journal was loaded",
            self.journal_skipped_lines.clone(),
        );
        sub.register(
            "journal_compaction_seconds",
            "Time the journal thread spent on each step of a background compaction (snapshot, swap); ACKs wait for it",
            self.journal_compaction_seconds.clone(),
        );
        sub.register(
            "journal_compaction_failures",
            "Lease journal compactions that failed (the journal stayed in use)",
            self.journal_compaction_failures.clone(),
        );
    }

    /// Counts a malformed datagram dropped before any decision (`dhcp_dropped_total{reason}`).
    pub fn drop(&self, why: Malformed) {
        self.dropped
            .get_or_create(&[("reason", why.as_str())])
            .inc();
    }

    /// Counts a valid request that got no reply (`dhcp_ignored_total{reason}`).
    pub fn ignore(&self, why: Ignored) {
        self.ignored
            .get_or_create(&[("reason", why.as_str())])
            .inc();
    }

    /// Total malformed datagrams dropped.
    pub fn dropped_total(&self) -> u64 {
        Malformed::ALL
            .iter()
            .map(|m| self.dropped.get_or_create(&[("reason", m.as_str())]).get())
            .sum()
    }
}

/// The metric label of a message type.
pub fn message_type_label(t: dhcproto::v4::MessageType) -> &'static str {
    use dhcproto::v4::MessageType as T;
    match t {
        T::Discover => "discover",
        T::Offer => "offer",
        T::Request => "request",
        T::Decline => "decline",
        T::Ack => "ack",
        T::Nak => "nak",
        T::Release => "release",
        T::Inform => "inform",
        _ => "other",
    }
}
