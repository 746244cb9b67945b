//! `[limits.http]`: the HTTP listeners' caps and timeouts. A key left out keeps its default, a key given must be
//! in range (a cap of 0 or a timeout of 0 would refuse everything, or nothing).

use std::time::Duration;

use super::checker::{Checker, Seg, p};
use crate::config::limits::HttpLimits;
use crate::config::raw;

/// An integer count in `min..=max`, or the default.
fn count(c: &mut Checker, path: &[Seg], v: Option<i64>, min: i64, max: i64, default: u64) -> u64 {
    match v {
        None => default,
        Some(n) if (min..=max).contains(&n) => n as u64,
        Some(n) => {
            c.error(
                path,
                format!("{n} is out of range; expected {min} to {max} (default {default})"),
            );
            default
        }
    }
}

/// A duration such as `"10s"` in `min..=max`, or the default.
fn duration(
    c: &mut Checker,
    path: &[Seg],
    v: &Option<String>,
    min: Duration,
    max: Duration,
    default: Duration,
) -> Duration {
    let Some(text) = v else { return default };
    match humantime::parse_duration(text) {
        Ok(d) if d >= min && d <= max => d,
        _ => {
            c.error(
                path,
                format!(
                    "{text:?} is not a duration from {} to {}; write one such as \"10s\" or \"2m\" (default {})",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(default)
                ),
            );
            default
        }
    }
}

/// Checks `[limits.http]`; a problem is reported and the default kept in its place (the cluster is refused anyway).
pub(super) fn check(c: &mut Checker, h: &raw::HttpLimitsRaw) -> HttpLimits {
    let d = HttpLimits::default();
    let k = |key: &'static str| p!["limits", "http", key];
    let secs = Duration::from_secs;
    let max_connections = count(
        c,
        &k("max_connections"),
        h.max_connections,
        1,
        1_000_000,
        d.max_connections.into(),
    ) as u32;
    let max_connections_per_address = count(
        c,
        &k("max_connections_per_address"),
        h.max_connections_per_address,
        1,
        1_000_000,
        d.max_connections_per_address.into(),
    ) as u32;
    if max_connections_per_address > max_connections {
        c.error(
            &k("max_connections_per_address"),
            format!(
                "{max_connections_per_address} is more than max_connections ({max_connections}); \
                 lower it or raise max_connections"
            ),
        );
    }
    HttpLimits {
        max_connections,
        max_connections_per_address,
        header_timeout: duration(
            c,
            &k("header_timeout"),
            &h.header_timeout,
            secs(1),
            secs(600),
            d.header_timeout,
        ),
        idle_timeout: duration(
            c,
            &k("idle_timeout"),
            &h.idle_timeout,
            secs(1),
            secs(3600),
            d.idle_timeout,
        ),
        body_timeout: duration(
            c,
            &k("body_timeout"),
            &h.body_timeout,
            secs(1),
            secs(600),
            d.body_timeout,
        ),
        write_timeout: duration(
            c,
            &k("write_timeout"),
            &h.write_timeout,
            secs(1),
            secs(3600),
            d.write_timeout,
        ),
        max_body_bytes: count(
            c,
            &k("max_body_bytes"),
            h.max_body_bytes,
            1024,
            1 << 30,
            d.max_body_bytes,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn load(extra: &str) -> Result<crate::config::Cluster, crate::config::ConfigError> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(root.join("cluster.toml")).unwrap();
        // The example's own [limits.http] table, replaced by `extra`.
        let start = src
            .find("[limits.http]")
            .expect("the example has [limits.http]");
        let end = src[start + 1..]
            .find("\n[")
            .map_or(src.len(), |e| start + 1 + e);
        let src = format!("{}{}{}", &src[..start], extra, &src[end..]);
        crate::config::load_str(&root.join("cluster.toml"), &src, root)
    }

    #[test]
    fn http_limits_default_parse_and_refuse_out_of_range() {
        let c = crate::config::example();
        assert_eq!(c.limits.http.max_connections_per_address, 64);
        let c = load("\n[limits.http]\nidle_timeout = \"5s\"\nmax_connections = 10\nmax_connections_per_address = 2\n")
            .unwrap();
        assert_eq!(
            c.limits.http.idle_timeout,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(c.limits.http.max_connections, 10);
        let e = load("\n[limits.http]\nidle_timeout = \"0s\"\nmax_connections = 4\nmax_connections_per_address = 8\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.http.idle_timeout"), "{e}");
        assert!(e.contains("is not a duration from 1s to 1h"), "{e}");
        assert!(e.contains("limits.http.max_connections_per_address"), "{e}");
        assert!(e.contains("lower it or raise max_connections"), "{e}");
        let e = load("\n[limits.http]\nmax_conections = 4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
    }
}
