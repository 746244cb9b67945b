//! `imgbuild pull <image-id>`: download an image from the bucket of `[store] backend = "s3"` into the local
//! directory store (`[paths] images`), each object verified by sha256 in the local cache before it is kept.

use std::process::ExitCode;

use super::global::Global;
use super::push::{bar, bucket, resolve};
use crate::image::store::{DirStore, ImageStore};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image id (or a unique prefix of at least 6 hex digits) in the bucket.
    pub id: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let s3 = bucket(&cluster, "pull")?;
    let id = if crate::image::store::is_id(&args.id) {
        args.id.clone()
    } else {
        let ids = s3.list()?.into_iter().map(|s| s.id);
        resolve(&args.id, ids, &s3.location())?
    };
    let m = s3.manifest(&id)?;
    let pb = bar(m.files.values().map(|e| e.size).sum(), args.quiet);
    let local = DirStore::new(&cluster.paths.images);
    let c = s3.pull(&id, &local, &mut |file, n, _| {
        pb.inc(n);
        pb.set_message(file.to_string());
    })?;
    pb.finish_and_clear();
    if c.existed {
        println!("image {id} was already in {}", local.location());
    } else {
        println!("pulled image {id} into {}", local.locate(&id));
    }
    Ok(ExitCode::SUCCESS)
}
