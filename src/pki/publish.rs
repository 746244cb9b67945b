//! Token publication: the rules for `POST /api/token`, by which the first master publishes the bootstrap token
//! it renewed (`kubeadm token create`), as pure functions; the route in `netboot::http::token` only does I/O.
//!
//! Form `mac`, `token`, `expires`, `ts`, `sig`; `sig` = hex HMAC-SHA256 keyed with the publish key's hex text
//! (`secrets/publish.key`, in the first master's bundle only) over [`publish_message`]. Accepted only from the
//! first master's MAC and address ([`publisher`]), with a valid signature, a timestamp within
//! [`PUBLISH_SKEW_SECS`] of the server's clock, a well-formed token and an expiry in the future
//! ([`check_publication`]), and newer than the last accepted one, checked under the enrollment store's lock (no
//! replay: [`check_newer`]).

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::{Cluster, MacAddr, Machine};

/// How far a token publication's timestamp may be from the server's clock.
pub const PUBLISH_SKEW_SECS: u64 = 300;

/// The text a token publication signs.
pub fn publish_message(mac: MacAddr, token: &str, expires: u64, ts: u64) -> String {
    format!("imgbuild-token-v1\n{mac}\n{token}\n{expires}\n{ts}\n")
}

/// Hex HMAC-SHA256 of `msg` keyed with the publish key's text.
pub fn sign(publish_key: &str, msg: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(publish_key.as_bytes()).expect("HMAC takes any key");
    m.update(msg.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

fn verify(publish_key: &str, msg: &str, sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex) else {
        return false;
    };
    let mut m = Hmac::<Sha256>::new_from_slice(publish_key.as_bytes()).expect("HMAC takes any key");
    m.update(msg.as_bytes());
    m.verify_slice(&sig).is_ok()
}

/// A token publication (`POST /api/token`), its MAC parsed.
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a> {
    /// The MAC the publisher claims (form field `mac`); must be the first master's.
    pub mac: MacAddr,
    /// The new bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: &'a str,
    /// The token's expiry, in seconds since the Unix epoch.
    pub expires: u64,
    /// When the publication was signed, in seconds since the Unix epoch (checked for skew and replay).
    pub ts: u64,
    /// Hex HMAC-SHA256 over [`publish_message`], keyed with the publish key's text.
    pub sig: &'a str,
}

/// Why a token publication is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishRefusal {
    /// The inventory has no master, so nobody may publish (403).
    NoMaster,
    /// The publication did not come from the first master's MAC and address (403, possible spoofer).
    NotFirstMaster {
        /// The first master's hostname.
        hostname: String,
        /// The first master's MAC.
        mac: MacAddr,
        /// The first master's inventory address.
        ip: std::net::Ipv4Addr,
    },
    /// `sig` does not verify against the publish key (403, possible spoofer).
    BadSignature,
    /// `ts` is more than [`PUBLISH_SKEW_SECS`] from the server's clock (403): check the node's time.
    Skew {
        /// The publication's timestamp, in seconds since the Unix epoch.
        ts: u64,
        /// The server's clock, in seconds since the Unix epoch.
        now: u64,
    },
    /// The token is not of the form `[a-z0-9]{6}.[a-z0-9]{16}` (400).
    MalformedToken,
    /// The token's expiry has already passed (400).
    Expired {
        /// The published expiry, in seconds since the Unix epoch.
        expires: u64,
    },
    /// `ts` is not newer than the last accepted publication (409): a replay.
    Replay {
        /// The refused publication's timestamp.
        ts: u64,
        /// The timestamp of the last accepted publication.
        last: u64,
    },
}

impl PublishRefusal {
    /// Why, said to the client and logged.
    pub fn message(&self) -> String {
        match self {
            PublishRefusal::NoMaster => "the inventory has no master".into(),
            PublishRefusal::NotFirstMaster { hostname, mac, ip } => format!(
                "only the first master {hostname} ({mac}, {ip}) publishes tokens — possible spoofer"
            ),
            PublishRefusal::BadSignature => "bad signature — possible spoofer".into(),
            PublishRefusal::Skew { ts, now } => format!(
                "timestamp {ts} is more than {PUBLISH_SKEW_SECS}s from the server's clock {now}; check the node's time"
            ),
            PublishRefusal::MalformedToken => {
                "the token is not of the form [a-z0-9]{6}.[a-z0-9]{16}".into()
            }
            PublishRefusal::Expired { expires } => {
                format!("the token's expiry {expires} has passed")
            }
            PublishRefusal::Replay { ts, last } => format!(
                "timestamp {ts} is not newer than the last publication ({last}) — a replay?"
            ),
        }
    }
}

