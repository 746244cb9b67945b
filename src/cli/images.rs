//! `imgbuild images`: the images in the store, newest first, with the roles that pin them.

use std::process::ExitCode;

use super::global::Global;
use crate::image::{catalog, store};
use crate::pki::state_store::{self, documents};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let state = state_store::open(&cluster, &state_store::replica_id())?;
    let pins = documents::pins(&*state, &cluster.paths.state)?;
    let images = store::open(&cluster);
    let list = catalog::list(&*images, &pins)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!(
            "no images in {}; build one with `imgbuild profile <role>`",
            images.location()
        );
    }
    for i in &list {
        let size = format!("{:.1} MiB", i.size as f64 / (1u64 << 20) as f64);
        let mut notes = Vec::new();
        if !i.pinned_by.is_empty() {
            notes.push(format!("pinned by {}", i.pinned_by.join(", ")));
        }
        if i.standins {
            notes.push("STAND-INS".into());
        }
        if let Some(p) = &i.problem {
            notes.push(format!("DAMAGED: {p}"));
        }
        println!("{}  {:<8} {:>10}  {}", i.id, i.role, size, notes.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}
