//! The boot decision: the one place that says what a machine boots.
//!
//! inventory (MAC or relay id) → machine → role and architecture → pinned image → boot file (DHCP/TFTP), boot
//! script (iPXE on amd64, a GRUB config on arm64) and kernel command line (HTTP). DHCP, TFTP and HTTP all ask a
//! [`Booter`]; none of them decides on its own.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use crate::config::{Arch, Cluster, MacAddr, Machine, Role};
use crate::image::pins::{PinMap, PinnedImage};
use crate::template::{self, TemplateError};

/// Client system architecture (DHCP option 93, RFC 4578 and the IANA registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Firmware {
    /// 0: x86 BIOS (PXE ROM).
    Bios,
    /// 7 or 9: x64 UEFI PXE.
    UefiX64,
    /// 16: x64 UEFI HTTP Boot.
    UefiX64Http,
    /// 11: ARM64 UEFI PXE.
    UefiArm64,
    /// 19: ARM64 UEFI HTTP Boot.
    UefiArm64Http,
    /// Anything else.
    Other(u16),
}

impl Firmware {
    /// The firmware for a DHCP option 93 value (`Other` for values not listed above).
    pub fn from_arch(arch: u16) -> Firmware {
        match arch {
            0 => Firmware::Bios,
            7 | 9 => Firmware::UefiX64,
            16 => Firmware::UefiX64Http,
            11 => Firmware::UefiArm64,
            19 => Firmware::UefiArm64Http,
            n => Firmware::Other(n),
        }
    }

    /// Whether the firmware boots from an `http://` URL (and wants vendor class `HTTPClient` echoed).
    pub fn is_http_boot(self) -> bool {
        matches!(self, Firmware::UefiX64Http | Firmware::UefiArm64Http)
    }

    /// Whether the firmware is UEFI (x64 or arm64, PXE or HTTP Boot); BIOS and unknown values are not.
    pub fn is_uefi(self) -> bool {
        !matches!(self, Firmware::Bios | Firmware::Other(_))
    }
}

/// What a DHCP client told us about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's hardware address (`chaddr`), the inventory key.
    pub mac: MacAddr,
    /// Option 93, if sent. `None` is treated as BIOS.
    pub arch: Option<u16>,
    /// Option 77 contains `iPXE`: the client is already iPXE and must get a script URL, not a binary.
    pub is_ipxe: bool,
    /// Option 82 circuit-id or remote-id, when relayed.
    pub relay_id: Option<String>,
}

/// The file a DHCP reply points the client at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BootFile {
    /// A name served by our TFTP server (bootfile field, next-server = us).
    Tftp(String),
    /// An `http://` URL (UEFI HTTP Boot, or iPXE fetching its script).
    Http(String),
}

impl BootFile {
    /// The text for the DHCP `file` field / option 67.
    pub fn as_str(&self) -> &str {
        match self {
            BootFile::Tftp(s) | BootFile::Http(s) => s,
        }
    }
}

/// Everything the iPXE script template of a known machine needs.
#[derive(Debug, Clone, Serialize)]
pub struct BootPlan {
    /// The machine's inventory entry (`[[machines]]` in `cluster.toml`).
    pub machine: Machine,
    /// The image pinned for the machine's role and architecture.
    pub image: PinnedImage,
    /// The HTTP server's base URL, `http://<server>:<port>` (no trailing slash).
    pub server_url: String,
    /// The kernel's full URL, `<server_url>/images/<id>/vmlinuz?sha256=<hex>` (the server refuses a mismatching
    /// digest).
    pub kernel_url: String,
    /// The initrd's full URL, `<server_url>/images/<id>/initrd.img?sha256=<hex>`.
    pub initrd_url: String,
    /// The kernel's and initrd's URL paths (with their `?sha256=`), for GRUB's `(http,server)/path`.
    pub kernel_path: String,
    /// The initrd's URL path with its `?sha256=`, for GRUB (see `kernel_path`).
    pub initrd_path: String,
    /// The root filesystem's URL, `<server_url>/images/<id>/rootfs.squashfs`, fetched by the initrd.
    pub rootfs_url: String,
    /// The full kernel command line (without `initrd=`, which the template adds for UEFI), from the template
    /// `ipxe/cmdline.j2`.
    pub cmdline: String,
}

