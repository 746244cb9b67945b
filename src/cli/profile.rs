//! `imgbuild profile <role>`: build the role's image; `--show` prints the resolved profile, `--render <dir>`
//! writes the role's file tree.

use std::path::PathBuf;
use std::process::ExitCode;

use super::build::BuildArgs;
use super::global::Global;
use crate::config::{Role, profile};
use crate::image::tree;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The role: master, worker or storage.
    pub role: Role,
    #[command(flatten)]
    pub build: BuildArgs,
    /// Print the resolved profile (the inheritance chain merged).
    #[arg(long)]
    pub show: bool,
    /// Write the exact tree of files a node of this role carries into this directory.
    #[arg(long, value_name = "DIR")]
    pub render: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let arch = args.build.arch;
    let prof = profile::resolve_for(&cluster.paths.profiles, args.role, arch)?;
    if args.show {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&prof)?);
        } else {
            println!(
                "profile {} for {} ({})",
                prof.role,
                prof.arch,
                prof.chain.join(" → ")
            );
            if !prof.description.is_empty() {
                println!("  {}", prof.description);
            }
            println!("packages:       {}", prof.packages.join(" "));
            println!("kernel modules: {}", prof.kernel_modules.join(" "));
            println!("kernel args:    {}", prof.kernel_args.join(" "));
            println!("units enabled:  {}", prof.enable_units.join(" "));
            println!("sysctls:");
            for (k, v) in &prof.sysctl {
                println!("  {k} = {v}");
            }
            println!("files:");
            for f in &prof.files {
                println!("  {:04o} {}  ← {}", f.mode, f.path, f.template);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = &args.render {
        let engine = crate::template::engine_for(&cluster);
        let t = tree::render(&cluster, &prof, &engine)?;
        t.write_to(dir)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&t)?);
        } else {
            for f in &t.files {
                println!("{:04o} {} {}", f.mode, &f.sha256[..12], f.path);
            }
            println!(
                "{} files written under {} (role layer {})",
                t.files.len(),
                dir.display(),
                &t.digest()[..16]
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let opts = args.build.options(args.json);
    let report = crate::image::build::build_for(&cluster, args.role, arch, &opts)
        .map_err(|e| anyhow::anyhow!("building the {} {arch} image: {e}", args.role))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        super::build::print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}
