//! The validated cluster description: what every other module of imgbuild reads.
//!
//! [`crate::config::load`] turns `cluster.toml` into a [`Cluster`]; nothing outside `config` parses text.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::image_ref::ImageRef;
use super::mac::MacAddr;
pub use super::network::{DhcpMode, DhcpSubnet, Network, Pool, PoolShare, RelaySubnet};

/// A node's job in the cluster. Each role has a profile under `profiles/<role>/` and one pinned image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the control plane (API server, etcd, kube-vip); the first one in inventory order runs `kubeadm init`,
    /// the others join as control-plane nodes.
    Master,
    /// Runs workloads; joins with `kubeadm join` once the first master has published a token.
    Worker,
    /// Joins like a worker and also carries Longhorn: its `[longhorn] disk` is mounted at the data path and
    /// registered as a Longhorn disk.
    Storage,
}

impl Role {
    /// Every role, in the order commands and reports list them.
    pub const ALL: [Role; 3] = [Role::Master, Role::Worker, Role::Storage];

    /// The role's name as written in `cluster.toml` and used in profile directories and image names.
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
    /// x86-64 machines (BIOS or UEFI); boot through iPXE.
    #[default]
    Amd64,
    /// 64-bit ARM machines (UEFI only); boot through GRUB.
    Arm64,
}

impl Arch {
    /// Every architecture, in the order images are built and listed.
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
    /// flannel (the default): the `cni-manifest` artifact with its pod network replaced by `cluster.pod_cidr`.
    Flannel,
    /// Cilium, with its own BGP off: MetalLB owns the peering.
    Cilium,
}

/// How kube-vip announces the control-plane VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubeVipMode {
    /// kube-vip answers ARP for the VIP from the current leader (the only mode the first-boot templates support).
    Arp,
    /// kube-vip announces the VIP over BGP (accepted by `cluster.toml`, refused when the master templates render).
    Bgp,
}

/// A Kubernetes-style `x.y.z` version. Serialized as the string `x.y.z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major version, `1` in `1.36.3`.
    pub major: u32,
    /// Minor version, `36` in `1.36.3`.
    pub minor: u32,
    /// Patch release, `3` in `1.36.3`.
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
        let bad = || format!("{s:?} is not a version of the form x.y.z (for example 1.36.3)");
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
    /// `[cluster]`: name, Kubernetes version, pod and service networks.
    pub cluster: ClusterInfo,
    /// `[control_plane]`: the API server VIP and how kube-vip announces it.
    pub control_plane: ControlPlane,
    /// `[network]`: the provisioning network and how the server serves it (DHCP, TFTP, HTTP).
    pub network: Network,
    /// `[metallb]`: BGP peers, address pools and advertisements for LoadBalancer services.
    pub metallb: MetalLb,
    /// `[longhorn]`: Longhorn's version, replica count and data disk.
    pub longhorn: Longhorn,
    /// `[[machines]]`: the inventory, in file order (which decides the first master).
    pub machines: Vec<Machine>,
    /// `[artifacts.<name>]`: upstream downloads by name (`kubeadm`, `containerd`, ...), all of `REQUIRED_ARTIFACTS`
    /// present.
    pub artifacts: BTreeMap<String, Artifact>,
    /// `[images.<group>]`: the container images baked into the role images, in group then file order.
    pub images: Vec<ContainerImage>,
    /// containerd's sandbox image, the full reference of the one pause image `[images.*]` lists for every role
    /// (`registry.k8s.io/pause:3.10.2`): the templates write it as `cluster.sandbox_image`.
    pub sandbox_image: String,
    /// `[base]`: the Debian release and packages of the base layer.
    pub base: Base,
    /// `[paths]`: the directories imgbuild reads and writes, made absolute.
    pub paths: Paths,
    /// `[limits]`: the listeners' and the recorded state's caps and timeouts, every one defaulted.
    pub limits: super::limits::Limits,
    /// `[enrollment]`: how a node's first contact is admitted.
    pub enrollment: Enrollment,
    /// `[secure_boot]`: whether images carry a signed UKI, and the db key that signs it.
    pub secure_boot: SecureBoot,
    /// `[attestation]`: how TPM machines prove who they are and what they booted (docs/attestation.md).
    pub attestation: Attestation,
    /// `[state]`: the state directory or the etcd cluster the server replicas share.
    pub state: super::state::State,
    /// `[store]`: the image store backend (`dir`, or an S3 bucket with a local cache).
    pub store: super::store::Store,
}

