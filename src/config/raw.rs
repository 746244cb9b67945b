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
    /// `[limits]`: resource caps of the server's listeners, one sub-table per protocol; every key has a default.
    #[serde(default)]
    pub limits: LimitsRaw,
    /// `[enrollment]`: how first contacts are admitted; absent means the defaults.
    #[serde(default)]
    pub enrollment: EnrollmentRaw,
    /// `[secure_boot]`: signed UKIs for the machines that boot with UEFI Secure Boot; absent means off.
    #[serde(default)]
    pub secure_boot: SecureBootRaw,
    /// `[attestation]`: TPM-attested enrollment (docs/attestation.md); absent means every machine by address.
    #[serde(default)]
    pub attestation: AttestationRaw,
    /// `[state]`: where server replicas keep their shared state; absent means the state directory.
    #[serde(default)]
    pub state: StateRaw,
    /// `[store]`: where the images are kept (the `dir` store, or an S3 bucket with a local cache).
    #[serde(default)]
    pub store: StoreRaw,
}

/// `[attestation]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationRaw {
    /// The identity of machines whose entry has no `identity`: `"tpm"` or `"address"`; default `"address"`.
    pub identity: Option<String>,
    /// Manufacturer CA certificates (PEM) an EK certificate must chain to, relative to `cluster.toml`;
    /// empty means EK certificates are not checked (the EK is then pinned or approved).
    #[serde(default)]
    pub manufacturer_ca: Vec<String>,
    /// TPM machines must attest Secure Boot enabled (PCR 7); default false.
    #[serde(default)]
    pub require_secure_boot: bool,
    /// Accept TPM machines that boot without Secure Boot (iPXE → kernel: the kernel is proven, the initrd and the
    /// command line are not); default false (such a machine is a configuration error).
    #[serde(default)]
    pub allow_unbound_initrd: bool,
}

/// `[state]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRaw {
    /// `dir` (default) or `etcd`.
    pub backend: Option<String>,
    /// etcd client URLs.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The key prefix; default `/imgbuild/<cluster name>/`.
    pub prefix: Option<String>,
    /// CA certificate (PEM) of the etcd members, relative to `cluster.toml`.
    pub ca: Option<String>,
    /// Client certificate (PEM), relative to `cluster.toml`.
    pub cert: Option<String>,
    /// Client key (PEM), relative to `cluster.toml`.
    pub key: Option<String>,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: Option<u64>,
    /// How many events the shared history keeps.
    pub events_kept: Option<u64>,
    /// The `[network] server` address of every DHCP replica, in a fixed order: each hands out its own block of
    /// the unknown pools.
    #[serde(default)]
    pub dhcp_replicas: Vec<String>,
}

/// `[store]` as written. Keys other than these are kept in `other` so validation can name them (and refuse
/// credentials, which never belong in `cluster.toml`) with their line.
#[derive(Debug, Default, Deserialize)]
pub struct StoreRaw {
    /// `dir` (default) or `s3`.
    pub backend: Option<String>,
    /// The S3 endpoint URL (`https://…`; `http://` only on loopback).
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: Option<String>,
    /// The S3 region; default `us-east-1`.
    pub region: Option<String>,
    /// The local read-through cache, relative to `cluster.toml`; default `<paths.cache>/store`.
    pub cache: Option<String>,
    /// An AWS-style credentials file (`aws_access_key_id`, `aws_secret_access_key`), relative to
    /// `cluster.toml`; default: the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub credentials_file: Option<String>,
    /// A CA certificate (PEM) for the endpoint's TLS, relative to `cluster.toml`.
    pub ca: Option<String>,
    /// Every other key, refused in validation.
    #[serde(flatten)]
    pub other: BTreeMap<String, toml::Value>,
}

/// `[enrollment]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRaw {
    /// Hold every first contact as pending until `imgbuild enroll approve <host>`; default false.
    #[serde(default)]
    pub approve: bool,
}

/// `[secure_boot]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBootRaw {
    /// Build a signed UKI per role and boot Secure Boot machines from it; default false.
    #[serde(default)]
    pub enabled: bool,
    /// The roles whose machines boot with Secure Boot unless their `[[machines]]` entry says otherwise;
    /// default every role.
    pub roles: Option<Vec<String>>,
    /// Your own db signing key (PEM), relative to `cluster.toml`; default the one `imgbuild secrets init` makes.
    pub db_key: Option<String>,
    /// The certificate of `db_key` (PEM); given together with it.
    pub db_cert: Option<String>,
    /// The state disk named by the signed UKI command line of every role (a UKI names no machine); default
    /// `/dev/vda`. Every Secure Boot machine's `state_disk` must equal it.
    pub state_disk: Option<String>,
    /// Whether the signed UKI command line lets the initrd create the state partition on a blank disk; default
    /// false. Every Secure Boot machine's `init_blank` must equal it.
    #[serde(default)]
    pub init_blank: bool,
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
    /// The node interface kube-vip announces on; default empty: the NIC the node booted from.
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
    String::new()
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

