//! The options every subcommand takes (`--config`, `-v`), and loading the cluster description they name.
//! Subcommands receive these, never the whole parsed command line, so they do not import their parent module.

use std::path::PathBuf;

use crate::config::{self, Cluster};

/// Global options, flattened into the command line.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The cluster description (default: ./cluster.toml, else the packaged /etc/imgbuild/cluster.toml).
    #[arg(long, short = 'c', global = true, env = "IMGBUILD_CONFIG", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The configuration of a packaged install, used when `--config` is not given and `./cluster.toml` does not exist.
pub const PACKAGED_CONFIG: &str = "/etc/imgbuild/cluster.toml";

impl Global {
    /// Points the default `cluster.toml` at [`PACKAGED_CONFIG`] when there is no `./cluster.toml` but a packaged
    /// install's configuration exists (an explicit `--config` or `IMGBUILD_CONFIG` is kept as given).
    pub fn resolve_default(&mut self) {
        let default = std::path::Path::new(config::DEFAULT_CONFIG);
        if self.config == default
            && std::env::var_os("IMGBUILD_CONFIG").is_none()
            && !default.exists()
            && std::path::Path::new(PACKAGED_CONFIG).exists()
        {
            self.config = PathBuf::from(PACKAGED_CONFIG);
        }
    }

    /// Loads the cluster description named by `--config`.
    pub fn load_cluster(&self) -> anyhow::Result<Cluster> {
        Ok(config::load(&self.config)?)
    }
}
