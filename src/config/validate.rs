//! Semantic validation: from the raw file to a typed [`Cluster`], collecting every problem on the way.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::Ipv4Net;

use super::error::{Problem, line_col};
use super::mac::MacAddr;
use super::model::*;
use super::raw;

/// Artifacts every image needs; each must have a source.
pub const REQUIRED_ARTIFACTS: &[&str] = &[
    "kubeadm",
    "kubelet",
    "kubectl",
    "containerd",
    "runc",
    "cni-plugins",
    "crictl",
    "cni-manifest",
    "metallb-manifest",
    "longhorn-manifest",
];

/// A step in a key path: `machines` / `[2]` / `mac`.
#[derive(Debug, Clone)]
pub enum Seg {
    Key(String),
    Index(usize),
}

fn key_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Builds key paths concisely: `p!["machines", 2usize, "mac"]`.
macro_rules! p {
    ($($seg:expr),* $(,)?) => { [$(Seg::from($seg)),*] };
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}
impl From<String> for Seg {
    fn from(s: String) -> Self {
        Seg::Key(s)
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// Collects problems and locates keys in the source text.
pub struct Checker<'a> {
    file: PathBuf,
    src: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
    pub problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &Path, src: &'a str) -> Self {
        Checker {
            file: file.to_path_buf(),
            src,
            doc: toml_edit::Document::parse(src).ok(),
            problems: Vec::new(),
        }
    }

    /// Byte span of the value at `path` (or of the key, or of the nearest existing parent).
    fn locate(&self, path: &[Seg]) -> Option<std::ops::Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut item = doc.as_item();
        let mut best = None;
        for seg in path {
            let next = match seg {
                Seg::Key(k) => {
                    if let Some(t) = item.as_table_like() {
                        if let Some((key, it)) = t.get_key_value(k) {
                            best = key.span().or(best);
                            Some(it)
                        } else {
                            None
                        }
                    } else {
                        None
                    }
                }
                Seg::Index(i) => item.get(*i),
            };
            match next {
                Some(it) => {
                    item = it;
                    if let Some(sp) = it.span().or_else(|| it.as_value().and_then(|v| v.span())) {
                        best = Some(sp);
                    }
                }
                None => break,
            }
        }
        best
    }

    pub fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let (line, column) = match self.locate(path) {
            Some(sp) => {
                let (l, c) = line_col(self.src, sp.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            column,
            key: key_string(path),
            message: message.into(),
        });
    }

    fn parse<T: FromStr>(&mut self, path: &[Seg], text: &str, what: &str) -> Option<T> {
        match text.parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(path, format!("{text:?} is not {what}"));
                None
            }
        }
    }

    fn ip(&mut self, path: &[Seg], text: &str) -> Option<Ipv4Addr> {
        self.parse(path, text, "an IPv4 address such as 10.77.0.11")
    }

    fn cidr(&mut self, path: &[Seg], text: &str) -> Option<Ipv4Net> {
        let net: Ipv4Net = self.parse(
            path,
            text,
            "an IPv4 network in CIDR form such as 10.244.0.0/16",
        )?;
        if net.trunc() != net {
            self.error(
                path,
                format!("{text:?} has host bits set; did you mean {}?", net.trunc()),
            );
            return None;
        }
        Some(net)
    }

    fn one_of(&mut self, path: &[Seg], text: &str, valid: &[&str]) -> Option<String> {
        if valid.contains(&text) {
            Some(text.to_string())
        } else {
            self.error(
                path,
                format!(
                    "{text:?} is not valid; expected one of: {}",
                    valid.join(", ")
                ),
            );
            None
        }
    }

    fn port(&mut self, path: &[Seg], n: i64) -> Option<u16> {
        match u16::try_from(n) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.error(path, format!("{n} is not a port; expected 1 to 65535"));
                None
            }
        }
    }

    fn asn(&mut self, path: &[Seg], n: i64) -> Option<u32> {
        // 0 and 4294967295 are reserved (RFC 7607, RFC 7300).
        if (1..=4_294_967_294).contains(&n) {
            Some(n as u32)
        } else {
            self.error(
                path,
                format!("AS number {n} is out of range; expected 1 to 4294967294 (private: 64512-65534 or 4200000000-4294967294)"),
            );
            None
        }
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
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

fn check_url(c: &mut Checker, path: &[Seg], url: &str) {
    if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file:///")) {
        c.error(
            path,
            format!("{url:?} is not a source imgbuild can fetch; expected an https://, http:// or file:/// URL"),
        );
    }
}

