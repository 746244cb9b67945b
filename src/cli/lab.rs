//! `imgbuild lab`: boots the cluster in QEMU VMs from the real server inside a private network namespace, shows
//! every node's stage live, and ends with a summary. Exit 0 only when every node reached `joined`.

use std::process::ExitCode;
use std::time::Duration;

use super::global::Global;
use crate::config::DhcpMode;
use crate::vm::lab::{self, Lab, Options};
use crate::vm::qemu::Firmware;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dhcp {
    /// imgbuild hands out the addresses.
    Full,
    /// A dnsmasq in the namespace hands out addresses; imgbuild answers as ProxyDHCP.
    Proxy,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Boot only these machines (hostnames, comma-separated), e.g. master-1,worker-1.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Option<Vec<String>>,
    /// Firmware: bios (SeaBIOS + iPXE ROM), uefi (OVMF PXE → TFTP snponly.efi → iPXE), http (UEFI HTTP Boot).
    #[arg(long, value_enum, default_value_t = Firmware::Bios)]
    pub firmware: Firmware,
    /// A machine that boots with another firmware than --firmware, as HOST=FIRMWARE (repeatable), e.g.
    /// `--firmware-of worker-1=http`: one lab run then proves several boot paths.
    #[arg(long = "firmware-of", value_parser = parse_firmware_of)]
    pub firmware_of: Vec<(String, Firmware)>,
    /// DHCP: full (imgbuild) or proxy (dnsmasq hands out addresses, imgbuild is ProxyDHCP).
    #[arg(long, value_enum, default_value_t = Dhcp::Full)]
    pub dhcp: Dhcp,
    /// Boot images built with the labelled stand-in binaries (no real cluster forms).
    #[arg(long)]
    pub standins: bool,
    /// UEFI Secure Boot: signed UKIs, and the UEFI VMs enforce Secure Boot with the cluster's keys enrolled
    /// (with --firmware uefi or http, or per machine with --firmware-of; BIOS machines boot through iPXE).
    #[arg(long)]
    pub secure_boot: bool,
    /// TPM attestation: give every amd64 VM booted with UEFI firmware its own software TPM (swtpm, EK
    /// certificate from a lab CA) and enroll it by TPM (`identity = "tpm"`, docs/attestation.md); the others
    /// enroll by address.
    #[arg(long)]
    pub tpm: bool,
    /// Leave everything running after the boot, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Give up after this long (e.g. 20m).
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Memory per VM in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// The lab directory (default: lab/ beside cluster.toml).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// `HOST=FIRMWARE` of `--firmware-of`.
fn parse_firmware_of(s: &str) -> Result<(String, Firmware), String> {
    use clap::ValueEnum;
    let (host, fw) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not HOST=FIRMWARE (e.g. worker-1=http)"))?;
    let fw = Firmware::from_str(fw, true)
        .map_err(|_| format!("{fw:?} is not a firmware: bios, uefi or http"))?;
    Ok((host.to_string(), fw))
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    lab::catch_interrupts();
    let mut opts = Options::new(&cli.config);
    if let Some(d) = &args.dir {
        opts.dir = d.clone();
    }
    opts.nodes = args.nodes.clone();
    opts.firmware = args.firmware;
    opts.firmware_of = args.firmware_of.clone();
    opts.dhcp = match args.dhcp {
        Dhcp::Full => DhcpMode::Full,
        Dhcp::Proxy => DhcpMode::Proxy,
    };
    opts.standins = args.standins;
    opts.secure_boot = args.secure_boot;
    opts.tpm = args.tpm;
    opts.timeout = args.timeout;
    opts.memory_mb = args.memory;
    let mut lab = Lab::prepare(opts)?;
    eprintln!(
        "lab: namespace {}, server {} (inside it), {} VM(s), firmware {}, {:?} accelerator, lab dir {}",
        lab.netns(),
        lab.server_url,
        lab.nodes.len(),
        args.firmware,
        lab.accel,
        lab.opts.dir.display()
    );
    let result = lab.boot_all();
    let code = match &result {
        Ok(report) => {
            println!("\n{}", lab::summary(report, lab.standins));
            println!("every node reached joined");
            ExitCode::SUCCESS
        }
        Err(f) => {
            if let Some(r) = &f.report {
                println!("\n{}", lab::summary(r, lab.standins));
            }
            eprintln!("lab FAILED: {f}");
            ExitCode::FAILURE
        }
    };
    if args.keep && !lab::interrupted() {
        eprintln!(
            "lab: --keep: everything stays up until Ctrl-C.\n  status:  ip netns exec {ns} {exe} status --server {url} --watch\n  page:    ip netns exec {ns} curl -s {url}/\n  consoles: {dir}/vms/<host>/console.log",
            ns = lab.netns(),
            exe = lab.opts.exe.display(),
            url = lab.server_url,
            dir = lab.opts.dir.display()
        );
        while !lab::interrupted() {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    eprintln!("lab: tearing down namespace {}", lab.netns());
    lab.teardown();
    Ok(code)
}