/// Why a machine cannot boot right now; the iPXE script prints it and retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NoBoot {
    /// The MAC is not in the inventory.
    UnknownMachine {
        /// The MAC the client sent.
        mac: MacAddr,
    },
    /// No image is pinned for the machine's role on its architecture.
    NotPinned {
        /// The machine's inventory hostname.
        hostname: String,
        /// The machine's role.
        role: Role,
        /// The machine's architecture.
        arch: Arch,
    },
    /// The kernel command line template failed to render (a server bug, not the machine's).
    Template(TemplateError),
}

impl std::fmt::Display for NoBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoBoot::UnknownMachine { mac } => write!(
                f,
                "machine {mac} is not in the inventory: add a [[machines]] entry with mac = \"{mac}\" to cluster.toml"
            ),
            NoBoot::NotPinned {
                hostname,
                role,
                arch,
            } => write!(
                f,
                "{hostname}: no {arch} image is pinned for role {role}: run `imgbuild profile {role} --arch {arch}` then `imgbuild pin {role} <image-id>`"
            ),
            NoBoot::Template(e) => write!(f, "{e}"),
        }
    }
}

/// iPXE binary names for each firmware (files in `network.ipxe_binaries`).
pub const BIOS_BOOTFILE: &str = "undionly.kpxe";
/// UEFI x64 (PXE and HTTP Boot): iPXE using the firmware's network driver (SNP).
pub const UEFI_BOOTFILE: &str = "snponly.efi";
/// UEFI x64 iPXE with its own drivers; allowlisted for TFTP and `/boot/`, though the boot decision names
/// `snponly.efi`.
pub const UEFI_BOOTFILE_FULL: &str = "ipxe.efi";
/// The arm64 netboot loader: GRUB, made by the server from Debian's arm64 GRUB modules (`netboot::grub`).
pub const GRUB_ARM64_BOOTFILE: &str = "grubnetaa64.efi";
/// The same for UEFI HTTP Boot: GRUB 2.06 takes no network settings from an HTTP Boot, so this one asks DHCP
/// itself first (`net_bootp`); the PXE one uses the firmware's and saves that round trip.
pub const GRUB_ARM64_HTTP_BOOTFILE: &str = "grubhttpaa64.efi";

/// The name a Secure Boot machine's firmware fetches over TFTP: its pinned image's signed UKI (`uki.efi`),
/// resolved per peer (the TFTP loop asks [`Booter::uki_for_ip`]). No unsigned loader is served to it.
pub const UKI_BOOTFILE: &str = "uki.efi";

/// Whether `name` is one of the GRUB loaders the server makes (not a file of `network.ipxe_binaries`).
pub fn is_grub(name: &str) -> bool {
    name == GRUB_ARM64_BOOTFILE || name == GRUB_ARM64_HTTP_BOOTFILE
}

/// Where the server keeps the boot loaders it makes (the arm64 GRUB images, `netboot::grub`).
pub fn made_loader_dir(cluster: &Cluster) -> PathBuf {
    cluster.paths.state.join("boot")
}

/// The boot loader that asks the HTTP server for a machine's boot script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// iPXE (amd64): `GET /ipxe/{mac}`, templates `ipxe/*.ipxe.j2`.
    Ipxe,
    /// GRUB (arm64; Debian ships no arm64 iPXE): `GET /grub/{mac}`, templates `ipxe/*.grub.j2`.
    Grub,
}

impl Loader {
    /// The URL path segment and template suffix (`ipxe`, `grub`).
    pub fn as_str(self) -> &'static str {
        match self {
            Loader::Ipxe => "ipxe",
            Loader::Grub => "grub",
        }
    }

    /// The boot stage recorded when the script is served.
    pub fn stage(self) -> &'static str {
        match self {
            Loader::Ipxe => "ipxe-script",
            Loader::Grub => "grub-config",
        }
    }
}

/// The decision point. Built from the cluster and the pins; rebuilt on reload or re-pin.
#[derive(Debug, Clone)]
pub struct Booter {
    /// The cluster description the decisions read (inventory, network).
    pub cluster: Arc<Cluster>,
    /// The image pinned for each (role, architecture), from `state/pins.toml`.
    pub pins: PinMap,
}

