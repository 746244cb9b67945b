//! `/metrics`: per-stage boot durations as Prometheus histograms, computed from the event log at each scrape.
//!
//! `imgbuild_boot_stage_duration_seconds{stage="kernel"}` observes, for every boot of every node, the time from
//! the previous reached stage to this one; `imgbuild_boot_to_stage_seconds{stage=...}` the time from the boot's
//! first event. Both come from the persisted log, so a restarted server exports the same numbers.
//!
//! The same collector exports the event log's bounds, one metric per `[limits.events]` limit and what it
//! caught: `imgbuild_event_log_bytes` against `imgbuild_event_log_limit{limit="…"}`, writes, fsyncs, rotations,
//! refusals, moved-aside lines and files, dropped events, status rows hidden, suppressed warnings.
//!
//! `imgbuild_node_secure_boot{mac=...}` is 1 when a node reported Secure Boot enforced in its current boot.

use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::event::Event;
use super::log::{EventStats, Events};
use super::node::NodeStatus;
use crate::config::EventLimits;
use crate::config::MacAddr;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Encodes the event log's counters, gauges and limits.
fn encode_log(
    encoder: &mut DescriptorEncoder,
    s: &EventStats,
    l: &EventLimits,
    inventory: usize,
) -> Result<(), std::fmt::Error> {
    let counters: [(&str, &str, u64); 6] = [
        (
            "event_log_written",
            "Events written to state/events.jsonl",
            s.written,
        ),
        (
            "event_log_fsyncs",
            "fsyncs of the event log (events written per fsync is the batch)",
            s.fsyncs,
        ),
        (
            "event_log_rotations",
            "Rotations of events.jsonl at [limits.events] file_bytes",
            s.rotations,
        ),
        (
            "event_log_append_errors",
            "Event writes that failed (full disk) and were cut back off",
            s.append_errors,
        ),
        (
            "events_dropped",
            "Events dropped from memory: boots beyond [limits.events] boots_per_node, files rotated out",
            s.dropped,
        ),
        (
            "warn_logs_suppressed",
            "Warnings not logged because of [limits.events] warnings_per_minute",
            s.warnings_suppressed,
        ),
    ];
    for (name, help, v) in counters {
        ConstCounter::new(v).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    let mut refused = encoder.encode_descriptor(
        "events_refused",
        "Events not recorded, by reason (not_in_inventory: the MAC is not in cluster.toml's inventory)",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(s.refused_not_in_inventory).encode(refused.encode_family(
        &ReasonLabel {
            reason: "not_in_inventory".into(),
        },
    )?)?;
    let mut aside = encoder.encode_descriptor(
        "event_log_quarantined",
        "Corrupt event log lines and files moved aside at load",
        None,
        MetricType::Counter,
    )?;
    for (kind, v) in [("line", s.quarantined_lines), ("file", s.quarantined_files)] {
        ConstCounter::new(v).encode(aside.encode_family(&ReasonLabel {
            reason: kind.into(),
        })?)?;
    }
    let rows = inventory as u64 + s.unknown_macs;
    let hidden = rows.saturating_sub(u64::from(l.status_rows).max(inventory as u64));
    let gauges: [(&str, &str, u64); 5] = [
        (
            "event_log_bytes",
            "Bytes over every kept event log file",
            s.bytes,
        ),
        (
            "event_log_unsynced",
            "Events written but not yet fsynced",
            s.unsynced,
        ),
        ("events_kept", "Events in the history in memory", s.kept),
        (
            "status_rows",
            "Rows of the status table",
            rows.min(u64::from(l.status_rows).max(inventory as u64)),
        ),
        (
            "status_rows_hidden",
            "Rows left out of the status table by [limits.events] status_rows",
            hidden,
        ),
    ];
    for (name, help, v) in gauges {
        ConstGauge::new(v as i64).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Gauge,
        )?)?;
    }
    let mut limits = encoder.encode_descriptor(
        "event_log_limit",
        "The [limits.events] values the server runs with (fsync_interval in milliseconds)",
        None,
        MetricType::Gauge,
    )?;
    for (name, v) in [
        ("file_bytes", l.file_bytes),
        ("files", l.files.into()),
        ("max_bytes", l.file_bytes * u64::from(l.files)),
        ("fsync_interval_ms", l.fsync_interval_ms),
        ("fsync_batch", l.fsync_batch.into()),
        ("boots_per_node", l.boots_per_node.into()),
        ("status_rows", l.status_rows.into()),
        ("warnings_per_minute", l.warnings_per_minute.into()),
    ] {
        ConstGauge::new(v as i64)
            .encode(limits.encode_family(&LimitLabel { limit: name.into() })?)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: String,
}

fn family() -> Family<StageLabel, Histogram, fn() -> Histogram> {
    // 0.05 s .. ~430 s
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.05, 2.0, 14)))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    mac: String,
}