/// How a machine proves it is the inventory machine when it enrolls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Identity {
    /// By its MAC, its inventory address and the enrollment window (for machines without a TPM).
    #[default]
    Address,
    /// By its TPM: endorsement key, credential activation and a quote of the boot PCRs (docs/attestation.md).
    Tpm,
}

impl Identity {
    /// As written in `cluster.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Address => "address",
            Identity::Tpm => "tpm",
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Identity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "address" => Ok(Identity::Address),
            "tpm" => Ok(Identity::Tpm),
            _ => Err(format!(
                "unknown identity {s:?}; expected \"tpm\" or \"address\""
            )),
        }
    }
}

/// `[attestation]`: TPM-attested enrollment settings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Attestation {
    /// The identity of machines whose entry does not say.
    pub default_identity: Identity,
    /// Manufacturer CA certificates (PEM, absolute paths) an EK certificate must chain to; empty: not checked.
    pub manufacturer_ca: Vec<PathBuf>,
    /// TPM machines must attest that Secure Boot was enabled (the `SecureBoot` variable in PCR 7's log).
    pub require_secure_boot: bool,
    /// TPM machines may boot without Secure Boot, through iPXE: attestation then proves their iPXE binary and
    /// kernel, not their initrd or command line (docs/attestation.md). Off: such a machine is refused by `check`.
    pub allow_unbound_initrd: bool,
}

/// `[enrollment]`: how a node's first contact is admitted (docs/security.md).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Enrollment {
    /// Hold a node's first contact as *pending* (shown on the page and in `imgbuild status`) until
    /// `imgbuild enroll approve <host>`; default false (the first contact from the inventory address enrolls).
    pub approve: bool,
}

/// `[secure_boot]`: the signed unified kernel image (UKI) of each role, and the key it is signed with.
#[derive(Debug, Clone, Serialize)]
pub struct SecureBoot {
    /// Images carry a UKI signed with the db key; machines with `secure_boot` boot it directly from firmware.
    pub enabled: bool,
    /// The roles whose machines boot with Secure Boot by default.
    pub roles: Vec<Role>,
    /// The db private key (PEM) the UKIs are signed with: `secrets/secureboot/db.key` unless your own is given.
    pub db_key: PathBuf,
    /// The certificate of `db_key` (PEM), enrolled in the firmware's db.
    pub db_cert: PathBuf,
    /// `db_key` and `db_cert` are the user's own (given in `cluster.toml`), not made by `imgbuild secrets init`.
    pub own_db: bool,
    /// The state disk on every role's signed UKI command line (`imgbuild.state_disk=`): a UKI names no machine,
    /// so this is the role-level default every Secure Boot machine's `state_disk` equals.
    pub state_disk: String,
    /// `imgbuild.state_init=` on the signed UKI command line: the initrd may create the state partition on a
    /// blank disk. Every Secure Boot machine's `init_blank` equals it.
    pub init_blank: bool,
}

/// The state disk of a UKI's signed command line when `[secure_boot] state_disk` is absent.
pub const DEFAULT_UKI_STATE_DISK: &str = "/dev/vda";

/// Where `imgbuild secrets init` keeps the Secure Boot key hierarchy, under the secrets directory.
pub const SECUREBOOT_DIR: &str = "secureboot";

