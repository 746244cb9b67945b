//! `imgbuild fetch`: download every artifact, verify it upstream and against imgbuild.lock, cache it.

use std::process::ExitCode;

use super::Cli;
use crate::image::artifacts;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = super::load_cluster(&cli.config)?;
    let pb = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(cluster.artifacts.len() as u64)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let fetched = artifacts::fetch_all(&cluster, |name| {
        pb.set_message(name.to_string());
        pb.inc(1);
    });
    pb.finish_and_clear();
    let fetched = fetched?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&fetched)?);
        return Ok(ExitCode::SUCCESS);
    }
    for f in &fetched {
        println!(
            "{:<18} {:<10} {}  {}{}",
            f.name,
            f.version,
            &f.sha256[..16],
            if f.cached { "cached, " } else { "downloaded, " },
            f.verified
        );
        if f.verified.starts_with("trusted") && !f.cached && f.lock_updated {
            println!(
                "  NOTE: upstream publishes no checksum for {}: this first download is trusted and its digest recorded in {}",
                f.name,
                cluster.paths.lock.display()
            );
        }
    }
    println!(
        "{} artifacts verified; lock: {}",
        fetched.len(),
        cluster.paths.lock.display()
    );
    Ok(ExitCode::SUCCESS)
}