/// Fills the two histogram families from a list of events, and `secure_boot` with each node's last report.
fn observe(
    events: &[Event],
    step: &Family<StageLabel, Histogram, fn() -> Histogram>,
    total: &Family<StageLabel, Histogram, fn() -> Histogram>,
    secure_boot: &Family<NodeLabel, Gauge>,
) {
    let mut nodes: std::collections::HashMap<MacAddr, NodeStatus> = Default::default();
    for ev in events {
        let n = nodes
            .entry(ev.mac)
            .or_insert_with(|| NodeStatus::new(ev.mac, None));
        if let Some(st) = n.apply(ev) {
            let label = StageLabel {
                stage: st.stage.clone(),
            };
            step.get_or_create(&label)
                .observe(st.duration_ms as f64 / 1000.0);
            let start = n.started_ms.unwrap_or(st.at_ms);
            total
                .get_or_create(&label)
                .observe(st.at_ms.saturating_sub(start) as f64 / 1000.0);
        }
    }
    for (mac, n) in &nodes {
        if let Some(sb) = n.secure_boot {
            secure_boot
                .get_or_create(&NodeLabel {
                    mac: mac.to_string(),
                })
                .set(i64::from(sb));
        }
    }
}

/// A [`Collector`] over an event source. Holds the source weakly so it never keeps a server alive.
pub struct StageDurations<T: Send + Sync + 'static> {
    source: Weak<T>,
    events: fn(&T) -> &Events,
}

impl<T: Send + Sync + 'static> std::fmt::Debug for StageDurations<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StageDurations")
    }
}

impl<T: Send + Sync + 'static> Collector for StageDurations<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(src) = self.source.upgrade() else {
            return Ok(());
        };
        let log = (self.events)(&src);
        let events = log.snapshot();
        encode_log(
            &mut encoder,
            &log.stats(),
            log.limits(),
            log.inventory_len(),
        )?;
        let (step, total) = (family(), family());
        let secure_boot = Family::<NodeLabel, Gauge>::default();
        observe(&events, &step, &total, &secure_boot);
        step.encode(encoder.encode_descriptor(
            "boot_stage_duration_seconds",
            "Time from the previous boot stage to this one, per stage, over every boot of every node",
            None,
            MetricType::Histogram,
        )?)?;
        total.encode(encoder.encode_descriptor(
            "boot_to_stage_seconds",
            "Time from a boot's first event (DHCP) to this stage, per stage",
            None,
            MetricType::Histogram,
        )?)?;
        secure_boot.encode(encoder.encode_descriptor(
            "node_secure_boot",
            "1 when the node's firmware enforced UEFI Secure Boot in its current boot, 0 when not (per MAC, once reported)",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// Registers the stage histograms into `registry`; `events` picks the log out of `source` at each scrape.
pub fn register<T: Send + Sync + 'static>(
    registry: &mut Registry,
    source: &Arc<T>,
    events: fn(&T) -> &Events,
) {
    registry.register_collector(Box::new(StageDurations {
        source: Arc::downgrade(source),
        events,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Source;

    #[test]
    fn histograms_count_each_reached_stage() {
        let events = Arc::new(Events::in_memory());
        let mac: MacAddr = "52:54:00:77:00:11".parse().unwrap();
        for (at, stage) in [
            (0, "dhcp-offer"),
            (1500, "kernel"),
            (1600, "kernel"),
            (9000, "joined"),
        ] {
            events.push(Event {
                at_ms: at,
                mac,
                stage: stage.into(),
                detail: String::new(),
                source: Source::Server,
            });
        }
        let mut reg = Registry::with_prefix("imgbuild");
        register(&mut reg, &events, |e| e);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("imgbuild_boot_stage_duration_seconds_count{stage=\"kernel\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("imgbuild_boot_stage_duration_seconds_sum{stage=\"joined\"} 7.5"),
            "{out}"
        );
        assert!(
            out.contains("imgbuild_boot_to_stage_seconds_sum{stage=\"joined\"} 9"),
            "{out}"
        );
    }
}
