//! `[network]`: the provisioning network imgbuild serves (subnet, addresses, DHCP, ports, unknown-machine pool).

use std::path::PathBuf;

use ipnet::Ipv4Net;

use super::checker::{Checker, Known, Seg, p};
use crate::config::model::{DhcpMode, Network, Pool, PoolShare, RelaySubnet};
use crate::config::raw;
use crate::config::state::StateBackend;

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
        .and_then(|pool| check_pool(c, pool, subnet, &p!["network", "unknown_pool"]));
    let relay_subnets = check_relay_subnets(c, n, subnet, &dns);
    known.relay_subnets = relay_subnets.clone();
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
        relay_subnets,
        pool_share: PoolShare::default(),
        ipxe_binaries: PathBuf::from(&n.ipxe_binaries),
        grub_modules: PathBuf::from(&n.grub_modules),
        grub_http_port: grub_http_port?,
        router_advertisements: n.router_advertisements,
    })
}

/// An `unknown_pool` at `at`: a valid range inside the subnet (not checked against an invalid subnet).
fn check_pool(
    c: &mut Checker,
    pool: &raw::PoolRaw,
    subnet: Option<Ipv4Net>,
    at: &[Seg],
) -> Option<Pool> {
    let key = |k: &str| [at, &[Seg::from(k)]].concat();
    let s = c.ip(&key("start"), &pool.start);
    let e = c.ip(&key("end"), &pool.end);
    let (Some(s), Some(e)) = (s, e) else {
        return None;
    };
    if s > e {
        c.error(
            &key("end"),
            format!("the pool ends ({e}) before it starts ({s})"),
        );
        return None;
    }
    let sub = subnet?;
    if !sub.contains(&s) || !sub.contains(&e) {
        c.error(
            at,
            format!("the pool {s}-{e} is not inside the subnet {sub}"),
        );
        return None;
    }
    Some(Pool { start: s, end: e })
}

/// `[[network.relay_subnets]]`: each a CIDR that overlaps neither `[network] subnet` nor another relay subnet
/// (a `giaddr` must pick one subnet), a gateway inside it, DNS servers (default `[network] dns`), a pool inside it.
fn check_relay_subnets(
    c: &mut Checker,
    n: &raw::NetworkRaw,
    own: Option<Ipv4Net>,
    dns: &[std::net::Ipv4Addr],
) -> Vec<RelaySubnet> {
    let mut out: Vec<RelaySubnet> = Vec::new();
    let mut seen: Vec<(usize, Ipv4Net)> = Vec::new();
    for (i, r) in n.relay_subnets.iter().enumerate() {
        let at = p!["network", "relay_subnets", i];
        let key = |k: &str| [&at[..], &[Seg::from(k)]].concat();
        let subnet = c.cidr(&key("subnet"), &r.subnet);
        let gateway = c.ip(&key("gateway"), &r.gateway);
        let mut ok = subnet.is_some() && gateway.is_some();
        if let Some(sub) = subnet {
            let overlaps = |o: &Ipv4Net| o.contains(&sub.network()) || sub.contains(&o.network());
            if let Some(o) = own.filter(overlaps) {
                c.error(&key("subnet"), format!("{sub} overlaps [network] subnet {o}; a relay subnet is another network, reached through a DHCP relay (its giaddr picks the subnet)"));
                ok = false;
            } else if let Some((j, o)) = seen.iter().find(|(_, o)| overlaps(o)) {
                c.error(&key("subnet"), format!("{sub} overlaps network.relay_subnets[{j}] ({o}); a relay's giaddr must lie in exactly one subnet"));
                ok = false;
            }
            seen.push((i, sub));
            if let Some(g) = gateway
                && !sub.contains(&g)
            {
                c.error(&key("gateway"), format!("{g} is outside {sub}; give the router of that subnet (usually the relay's address on it)"));
                ok = false;
            }
        }
        let mut own_dns = Vec::new();
        match &r.dns {
            None => own_dns = dns.to_vec(),
            Some(list) => {
                for (j, d) in list.iter().enumerate() {
                    let at_dns = [&at[..], &p!["dns", j]].concat();
                    match c.ip(&at_dns, d) {
                        Some(ip) => own_dns.push(ip),
                        None => ok = false,
                    }
                }
            }
        }
        let pool = match &r.unknown_pool {
            None => None,
            Some(pool) => match check_pool(c, pool, subnet, &key("unknown_pool")) {
                Some(p) => Some(p),
                None => {
                    ok = false;
                    None
                }
            },
        };
        if let (true, Some(subnet), Some(gateway)) = (ok, subnet, gateway) {
            out.push(RelaySubnet {
                subnet,
                gateway,
                dns: own_dns,
                unknown_pool: pool,
            });
        }
    }
    out
}

/// `[state] dhcp_replicas`: this server's block of every unknown pool. Required when replicas share an etcd
/// state and hand out pool addresses (else two replicas would offer one address to two machines); each entry
/// an address, none twice, this server's `[network] server` among them, and every pool at least as large as
/// the list. Returns the list (empty when absent or invalid).
pub(super) fn check_share(
    c: &mut Checker,
    s: &raw::StateRaw,
    backend: &StateBackend,
    network: &mut Network,
) -> Vec<std::net::Ipv4Addr> {
    let key = p!["state", "dhcp_replicas"];
    if s.dhcp_replicas.is_empty() {
        if *backend == StateBackend::Etcd
            && network.dhcp_mode == DhcpMode::Full
            && network.any_unknown_pool()
        {
            c.error(&key, format!("with backend = \"etcd\" several replicas answer DHCP, and each would offer the same unknown_pool addresses to different machines; list every replica's [network] server in a fixed order, e.g. dhcp_replicas = [\"{}\", \"<the other replica>\"], so each hands out its own block", network.server));
        }
        return Vec::new();
    }
    let mut seen = Vec::new();
    for (i, text) in s.dhcp_replicas.iter().enumerate() {
        let Some(ip) = c.ip(&p!["state", "dhcp_replicas", i], text) else {
            return Vec::new();
        };
        if seen.contains(&ip) {
            c.error(
                &p!["state", "dhcp_replicas", i],
                format!("{ip} is listed twice; each replica once"),
            );
            return Vec::new();
        }
        seen.push(ip);
    }
    let Some(index) = seen.iter().position(|ip| *ip == network.server) else {
        c.error(&key, format!("this server's [network] server {} is not in the list; add it (every replica's cluster.toml has the same list, each finds its block by its own address)", network.server));
        return Vec::new();
    };
    let share = PoolShare {
        index,
        count: seen.len(),
    };
    let pools = std::iter::once(network.unknown_pool.as_ref())
        .chain(
            network
                .relay_subnets
                .iter()
                .map(|r| r.unknown_pool.as_ref()),
        )
        .flatten();
    for pool in pools {
        if pool.share(share).is_none() {
            c.error(&key, format!("the pool {}-{} has {} addresses, fewer than the {} replicas listed; make it larger", pool.start, pool.end, pool.size(), share.count));
        }
    }
    network.pool_share = share;
    seen
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
