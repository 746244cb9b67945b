//! `[network]`: the provisioning network — its subnet, the relay subnets behind DHCP relays, the unknown pools
//! and this server's share of them — and which subnet a DHCP request is answered from.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Whether imgbuild hands out addresses (`full`) or only boot information beside another DHCP server (`proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// imgbuild's DHCP server hands out addresses from the inventory (and `unknown_pool`) and the boot information.
    Full,
    /// Another DHCP server on the segment hands out addresses; imgbuild answers only with boot information
    /// (proxyDHCP).
    Proxy,
}

/// An inclusive range of IPv4 addresses, `start` to `end` (`[network] unknown_pool`).
#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    /// First address of the range.
    pub start: Ipv4Addr,
    /// Last address of the range, included; not below `start`.
    pub end: Ipv4Addr,
}

impl Pool {
    /// Whether `ip` lies within `start..=end`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip >= self.start && ip <= self.end
    }

    /// How many addresses the range holds.
    pub fn size(&self) -> u32 {
        u32::from(self.end).saturating_sub(u32::from(self.start)) + 1
    }

    /// The part of the range replica `share.index` of `share.count` hands out: the range cut into `count`
    /// contiguous blocks of (nearly) equal size, block `index`. Disjoint for different indexes, together the
    /// whole range. `None` when the range has fewer addresses than replicas.
    pub fn share(&self, share: PoolShare) -> Option<Pool> {
        let (n, count, index) = (
            u64::from(self.size()),
            share.count as u64,
            share.index as u64,
        );
        if count == 0 || index >= count || n < count {
            return None;
        }
        let start = u64::from(u32::from(self.start));
        let first = start + index * n / count;
        let last = start + (index + 1) * n / count - 1;
        Some(Pool {
            start: Ipv4Addr::from(first as u32),
            end: Ipv4Addr::from(last as u32),
        })
    }
}

/// Which part of every unknown pool this server hands out (`[state] dhcp_replicas`): with several replicas on
/// one shared state, each hands out its own block, so no address is offered to two machines by two replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolShare {
    /// This server's place in `[state] dhcp_replicas` (the position of its `[network] server`); 0 alone.
    pub index: usize,
    /// How many replicas split the pools; 1 alone.
    pub count: usize,
}

impl Default for PoolShare {
    fn default() -> Self {
        PoolShare { index: 0, count: 1 }
    }
}

/// `[[network.relay_subnets]]`: a further provisioning subnet whose machines reach the server through a DHCP
/// relay; a relayed request is answered from the subnet that contains its `giaddr`.
#[derive(Debug, Clone, Serialize)]
pub struct RelaySubnet {
    /// The subnet (a rack's network).
    pub subnet: Ipv4Net,
    /// Its default router (DHCP option 3), usually the relay's address on that subnet.
    pub gateway: Ipv4Addr,
    /// Its DNS servers (option 6); default `[network] dns`.
    pub dns: Vec<Ipv4Addr>,
    /// Addresses for machines of that subnet not in the inventory; `None`: none.
    pub unknown_pool: Option<Pool>,
}

/// The subnet a DHCP answer is made from: `[network]`'s own, or one of its relay subnets.
#[derive(Debug, Clone, Copy)]
pub struct DhcpSubnet<'a> {
    /// The subnet (its mask is option 1).
    pub subnet: Ipv4Net,
    /// Option 3.
    pub gateway: Ipv4Addr,
    /// Option 6.
    pub dns: &'a [Ipv4Addr],
    /// Addresses for machines not in the inventory, the whole range as configured.
    pub unknown_pool: Option<&'a Pool>,
}

