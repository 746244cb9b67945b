//! `[metallb]`: BGP mode, the local AS number, the peers (routers), the LoadBalancer address pools and the
//! advertisements that tie pools to peers.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::checker::{Checker, Known, Seg, p};
use crate::config::model::{AddressPool, Advertisement, BgpPeer, IpRange, Machine, MetalLb};
use crate::config::raw;

/// Checks `[metallb]`; pools are checked against the valid `machines` and the addresses in `known`.
pub(super) fn check(
    c: &mut Checker,
    ml: &raw::MetalLbRaw,
    machines: &[Machine],
    known: &Known,
) -> Option<MetalLb> {
    if ml.mode != "bgp" {
        c.error(
            &p!["metallb", "mode"],
            format!(
                "{:?} is not supported; imgbuild configures MetalLB in \"bgp\" mode",
                ml.mode
            ),
        );
    }
    let local_asn = c.asn(&p!["metallb", "asn"], ml.asn);
    let (peers, peer_names) = check_peers(c, ml);
    let (pools, pool_names) = check_pools(c, ml, machines, known);
    let advertisements = check_advertisements(c, ml, &pool_names, &peer_names);
    Some(MetalLb {
        asn: local_asn?,
        peers,
        pools,
        advertisements,
    })
}

/// `[[metallb.peers]]`: the valid peers and every peer's name.
fn check_peers(c: &mut Checker, ml: &raw::MetalLbRaw) -> (Vec<BgpPeer>, Vec<String>) {
    let mut peers = Vec::new();
    let mut peer_names = Vec::new();
    for (i, pr) in ml.peers.iter().enumerate() {
        let addr = c.ip(&p!["metallb", "peers", i, "address"], &pr.address);
        let asn = c.asn(&p!["metallb", "peers", i, "asn"], pr.asn);
        if peer_names.contains(&pr.name) {
            c.error(
                &p!["metallb", "peers", i, "name"],
                format!("duplicate peer name {:?}", pr.name),
            );
        }
        peer_names.push(pr.name.clone());
        if let Some(ht) = &pr.hold_time {
            match humantime::parse_duration(ht) {
                Ok(d) if d.as_secs() == 0 || d.as_secs() >= 3 => {}
                _ => c.error(
                    &p!["metallb", "peers", i, "hold_time"],
                    format!(
                        "{ht:?} is not a BGP hold time; expected 0s or at least 3s, such as \"90s\""
                    ),
                ),
            }
        }
        if let (Some(address), Some(asn)) = (addr, asn) {
            peers.push(BgpPeer {
                name: pr.name.clone(),
                address,
                asn,
                has_password: pr.password.is_some(),
                password: pr.password.clone(),
                hold_time: pr.hold_time.clone(),
            });
        }
    }
    if ml.peers.is_empty() {
        c.error(&p!["metallb"], "no BGP peers: add at least one [[metallb.peers]] (your router) so LoadBalancer addresses are announced");
    }
    (peers, peer_names)
}