/// The first publication rule: only the first master publishes, from its inventory address.
pub fn publisher(
    cluster: &Cluster,
    mac: MacAddr,
    peer: IpAddr,
) -> Result<&Machine, PublishRefusal> {
    let fm = cluster.first_master().ok_or(PublishRefusal::NoMaster)?;
    if mac != fm.mac || peer != IpAddr::V4(fm.ip) {
        return Err(PublishRefusal::NotFirstMaster {
            hostname: fm.hostname.clone(),
            mac: fm.mac,
            ip: fm.ip,
        });
    }
    Ok(fm)
}

/// The rules on the publication itself, in order: signed with `publish_key`, a timestamp within
/// [`PUBLISH_SKEW_SECS`] of `now_unix`, a well-formed token, an expiry in the future.
pub fn check_publication(
    publish_key: &str,
    p: &Publication<'_>,
    now_unix: u64,
) -> Result<(), PublishRefusal> {
    if !verify(
        publish_key,
        &publish_message(p.mac, p.token, p.expires, p.ts),
        p.sig,
    ) {
        return Err(PublishRefusal::BadSignature);
    }
    if p.ts.abs_diff(now_unix) > PUBLISH_SKEW_SECS {
        return Err(PublishRefusal::Skew {
            ts: p.ts,
            now: now_unix,
        });
    }
    if !super::token::is_valid(p.token) {
        return Err(PublishRefusal::MalformedToken);
    }
    if p.expires <= now_unix {
        return Err(PublishRefusal::Expired { expires: p.expires });
    }
    Ok(())
}

/// The last rule (checked under the store's lock): newer than the last accepted publication, if any.
pub fn check_newer(ts: u64, last_published: Option<u64>) -> Result<(), PublishRefusal> {
    match last_published {
        Some(last) if ts <= last => Err(PublishRefusal::Replay { ts, last }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::example as cluster;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn publication_rules_in_order() {
        let c = cluster();
        let m1: MacAddr = "52:54:00:77:00:11".parse().unwrap();
        let w1: MacAddr = "52:54:00:77:00:21".parse().unwrap();
        assert_eq!(
            publisher(&c, m1, ip("10.77.0.11")).unwrap().hostname,
            "master-1"
        );
        for (mac, peer) in [(w1, "10.77.0.11"), (m1, "10.77.0.21")] {
            assert!(matches!(
                publisher(&c, mac, ip(peer)),
                Err(PublishRefusal::NotFirstMaster { .. })
            ));
        }
        let now = 1_800_000_000;
        let token = "abcdef.0123456789abcdef";
        let signed = |key: &str, token: &'static str, expires: u64, ts: u64| {
            let sig = sign(key, &publish_message(m1, token, expires, ts));
            move |check_key: &str| {
                check_publication(
                    check_key,
                    &Publication {
                        mac: m1,
                        token,
                        expires,
                        ts,
                        sig: &sig,
                    },
                    now,
                )
            }
        };
        assert_eq!(signed("k", token, now + 60, now)("k"), Ok(()));
        assert_eq!(
            signed("other", token, now + 60, now)("k"),
            Err(PublishRefusal::BadSignature)
        );
        assert_eq!(
            signed("k", token, now + 60, now - PUBLISH_SKEW_SECS - 1)("k"),
            Err(PublishRefusal::Skew {
                ts: now - PUBLISH_SKEW_SECS - 1,
                now
            })
        );
        assert_eq!(
            signed("k", "not-a-token", now + 60, now)("k"),
            Err(PublishRefusal::MalformedToken)
        );
        assert_eq!(
            signed("k", token, now, now)("k"),
            Err(PublishRefusal::Expired { expires: now })
        );
        assert_eq!(check_newer(now, None), Ok(()));
        assert_eq!(check_newer(now, Some(now - 1)), Ok(()));
        assert_eq!(
            check_newer(now, Some(now)),
            Err(PublishRefusal::Replay { ts: now, last: now })
        );
    }
}