impl Booter {
    /// A decision point over `cluster` and `pins`.
    pub fn new(cluster: Arc<Cluster>, pins: PinMap) -> Self {
        Booter { cluster, pins }
    }

    /// The inventory entry of a client: by relay id first (option 82 identifies the port), then by MAC.
    pub fn machine(&self, mac: MacAddr, relay_id: Option<&str>) -> Option<&Machine> {
        relay_id
            .and_then(|id| self.cluster.machine_by_relay_id(id))
            .or_else(|| self.cluster.machine_by_mac(mac))
    }

    /// The boot file for a DHCP client, or `None` when it must get no boot answer (unknown and no pool,
    /// or an architecture we have nothing for).
    pub fn dhcp_bootfile(&self, client: &Client) -> Option<BootFile> {
        let machine = self.machine(client.mac, client.relay_id.as_deref());
        if machine.is_none() && !self.cluster.network.any_unknown_pool() {
            return None;
        }
        let base = self.cluster.network.http_base();
        if client.is_ipxe {
            // Already iPXE: give the script, never the binary again (that would loop). A machine found by
            // its relay id gets the script of its inventory MAC.
            let mac = machine.map_or(client.mac, |m| m.mac);
            return Some(BootFile::Http(format!("{base}/ipxe/{mac}")));
        }
        // A Secure Boot machine's UEFI firmware boots its role's signed UKI directly: no iPXE in between.
        if let Some((img, fw)) = machine
            .and_then(|m| self.uki_image(m))
            .zip(client.arch.map(Firmware::from_arch))
        {
            match fw {
                // arm64 too: AAVMF enforces Secure Boot with the cluster's keys (docs/secure-boot.md).
                Firmware::UefiX64 | Firmware::UefiArm64 => {
                    return Some(BootFile::Tftp(UKI_BOOTFILE.into()));
                }
                Firmware::UefiX64Http | Firmware::UefiArm64Http => {
                    return Some(BootFile::Http(format!(
                        "{base}/images/{}/{UKI_BOOTFILE}",
                        img.id
                    )));
                }
                _ => {}
            }
        }
        // No option 93: BIOS, unless the inventory says the machine is arm64 (GRUB's own DHCP sends none).
        let default_arch = match machine.map(|m| m.arch) {
            Some(Arch::Arm64) => 11,
            _ => 0,
        };
        match Firmware::from_arch(client.arch.unwrap_or(default_arch)) {
            Firmware::Bios => Some(BootFile::Tftp(BIOS_BOOTFILE.into())),
            Firmware::UefiX64 => Some(BootFile::Tftp(UEFI_BOOTFILE.into())),
            Firmware::UefiX64Http => Some(BootFile::Http(format!("{base}/boot/{UEFI_BOOTFILE}"))),
            // Debian ships no arm64 iPXE; arm64 boots a GRUB netboot image (docs/lab.md, "arm64").
            Firmware::UefiArm64 => Some(BootFile::Tftp(GRUB_ARM64_BOOTFILE.into())),
            Firmware::UefiArm64Http => Some(BootFile::Http(format!(
                "{base}/boot/{GRUB_ARM64_HTTP_BOOTFILE}"
            ))),
            Firmware::Other(_) => None,
        }
    }

    /// The pinned image whose signed UKI `machine` boots: `Some` when the machine boots with Secure Boot
    /// (`secure_boot` in the inventory, or its role's default) and its pinned image carries a UKI.
    pub fn uki_image(&self, machine: &Machine) -> Option<&PinnedImage> {
        if !machine.secure_boot {
            return None;
        }
        let img = self.pins.get(&(machine.role, machine.arch))?;
        if img.uki_sha256.is_none() {
            tracing::warn!(host = %machine.hostname, image = %img.id,
                "secure_boot is on but the pinned image has no signed UKI: serving iPXE (refused by firmware that \
                 enforces Secure Boot); rebuild the image with [secure_boot] enabled and re-pin");
            return None;
        }
        Some(img)
    }

