//! `imgbuild push <image-id>`: upload an image from the local directory store (`[paths] images`) to the
//! bucket of `[store] backend = "s3"` — artifacts first, manifest last, so a half-pushed image is never visible.
//! Pushing again is harmless: objects already in the bucket are not sent again (`--force` sends them anyway,
//! to repair objects whose bytes were changed in the bucket).

use std::process::ExitCode;

use anyhow::Context;

use super::global::Global;
use crate::config::{Cluster, Store};
use crate::image::store::s3::S3Store;
use crate::image::store::{DirStore, ImageStore};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image id (or a unique prefix of at least 6 hex digits) in the local store.
    pub id: String,
    /// Upload every object again, even those already in the bucket.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The bucket of `[store]`, or why there is none.
pub(super) fn bucket(cluster: &Cluster, what: &str) -> anyhow::Result<S3Store> {
    match &cluster.store {
        Store::S3(cfg) => S3Store::new(cfg).map_err(anyhow::Error::msg),
        Store::Dir => anyhow::bail!(
            "`imgbuild {what}` moves images between {} and an S3 bucket, but {} has no `[store] backend = \"s3\"`: \
             add [store] with backend, endpoint and bucket (docs/scale.md)",
            cluster.paths.images.display(),
            cluster.path.display()
        ),
    }
}

/// The full id of `id` (a prefix of at least 6 hex digits) among `ids`.
pub(super) fn resolve(
    id: &str,
    ids: impl Iterator<Item = String>,
    place: &str,
) -> anyhow::Result<String> {
    if crate::image::store::is_id(id) {
        return Ok(id.to_string());
    }
    anyhow::ensure!(
        id.len() >= 6 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?} is not an image id: give the 64 hex digits `imgbuild images` lists, or at least 6 of them"
    );
    let found: Vec<String> = ids.filter(|i| i.starts_with(id)).collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("no image starting with {id} in {place}; `imgbuild images` lists them"),
        _ => anyhow::bail!(
            "{id} is the start of {} images in {place}; give more digits",
            found.len()
        ),
    }
}

/// A progress bar over `total` bytes (hidden when `quiet`).
pub(super) fn bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    let pb = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .expect("static template"),
    );
    pb
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let s3 = bucket(&cluster, "push")?;
    let local = DirStore::new(&cluster.paths.images);
    let ids = local.list()?.into_iter().map(|s| s.id);
    let id = resolve(&args.id, ids, &local.location())?;
    let m = local
        .manifest(&id)
        .with_context(|| format!("image {id} is not in the local store {}", local.location()))?;
    let pb = bar(m.files.values().map(|e| e.size).sum(), args.quiet);
    let mut done = std::collections::BTreeMap::new();
    let pushed = s3.push(&local, &id, args.force, &mut |file, n, _| {
        done.insert(file.to_string(), n);
        pb.set_position(done.values().sum());
        pb.set_message(file.to_string());
    })?;
    pb.finish_and_clear();
    for (file, n) in &pushed.uploaded {
        println!("uploaded  {file} ({n} bytes)");
    }
    for file in &pushed.present {
        println!("present   {file} (already in the bucket)");
    }
    if pushed.existed {
        println!("image {id} was already in {}", s3.location());
    } else {
        println!("pushed image {id} to {}", s3.location());
    }
    Ok(ExitCode::SUCCESS)
}
