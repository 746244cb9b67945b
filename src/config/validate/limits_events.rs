//! `[limits.events]`: the bounds of the server's recorded state (event log size, rotation, fsync batching,
//! history per node, status rows, warning rate), each with a safe default and a range it must lie in.

use super::checker::{Checker, Seg, p};
use crate::config::limits::EventLimits;
use crate::config::raw;

/// One integer limit: its key, value as written, valid range and what it bounds (for the message).
fn int(c: &mut Checker, key: &str, v: Option<i64>, default: u64, range: (u64, u64)) -> Option<u64> {
    let Some(v) = v else {
        return Some(default);
    };
    match u64::try_from(v) {
        Ok(n) if (range.0..=range.1).contains(&n) => Some(n),
        _ => {
            c.error(
                &p!["limits", "events", key],
                format!(
                    "{v} is out of range; expected {} to {} (default {default})",
                    range.0, range.1
                ),
            );
            None
        }
    }
}

/// Checks `[limits.events]`.
pub(super) fn check(c: &mut Checker, l: &raw::EventLimitsRaw) -> Option<EventLimits> {
    let d = EventLimits::default();
    let file_bytes = int(c, "file_bytes", l.file_bytes, d.file_bytes, (4096, 1 << 30));
    let files = int(c, "files", l.files, d.files.into(), (1, 64));
    let fsync_interval_ms = match &l.fsync_interval {
        None => Some(d.fsync_interval_ms),
        Some(t) => match humantime::parse_duration(t) {
            Ok(dur) if (1..=10_000).contains(&dur.as_millis()) => Some(dur.as_millis() as u64),
            _ => {
                c.error(
                    &p!["limits", "events", "fsync_interval"],
                    format!(
                        "{t:?} is not an fsync interval; expected a duration from 1ms to 10s such as \"200ms\" \
                         (an event the server observed may be lost in a power cut for at most this long)"
                    ),
                );
                None
            }
        },
    };
    let fsync_batch = int(
        c,
        "fsync_batch",
        l.fsync_batch,
        d.fsync_batch.into(),
        (1, 65_536),
    );
    let boots_per_node = int(
        c,
        "boots_per_node",
        l.boots_per_node,
        d.boots_per_node.into(),
        (1, 1000),
    );
    let status_rows = int(
        c,
        "status_rows",
        l.status_rows,
        d.status_rows.into(),
        (1, 100_000),
    );
    let warnings_per_minute = int(
        c,
        "warnings_per_minute",
        l.warnings_per_minute,
        d.warnings_per_minute.into(),
        (1, 10_000),
    );
    Some(EventLimits {
        file_bytes: file_bytes?,
        files: files? as u32,
        fsync_interval_ms: fsync_interval_ms?,
        fsync_batch: fsync_batch? as u32,
        boots_per_node: boots_per_node? as u32,
        status_rows: status_rows? as u32,
        warnings_per_minute: warnings_per_minute? as u32,
    })
}
