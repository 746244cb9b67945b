//! The options every subcommand takes (`--config`, `-v`), and loading the cluster description they name.
//! Subcommands receive these, never the whole parsed command line, so they do not import their parent module.

use std::path::PathBuf;

use crate::config::{self, Cluster};

/// Global options, flattened into the command line.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The cluster description.
    #[arg(long, short = 'c', global = true, env = "IMGBUILD_CONFIG", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// Loads the cluster description named by `--config`.
    pub fn load_cluster(&self) -> anyhow::Result<Cluster> {
        Ok(config::load(&self.config)?)
    }
}