/// `[network]`: the provisioning network the machines boot on, and the server's place on it.
#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// The server's provisioning interface. DHCP binds to it and nothing else.
    pub interface: String,
    /// The provisioning subnet; every machine address, `server` and `gateway` lie in it.
    pub subnet: Ipv4Net,
    /// The default router handed to machines (DHCP option 3).
    pub gateway: Ipv4Addr,
    /// DNS servers handed to machines (DHCP option 6), in order; may be empty.
    pub dns: Vec<Ipv4Addr>,
    /// NTP servers the nodes' timesyncd uses (IPv4 addresses or host names), in order; default the gateway.
    pub ntp: Vec<String>,
    /// The server's own address on the provisioning network (TFTP `next-server`, HTTP host).
    pub server: Ipv4Addr,
    /// `full` (default) or `proxy`: whether imgbuild assigns addresses or only answers with boot information.
    pub dhcp_mode: DhcpMode,
    /// DHCP lease time in seconds, from `lease_time` (a duration such as `"1h"`, at least 1m).
    pub lease_secs: u32,
    /// The TCP port of the HTTP server (boot scripts, kernels, images, events, the status page); default 8080.
    pub http_port: u16,
    /// The TCP port of the HTTPS node API (enrollment, token publication, barrier, node events), served with a
    /// certificate from the provisioning CA; default 8443.
    pub https_port: u16,
    /// The UDP port of the TFTP server that serves the first-stage loaders; default 69.
    pub tftp_port: u16,
    /// Addresses for machines not in the inventory. `None`: unknown MACs get no answer.
    pub unknown_pool: Option<Pool>,
    /// Further subnets behind DHCP relays (`[[network.relay_subnets]]`); empty: one provisioning subnet.
    pub relay_subnets: Vec<RelaySubnet>,
    /// Which block of every unknown pool this server hands out (from `[state] dhcp_replicas`).
    pub pool_share: PoolShare,
    /// Where the iPXE binaries (`undionly.kpxe`, `ipxe.efi`, `snp.efi`, `snponly.efi`) are read from.
    pub ipxe_binaries: PathBuf,
    /// Debian's arm64 GRUB modules (`grub-efi-arm64-bin`, extracted by `scripts/setup`): the server makes the
    /// arm64 netboot loader `grubnetaa64.efi` from them when the inventory has arm64 machines.
    pub grub_modules: PathBuf,
    /// The HTTP port GRUB fetches from. GRUB 2.06 (Debian 12) cannot put a port in `(http,host)`, so it is
    /// 80: when `http_port` is another port, the server also listens here for arm64 machines.
    pub grub_http_port: u16,
    /// Send IPv6 router advertisements (no prefix, router lifetime 0) on `interface`, only so iPXE ends its
    /// IPv6 autoconfiguration wait (~16 s) at once. Off by default.
    pub router_advertisements: bool,
}

impl Network {
    /// The subnet a DHCP request is answered from: `[network] subnet` for a request without a relay
    /// (`giaddr` 0.0.0.0), else the configured subnet that contains `giaddr`; `None` when none does.
    pub fn dhcp_subnet(&self, giaddr: Ipv4Addr) -> Option<DhcpSubnet<'_>> {
        let own = DhcpSubnet {
            subnet: self.subnet,
            gateway: self.gateway,
            dns: &self.dns,
            unknown_pool: self.unknown_pool.as_ref(),
        };
        if giaddr.is_unspecified() || self.subnet.contains(&giaddr) {
            return Some(own);
        }
        self.relay_subnets
            .iter()
            .find(|r| r.subnet.contains(&giaddr))
            .map(|r| DhcpSubnet {
                subnet: r.subnet,
                gateway: r.gateway,
                dns: &r.dns,
                unknown_pool: r.unknown_pool.as_ref(),
            })
    }

    /// The configured subnet an address lies in (`[network] subnet` first), for a machine's mask and router.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> DhcpSubnet<'_> {
        let own = self.dhcp_subnet(Ipv4Addr::UNSPECIFIED).expect("own subnet");
        if self.subnet.contains(&ip) {
            return own;
        }
        self.dhcp_subnet(ip).unwrap_or(own)
    }

    /// Whether any subnet hands out addresses to machines not in the inventory.
    pub fn any_unknown_pool(&self) -> bool {
        self.unknown_pool.is_some() || self.relay_subnets.iter().any(|r| r.unknown_pool.is_some())
    }

    /// `http://server:port`, the base of every URL a node is given.
    pub fn http_base(&self) -> String {
        self.http_base_at(self.server)
    }

    /// [`Network::http_base`] of a server replica at `server` (same port; `[state] dhcp_replicas`).
    pub fn http_base_at(&self, server: Ipv4Addr) -> String {
        if self.http_port == 80 {
            format!("http://{server}")
        } else {
            format!("http://{server}:{}", self.http_port)
        }
    }

    /// `https://server:https_port`, the base of the node API (enrollment, reports, barrier, token).
    pub fn https_base(&self) -> String {
        self.https_base_at(self.server)
    }

    /// [`Network::https_base`] of a server replica at `server`.
    pub fn https_base_at(&self, server: Ipv4Addr) -> String {
        format!("https://{server}:{}", self.https_port)
    }

    /// GRUB's device for the server's HTTP side, `(http,server)`: paths are appended to it. GRUB 2.06 always
    /// connects to port 80, so this is served on `grub_http_port` (80 by default).
    pub fn grub_http_device(&self) -> String {
        if self.grub_http_port == 80 {
            format!("(http,{})", self.server)
        } else {
            // GRUB 2.12 and later take a port after the host.
            format!("(http,{}:{})", self.server, self.grub_http_port)
        }
    }
}