/// `[cluster]`: what kubeadm's ClusterConfiguration is rendered from.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    /// The cluster's name (kubeadm `clusterName`, the kubeconfig's cluster entry).
    pub name: String,
    /// The Kubernetes version to install; `cluster.toml` may write it with a leading `v`. Must equal the `kubeadm`
    /// artifact's version.
    pub kubernetes_version: Version,
    /// The pod network (kubeadm `podSubnet`, flannel's network), e.g. `10.244.0.0/16`.
    pub pod_cidr: Ipv4Net,
    /// The service network (kubeadm `serviceSubnet`), e.g. `10.96.0.0/12`.
    pub service_cidr: Ipv4Net,
    /// The cluster DNS domain (kubeadm `dnsDomain`); default `cluster.local`.
    pub domain: String,
    /// The pod network add-on the first master installs; default flannel.
    pub cni: Cni,
}

/// `[control_plane]`: the highly available API server endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlane {
    /// The virtual IP in front of the API servers (the `controlPlaneEndpoint` host), announced by kube-vip on the
    /// masters.
    pub vip: Ipv4Addr,
    /// The API server port on the VIP and on each master; default 6443.
    pub port: u16,
    /// How kube-vip announces `vip`; default ARP.
    pub kube_vip_mode: KubeVipMode,
    /// The node interface kube-vip announces the VIP on; empty: the NIC the node booted from (found by its MAC
    /// at first boot, never a fixed `eth0`).
    pub interface: String,
    /// The kube-vip container image the masters' static pod runs; default `ghcr.io/kube-vip/kube-vip:v1.0.1`.
    pub kube_vip_image: String,
}

/// `[metallb]`: MetalLB in BGP mode, rendered into its IPAddressPool, BGPPeer and BGPAdvertisement objects.
#[derive(Debug, Clone, Serialize)]
pub struct MetalLb {
    /// The cluster's own AS number, which MetalLB speaks from (BGPPeer `myASN`).
    pub asn: u32,
    /// `[[metallb.peers]]`: the routers MetalLB peers with.
    pub peers: Vec<BgpPeer>,
    /// `[[metallb.pools]]`: the addresses LoadBalancer services get.
    pub pools: Vec<AddressPool>,
    /// `[[metallb.advertisements]]`: which pools are announced to which peers.
    pub advertisements: Vec<Advertisement>,
}

/// One `[[metallb.peers]]` entry: a BGP router MetalLB peers with.
#[derive(Debug, Clone, Serialize)]
pub struct BgpPeer {
    /// The peer's name, unique; advertisements refer to it and its password Secret is `metallb-bgp-<name>`.
    pub name: String,
    /// The router's address.
    pub address: Ipv4Addr,
    /// The router's AS number (BGPPeer `peerASN`).
    pub asn: u32,
    /// The BGP MD5 password. A secret: it reaches the first master through enrollment, never an image.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// Whether `password` is set; kept for templates and reports, which never see the password itself.
    pub has_password: bool,
    /// Hold time such as `90s`.
    pub hold_time: Option<String>,
}

/// One `[[metallb.pools]]` entry: a named set of addresses for LoadBalancer services.
#[derive(Debug, Clone, Serialize)]
pub struct AddressPool {
    /// The pool's name, unique; advertisements refer to it.
    pub name: String,
    /// The pool's ranges, each a CIDR or `start-end`; they must not overlap the machines' addresses.
    pub addresses: Vec<IpRange>,
}

/// An inclusive IPv4 range, written in `cluster.toml` (and rendered for MetalLB) as a CIDR or `a.b.c.d-e.f.g.h`.
#[derive(Debug, Clone, Serialize)]
pub struct IpRange {
    /// First address of the range.
    pub start: Ipv4Addr,
    /// Last address of the range, included.
    pub end: Ipv4Addr,
    /// The text as written, which MetalLB accepts verbatim.
    pub text: String,
}

