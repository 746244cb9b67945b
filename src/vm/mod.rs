//! Virtual machines for the lab and the boot tests: a private network namespace with a bridge and taps
//! ([`netns`]), QEMU with BIOS / UEFI PXE / UEFI HTTP Boot firmware ([`qemu`]; Secure Boot with the cluster's keys
//! enrolled by [`uefi_vars`]), and `imgbuild lab` ([`lab`]).

pub mod lab;
pub mod netns;
pub mod qemu;
pub mod uefi_vars;
