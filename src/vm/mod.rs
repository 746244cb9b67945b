//! Virtual machines for the lab and the boot tests: a private network namespace with a bridge and taps
//! ([`netns`]), QEMU with BIOS / UEFI PXE / UEFI HTTP Boot firmware ([`qemu`]; Secure Boot with the cluster's keys
//! enrolled by [`uefi_vars`]; a software TPM per VM with [`swtpm`]), and `imgbuild lab` ([`lab`]). Every child
//! process of a lab or a boot test is started through [`spawn`], so it dies with the process that started it.

pub mod lab;
pub mod netns;
pub mod qemu;
pub mod spawn;
pub mod swtpm;
pub mod uefi_vars;
