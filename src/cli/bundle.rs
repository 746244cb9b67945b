//! `imgbuild bundle export FILE` / `imgbuild bundle import FILE`: the fetched cache and `imgbuild.lock` as one
//! verified file for a disconnected site (docs/air-gapped.md).

use std::path::PathBuf;
use std::process::ExitCode;

use super::global::Global;
use crate::image::bundle;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Write imgbuild.lock, every locked artifact and every locked image's blobs to FILE (run `imgbuild fetch`
    /// first).
    Export {
        /// The bundle file to write.
        file: PathBuf,
    },
    /// Verify FILE and put its files into the cache and its lock beside cluster.toml (refused when a different
    /// imgbuild.lock is there).
    Import {
        /// The bundle file to read.
        file: PathBuf,
        /// The bundle's sha256 as `bundle export` printed it on the connected side.
        #[arg(long)]
        sha256: Option<String>,
    },
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let (s, verb) = match &args.command {
        Sub::Export { file } => (bundle::export(&cluster, file)?, "exported"),
        Sub::Import { file, sha256 } => (
            bundle::import(&cluster, file, sha256.as_deref())?,
            "imported",
        ),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{verb} {}: {} artifacts, {} images ({} blobs), {:.1} MiB",
        s.path.display(),
        s.artifacts,
        s.images,
        s.blobs,
        s.bytes as f64 / (1u64 << 20) as f64
    );
    println!("bundle sha256 {}", s.sha256);
    if verb == "exported" {
        println!(
            "on the disconnected side: imgbuild bundle import {} --sha256 {}",
            s.path.display(),
            s.sha256
        );
    } else {
        println!(
            "lock: {}; check with `imgbuild fetch --offline`",
            cluster.paths.lock.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
