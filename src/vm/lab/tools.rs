//! Before anything starts: root, and the host tools and firmware the lab's machines need.

use std::path::Path;

use anyhow::bail;

use super::options::Options;
use crate::config::{Arch, DhcpMode, Machine};
use crate::image::base;
use crate::vm::qemu::{self, Firmware};

/// Fails with what to install (or to run as root) when something the lab needs for `machines` is missing:
/// root, `ip`, QEMU for each architecture in use, dnsmasq in proxy-DHCP mode, OVMF and AAVMF firmware.
pub(super) fn check_tools(opts: &Options, machines: &[Machine]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "imgbuild lab needs root: it creates a network namespace, a bridge and taps (run it with sudo)"
        );
    }
    for (host, fw) in &opts.firmware_of {
        if !machines.iter().any(|m| &m.hostname == host) {
            let booted: Vec<&str> = machines.iter().map(|m| m.hostname.as_str()).collect();
            bail!(
                "--firmware-of {host}={fw}: {host} is not one of the machines this lab boots ({}); name one of them",
                booted.join(", ")
            );
        }
    }
    let mut need = vec!["ip"];
    for arch in Arch::ALL {
        if machines.iter().any(|m| m.arch == arch) {
            need.push(qemu::binary(arch));
        }
    }
    if opts.dhcp == DhcpMode::Proxy {
        need.push("dnsmasq");
    }
    for tool in need {
        if !base::on_path(tool, std::env::var_os("PATH").as_deref()) {
            bail!(
                "{tool} is not installed; run scripts/setup (it installs the Debian packages in .ci/apt-packages)"
            );
        }
    }
    if machines.iter().any(|m| {
        m.arch == Arch::Amd64
            && matches!(
                opts.firmware_for(&m.hostname),
                Firmware::Uefi | Firmware::Http
            )
    }) && !Path::new(qemu::OVMF_CODE).exists()
    {
        bail!(
            "{} is missing: install Debian's ovmf package (scripts/setup)",
            qemu::OVMF_CODE
        );
    }
    if machines.iter().any(|m| m.arch == Arch::Arm64) && !Path::new(qemu::AAVMF_CODE).exists() {
        bail!(
            "{} is missing: arm64 machines boot on AAVMF; install Debian's qemu-efi-aarch64 package (scripts/setup)",
            qemu::AAVMF_CODE
        );
    }
    Ok(())
}
