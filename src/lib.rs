//! imgbuild: from power-on to a working kubeadm cluster.
//!
//! - [`config`]: `cluster.toml` and the role profiles, validated.
//! - [`template`]: the minijinja engine every rendered text goes through.
//! - [`image`]: reproducible, content-addressed node images.
//! - `cli`: the `imgbuild` command line.

pub mod cli;
pub mod config;
pub mod image;
pub mod netboot;
pub mod pki;
pub mod status;
pub mod template;
