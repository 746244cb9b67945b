//! `imgbuild verify <id>`: re-hash an image's manifest and files against its id.

use std::process::ExitCode;

use super::global::Global;
use crate::image::store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image id (as `imgbuild images` lists it).
    pub id: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let checks = store::verify(&*store::open(&cluster), &args.id)?;
    let ok = checks.iter().all(|c| c.ok);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"id": args.id, "ok": ok, "files": checks})
            )?
        );
    } else {
        for c in &checks {
            if c.ok {
                println!("ok       {}  {}", c.file, c.expected);
            } else {
                println!(
                    "CHANGED  {}  expected {}, found {}",
                    c.file,
                    c.expected,
                    c.actual.as_deref().unwrap_or("(missing)")
                );
            }
        }
        if ok {
            println!("image {} is intact", args.id);
        } else {
            println!(
                "image {} is DAMAGED: rebuild it with `imgbuild profile <role>` (ids never change in place)",
                args.id
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
