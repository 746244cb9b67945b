//! `imgbuild gc [--keep N]`: remove images no role pins, keeping the newest N of them.

use std::process::ExitCode;

use super::global::Global;
use crate::image::{catalog, store};
use crate::pki::state_store::{self, documents};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many unpinned images to keep (the newest), for a quick roll back.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let state = state_store::open(&cluster, &state_store::replica_id())?;
    let pins = documents::pins(&*state, &cluster.paths.state)?;
    let removed = catalog::gc(&*store::open(&cluster), &pins, args.keep)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&removed)?);
    } else {
        for id in &removed {
            println!("removed {id}");
        }
        println!(
            "{} image(s) removed; pinned images and the newest {} unpinned kept",
            removed.len(),
            args.keep
        );
    }
    Ok(ExitCode::SUCCESS)
}
