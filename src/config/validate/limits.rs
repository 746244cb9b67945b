//! `[limits]`: resource caps of the server's listeners, one sub-table per protocol (`[limits.tftp]`,
//! `[limits.dhcp]`). Every key has a safe default; a value given must be in its range.

use std::time::Duration;

use super::checker::{Checker, Seg, p};
use crate::config::limits::{DhcpLimits, Limits, TftpLimits};
use crate::config::raw;

/// Checks `[limits]`; a key left out keeps its default. A bad value is reported (and the default returned:
/// a file with problems never becomes a `Cluster`).
pub(super) fn check(c: &mut Checker, l: &raw::LimitsRaw) -> Limits {
    let (t, d) = (TftpLimits::default(), DhcpLimits::default());
    let transfers = count(
        c,
        &p!["limits", "tftp", "transfers"],
        l.tftp.transfers,
        1,
        65_536,
    );
    let per_address = count(
        c,
        &p!["limits", "tftp", "per_address"],
        l.tftp.per_address,
        1,
        65_536,
    );
    if let (Some(all), Some(one)) = (transfers, per_address)
        && one > all
    {
        c.error(
            &p!["limits", "tftp", "per_address"],
            format!("{one} transfers per address is more than the {all} allowed in all (limits.tftp.transfers); lower it or raise transfers"),
        );
    }
    let tftp = TftpLimits {
        transfers: transfers.unwrap_or(t.transfers),
        per_address: per_address.unwrap_or(t.per_address),
        max_client_timeout: duration(
            c,
            &p!["limits", "tftp", "max_client_timeout"],
            &l.tftp.max_client_timeout,
            (1, 255),
        )
        .unwrap_or(t.max_client_timeout),
        lifetime: duration(
            c,
            &p!["limits", "tftp", "lifetime"],
            &l.tftp.lifetime,
            (10, 24 * 3600),
        )
        .unwrap_or(t.lifetime),
    };
    let dhcp = DhcpLimits {
        declined: count(
            c,
            &p!["limits", "dhcp", "declined"],
            l.dhcp.declined,
            0,
            1 << 20,
        )
        .unwrap_or(d.declined),
        decline_hold_secs: duration(
            c,
            &p!["limits", "dhcp", "decline_hold"],
            &l.dhcp.decline_hold,
            (10, 7 * 24 * 3600),
        )
        .map_or(d.decline_hold_secs, |d| d.as_secs()),
    };
    Limits {
        tftp,
        dhcp,
        ..Limits::default()
    }
}

/// An optional integer in `lo..=hi`.
fn count(c: &mut Checker, path: &[Seg], v: Option<i64>, lo: i64, hi: i64) -> Option<usize> {
    let v = v?;
    if (lo..=hi).contains(&v) {
        Some(v as usize)
    } else {
        c.error(path, format!("{v} is out of range; expected {lo} to {hi}"));
        None
    }
}

/// An optional duration such as `"5s"` or `"5m"`, whole seconds in `lo..=hi`.
fn duration(
    c: &mut Checker,
    path: &[Seg],
    v: &Option<String>,
    (lo, hi): (u64, u64),
) -> Option<Duration> {
    let text = v.as_ref()?;
    match humantime::parse_duration(text) {
        Ok(d) if (lo..=hi).contains(&d.as_secs()) && d.subsec_nanos() == 0 => Some(d),
        _ => {
            c.error(
                path,
                format!(
                    "{text:?} is not valid here; expected a whole number of seconds from {} to {} such as \"{}\"",
                    humantime::format_duration(Duration::from_secs(lo)),
                    humantime::format_duration(Duration::from_secs(hi)),
                    humantime::format_duration(Duration::from_secs(lo.max(5).min(hi))),
                ),
            );
            None
        }
    }
}