/// `[[metallb.pools]]`: every pool with its valid ranges, and every pool's name.
fn check_pools(
    c: &mut Checker,
    ml: &raw::MetalLbRaw,
    machines: &[Machine],
    known: &Known,
) -> (Vec<AddressPool>, Vec<String>) {
    let (vip, server, gateway) = (known.vip, known.server, known.gateway);
    let mut pools = Vec::new();
    let mut pool_names = Vec::new();
    for (i, pl) in ml.pools.iter().enumerate() {
        if pool_names.contains(&pl.name) {
            c.error(
                &p!["metallb", "pools", i, "name"],
                format!("duplicate pool name {:?}", pl.name),
            );
        }
        pool_names.push(pl.name.clone());
        let mut ranges = Vec::new();
        for (j, a) in pl.addresses.iter().enumerate() {
            let path = p!["metallb", "pools", i, "addresses", j];
            match parse_range(a) {
                Some(r) => {
                    for m in machines {
                        if r.contains(m.ip) {
                            c.error(&path, format!("{a} contains {} ({}); a LoadBalancer pool must not overlap machine addresses", m.ip, m.hostname));
                        }
                    }
                    if let Some(v) = vip
                        && r.contains(v) {
                            c.error(&path, format!("{a} contains the control-plane VIP {v}"));
                        }
                    for (what, ip) in [("server", server), ("gateway", gateway)] {
                        if let Some(ip) = ip
                            && r.contains(ip) {
                                c.error(&path, format!("{a} contains the {what} address {ip}"));
                            }
                    }
                    if let Some(up) = &known.unknown_pool
                        && r.overlaps(up.start, up.end) {
                            c.error(&path, format!("{a} overlaps the unknown-machine DHCP pool {}-{}", up.start, up.end));
                        }
                    ranges.push(r);
                }
                None => c.error(&path, format!("{a:?} is not an address range; expected a CIDR such as 10.77.100.0/24 or a range such as 10.77.100.10-10.77.100.50")),
            }
        }
        pools.push(AddressPool {
            name: pl.name.clone(),
            addresses: ranges,
        });
    }
    if ml.pools.is_empty() {
        c.error(&p!["metallb"], "no address pools: add a [[metallb.pools]] with the addresses LoadBalancer services may use");
    }
    (pools, pool_names)
}

/// `[[metallb.advertisements]]`: each names defined pools and peers.
fn check_advertisements(
    c: &mut Checker,
    ml: &raw::MetalLbRaw,
    pool_names: &[String],
    peer_names: &[String],
) -> Vec<Advertisement> {
    let mut ads = Vec::new();
    for (i, ad) in ml.advertisements.iter().enumerate() {
        for (j, pn) in ad.pools.iter().enumerate() {
            if !pool_names.contains(pn) {
                c.error(
                    &p!["metallb", "advertisements", i, "pools", j],
                    format!(
                        "no pool named {pn:?}; defined pools: {}",
                        pool_names.join(", ")
                    ),
                );
            }
        }
        for (j, pn) in ad.peers.iter().enumerate() {
            if !peer_names.contains(pn) {
                c.error(
                    &p!["metallb", "advertisements", i, "peers", j],
                    format!(
                        "no peer named {pn:?}; defined peers: {}",
                        peer_names.join(", ")
                    ),
                );
            }
        }
        let agg = match ad.aggregation_length {
            None => None,
            Some(n @ 0..=32) => Some(n as u8),
            Some(n) => {
                c.error(
                    &p!["metallb", "advertisements", i, "aggregation_length"],
                    format!("{n} is not an IPv4 prefix length; expected 0 to 32"),
                );
                None
            }
        };
        for (j, com) in ad.communities.iter().enumerate() {
            if !is_community(com) {
                c.error(&p!["metallb", "advertisements", i, "communities", j], format!("{com:?} is not a BGP community; expected ASN:value such as 64500:100 (or a large community a:b:c)"));
            }
        }
        ads.push(Advertisement {
            name: ad.name.clone(),
            pools: ad.pools.clone(),
            peers: ad.peers.clone(),
            aggregation_length: agg,
            communities: ad.communities.clone(),
        });
    }
    ads
}

fn parse_range(text: &str) -> Option<IpRange> {
    if let Some((a, b)) = text.split_once('-') {
        let start: Ipv4Addr = a.trim().parse().ok()?;
        let end: Ipv4Addr = b.trim().parse().ok()?;
        (start <= end).then(|| IpRange {
            start,
            end,
            text: text.to_string(),
        })
    } else {
        let net: Ipv4Net = text.parse().ok()?;
        (net.trunc() == net).then(|| IpRange {
            start: net.network(),
            end: net.broadcast(),
            text: text.to_string(),
        })
    }
}

fn is_community(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.len() {
        2 => parts.iter().all(|p| p.parse::<u16>().is_ok()),
        3 => parts.iter().all(|p| p.parse::<u32>().is_ok()),
        _ => false,
    }
}
