//! `cluster.toml` exactly as written: serde structures with every semantically checked field kept as text,
//! so that validation can report every problem in one run (see `validate/`).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub cluster: ClusterRaw,
    pub control_plane: ControlPlaneRaw,
    pub network: NetworkRaw,
    pub metallb: MetalLbRaw,
    pub longhorn: LonghornRaw,
    #[serde(default)]
    pub machines: Vec<MachineRaw>,
    #[serde(default)]
    pub artifacts: BTreeMap<String, ArtifactRaw>,
    pub base: BaseRaw,
    #[serde(default)]
    pub paths: PathsRaw,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRaw {
    pub name: String,
    pub kubernetes_version: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    #[serde(default = "default_domain")]
    pub domain: String,
    #[serde(default = "default_cni")]
    pub cni: String,
}

fn default_domain() -> String {
    "cluster.local".into()
}
fn default_cni() -> String {
    "flannel".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneRaw {
    pub vip: String,
    #[serde(default = "default_api_port")]
    pub port: i64,
    #[serde(default = "default_kube_vip_mode")]
    pub kube_vip_mode: String,
    #[serde(default = "default_vip_interface")]
    pub interface: String,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRaw {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRaw {
    pub interface: String,
    pub subnet: String,
    pub gateway: String,
    #[serde(default)]
    pub dns: Vec<String>,
    pub server: String,
    #[serde(default = "default_dhcp_mode")]
    pub dhcp_mode: String,
    #[serde(default = "default_lease")]
    pub lease_time: String,
    #[serde(default = "default_http_port")]
    pub http_port: i64,
    #[serde(default = "default_tftp_port")]
    pub tftp_port: i64,
    pub unknown_pool: Option<PoolRaw>,
    #[serde(default = "default_ipxe_binaries")]
    pub ipxe_binaries: String,
    #[serde(default = "default_grub_modules")]
    pub grub_modules: String,
    #[serde(default = "default_grub_http_port")]
    pub grub_http_port: i64,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetalLbRaw {
    #[serde(default = "default_metallb_mode")]
    pub mode: String,
    pub asn: i64,
    #[serde(default)]
    pub peers: Vec<PeerRaw>,
    #[serde(default)]
    pub pools: Vec<AddressPoolRaw>,
    #[serde(default)]
    pub advertisements: Vec<AdvertisementRaw>,
}

fn default_metallb_mode() -> String {
    "bgp".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRaw {
    pub name: String,
    pub address: String,
    pub asn: i64,
    pub password: Option<String>,
    pub hold_time: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPoolRaw {
    pub name: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertisementRaw {
    pub name: String,
    pub pools: Vec<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    pub aggregation_length: Option<i64>,
    #[serde(default)]
    pub communities: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LonghornRaw {
    pub version: String,
    #[serde(default = "default_replicas")]
    pub replicas: i64,
    #[serde(default = "default_longhorn_path")]
    pub data_path: String,
    pub disk: String,
}

fn default_replicas() -> i64 {
    3
}
fn default_longhorn_path() -> String {
    "/var/lib/longhorn".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineRaw {
    pub mac: String,
    pub hostname: String,
    pub role: String,
    pub arch: Option<String>,
    pub ip: String,
    pub state_disk: String,
    #[serde(default)]
    pub init_blank: bool,
    pub relay_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRaw {
    pub version: Option<String>,
    pub url: Option<String>,
    pub checksum_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRaw {
    #[serde(default = "default_release")]
    pub release: String,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    pub snapshot: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
}

fn default_release() -> String {
    "bookworm".into()
}
fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsRaw {
    pub profiles: Option<String>,
    pub ipxe: Option<String>,
    pub images: Option<String>,
    pub state: Option<String>,
    pub secrets: Option<String>,
    pub cache: Option<String>,
}
