//! The validated cluster description: what every other module of imgbuild reads.
//!
//! [`crate::config::load`] turns `cluster.toml` into a [`Cluster`]; nothing outside `config` parses text.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::mac::MacAddr;

/// A node's job in the cluster. Each role has a profile under `profiles/<role>/` and one pinned image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
    Storage,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Master, Role::Worker, Role::Storage];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
            Role::Storage => "storage",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "master" => Ok(Role::Master),
            "worker" => Ok(Role::Worker),
            "storage" => Ok(Role::Storage),
            other => Err(format!(
                "unknown role {other:?}; valid roles are master, worker, storage"
            )),
        }
    }
}

/// A machine's CPU architecture (Debian's names). It picks the image (one per role and architecture) and, at
/// the boot decision, the boot loader: iPXE on amd64, GRUB on arm64 (Debian ships no arm64 iPXE).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// Debian's architecture name (`dpkg --print-architecture`), also used in artifact URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            other => Err(format!(
                "unknown architecture {other:?}; valid architectures are amd64, arm64 (Debian's names)"
            )),
        }
    }
}

/// Which container network the first master installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cni {
    Flannel,
    Cilium,
}

/// How kube-vip announces the control-plane VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeVipMode {
    Arp,
    Bgp,
}

/// Whether imgbuild hands out addresses (`full`) or only boot information beside another DHCP server (`proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    Full,
    Proxy,
}

/// A Kubernetes-style `x.y.z` version. Serialized as the string `x.y.z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a version of the form x.y.z (for example 1.37.2)");
        let s2 = s.strip_prefix('v').unwrap_or(s);
        let parts: Vec<&str> = s2.split('.').collect();
        if parts.len() != 3
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        Ok(Version {
            major: parts[0].parse().map_err(|_| bad())?,
            minor: parts[1].parse().map_err(|_| bad())?,
            patch: parts[2].parse().map_err(|_| bad())?,
        })
    }
}

/// The whole, validated cluster description.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// The file it was read from.
    pub path: PathBuf,
    /// sha256 of the file's bytes.
    pub digest: String,
    pub cluster: ClusterInfo,
    pub control_plane: ControlPlane,
    pub network: Network,
    pub metallb: MetalLb,
    pub longhorn: Longhorn,
    pub machines: Vec<Machine>,
    pub artifacts: BTreeMap<String, Artifact>,
    pub base: Base,
    pub paths: Paths,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    pub name: String,
    pub kubernetes_version: Version,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub domain: String,
    pub cni: Cni,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlPlane {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub kube_vip_mode: KubeVipMode,
    /// The node interface kube-vip announces the VIP on (nodes boot with `net.ifnames=0`, so `eth0`).
    pub interface: String,
    pub kube_vip_image: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip >= self.start && ip <= self.end
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// The server's provisioning interface. DHCP binds to it and nothing else.
    pub interface: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    /// The server's own address on the provisioning network (TFTP `next-server`, HTTP host).
    pub server: Ipv4Addr,
    pub dhcp_mode: DhcpMode,
    pub lease_secs: u32,
    pub http_port: u16,
    pub tftp_port: u16,
    /// Addresses for machines not in the inventory. `None`: unknown MACs get no answer.
    pub unknown_pool: Option<Pool>,
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
    /// `http://server:port`, the base of every URL a node is given.
    pub fn http_base(&self) -> String {
        if self.http_port == 80 {
            format!("http://{}", self.server)
        } else {
            format!("http://{}:{}", self.server, self.http_port)
        }
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

#[derive(Debug, Clone, Serialize)]
pub struct MetalLb {
    pub asn: u32,
    pub peers: Vec<BgpPeer>,
    pub pools: Vec<AddressPool>,
    pub advertisements: Vec<Advertisement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BgpPeer {
    pub name: String,
    pub address: Ipv4Addr,
    pub asn: u32,
    /// The BGP MD5 password. A secret: it reaches the first master through enrollment, never an image.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    pub has_password: bool,
    /// Hold time such as `90s`.
    pub hold_time: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AddressPool {
    pub name: String,
    pub addresses: Vec<IpRange>,
}

/// An inclusive IPv4 range, written in `cluster.toml` (and rendered for MetalLB) as a CIDR or `a.b.c.d-e.f.g.h`.
#[derive(Debug, Clone, Serialize)]
pub struct IpRange {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    /// The text as written, which MetalLB accepts verbatim.
    pub text: String,
}

impl IpRange {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip >= self.start && ip <= self.end
    }

    pub fn overlaps(&self, start: Ipv4Addr, end: Ipv4Addr) -> bool {
        self.start <= end && start <= self.end
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Advertisement {
    pub name: String,
    pub pools: Vec<String>,
    pub peers: Vec<String>,
    pub aggregation_length: Option<u8>,
    pub communities: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Longhorn {
    pub version: String,
    pub replicas: u8,
    pub data_path: String,
    /// The block device on storage nodes that holds Longhorn's data.
    pub disk: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub mac: MacAddr,
    pub hostname: String,
    pub role: Role,
    /// CPU architecture (default amd64): with the role, it picks the image.
    pub arch: Arch,
    pub ip: Ipv4Addr,
    /// The block device holding the persistent state partition (label `IMGBUILD-STATE`).
    pub state_disk: String,
    /// Whether the initrd may create the state partition when the disk is blank.
    pub init_blank: bool,
    /// A DHCP relay agent circuit-id or remote-id (option 82) that identifies this machine instead of its MAC.
    pub relay_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub version: String,
    /// Where the artifact is downloaded from (`https://`, `http://` or `file://`).
    pub url: String,
    /// Where its upstream checksum is published; by default `<url>.sha256`. `None` (written `"none"`) means
    /// upstream publishes none: the first `imgbuild fetch` records the digest in `imgbuild.lock` and says so.
    pub checksum_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Base {
    pub release: String,
    pub mirror: String,
    /// A snapshot.debian.org timestamp such as `20261101T000000Z`: pins the package set in time.
    pub snapshot: Option<String>,
    pub packages: Vec<String>,
}

/// Directories imgbuild reads and writes, resolved against the directory of `cluster.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct Paths {
    pub root: PathBuf,
    pub profiles: PathBuf,
    pub ipxe: PathBuf,
    pub images: PathBuf,
    pub state: PathBuf,
    pub secrets: PathBuf,
    pub cache: PathBuf,
    pub lock: PathBuf,
}

impl Cluster {
    /// Whether any machine in the inventory is of `arch`.
    pub fn has_arch(&self, arch: Arch) -> bool {
        self.machines.iter().any(|m| m.arch == arch)
    }

    pub fn machine_by_mac(&self, mac: MacAddr) -> Option<&Machine> {
        self.machines.iter().find(|m| m.mac == mac)
    }

    pub fn machine_by_hostname(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.hostname == name)
    }

    pub fn machine_by_relay_id(&self, id: &str) -> Option<&Machine> {
        self.machines
            .iter()
            .find(|m| m.relay_id.as_deref() == Some(id))
    }

    /// The master that runs `kubeadm init`: the first master in inventory order.
    pub fn first_master(&self) -> Option<&Machine> {
        self.machines.iter().find(|m| m.role == Role::Master)
    }

    pub fn machines_with_role(&self, role: Role) -> impl Iterator<Item = &Machine> {
        self.machines.iter().filter(move |m| m.role == role)
    }
}