    /// The image id whose `uki.efi` TFTP serves to the machine at `ip` (its inventory address), if it boots one.
    pub fn uki_for_ip(&self, ip: std::net::IpAddr) -> Option<String> {
        let std::net::IpAddr::V4(v4) = ip else {
            return None;
        };
        let m = self.cluster.machines.iter().find(|m| m.ip == v4)?;
        self.uki_image(m).map(|i| i.id.clone())
    }

    /// Names TFTP (and `/boot/` over HTTP) may serve: the boot loaders the decision above can name.
    pub fn boot_loader_names(&self) -> &'static [&'static str] {
        &[
            BIOS_BOOTFILE,
            UEFI_BOOTFILE,
            UEFI_BOOTFILE_FULL,
            GRUB_ARM64_BOOTFILE,
            GRUB_ARM64_HTTP_BOOTFILE,
        ]
    }

    /// Names TFTP may serve: the boot loaders, and the name under which a Secure Boot machine gets its UKI.
    pub fn tftp_names(&self) -> &'static [&'static str] {
        &[
            UKI_BOOTFILE,
            BIOS_BOOTFILE,
            UEFI_BOOTFILE,
            UEFI_BOOTFILE_FULL,
            GRUB_ARM64_BOOTFILE,
            GRUB_ARM64_HTTP_BOOTFILE,
        ]
    }

    /// The directory an allowlisted boot loader is read from: Debian's iPXE binaries, or the GRUB image the
    /// server made in `state/boot/`.
    pub fn boot_loader_dir(&self, name: &str) -> PathBuf {
        if is_grub(name) {
            made_loader_dir(&self.cluster)
        } else {
            self.cluster.network.ipxe_binaries.clone()
        }
    }

    /// The boot plan of a machine: its pinned image, URLs carrying each artifact's sha256, and the kernel
    /// command line the initrd and first-boot units read.
    pub fn plan(&self, mac: MacAddr) -> Result<BootPlan, NoBoot> {
        let machine = self
            .cluster
            .machine_by_mac(mac)
            .ok_or(NoBoot::UnknownMachine { mac })?;
        let image = self
            .pins
            .get(&(machine.role, machine.arch))
            .ok_or_else(|| NoBoot::NotPinned {
                hostname: machine.hostname.clone(),
                role: machine.role,
                arch: machine.arch,
            })?;
        let net = &self.cluster.network;
        let sub = net.subnet_of(machine.ip);
        let base = net.http_base();
        let path = |file: &str, sha: &str| format!("/images/{}/{file}?sha256={sha}", image.id);
        let (kernel_path, initrd_path) = (
            path("vmlinuz", &image.kernel_sha256),
            path("initrd.img", &image.initrd_sha256),
        );
        let rootfs_url = format!("{base}/images/{}/rootfs.squashfs", image.id);
        // Every replica (`[state] dhcp_replicas`), this one first: the node goes on with the next when one dies.
        let replicas: Vec<_> = std::iter::once(net.server)
            .chain(
                self.cluster
                    .state
                    .dhcp_replicas
                    .iter()
                    .copied()
                    .filter(|ip| *ip != net.server),
            )
            .collect();
        let servers: Vec<_> = replicas.iter().map(|ip| net.http_base_at(*ip)).collect();
        let apis: Vec<_> = replicas.iter().map(|ip| net.https_base_at(*ip)).collect();
        let cmdline = template::engine_for(&self.cluster)
            .render(
                template::CMDLINE_TEMPLATE,
                &json!({
                    "machine": machine,
                    "image": image,
                    "server_url": base,
                    "servers": servers,
                    "apis": apis,
                    "rootfs_url": rootfs_url,
                    "bootif": machine.mac.bootif(),
                    "gateway": sub.gateway,
                    "netmask": sub.subnet.netmask(),
                    "nameserver": sub.dns.first(),
                }),
            )
            .map_err(NoBoot::Template)?
            .lines()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(BootPlan {
            machine: machine.clone(),
            image: image.clone(),
            server_url: base.clone(),
            kernel_url: format!("{base}{kernel_path}"),
            initrd_url: format!("{base}{initrd_path}"),
            kernel_path,
            initrd_path,
            rootfs_url,
            cmdline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARM: &str = "52:54:00:77:00:41";
    const WORKER1: &str = "52:54:00:77:00:21";

    /// The example cluster plus an arm64 worker, with a worker image pinned for `pinned` only.
    fn booter(pinned: &[Arch]) -> Booter {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut src = std::fs::read_to_string(root.join("cluster.toml")).unwrap();
        src.push_str(&format!(
            "\n[[machines]]\nhostname = \"arm-1\"\nrole = \"worker\"\narch = \"arm64\"\nmac = \"{ARM}\"\n\
             ip = \"10.77.0.41\"\nstate_disk = \"/dev/vda\"\n"
        ));
        let cluster = crate::config::load_str(&root.join("cluster.toml"), &src, root).unwrap();
        let pins = pinned
            .iter()
            .map(|a| {
                let img = PinnedImage {
                    id: format!("{a}-image"),
                    kernel_sha256: format!("k{a}"),
                    initrd_sha256: format!("i{a}"),
                    rootfs_sha256: format!("r{a}"),
                    kernel_args: vec![],
                    rootfs_verity: None,
                    uki_sha256: None,
                    standins: false,
                };
                ((Role::Worker, *a), img)
            })
            .collect();
        Booter::new(Arc::new(cluster), pins)
    }

    fn client(mac: &str, arch: Option<u16>) -> Client {
        Client {
            mac: mac.parse().unwrap(),
            arch,
            is_ipxe: false,
            relay_id: None,
        }
    }

    #[test]
    fn with_replicas_the_command_line_lists_every_replica_this_one_first() {
        let b = booter(&[Arch::Amd64]);
        let one = b.plan(WORKER1.parse().unwrap()).unwrap().cmdline;
        assert!(!one.contains("imgbuild.servers="), "{one}");
        let mut c = (*b.cluster).clone();
        c.network.server = "10.77.0.3".parse().unwrap();
        c.state.dhcp_replicas = vec!["10.77.0.1".parse().unwrap(), c.network.server];
        let b = Booter::new(Arc::new(c), b.pins.clone());
        let line = b.plan(WORKER1.parse().unwrap()).unwrap().cmdline;
        for want in [
            "imgbuild.server=http://10.77.0.3:8080 ",
            "imgbuild.servers=http://10.77.0.3:8080,http://10.77.0.1:8080 ",
            "imgbuild.apis=https://10.77.0.3:8443,https://10.77.0.1:8443 ",
        ] {
            assert!(line.contains(want), "{want} not in {line}");
        }
    }

    #[test]
    fn each_machine_boots_the_image_of_its_role_and_arch() {
        let b = booter(&[Arch::Amd64, Arch::Arm64]);
        let arm = b.plan(ARM.parse().unwrap()).unwrap();
        assert_eq!(arm.image.id, "arm64-image");
        assert_eq!(arm.kernel_path, "/images/arm64-image/vmlinuz?sha256=karm64");
        assert_eq!(
            arm.kernel_url,
            format!("http://10.77.0.1:8080{}", arm.kernel_path)
        );
        assert!(arm.cmdline.contains("systemd.hostname=arm-1"));
        let amd = b.plan("52:54:00:77:00:21".parse().unwrap()).unwrap();
        assert_eq!(amd.image.id, "amd64-image");
        assert_eq!(
            amd.initrd_path,
            "/images/amd64-image/initrd.img?sha256=iamd64"
        );
    }

    /// The command line from `ipxe/cmdline.j2`, byte for byte as the `format!`s before it made it.
    #[test]
    fn kernel_command_line_is_exact() {
        let mut b = booter(&[Arch::Amd64, Arch::Arm64]);
        // A BIOS machine (amd64), the image as pinned.
        let bios = b.plan("52:54:00:77:00:21".parse().unwrap()).unwrap();
        assert_eq!(
            bios.cmdline,
            "BOOTIF=01-52-54-00-77-00-21 ip=10.77.0.21::10.77.0.1:255.255.255.0:worker-1::off \
             nameserver=10.77.0.1 systemd.hostname=worker-1 imgbuild.server=http://10.77.0.1:8080 \
             imgbuild.mac=52:54:00:77:00:21 imgbuild.role=worker imgbuild.image=amd64-image \
             imgbuild.rootfs=http://10.77.0.1:8080/images/amd64-image/rootfs.squashfs \
             imgbuild.rootfs_sha256=ramd64 imgbuild.state_disk=/dev/vda imgbuild.state_init=1"
        );
        // An arm64 machine whose image has stand-ins and profile kernel arguments, on a network without DNS.
        let img = b.pins.get_mut(&(Role::Worker, Arch::Arm64)).unwrap();
        img.standins = true;
        img.kernel_args = vec!["console=ttyAMA0".into(), "net.ifnames=0".into()];
        let mut cluster = (*b.cluster).clone();
        cluster.network.dns.clear();
        b.cluster = Arc::new(cluster);
        let arm = b.plan(ARM.parse().unwrap()).unwrap();
        assert_eq!(
            arm.cmdline,
            "BOOTIF=01-52-54-00-77-00-41 ip=10.77.0.41::10.77.0.1:255.255.255.0:arm-1::off \
             systemd.hostname=arm-1 imgbuild.server=http://10.77.0.1:8080 imgbuild.mac=52:54:00:77:00:41 \
             imgbuild.role=worker imgbuild.image=arm64-image \
             imgbuild.rootfs=http://10.77.0.1:8080/images/arm64-image/rootfs.squashfs \
             imgbuild.rootfs_sha256=rarm64 imgbuild.state_disk=/dev/vda imgbuild.state_init=0 \
             imgbuild.standins=1 console=ttyAMA0 net.ifnames=0"
        );
    }

    /// Images with a dm-verity tree put its root hash on the command line instead of the sha256.
    #[test]
    fn the_verity_root_hash_replaces_the_sha256() {
        let mut b = booter(&[Arch::Amd64]);
        let img = b.pins.get_mut(&(Role::Worker, Arch::Amd64)).unwrap();
        img.rootfs_verity = Some(crate::image::verity::Verity {
            root_hash: "ab".repeat(32),
            hash_offset: 4096 * 3,
            salt: "cd".repeat(32),
        });
        let p = b.plan("52:54:00:77:00:21".parse().unwrap()).unwrap();
        assert!(
            p.cmdline.contains(&format!(
                "imgbuild.rootfs_verity={} imgbuild.rootfs_hash_offset=12288 ",
                "ab".repeat(32)
            )),
            "{}",
            p.cmdline
        );
        assert!(!p.cmdline.contains("rootfs_sha256"), "{}", p.cmdline);
    }

    /// A Secure Boot machine whose pinned image has a UKI gets it straight from UEFI firmware (HTTP Boot: its
    /// URL; PXE: the TFTP name resolved by address); BIOS, iPXE and machines without Secure Boot keep iPXE.
    #[test]
    fn secure_boot_machines_get_the_signed_uki_and_no_loader() {
        let mut b = booter(&[Arch::Amd64]);
        b.pins
            .get_mut(&(Role::Worker, Arch::Amd64))
            .unwrap()
            .uki_sha256 = Some("u".into());
        let w = "52:54:00:77:00:21";
        let mut cluster = (*b.cluster).clone();
        cluster
            .machines
            .iter_mut()
            .find(|m| m.mac.to_string() == w)
            .unwrap()
            .secure_boot = true;
        b.cluster = Arc::new(cluster);
        assert_eq!(
            b.dhcp_bootfile(&client(w, Some(16))),
            Some(BootFile::Http(
                "http://10.77.0.1:8080/images/amd64-image/uki.efi".into()
            ))
        );
        assert_eq!(
            b.dhcp_bootfile(&client(w, Some(7))),
            Some(BootFile::Tftp(UKI_BOOTFILE.into()))
        );
        assert_eq!(
            b.uki_for_ip("10.77.0.21".parse().unwrap()).as_deref(),
            Some("amd64-image")
        );
        assert!(b.tftp_names().contains(&UKI_BOOTFILE));
        assert!(!b.boot_loader_names().contains(&UKI_BOOTFILE));
        // BIOS has no Secure Boot: iPXE as before.
        assert_eq!(
            b.dhcp_bootfile(&client(w, None)),
            Some(BootFile::Tftp(BIOS_BOOTFILE.into()))
        );
        // Another worker without secure_boot: iPXE over TFTP.
        assert_eq!(
            b.dhcp_bootfile(&client("52:54:00:77:00:22", Some(7))),
            Some(BootFile::Tftp(UEFI_BOOTFILE.into()))
        );
        assert_eq!(b.uki_for_ip("10.77.0.22".parse().unwrap()), None);
        // An image without a UKI: the machine keeps iPXE (with a warning in the log).
        b.pins
            .get_mut(&(Role::Worker, Arch::Amd64))
            .unwrap()
            .uki_sha256 = None;
        assert_eq!(
            b.dhcp_bootfile(&client(w, Some(16))),
            Some(BootFile::Http(format!(
                "http://10.77.0.1:8080/boot/{UEFI_BOOTFILE}"
            )))
        );
    }

    #[test]
    fn an_image_of_the_other_arch_is_never_served() {
        let only_amd = booter(&[Arch::Amd64]);
        let no = only_amd.plan(ARM.parse().unwrap()).unwrap_err();
        assert_eq!(
            no,
            NoBoot::NotPinned {
                hostname: "arm-1".into(),
                role: Role::Worker,
                arch: Arch::Arm64
            }
        );
        assert!(
            no.to_string()
                .contains("imgbuild profile worker --arch arm64")
        );
        let only_arm = booter(&[Arch::Arm64]);
        assert!(matches!(
            only_arm.plan("52:54:00:77:00:21".parse().unwrap()),
            Err(NoBoot::NotPinned {
                arch: Arch::Amd64,
                ..
            })
        ));
    }

    #[test]
    fn arm64_firmware_gets_grub_over_tftp_or_http() {
        let b = booter(&[Arch::Arm64]);
        assert_eq!(
            b.dhcp_bootfile(&client(ARM, Some(11))),
            Some(BootFile::Tftp(GRUB_ARM64_BOOTFILE.into()))
        );
        assert_eq!(
            b.dhcp_bootfile(&client(ARM, Some(19))),
            Some(BootFile::Http(format!(
                "http://10.77.0.1:8080/boot/{GRUB_ARM64_HTTP_BOOTFILE}"
            )))
        );
        // GRUB's own DHCP sends no option 93: an arm64 machine of the inventory still gets a GRUB name.
        assert_eq!(
            b.dhcp_bootfile(&client(ARM, None)),
            Some(BootFile::Tftp(GRUB_ARM64_BOOTFILE.into()))
        );
        assert_eq!(
            b.dhcp_bootfile(&client("52:54:00:77:00:21", None)),
            Some(BootFile::Tftp(BIOS_BOOTFILE.into()))
        );
        assert_eq!(
            b.dhcp_bootfile(&client("52:54:00:77:00:21", Some(7))),
            Some(BootFile::Tftp(UEFI_BOOTFILE.into()))
        );
        assert_eq!(
            b.boot_loader_dir(GRUB_ARM64_BOOTFILE),
            b.cluster.paths.state.join("boot")
        );
        assert_eq!(
            b.boot_loader_dir(UEFI_BOOTFILE),
            b.cluster.network.ipxe_binaries
        );
        // Secure Boot on the arm64 machine, whose image has a UKI: AAVMF gets it directly, no GRUB.
        let mut b = b;
        b.pins
            .get_mut(&(Role::Worker, Arch::Arm64))
            .unwrap()
            .uki_sha256 = Some("u".into());
        let mut cluster = (*b.cluster).clone();
        let arm = cluster
            .machines
            .iter_mut()
            .find(|m| m.mac.to_string() == ARM);
        arm.unwrap().secure_boot = true;
        b.cluster = Arc::new(cluster);
        assert_eq!(
            b.dhcp_bootfile(&client(ARM, Some(19))),
            Some(BootFile::Http(
                "http://10.77.0.1:8080/images/arm64-image/uki.efi".into()
            ))
        );
        assert_eq!(
            b.dhcp_bootfile(&client(ARM, Some(11))),
            Some(BootFile::Tftp(UKI_BOOTFILE.into()))
        );
        assert_eq!(Loader::Grub.stage(), "grub-config");
        assert!(crate::status::STAGES.contains(&Loader::Grub.stage()));
        assert!(crate::status::STAGES.contains(&Loader::Ipxe.stage()));
    }
}