/// `[[network.relay_subnets]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySubnetRaw {
    /// The subnet, an IPv4 CIDR.
    pub subnet: String,
    /// Its default router, an IPv4 address inside it.
    pub gateway: String,
    /// Its DNS servers; default `[network] dns`.
    pub dns: Option<Vec<String>>,
    /// Addresses for its machines not in the inventory; absent: none.
    pub unknown_pool: Option<PoolRaw>,
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
    /// NTP servers for the nodes (IPv4 addresses or host names); default: the gateway.
    pub ntp: Option<Vec<String>>,
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
    /// The HTTPS port of the node API (enrollment, token, barrier, node events); default 8443.
    #[serde(default = "default_https_port")]
    pub https_port: i64,
    /// The TFTP port; default 69.
    #[serde(default = "default_tftp_port")]
    pub tftp_port: i64,
    /// Addresses for machines not in the inventory; absent: unknown MACs get no answer.
    pub unknown_pool: Option<PoolRaw>,
    /// Further subnets behind DHCP relays (`[[network.relay_subnets]]`); default none.
    #[serde(default)]
    pub relay_subnets: Vec<RelaySubnetRaw>,
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
fn default_https_port() -> i64 {
    8443
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
    /// Boots its role's signed UKI under UEFI Secure Boot; absent: as `[secure_boot] roles` says.
    pub secure_boot: Option<bool>,
    /// `"tpm"` (enrolls by TPM attestation) or `"address"`; absent: `[attestation] identity`.
    pub identity: Option<String>,
    /// The SHA-256 of the machine's TPM endorsement key (its TPMT_PUBLIC), 64 hex digits; absent: learned on
    /// first contact and held as pending until `imgbuild enroll approve <host>`.
    pub ek_sha256: Option<String>,
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

/// `[limits]` as written: one sub-table per listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRaw {
    /// `[limits.tftp]`.
    #[serde(default)]
    pub tftp: TftpLimitsRaw,
    /// `[limits.dhcp]`.
    #[serde(default)]
    pub dhcp: DhcpLimitsRaw,
    /// `[limits.events]`: the event log and the status table.
    #[serde(default)]
    pub events: EventLimitsRaw,
    /// `[limits.http]`.
    #[serde(default)]
    pub http: HttpLimitsRaw,
}

/// `[limits.tftp]` as written (integers range-checked and durations parsed in validation).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpLimitsRaw {
    /// Transfers in flight at once, all clients together; default 512.
    pub transfers: Option<i64>,
    /// Transfers in flight at once from one client address; default 8.
    pub per_address: Option<i64>,
    /// The largest retransmission timeout a client may ask for (RFC 2349 `timeout`); default `"5s"`.
    pub max_client_timeout: Option<String>,
    /// The longest a transfer may last, start to end; default `"5m"`.
    pub lifetime: Option<String>,
}

/// `[limits.dhcp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpLimitsRaw {
    /// Addresses kept out of use after DECLINEs at once; default 1024.
    pub declined: Option<i64>,
    /// How long a declined address is kept out of use; default `"10m"`.
    pub decline_hold: Option<String>,
}

/// `[limits.events]` as written: integers as `i64` and durations as text, range-checked in validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLimitsRaw {
    /// Rotate `events.jsonl` when it reaches this many bytes; default 1 MiB.
    pub file_bytes: Option<i64>,
    /// How many event log files to keep, the live one included; default 4.
    pub files: Option<i64>,
    /// The longest an event the server observed waits for its fsync (humantime); default `200ms`.
    pub fsync_interval: Option<String>,
    /// The most events written between two fsyncs; default 256.
    pub fsync_batch: Option<i64>,
    /// How many boots of each node the history keeps; default 10.
    pub boots_per_node: Option<i64>,
    /// The most rows of the status table; default 512.
    pub status_rows: Option<i64>,
    /// Warnings of one kind logged per minute before the rest are only counted; default 10.
    pub warnings_per_minute: Option<i64>,
}

/// `[limits.http]` as written: counts as integers and durations as text (`"10s"`), range-checked in validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimitsRaw {
    /// Connections open at once over all HTTP listeners.
    pub max_connections: Option<i64>,
    /// Connections open at once from one address.
    pub max_connections_per_address: Option<i64>,
    /// Time to a request's complete header.
    pub header_timeout: Option<String>,
    /// Time a connection may move no byte.
    pub idle_timeout: Option<String>,
    /// Time from a request's header to the end of its body.
    pub body_timeout: Option<String>,
    /// Time one write may make no progress.
    pub write_timeout: Option<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: Option<i64>,
}
