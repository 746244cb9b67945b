//! `[store]`: the backend (`dir` or `s3`), the S3 endpoint, bucket, region, cache and credentials file — and the
//! refusal of credentials written into `cluster.toml` itself (they belong in the environment or a file).

use std::path::Path;

use super::checker::{Checker, Seg, p};
use crate::config::model::Paths;
use crate::config::raw;
use crate::config::store::{S3Store, Store};

/// The keys `[store]` takes.
const KEYS: &str = "backend, endpoint, bucket, region, cache, credentials_file, ca";

/// The S3 keys, refused with `backend = "dir"`.
fn s3_keys(s: &raw::StoreRaw) -> Vec<(&'static str, bool)> {
    vec![
        ("endpoint", s.endpoint.is_some()),
        ("bucket", s.bucket.is_some()),
        ("region", s.region.is_some()),
        ("cache", s.cache.is_some()),
        ("credentials_file", s.credentials_file.is_some()),
        ("ca", s.ca.is_some()),
    ]
}

/// Whether a key names a credential (an access key, a secret, a token, a password).
fn is_credential(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "access_key",
        "key_id",
        "token",
        "password",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// Checks `[store]`; relative paths are resolved against `root`, the cache defaults to `<paths.cache>/store`.
pub(super) fn check(
    c: &mut Checker,
    s: &raw::StoreRaw,
    root: &Path,
    paths: &Paths,
) -> Option<Store> {
    let mut ok = true;
    for key in s.other.keys() {
        ok = false;
        if is_credential(key) {
            c.error(
                &p!["store", key.as_str()],
                format!(
                    "{key} is a credential and credentials never go in cluster.toml (it is copied, versioned and \
                     read by every tool): remove it and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the \
                     environment of imgbuild, or name a file readable only by its user with \
                     `credentials_file = \"/etc/imgbuild/s3-credentials\"`"
                ),
            );
        } else {
            c.error(
                &p!["store", key.as_str()],
                format!("unknown key {key:?} in [store]; valid keys: {KEYS}"),
            );
        }
    }
    let backend = s.backend.as_deref().unwrap_or("dir");
    match backend {
        "dir" => {
            for (key, given) in s3_keys(s) {
                if given {
                    c.error(
                        &p!["store", key],
                        format!(
                            "{key} is for backend = \"s3\"; set `backend = \"s3\"` or drop {key}"
                        ),
                    );
                    ok = false;
                }
            }
            ok.then_some(Store::Dir)
        }
        "s3" => {
            let endpoint = s.endpoint.as_deref().and_then(|e| endpoint(c, e));
            if s.endpoint.is_none() {
                c.error(
                    &p!["store", "backend"],
                    "backend = \"s3\" needs `endpoint`, the S3 URL (e.g. \"https://s3.example.net\")",
                );
            }
            let bucket = match s.bucket.as_deref() {
                None => {
                    c.error(
                        &p!["store", "backend"],
                        "backend = \"s3\" needs `bucket`, the bucket images are pushed to",
                    );
                    None
                }
                Some(b) if is_bucket(b) => Some(b.to_string()),
                Some(b) => {
                    c.error(
                        &p!["store", "bucket"],
                        format!(
                            "{b:?} is not a bucket name: 3 to 63 lowercase letters, digits, dots and hyphens, \
                             starting and ending with a letter or digit"
                        ),
                    );
                    None
                }
            };
            let region = s.region.clone().unwrap_or_else(|| "us-east-1".into());
            if region.is_empty() || region.contains(char::is_whitespace) {
                c.error(
                    &p!["store", "region"],
                    format!("{region:?} is not a region; e.g. \"us-east-1\" (Garage's default is \"garage\")"),
                );
                ok = false;
            }
            let cache = s
                .cache
                .as_deref()
                .map(|d| root.join(d))
                .unwrap_or_else(|| paths.cache.join("store"));
            let credentials_file = s.credentials_file.as_deref().map(|f| root.join(f));
            let ca = s.ca.as_deref().map(|f| root.join(f));
            if let Some(f) = &ca {
                let pem = std::fs::read_to_string(f).unwrap_or_default();
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    c.error(
                        &p!["store", "ca"],
                        format!(
                            "{} is not a readable PEM certificate: name the CA certificate that signed the store's                              (or its TLS proxy's) certificate, or drop `ca` to use the system's roots",
                            f.display()
                        ),
                    );
                    ok = false;
                }
                if endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"))
                {
                    c.error(
                        &p!["store", "ca"],
                        "`ca` is for an https:// endpoint; this one is plain http://",
                    );
                    ok = false;
                }
            }
            Some(Store::S3(S3Store {
                endpoint: endpoint?,
                bucket: bucket?,
                region,
                cache,
                credentials_file,
                ca,
            }))
            .filter(|_| ok)
        }
        other => {
            c.one_of::<()>(&p!["store", "backend"], other, &[("dir", ()), ("s3", ())]);
            None
        }
    }
}

/// The endpoint without a trailing slash, if it is an `https://` URL, or an `http://` one on loopback.
fn endpoint(c: &mut Checker, e: &str) -> Option<String> {
    let path = p!["store", "endpoint"];
    let (scheme, rest) = match e.split_once("://") {
        Some((s @ ("https" | "http"), rest)) => (s, rest.trim_end_matches('/')),
        _ => {
            c.error(
                &path,
                format!(
                    "{e:?} is not an S3 endpoint; expected a URL such as \"https://s3.example.net\""
                ),
            );
            return None;
        }
    };
    let host = rest.split('/').next().unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if name.is_empty() || host.contains('@') {
        c.error(
            &path,
            format!("{e:?} has no host (and credentials never go in the URL); expected \"https://host[:port]\""),
        );
        return None;
    }
    let loopback = name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    if scheme == "http" && !loopback {
        c.error(
            &path,
            format!(
                "{e:?} is plain HTTP to another host: the requests carry the access key id and the images in clear; \
                 use https:// (a TLS proxy in front of the store), or plain HTTP only to a store on this host's loopback"
            ),
        );
        return None;
    }
    Some(format!("{scheme}://{rest}"))
}

/// S3 bucket naming: 3 to 63 of `[a-z0-9.-]`, starting and ending with a letter or digit.
fn is_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == b'.' || x == b'-')
        && b.bytes().next().is_some_and(|x| x.is_ascii_alphanumeric())
        && b.bytes().last().is_some_and(|x| x.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert!(is_bucket("imgbuild-images"));
        assert!(!is_bucket("Images"));
        assert!(!is_bucket("ab"));
        assert!(!is_bucket("-images"));
    }

    #[test]
    fn credential_keys() {
        for k in [
            "access_key_id",
            "secret_access_key",
            "aws_session_token",
            "password",
            "AWS_ACCESS_KEY_ID",
        ] {
            assert!(is_credential(k), "{k}");
        }
        assert!(!is_credential("bucket"));
    }
}
