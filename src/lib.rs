//! imgbuild: from power-on to a working kubeadm cluster — reproducible node images and the netboot server that
//! boots them.
//!
//! The crate is built in floors; a module uses its own floor and those below, never above
//! (`docs/architecture.md`, checked by `tests/architecture.rs`):
//!
//! - [`cli`]: the `imgbuild` command line — one file per subcommand; the only place with `anyhow` and clap.
//! - [`vm`]: QEMU VMs in private network namespaces, and `imgbuild lab`.
//! - [`netboot`]: `imgbuild serve` — DHCP, TFTP and HTTP around the one boot decision ([`netboot::boot`]).
//! - [`pki`]: the cluster's CAs, keys and bootstrap token, and the rules by which a node gets them.
//! - [`status`]: boot events, the per-node state machine and the reports built from them.
//! - [`image`]: reproducible, content-addressed node images — build, store ([`image::store::ImageStore`]),
//!   pins.
//! - [`config`]: `cluster.toml` and the role profiles, validated with file, line and key.
//! - [`template`]: the minijinja engine every rendered text goes through (strict undefined, no escaping).
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod image;
pub mod netboot;
pub mod pki;
pub mod status;
pub mod template;
pub mod vm;