/// Validates the raw file. `root` is the directory the relative paths are resolved against.
pub fn validate(c: &mut Checker, f: raw::File, root: &Path, digest: String) -> Option<Cluster> {
    // --- cluster
    let kv = c.parse::<Version>(
        &p!["cluster", "kubernetes_version"],
        &f.cluster.kubernetes_version,
        "a Kubernetes version of the form x.y.z (for example 1.37.2)",
    );
    let pod = c.cidr(&p!["cluster", "pod_cidr"], &f.cluster.pod_cidr);
    let svc = c.cidr(&p!["cluster", "service_cidr"], &f.cluster.service_cidr);
    if !is_hostname(&f.cluster.name) {
        c.error(
            &p!["cluster", "name"],
            format!(
                "{:?} is not a valid cluster name; use lower-case letters, digits and '-'",
                f.cluster.name
            ),
        );
    }
    let cni = match c
        .one_of(
            &p!["cluster", "cni"],
            &f.cluster.cni,
            &["flannel", "cilium"],
        )
        .as_deref()
    {
        Some("cilium") => Some(Cni::Cilium),
        Some(_) => Some(Cni::Flannel),
        None => None,
    };

    // --- network
    let n = &f.network;
    let subnet = c.cidr(&p!["network", "subnet"], &n.subnet);
    let gateway = c.ip(&p!["network", "gateway"], &n.gateway);
    let server = c.ip(&p!["network", "server"], &n.server);
    let mut dns = Vec::new();
    for (i, d) in n.dns.iter().enumerate() {
        if let Some(ip) = c.ip(&p!["network", "dns", i], d) {
            dns.push(ip);
        }
    }
    let dhcp_mode = match c
        .one_of(
            &p!["network", "dhcp_mode"],
            &n.dhcp_mode,
            &["full", "proxy"],
        )
        .as_deref()
    {
        Some("proxy") => Some(DhcpMode::Proxy),
        Some(_) => Some(DhcpMode::Full),
        None => None,
    };
    let lease_secs = match humantime::parse_duration(&n.lease_time) {
        Ok(d) if d.as_secs() >= 60 && d.as_secs() <= u32::MAX as u64 => Some(d.as_secs() as u32),
        _ => {
            c.error(&p!["network", "lease_time"], format!("{:?} is not a lease time; expected a duration of at least 1m such as \"1h\" or \"12h\"", n.lease_time));
            None
        }
    };
    let http_port = c.port(&p!["network", "http_port"], n.http_port);
    let tftp_port = c.port(&p!["network", "tftp_port"], n.tftp_port);
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
    let mut unknown_pool = None;
    if let Some(pool) = &n.unknown_pool {
        let s = c.ip(&p!["network", "unknown_pool", "start"], &pool.start);
        let e = c.ip(&p!["network", "unknown_pool", "end"], &pool.end);
        if let (Some(s), Some(e)) = (s, e) {
            if s > e {
                c.error(
                    &p!["network", "unknown_pool", "end"],
                    format!("the pool ends ({e}) before it starts ({s})"),
                );
            } else if let Some(sub) = subnet {
                if !sub.contains(&s) || !sub.contains(&e) {
                    c.error(
                        &p!["network", "unknown_pool"],
                        format!("the pool {s}-{e} is not inside the provisioning subnet {sub}"),
                    );
                } else {
                    unknown_pool = Some(Pool { start: s, end: e });
                }
            }
        }
    }
    if let (Some(sub), Some(pod)) = (subnet, pod)
        && (sub.contains(&pod.network()) || pod.contains(&sub.network()))
    {
        c.error(
            &p!["cluster", "pod_cidr"],
            format!("{pod} overlaps the provisioning subnet {sub}; pick a range nodes do not use"),
        );
    }
    if let (Some(svc), Some(pod)) = (svc, pod)
        && (svc.contains(&pod.network()) || pod.contains(&svc.network()))
    {
        c.error(
            &p!["cluster", "service_cidr"],
            format!("{svc} overlaps the pod network {pod}"),
        );
    }

    // --- control plane
    let cp = &f.control_plane;
    let vip = c.ip(&p!["control_plane", "vip"], &cp.vip);
    let api_port = c.port(&p!["control_plane", "port"], cp.port);
    let kvm = match c
        .one_of(
            &p!["control_plane", "kube_vip_mode"],
            &cp.kube_vip_mode,
            &["arp", "bgp"],
        )
        .as_deref()
    {
        Some("bgp") => Some(KubeVipMode::Bgp),
        Some(_) => Some(KubeVipMode::Arp),
        None => None,
    };
    if let (Some(vip), Some(sub)) = (vip, subnet) {
        if !sub.contains(&vip) {
            c.error(&p!["control_plane", "vip"], format!("the VIP {vip} is outside the provisioning subnet {sub}; the nodes must reach it on their own link"));
        }
        if Some(vip) == server || Some(vip) == gateway {
            c.error(
                &p!["control_plane", "vip"],
                format!("the VIP {vip} is already the server's or the gateway's address"),
            );
        }
        if let Some(pool) = &unknown_pool
            && pool.contains(vip)
        {
            c.error(
                &p!["control_plane", "vip"],
                format!(
                    "the VIP {vip} is inside the unknown-machine pool {}-{}",
                    pool.start, pool.end
                ),
            );
        }
    }

    // --- machines
    let mut machines = Vec::new();
    let mut seen_mac: HashMap<MacAddr, usize> = HashMap::new();
    let mut seen_ip: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut seen_host: HashMap<String, usize> = HashMap::new();
    let mut seen_relay: HashMap<String, usize> = HashMap::new();
    for (i, m) in f.machines.iter().enumerate() {
        let mac = match m.mac.parse::<MacAddr>() {
            Ok(mac) => {
                if let Some(first) = seen_mac.insert(mac, i) {
                    c.error(
                        &p!["machines", i, "mac"],
                        format!("duplicate MAC {mac}: machines[{first}] already has it"),
                    );
                }
                if mac.0[0] & 1 == 1 {
                    c.error(&p!["machines", i, "mac"], format!("{mac} is a multicast address; a NIC's MAC has the lowest bit of the first byte clear"));
                }
                Some(mac)
            }
            Err(e) => {
                c.error(&p!["machines", i, "mac"], e.to_string());
                None
            }
        };
        if !is_hostname(&m.hostname) {
            c.error(
                &p!["machines", i, "hostname"],
                format!(
                    "{:?} is not a valid hostname; use 1-63 lower-case letters, digits and '-'",
                    m.hostname
                ),
            );
        } else if let Some(first) = seen_host.insert(m.hostname.clone(), i) {
            c.error(
                &p!["machines", i, "hostname"],
                format!(
                    "duplicate hostname {:?}: machines[{first}] already has it",
                    m.hostname
                ),
            );
        }
        let role = match m.role.parse::<Role>() {
            Ok(r) => Some(r),
            Err(e) => {
                c.error(&p!["machines", i, "role"], e);
                None
            }
        };
        let arch = match m.arch.as_deref().map(str::parse::<Arch>) {
            None => Some(Arch::default()),
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => {
                c.error(&p!["machines", i, "arch"], e);
                None
            }
        };
        let ip = c.ip(&p!["machines", i, "ip"], &m.ip);
        if let Some(ip) = ip {
            if let Some(first) = seen_ip.insert(ip, i) {
                c.error(
                    &p!["machines", i, "ip"],
                    format!("duplicate address {ip}: machines[{first}] already has it"),
                );
            }
            if let Some(sub) = subnet
                && (!sub.contains(&ip) || ip == sub.network() || ip == sub.broadcast())
            {
                c.error(
                    &p!["machines", i, "ip"],
                    format!("{ip} is not a host address in the provisioning subnet {sub}"),
                );
            }
            if let Some(pool) = &unknown_pool
                && pool.contains(ip)
            {
                c.error(&p!["machines", i, "ip"], format!("{ip} is inside the unknown-machine pool {}-{}; give the machine an address outside it", pool.start, pool.end));
            }
            if Some(ip) == server || Some(ip) == gateway {
                c.error(
                    &p!["machines", i, "ip"],
                    format!("{ip} is the server's or the gateway's address"),
                );
            }
            if Some(ip) == vip {
                c.error(&p!["control_plane", "vip"], format!("the VIP {ip} is also machines[{i}].ip ({}); the VIP must be an address no machine uses", m.hostname));
            }
        }
        if !m.state_disk.starts_with("/dev/") {
            c.error(&p!["machines", i, "state_disk"], format!("{:?} is not a block device; expected a path such as /dev/vda or /dev/disk/by-id/...", m.state_disk));
        }
        if let Some(rid) = &m.relay_id
            && let Some(first) = seen_relay.insert(rid.clone(), i)
        {
            c.error(
                &p!["machines", i, "relay_id"],
                format!("duplicate relay id {rid:?}: machines[{first}] already has it"),
            );
        }
        if let (Some(mac), Some(role), Some(arch), Some(ip)) = (mac, role, arch, ip) {
            machines.push(Machine {
                mac,
                hostname: m.hostname.clone(),
                role,
                arch,
                ip,
                state_disk: m.state_disk.clone(),
                init_blank: m.init_blank,
                relay_id: m.relay_id.clone(),
            });
        }
    }
    let masters = f.machines.iter().filter(|m| m.role == "master").count();
    if masters == 0 {
        c.error(
            &p!["machines"],
            "no machine has role \"master\"; a cluster needs 1 or 3 (or 5) masters for etcd quorum",
        );
    } else if masters % 2 == 0 {
        c.error(&p!["machines"], format!("{masters} masters: an even number gives etcd no better fault tolerance than {} and risks split votes; use an odd number (1, 3, 5)", masters - 1));
    }

    // --- MetalLB
    let ml = &f.metallb;
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
                    for m in &machines {
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
                    if let Some(up) = &unknown_pool
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

    // --- Longhorn
    let lh = &f.longhorn;
    let replicas = match u8::try_from(lh.replicas) {
        Ok(r) if r >= 1 => Some(r),
        _ => {
            c.error(
                &p!["longhorn", "replicas"],
                format!(
                    "{} is not a replica count; expected 1 or more (3 is Longhorn's default)",
                    lh.replicas
                ),
            );
            None
        }
    };
    let storage_nodes = f.machines.iter().filter(|m| m.role == "storage").count();
    if let Some(r) = replicas
        && storage_nodes > 0
        && usize::from(r) > storage_nodes
    {
        c.error(&p!["longhorn", "replicas"], format!("{r} replicas but only {storage_nodes} storage node(s) carry Longhorn disks; volumes would stay degraded. Use at most {storage_nodes}"));
    }
    if !lh.data_path.starts_with('/') {
        c.error(
            &p!["longhorn", "data_path"],
            format!("{:?} is not an absolute path", lh.data_path),
        );
    }
    if !lh.disk.starts_with("/dev/") {
        c.error(
            &p!["longhorn", "disk"],
            format!(
                "{:?} is not a block device; expected a path such as /dev/vdb",
                lh.disk
            ),
        );
    }
    if lh.version.parse::<Version>().is_err() {
        c.error(
            &p!["longhorn", "version"],
            format!("{:?} is not a version of the form x.y.z", lh.version),
        );
    }

    // --- artifacts
    let mut artifacts = BTreeMap::new();
    for name in REQUIRED_ARTIFACTS {
        if !f.artifacts.contains_key(*name) {
            c.error(
                &p!["artifacts"],
                format!(
                    "artifact {name:?} is missing; add [artifacts.{name}] with a version and a url"
                ),
            );
        }
    }
    for (name, a) in &f.artifacts {
        let version = match &a.version {
            Some(v) if !v.is_empty() => v.clone(),
            _ => {
                c.error(
                    &p!["artifacts", name.as_str(), "version"],
                    format!("artifact {name:?} has no version"),
                );
                continue;
            }
        };
        let url = match &a.url {
            Some(u) if !u.is_empty() => u.replace("{version}", &version),
            _ => {
                c.error(&p!["artifacts", name.as_str()], format!("artifact {name:?} has no source; add url = \"https://...\" (or file:///... for a local mirror)"));
                continue;
            }
        };
        check_url(c, &p!["artifacts", name.as_str(), "url"], &url);
        let checksum_url = match a.checksum_url.as_deref() {
            None => Some(format!("{url}.sha256")),
            Some("none") => None,
            Some(u) => {
                let u = u.replace("{version}", &version);
                check_url(c, &p!["artifacts", name.as_str(), "checksum_url"], &u);
                Some(u)
            }
        };
        artifacts.insert(
            name.clone(),
            Artifact {
                version,
                url,
                checksum_url,
            },
        );
    }
    if let (Some(kv), Some(a)) = (kv, f.artifacts.get("kubeadm"))
        && let Some(v) = &a.version
        && v.trim_start_matches('v') != kv.to_string()
    {
        c.error(
            &p!["artifacts", "kubeadm", "version"],
            format!("kubeadm {v} does not match cluster.kubernetes_version {kv}"),
        );
    }

    // --- base
    let b = &f.base;
    if !["bookworm", "trixie"].contains(&b.release.as_str()) {
        c.error(
            &p!["base", "release"],
            format!(
                "{:?} is not a Debian release imgbuild builds; expected bookworm or trixie",
                b.release
            ),
        );
    }
    check_url(c, &p!["base", "mirror"], &b.mirror);
    if let Some(s) = &b.snapshot {
        let ok = s.len() == 16
            && s.as_bytes()[8] == b'T'
            && s.ends_with('Z')
            && s[..8].bytes().all(|x| x.is_ascii_digit())
            && s[9..15].bytes().all(|x| x.is_ascii_digit());
        if !ok {
            c.error(&p!["base", "snapshot"], format!("{s:?} is not a snapshot.debian.org timestamp; expected the form 20261101T000000Z"));
        }
    }
    for (i, pkg) in b.packages.iter().enumerate() {
        if pkg.is_empty()
            || !pkg
                .bytes()
                .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"+-.".contains(&x))
        {
            c.error(
                &p!["base", "packages", i],
                format!("{pkg:?} is not a Debian package name"),
            );
        }
    }

    let rel = |o: &Option<String>, d: &str| -> PathBuf { root.join(o.as_deref().unwrap_or(d)) };
    let paths = Paths {
        root: root.to_path_buf(),
        profiles: rel(&f.paths.profiles, "profiles"),
        ipxe: rel(&f.paths.ipxe, "ipxe"),
        images: rel(&f.paths.images, "images"),
        state: rel(&f.paths.state, "state"),
        secrets: rel(&f.paths.secrets, "secrets"),
        cache: rel(&f.paths.cache, "cache"),
        lock: root.join("imgbuild.lock"),
    };

    if !c.problems.is_empty() {
        return None;
    }
    Some(Cluster {
        path: c.file.clone(),
        digest,
        cluster: ClusterInfo {
            name: f.cluster.name.clone(),
            kubernetes_version: kv?,
            pod_cidr: pod?,
            service_cidr: svc?,
            domain: f.cluster.domain.clone(),
            cni: cni?,
        },
        control_plane: ControlPlane {
            vip: vip?,
            port: api_port?,
            kube_vip_mode: kvm?,
            interface: cp.interface.clone(),
            kube_vip_image: cp.kube_vip_image.clone(),
        },
        network: Network {
            interface: n.interface.clone(),
            subnet: subnet?,
            gateway: gateway?,
            dns,
            server: server?,
            dhcp_mode: dhcp_mode?,
            lease_secs: lease_secs?,
            http_port: http_port?,
            tftp_port: tftp_port?,
            unknown_pool,
            ipxe_binaries: PathBuf::from(&n.ipxe_binaries),
            grub_modules: PathBuf::from(&n.grub_modules),
            grub_http_port: grub_http_port?,
            router_advertisements: n.router_advertisements,
        },
        metallb: MetalLb {
            asn: local_asn?,
            peers,
            pools,
            advertisements: ads,
        },
        longhorn: Longhorn {
            version: lh.version.clone(),
            replicas: replicas?,
            data_path: lh.data_path.clone(),
            disk: lh.disk.clone(),
        },
        machines,
        artifacts,
        base: Base {
            release: b.release.clone(),
            mirror: b.mirror.clone(),
            snapshot: b.snapshot.clone(),
            packages: b.packages.clone(),
        },
        paths,
    })
}
