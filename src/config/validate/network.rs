//! `[network]`: the provisioning network imgbuild serves (subnet, addresses, DHCP, ports, unknown-machine pool).

use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::checker::{Checker, Known, Seg, p};
use crate::config::model::{DhcpMode, Network, Pool};
use crate::config::raw;

/// Checks `[network]` and records the subnet, gateway, server and unknown-machine pool in `known`.
pub(super) fn check(c: &mut Checker, n: &raw::NetworkRaw, known: &mut Known) -> Option<Network> {
    let subnet = c.cidr(&p!["network", "subnet"], &n.subnet);
    let gateway = c.ip(&p!["network", "gateway"], &n.gateway);
    let server = c.ip(&p!["network", "server"], &n.server);
    let mut dns = Vec::new();
    for (i, d) in n.dns.iter().enumerate() {
        if let Some(ip) = c.ip(&p!["network", "dns", i], d) {
            dns.push(ip);
        }
    }
    let ntp = check_ntp(c, n, gateway);
    let dhcp_mode = c.one_of(
        &p!["network", "dhcp_mode"],
        &n.dhcp_mode,
        &[("full", DhcpMode::Full), ("proxy", DhcpMode::Proxy)],
    );
    let lease_secs = match humantime::parse_duration(&n.lease_time) {
        Ok(d) if d.as_secs() >= 60 && d.as_secs() <= u32::MAX as u64 => Some(d.as_secs() as u32),
        _ => {
            c.error(&p!["network", "lease_time"], format!("{:?} is not a lease time; expected a duration of at least 1m such as \"1h\" or \"12h\"", n.lease_time));
            None
        }
    };
    let http_port = c.port(&p!["network", "http_port"], n.http_port);
    let tftp_port = c.port(&p!["network", "tftp_port"], n.tftp_port);
    let https_port = c.port(&p!["network", "https_port"], n.https_port);
    if let (Some(a), Some(b)) = (http_port, https_port)
        && a == b
    {
        c.error(
            &p!["network", "https_port"],
            format!("{b} is also network.http_port; the HTTPS node API needs a port of its own such as 8443"),
        );
    }
    let grub_http_port = c.port(&p!["network", "grub_http_port"], n.grub_http_port);
    if n.interface.is_empty() || n.interface.len() > 15 || n.interface.contains('/') {
        c.error(
            &p!["network", "interface"],
            format!(
                "{:?} is not a network interface name (1-15 characters, no '/')",
                n.interface
            ),
        );
    }
    if let Some(sub) = subnet {
        for (key, ip) in [("gateway", gateway), ("server", server)] {
            if let Some(ip) = ip
                && !sub.contains(&ip)
            {
                c.error(
                    &p!["network", key],
                    format!("{ip} is outside the provisioning subnet {sub}"),
                );
            }
        }
    }
    let unknown_pool = n
        .unknown_pool
        .as_ref()
        .and_then(|pool| check_pool(c, pool, subnet));
    known.subnet = subnet;
    known.gateway = gateway;
    known.server = server;
    known.unknown_pool = unknown_pool.clone();
    Some(Network {
        interface: n.interface.clone(),
        subnet: subnet?,
        gateway: gateway?,
        dns,
        ntp: ntp?,
        server: server?,
        dhcp_mode: dhcp_mode?,
        lease_secs: lease_secs?,
        http_port: http_port?,
        https_port: https_port?,
        tftp_port: tftp_port?,
        unknown_pool,
        ipxe_binaries: PathBuf::from(&n.ipxe_binaries),
        grub_modules: PathBuf::from(&n.grub_modules),
        grub_http_port: grub_http_port?,
        router_advertisements: n.router_advertisements,
    })
}

/// `[network.unknown_pool]`: a valid range inside the subnet (not checked against an invalid subnet).
fn check_pool(c: &mut Checker, pool: &raw::PoolRaw, subnet: Option<Ipv4Net>) -> Option<Pool> {
    let s = c.ip(&p!["network", "unknown_pool", "start"], &pool.start);
    let e = c.ip(&p!["network", "unknown_pool", "end"], &pool.end);
    let (Some(s), Some(e)) = (s, e) else {
        return None;
    };
    if s > e {
        c.error(
            &p!["network", "unknown_pool", "end"],
            format!("the pool ends ({e}) before it starts ({s})"),
        );
        return None;
    }
    let sub = subnet?;
    if !sub.contains(&s) || !sub.contains(&e) {
        c.error(
            &p!["network", "unknown_pool"],
            format!("the pool {s}-{e} is not inside the provisioning subnet {sub}"),
        );
        return None;
    }
    Some(Pool { start: s, end: e })
}

/// `[network] ntp`: IPv4 addresses or host names (a name needs `dns`); absent: the gateway. An empty list is an
/// error: a node without a time source drifts until TLS against the cluster CA fails.
fn check_ntp(
    c: &mut Checker,
    n: &raw::NetworkRaw,
    gateway: Option<std::net::Ipv4Addr>,
) -> Option<Vec<String>> {
    let Some(list) = &n.ntp else {
        return gateway.map(|g| vec![g.to_string()]);
    };
    if list.is_empty() {
        c.error(
            &p!["network", "ntp"],
            "an empty list leaves the nodes without a time source; name at least one NTP server (an IPv4 \
             address or a host name), or remove the key to use the gateway",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, s) in list.iter().enumerate() {
        let is_ip = s.parse::<std::net::Ipv4Addr>().is_ok();
        let looks_ip = !s.is_empty() && s.chars().all(|ch| ch.is_ascii_digit() || ch == '.');
        if is_ip {
            out.push(s.clone());
        } else if !looks_ip && is_hostname(s) {
            if n.dns.is_empty() {
                c.error(
                    &p!["network", "ntp", i],
                    format!(
                        "{s:?} is a host name but [network] dns is empty, so nodes cannot resolve it; give an \
                         IPv4 address or add a DNS server"
                    ),
                );
                ok = false;
            } else {
                out.push(s.clone());
            }
        } else {
            c.error(
                &p!["network", "ntp", i],
                format!(
                    "{s:?} is not an NTP server; expected an IPv4 address such as 10.77.0.1 or a host name \
                     such as ntp.example.net"
                ),
            );
            ok = false;
        }
    }
    ok.then_some(out)
}

/// An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, at most 253 characters.
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}
