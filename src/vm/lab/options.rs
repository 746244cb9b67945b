//! What `imgbuild lab` is asked to do: [`Options`] and their defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::DhcpMode;
use crate::vm::qemu::Firmware;

/// What `imgbuild lab` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The user's cluster.toml (the lab's is generated from it).
    pub config: PathBuf,
    /// The lab directory (wiped of earlier state at start).
    pub dir: PathBuf,
    /// Hostnames to boot; `None`: every machine in the inventory.
    pub nodes: Option<Vec<String>>,
    /// How the VMs boot: BIOS, UEFI PXE or UEFI HTTP Boot.
    pub firmware: Firmware,
    /// Hostnames that boot with another firmware than `firmware` (one lab run can prove several boot paths at
    /// once: e.g. a master on UEFI PXE beside a worker on UEFI HTTP Boot, both behind the same DHCP server).
    pub firmware_of: Vec<(String, Firmware)>,
    /// Full DHCP from imgbuild, or ProxyDHCP beside dnsmasq as the router.
    pub dhcp: DhcpMode,
    /// Build and boot images with the labelled stand-in binaries.
    pub standins: bool,
    /// UEFI Secure Boot: `[secure_boot] enabled` in the lab's config (signed UKIs), and the UEFI VMs of Secure
    /// Boot machines run with the cluster's keys enrolled: OVMF's Secure Boot build (amd64) or AAVMF (arm64).
    /// Machines booted with BIOS firmware get `secure_boot = false` (they boot through iPXE).
    pub secure_boot: bool,
    /// TPM attestation: every amd64 VM booted with UEFI firmware gets its own software TPM (`vm::swtpm`, EK
    /// certificate from a lab CA) and enrolls with `identity = "tpm"`, that CA as `manufacturer_ca`; the others
    /// enroll by address.
    pub tpm: bool,
    /// Overall time limit for every node to reach `joined`.
    pub timeout: Duration,
    /// Memory of each VM.
    pub memory_mb: u32,
    /// Override the images / cache directories (tests share one build).
    pub images: Option<PathBuf>,
    /// See `images`.
    pub cache: Option<PathBuf>,
    /// The `imgbuild` binary to run for `serve`, `profile`, `pin`, `secrets` (default: this executable).
    pub exe: PathBuf,
    /// Namespace name prefix.
    pub prefix: String,
    /// Print progress (live table on a terminal, one line per stage change otherwise).
    pub verbose: bool,
    /// Show each image build's progress (a line per stage) on stderr as it happens; when off, a build shows only
    /// its errors (tests: a failing test's own message is not buried under build logs).
    pub build_progress: bool,
    /// Hostnames whose VM gets a second NIC placed before the boot NIC (no network behind it): the kernel
    /// probes it first, so it is `eth0` and the machine PXE-boots from its second NIC, `eth1`.
    pub decoy_nic: Vec<String>,
    /// `imgbuild serve` runs elsewhere on the lab's bridge, at `[network] server` (a VM the caller starts on
    /// [`Lab::add_tap`](super::Lab::add_tap), e.g. the packaged service in a Debian VM): the lab starts no server,
    /// dnsmasq or chronyd, and its namespace takes the subnet's last host address on the bridge, from which it
    /// still watches the server's `/api/status`.
    pub external_server: bool,
    /// The servers are replicas behind a DHCP relay (`vm::lab::replicas`): [`Lab::prepare`](super::Lab::prepare)
    /// makes the lab's namespace the router between the nodes' and the servers' segments and starts no server;
    /// the caller starts etcd and the object store at [`Lab::shared_address`](super::Lab::shared_address), then
    /// [`Lab::start_replicas`](super::Lab::start_replicas).
    pub replicas: bool,
}

impl Options {
    /// The firmware `host`'s VM boots with: its entry in `firmware_of`, else `firmware`.
    pub fn firmware_for(&self, host: &str) -> Firmware {
        self.firmware_of
            .iter()
            .find(|(h, _)| h == host)
            .map_or(self.firmware, |(_, f)| *f)
    }

    /// Defaults for `config`: lab dir `lab/` beside it, BIOS, full DHCP, 20 minutes, 2 GiB per VM.
    pub fn new(config: &Path) -> Options {
        let dir = config
            .parent()
            .map(|p| p.join("lab"))
            .unwrap_or_else(|| PathBuf::from("lab"));
        Options {
            config: config.to_path_buf(),
            dir,
            nodes: None,
            firmware: Firmware::Bios,
            firmware_of: Vec::new(),
            dhcp: DhcpMode::Full,
            standins: false,
            secure_boot: false,
            tpm: false,
            timeout: Duration::from_secs(20 * 60),
            memory_mb: 2048,
            images: None,
            cache: None,
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("imgbuild")),
            prefix: "ibl".into(),
            verbose: true,
            build_progress: true,
            decoy_nic: Vec::new(),
            external_server: false,
            replicas: false,
        }
    }
}