impl IpRange {
    /// Whether `ip` lies within the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip >= self.start && ip <= self.end
    }

    /// Whether the range shares any address with the inclusive range `start..=end`.
    pub fn overlaps(&self, start: Ipv4Addr, end: Ipv4Addr) -> bool {
        self.start <= end && start <= self.end
    }
}

/// One `[[metallb.advertisements]]` entry: a BGPAdvertisement announcing pools to peers.
#[derive(Debug, Clone, Serialize)]
pub struct Advertisement {
    /// The advertisement's name (the BGPAdvertisement object's name).
    pub name: String,
    /// Names of the `[[metallb.pools]]` it announces.
    pub pools: Vec<String>,
    /// Names of the `[[metallb.peers]]` it announces to; empty means every peer.
    pub peers: Vec<String>,
    /// BGP aggregation length (prefix length announced per service, e.g. 32); `None` leaves MetalLB's default.
    pub aggregation_length: Option<u8>,
    /// BGP communities attached, as `ASN:value` (or a large community `a:b:c`).
    pub communities: Vec<String>,
}

/// `[longhorn]`: the Longhorn storage install on the storage nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Longhorn {
    /// Longhorn's version, `x.y.z`, written into its default settings; should match the `longhorn-manifest`
    /// artifact.
    pub version: String,
    /// Default replica count per volume (default 3); no more than the number of storage nodes.
    pub replicas: u8,
    /// Absolute path on storage nodes where `disk` is mounted and Longhorn keeps volume data; default
    /// `/var/lib/longhorn`.
    pub data_path: String,
    /// The block device on storage nodes that holds Longhorn's data.
    pub disk: String,
}

/// One `[[machines]]` entry: a machine of the inventory.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// The MAC address of the interface it boots from; identifies the machine to DHCP (unless `relay_id` does).
    pub mac: MacAddr,
    /// Its hostname, unique in the inventory; given on the kernel command line (`systemd.hostname=`), so also its
    /// Kubernetes node name.
    pub hostname: String,
    /// Its role, which picks the profile and, with `arch`, the pinned image it boots.
    pub role: Role,
    /// CPU architecture (default amd64): with the role, it picks the image.
    pub arch: Arch,
    /// Its fixed IPv4 address, handed out by DHCP in `full` mode; inside `network.subnet`.
    pub ip: Ipv4Addr,
    /// The block device holding the persistent state partition (label `IMGBUILD-STATE`).
    pub state_disk: String,
    /// Whether the initrd may create the state partition when the disk is blank.
    pub init_blank: bool,
    /// A DHCP relay agent circuit-id or remote-id (option 82) that identifies this machine instead of its MAC.
    pub relay_id: Option<String>,
    /// Boots its role's signed UKI under UEFI Secure Boot (its `secure_boot`, else `[secure_boot] roles`).
    pub secure_boot: bool,
    /// How it proves who it is when it enrolls (its `identity`, else `[attestation] identity`).
    pub identity: Identity,
    /// The SHA-256 of its TPM endorsement key's public area, when pinned; else learned on first contact and
    /// approved with `imgbuild enroll approve <host>`.
    pub ek_sha256: Option<[u8; 32]>,
}

/// One container image a role needs: written by tag in `cluster.toml`; `imgbuild.lock` records its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerImage {
    /// The `[images.<group>]` it is listed in (`kubernetes`, `longhorn`, your own `ingress`, ...).
    pub group: String,
    /// The parsed reference.
    pub reference: ImageRef,
    /// The roles whose images carry it, in [`Role::ALL`] order.
    pub roles: Vec<Role>,
}

/// One `[artifacts.<name>]` entry: a file downloaded from upstream and verified by sha256.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    /// The upstream version, substituted for `{version}` in `url` and `checksum_url`.
    pub version: String,
    /// Where the artifact is downloaded from (`https://`, `http://` or `file://`).
    pub url: String,
    /// Where its upstream checksum is published; by default `<url>.sha256`. `None` (written `"none"`) means
    /// upstream publishes none: the first `imgbuild fetch` records the digest in `imgbuild.lock` and says so.
    pub checksum_url: Option<String>,
}

