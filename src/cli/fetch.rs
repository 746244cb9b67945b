//! `imgbuild fetch`: download every artifact and container image, verify it upstream and against imgbuild.lock,
//! cache it.

use std::process::ExitCode;

use super::global::Global;
use crate::config::Arch;
use crate::image::artifacts;
use crate::image::oci::pull;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Fetch for these architectures (amd64, arm64; comma-separated). Default: the inventory's machines'.
    #[arg(long, value_delimiter = ',', value_parser = parse_arch)]
    pub arch: Option<Vec<Arch>>,
    /// Contact nothing: check that every artifact and image is locked and in the cache with its locked digest
    /// (a disconnected site after `imgbuild bundle import`).
    #[arg(long)]
    pub offline: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    artifacts: &'a [artifacts::Fetched],
    images: &'a [pull::FetchedImage],
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
    pb.inc_length((cluster.images.len() * arches.len()) as u64);
    let fetched = if args.offline {
        offline_artifacts(&cluster, &arches)
    } else {
        artifacts::fetch_all_for(&cluster, &arches, |name| {
            pb.set_message(name.to_string());
            pb.inc(1);
        })
        .map_err(anyhow::Error::from)
    };
    let images = fetched.and_then(|f| {
        let i = pull::fetch_images(&cluster, &arches, args.offline, |name| {
            pb.set_message(name.to_string());
            pb.inc(1);
        })?;
        Ok((f, i))
    });
    pb.finish_and_clear();
    let (fetched, images) = images?;
    if args.json {
        let r = Report {
            artifacts: &fetched,
            images: &images,
        };
        println!("{}", serde_json::to_string_pretty(&r)?);
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
    for i in &images {
        println!(
            "{:<60} {:<6} {}  {} MiB  {}",
            i.reference,
            i.arch.as_str(),
            &i.manifest[..23],
            i.size / (1 << 20),
            if i.cached { "cached" } else { "downloaded" }
        );
    }
    if !images.is_empty() {
        println!(
            "{} images verified ({} downloaded)",
            images.len(),
            images.iter().filter(|i| !i.cached).count()
        );
    }
    println!(
        "{} artifacts verified; lock: {}",
        fetched.len(),
        cluster.paths.lock.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--offline`: every artifact resolved from the lock and the cache, nothing downloaded.
fn offline_artifacts(
    cluster: &crate::config::Cluster,
    arches: &[Arch],
) -> anyhow::Result<Vec<artifacts::Fetched>> {
    let mut out: Vec<artifacts::Fetched> = Vec::new();
    for arch in arches {
        for r in artifacts::resolve(cluster, *arch)? {
            if out.iter().any(|f| f.sha256 == r.sha256) {
                continue;
            }
            out.push(artifacts::Fetched {
                name: r.name,
                version: r.version,
                arch: Some(*arch),
                sha256: r.sha256,
                size: r.path.metadata().map(|m| m.len()).unwrap_or(0),
                cached: true,
                verified: "locked".into(),
                lock_updated: false,
            });
        }
    }
    Ok(out)
}
