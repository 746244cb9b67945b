//! `[state]`: the backend of the server's shared state. `dir` (default) needs nothing else; `etcd` needs its
//! client URLs, and TLS (`https://` with `ca`) unless every endpoint is on loopback — the published bootstrap
//! token lives there and must never cross a network in clear.

use std::net::IpAddr;
use std::path::Path;

use super::checker::{Checker, Seg, p};
use crate::config::raw;
use crate::config::state::{State, StateBackend};

/// The host of an `http(s)://host:port` URL, if it is one (brackets stripped from IPv6 literals).
fn url_host(url: &str) -> Option<(&'static str, &str)> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        ("https", r)
    } else {
        ("http", url.strip_prefix("http://")?)
    };
    let auth = rest.split('/').next()?;
    let host = if let Some(r) = auth.strip_prefix('[') {
        r.split(']').next()?
    } else {
        auth.rsplit_once(':').map_or(auth, |(h, _)| h)
    };
    let port_ok = auth
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0));
    (!host.is_empty() && port_ok).then_some((scheme, host))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Checks `[state]`; relative TLS paths are resolved against `root`.
pub(super) fn check(c: &mut Checker, s: &raw::StateRaw, root: &Path, cluster_name: &str) -> State {
    let backend = match s.backend.as_deref() {
        None | Some("dir") => StateBackend::Dir,
        Some("etcd") => StateBackend::Etcd,
        Some(other) => {
            c.error(
                &p!["state", "backend"],
                format!("{other:?} is not a state backend; expected \"dir\" (one server) or \"etcd\" (replicas)"),
            );
            StateBackend::Dir
        }
    };
    let rel = |o: &Option<String>| o.as_ref().map(|x| root.join(x));
    if backend == StateBackend::Dir {
        let given = [
            ("endpoints", !s.endpoints.is_empty()),
            ("prefix", s.prefix.is_some()),
            ("ca", s.ca.is_some()),
            ("cert", s.cert.is_some()),
            ("key", s.key.is_some()),
            ("timeout_ms", s.timeout_ms.is_some()),
            ("events_kept", s.events_kept.is_some()),
        ];
        for (k, _) in given.iter().filter(|(_, g)| *g) {
            c.error(
                &p!["state", *k],
                format!(
                    "{k} is read only with backend = \"etcd\"; remove it or set backend = \"etcd\""
                ),
            );
        }
    } else {
        if s.endpoints.is_empty() {
            c.error(
                &p!["state", "endpoints"],
                "backend = \"etcd\" needs the members' client URLs, e.g. endpoints = [\"https://10.0.0.5:2379\"]",
            );
        }
        for (i, e) in s.endpoints.iter().enumerate() {
            match url_host(e) {
                None => c.error(
                    &p!["state", "endpoints", i],
                    format!("{e:?} is not an etcd client URL; expected https://host:port (http:// only on loopback)"),
                ),
                Some(("http", h)) if !is_loopback(h) => c.error(
                    &p!["state", "endpoints", i],
                    format!(
                        "{e:?} is plain HTTP to another host: the bootstrap token would cross the network in clear; \
                         use https:// with ca (and cert, key)"
                    ),
                ),
                Some(("https", _)) if s.ca.is_none() => c.error(
                    &p!["state", "ca"],
                    format!("{e:?} is https: give ca, the PEM of the CA that signed the etcd members' certificates"),
                ),
                _ => {}
            }
        }
        if s.cert.is_some() != s.key.is_some() {
            c.error(
                &p!["state", if s.cert.is_some() { "key" } else { "cert" }],
                "cert and key are given together (the client certificate and its private key)",
            );
        }
        if s.timeout_ms.is_some_and(|t| !(100..=60_000).contains(&t)) {
            c.error(
                &p!["state", "timeout_ms"],
                "expected 100 to 60000 (milliseconds)",
            );
        }
        if s.events_kept
            .is_some_and(|n| !(100..=1_000_000).contains(&n))
        {
            c.error(
                &p!["state", "events_kept"],
                "expected 100 to 1000000 events",
            );
        }
        if let Some(pfx) = &s.prefix
            && (!pfx.starts_with('/') || !pfx.ends_with('/'))
        {
            c.error(
                &p!["state", "prefix"],
                format!("{pfx:?}: expected a key prefix that starts and ends with '/', e.g. \"/imgbuild/lab/\""),
            );
        }
    }
    State {
        backend,
        endpoints: s.endpoints.clone(),
        prefix: s
            .prefix
            .clone()
            .unwrap_or_else(|| format!("/imgbuild/{cluster_name}/")),
        ca: rel(&s.ca),
        cert: rel(&s.cert),
        key: rel(&s.key),
        timeout_ms: s.timeout_ms.unwrap_or(5000),
        events_kept: s.events_kept.unwrap_or(10_000),
        dhcp_replicas: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    fn problems(state: &str) -> Vec<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = std::fs::read_to_string(root.join("cluster.toml")).unwrap();
        let src = if state.is_empty() {
            example
        } else {
            example.replace("[state]\nbackend = \"dir\"\n", state.trim_start())
        };
        match crate::config::load_str(&root.join("cluster.toml"), &src, root) {
            Ok(_) => vec![],
            Err(crate::config::error::ConfigError::Invalid(p)) => p
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn etcd_needs_endpoints_and_tls_off_loopback() {
        assert!(problems("").is_empty());
        assert!(problems("\n[state]\nbackend = \"dir\"\n").is_empty());
        assert!(
            problems("\n[state]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n")
                .is_empty()
        );
        let p = problems("\n[state]\nbackend = \"etcd\"\n");
        assert!(p[0].starts_with("state.endpoints"), "{p:?}");
        let p = problems("\n[state]\nbackend = \"etcd\"\nendpoints = [\"http://10.0.0.5:2379\"]\n");
        assert!(p[0].contains("in clear"), "{p:?}");
        let p =
            problems("\n[state]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.5:2379\"]\n");
        assert!(p[0].starts_with("state.ca"), "{p:?}");
        assert!(
            problems(
                "\n[state]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.5:2379\"]\nca = \"ca.pem\"\n\
                 cert = \"c.pem\"\nkey = \"k.pem\"\n"
            )
            .is_empty()
        );
        let p = problems("\n[state]\nbackend = \"dir\"\nendpoints = [\"http://127.0.0.1:2379\"]\n");
        assert!(p[0].contains("only with backend"), "{p:?}");
        let p = problems("\n[state]\nbackend = \"consul\"\n");
        assert!(p[0].starts_with("state.backend"), "{p:?}");
    }
}