/// `[base]`: the Debian root filesystem every image starts from.
#[derive(Debug, Clone, Serialize)]
pub struct Base {
    /// The Debian release, `bookworm` (default) or `trixie`.
    pub release: String,
    /// The Debian mirror `mmdebstrap` installs from; default `http://deb.debian.org/debian`.
    pub mirror: String,
    /// A snapshot.debian.org timestamp such as `20261101T000000Z`: pins the package set in time.
    pub snapshot: Option<String>,
    /// Extra Debian packages installed in every role's image, beside the ones the role's profile chain lists.
    pub packages: Vec<String>,
}

/// Directories imgbuild reads and writes, resolved against the directory of `cluster.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct Paths {
    /// The directory `cluster.toml` is in; every other path is resolved against it.
    pub root: PathBuf,
    /// Role profiles and their templates (`[paths] profiles`, default `profiles/`).
    pub profiles: PathBuf,
    /// Boot-script templates (`[paths] ipxe`, default `ipxe/`).
    pub ipxe: PathBuf,
    /// The image store: one directory per built image (`[paths] images`, default `images/`).
    pub images: PathBuf,
    /// Server state: image pins, the DHCP lease journal, enrollment state, the event log (`[paths] state`, default
    /// `state/`).
    pub state: PathBuf,
    /// Cluster secrets: CAs, keys, bootstrap tokens (`[paths] secrets`, default `secrets/`).
    pub secrets: PathBuf,
    /// Downloads and build caches: artifacts, base layers, initrds, work directories (`[paths] cache`, default
    /// `cache/`).
    pub cache: PathBuf,
    /// `imgbuild.lock` beside `cluster.toml`, the verified digest of every artifact (not configurable).
    pub lock: PathBuf,
}

/// The provisioning CA's certificate in the secrets directory (public: it goes into every image, so nodes can
/// verify the server's HTTPS certificate). `imgbuild secrets init` writes it beside its key.
pub const PROVISIONING_CA_CERT: &str = "provisioning-ca.crt";

impl Paths {
    /// `secrets/provisioning-ca.crt`.
    pub fn provisioning_ca_cert(&self) -> PathBuf {
        self.secrets.join(PROVISIONING_CA_CERT)
    }
}

impl Cluster {
    /// Whether any machine in the inventory is of `arch`.
    pub fn has_arch(&self, arch: Arch) -> bool {
        self.machines.iter().any(|m| m.arch == arch)
    }

    /// The inventory machine with this MAC, if any.
    pub fn machine_by_mac(&self, mac: MacAddr) -> Option<&Machine> {
        self.machines.iter().find(|m| m.mac == mac)
    }

    /// The inventory machine with this hostname, if any.
    pub fn machine_by_hostname(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.hostname == name)
    }

    /// The inventory machine whose `relay_id` is `id` (a DHCP option 82 circuit-id or remote-id), if any.
    pub fn machine_by_relay_id(&self, id: &str) -> Option<&Machine> {
        self.machines
            .iter()
            .find(|m| m.relay_id.as_deref() == Some(id))
    }

    /// The master that runs `kubeadm init`: the first master in inventory order.
    pub fn first_master(&self) -> Option<&Machine> {
        self.machines.iter().find(|m| m.role == Role::Master)
    }

    /// The container images the image of `role` carries, each once, in `cluster.toml` order.
    pub fn images_for(&self, role: Role) -> Vec<&ContainerImage> {
        let mut seen = std::collections::BTreeSet::new();
        self.images
            .iter()
            .filter(|i| i.roles.contains(&role) && seen.insert(i.reference.full()))
            .collect()
    }

    /// The inventory machines of `role`, in inventory order.
    pub fn machines_with_role(&self, role: Role) -> impl Iterator<Item = &Machine> {
        self.machines.iter().filter(move |m| m.role == role)
    }
}
