//! `cluster.toml` exactly as written: serde structures with every semantically checked field kept as text,
//! so that validation can report every problem in one run (see `validate/`).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole `cluster.toml`. Unknown keys anywhere are errors (`deny_unknown_fields`), so a misspelt key is
/// reported rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// `[cluster]`: name, Kubernetes version, pod and service networks, DNS domain, CNI.
    pub cluster: ClusterRaw,
    /// `[control_plane]`: the API server VIP and kube-vip settings.
    pub control_plane: ControlPlaneRaw,
    /// `[network]`: the provisioning network, the server's address and ports, the DHCP mode.
    pub network: NetworkRaw,
    /// `[metallb]`: ASN, BGP peers, address pools, advertisements.
    pub metallb: MetalLbRaw,
    /// `[longhorn]`: version, replica count, data path and disk.
    pub longhorn: LonghornRaw,
    /// `[[machines]]`, the inventory; absent means an empty list.
    #[serde(default)]
    pub machines: Vec<MachineRaw>,
    /// `[artifacts.<name>]`, by name; every required artifact must be present (checked in validation).
    #[serde(default)]
    pub artifacts: BTreeMap<String, ArtifactRaw>,
    /// `[images.<group>]`: the container images baked into the role images; absent means none.
    #[serde(default)]
    pub images: BTreeMap<String, ImageGroupRaw>,
    /// `[base]`: Debian release, mirror, snapshot, extra packages.
    pub base: BaseRaw,
    /// `[paths]`; every directory has a default.
    #[serde(default)]
    pub paths: PathsRaw,
}

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRaw {
    /// The cluster's name.
    pub name: String,
    /// `x.y.z`, optionally with a leading `v`.
    pub kubernetes_version: String,
    /// The pod network, an IPv4 CIDR.
    pub pod_cidr: String,
    /// The service network, an IPv4 CIDR.
    pub service_cidr: String,
    /// The DNS domain; default `cluster.local`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// `flannel` (default) or `cilium`.
    #[serde(default = "default_cni")]
    pub cni: String,
}

fn default_domain() -> String {
    "cluster.local".into()
}
fn default_cni() -> String {
    "flannel".into()
}

/// `[control_plane]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneRaw {
    /// The API server VIP, an IPv4 address.
    pub vip: String,
    /// The API server port; default 6443 (an integer, range-checked in validation).
    #[serde(default = "default_api_port")]
    pub port: i64,
    /// `arp` (default) or `bgp`.
    #[serde(default = "default_kube_vip_mode")]
    pub kube_vip_mode: String,
    /// The node interface kube-vip announces on; default `eth0`.
    #[serde(default = "default_vip_interface")]
    pub interface: String,
    /// The kube-vip image; default `ghcr.io/kube-vip/kube-vip:v1.0.1`.
    #[serde(default = "default_kube_vip_image")]
    pub kube_vip_image: String,
}

fn default_api_port() -> i64 {
    6443
}
fn default_kube_vip_mode() -> String {
    "arp".into()
}
fn default_vip_interface() -> String {
    "eth0".into()
}
fn default_kube_vip_image() -> String {
    "ghcr.io/kube-vip/kube-vip:v1.0.1".into()
}

/// `[network] unknown_pool = { start = "...", end = "..." }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRaw {
    /// First address, IPv4.
    pub start: String,
    /// Last address, IPv4, inclusive.
    pub end: String,
}

/// `[network]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRaw {
    /// The server's provisioning interface name.
    pub interface: String,
    /// The provisioning subnet, an IPv4 CIDR.
    pub subnet: String,
    /// The default router, an IPv4 address.
    pub gateway: String,
    /// DNS servers, IPv4 addresses; default none.
    #[serde(default)]
    pub dns: Vec<String>,
    /// The server's own IPv4 address on the subnet.
    pub server: String,
    /// `full` (default) or `proxy`.
    #[serde(default = "default_dhcp_mode")]
    pub dhcp_mode: String,
    /// A duration such as `"1h"` (humantime syntax), at least 1m; default `1h`.
    #[serde(default = "default_lease")]
    pub lease_time: String,
    /// The HTTP port; default 8080.
    #[serde(default = "default_http_port")]
    pub http_port: i64,
    /// The TFTP port; default 69.
    #[serde(default = "default_tftp_port")]
    pub tftp_port: i64,
    /// Addresses for machines not in the inventory; absent: unknown MACs get no answer.
    pub unknown_pool: Option<PoolRaw>,
    /// The directory of the iPXE binaries; default `/usr/lib/ipxe`.
    #[serde(default = "default_ipxe_binaries")]
    pub ipxe_binaries: String,
    /// The directory of Debian's arm64 GRUB modules; default `/usr/local/lib/imgbuild/grub/arm64-efi`.
    #[serde(default = "default_grub_modules")]
    pub grub_modules: String,
    /// The HTTP port GRUB fetches from; default 80.
    #[serde(default = "default_grub_http_port")]
    pub grub_http_port: i64,
    /// Send IPv6 router advertisements to end iPXE's IPv6 wait; default false.
    #[serde(default)]
    pub router_advertisements: bool,
}

