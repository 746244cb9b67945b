//! `imgbuild fetch`: download every artifact, verify it upstream and against imgbuild.lock, cache it.

use std::process::ExitCode;

use super::global::Global;
use crate::config::Arch;
use crate::image::artifacts;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Fetch for these architectures (amd64, arm64; comma-separated). Default: the inventory's machines'.
    #[arg(long, value_delimiter = ',', value_parser = parse_arch)]
    pub arch: Option<Vec<Arch>>,
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse()
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let arches = args
        .arch
        .clone()
        .unwrap_or_else(|| artifacts::cluster_arches(&cluster));
    // One download per architecture for per-arch artifacts (`{arch}` in the URL), one for the others.
    let downloads: usize = cluster
        .artifacts
        .values()
        .map(|a| {
            if artifacts::is_per_arch(a) {
                arches.len()
            } else {
                1
            }
        })
        .sum();
    let pb = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(downloads as u64)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let fetched = artifacts::fetch_all_for(&cluster, &arches, |name| {
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
            "{:<18} {:<6} {:<10} {}  {}{}",
            f.name,
            f.arch.map_or("any", Arch::as_str),
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