fn default_dhcp_mode() -> String {
    "full".into()
}
fn default_lease() -> String {
    "1h".into()
}
fn default_http_port() -> i64 {
    8080
}
fn default_tftp_port() -> i64 {
    69
}
fn default_ipxe_binaries() -> String {
    "/usr/lib/ipxe".into()
}
fn default_grub_modules() -> String {
    "/usr/local/lib/imgbuild/grub/arm64-efi".into()
}
fn default_grub_http_port() -> i64 {
    80
}

/// `[metallb]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetalLbRaw {
    /// Must be `bgp` (the default), the only mode imgbuild configures.
    #[serde(default = "default_metallb_mode")]
    pub mode: String,
    /// The cluster's AS number.
    pub asn: i64,
    /// `[[metallb.peers]]`; validation requires at least one.
    #[serde(default)]
    pub peers: Vec<PeerRaw>,
    /// `[[metallb.pools]]`; default none.
    #[serde(default)]
    pub pools: Vec<AddressPoolRaw>,
    /// `[[metallb.advertisements]]`; default none.
    #[serde(default)]
    pub advertisements: Vec<AdvertisementRaw>,
}

fn default_metallb_mode() -> String {
    "bgp".into()
}

/// One `[[metallb.peers]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRaw {
    /// The peer's name, unique.
    pub name: String,
    /// The router's IPv4 address.
    pub address: String,
    /// The router's AS number.
    pub asn: i64,
    /// The BGP MD5 password, if any (a secret: never put into an image).
    pub password: Option<String>,
    /// The hold time, a duration such as `90s` (0s, or at least 3s).
    pub hold_time: Option<String>,
}

/// One `[[metallb.pools]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPoolRaw {
    /// The pool's name, unique.
    pub name: String,
    /// Ranges, each a CIDR or `a.b.c.d-e.f.g.h`.
    pub addresses: Vec<String>,
}

/// One `[[metallb.advertisements]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertisementRaw {
    /// The advertisement's name.
    pub name: String,
    /// Names of pools it announces.
    pub pools: Vec<String>,
    /// Names of peers it announces to; default none (every peer).
    #[serde(default)]
    pub peers: Vec<String>,
    /// The prefix length announced per service, if set.
    pub aggregation_length: Option<i64>,
    /// BGP communities, `ASN:value` or `a:b:c`; default none.
    #[serde(default)]
    pub communities: Vec<String>,
}

/// `[longhorn]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LonghornRaw {
    /// Longhorn's version, `x.y.z`.
    pub version: String,
    /// Replicas per volume; default 3.
    #[serde(default = "default_replicas")]
    pub replicas: i64,
    /// Absolute path of Longhorn's data on storage nodes; default `/var/lib/longhorn`.
    #[serde(default = "default_longhorn_path")]
    pub data_path: String,
    /// The data disk on storage nodes, a block device path such as `/dev/vdb`.
    pub disk: String,
}

fn default_replicas() -> i64 {
    3
}
fn default_longhorn_path() -> String {
    "/var/lib/longhorn".into()
}

/// One `[[machines]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineRaw {
    /// The MAC address, `52:54:00:12:34:56` (or with `-`).
    pub mac: String,
    /// The hostname, unique.
    pub hostname: String,
    /// `master`, `worker` or `storage`.
    pub role: String,
    /// `amd64` or `arm64`; absent means amd64.
    pub arch: Option<String>,
    /// The machine's IPv4 address.
    pub ip: String,
    /// The state disk, a block device path such as `/dev/vda`.
    pub state_disk: String,
    /// Whether the initrd may create the state partition on a blank disk; default false.
    #[serde(default)]
    pub init_blank: bool,
    /// A DHCP option 82 circuit-id or remote-id that identifies the machine, if any.
    pub relay_id: Option<String>,
}

/// One `[artifacts.<name>]` entry as written; missing fields are reported by name in validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRaw {
    /// The upstream version, substituted for `{version}`.
    pub version: Option<String>,
    /// The download URL (`https://`, `http://` or `file://`), with `{version}` and `{arch}` placeholders.
    pub url: Option<String>,
    /// The checksum file's URL; absent: `<url>.sha256`; `"none"`: upstream publishes none.
    pub checksum_url: Option<String>,
}

/// One `[images.<group>]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageGroupRaw {
    /// The roles whose images carry the group's images; absent means every role.
    pub roles: Option<Vec<String>>,
    /// The images, `[registry/]repository:tag`.
    #[serde(default)]
    pub refs: Vec<String>,
}

/// `[base]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRaw {
    /// The Debian release, `bookworm` (default) or `trixie`.
    #[serde(default = "default_release")]
    pub release: String,
    /// The Debian mirror; default `http://deb.debian.org/debian`.
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// A snapshot.debian.org timestamp such as `20261101T000000Z`, if any.
    pub snapshot: Option<String>,
    /// Extra packages for every role; default none.
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_release() -> String {
    "bookworm".into()
}
fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}

/// `[paths]` as written: directories relative to `cluster.toml`'s directory, each with a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsRaw {
    /// Role profiles; default `profiles`.
    pub profiles: Option<String>,
    /// Boot-script templates; default `ipxe`.
    pub ipxe: Option<String>,
    /// The image store; default `images`.
    pub images: Option<String>,
    /// Server state; default `state`.
    pub state: Option<String>,
    /// Cluster secrets; default `secrets`.
    pub secrets: Option<String>,
    /// Downloads and build caches; default `cache`.
    pub cache: Option<String>,
}
