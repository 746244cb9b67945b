//! `imgbuild build`: build the image of every role (the base is built once and shared).

use std::process::ExitCode;

use super::global::Global;
use crate::config::{Arch, Role};
use crate::image::build::{self, Options, Report};

/// The build arguments `imgbuild build` and `imgbuild profile` share.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The CPU architecture (Debian's name): amd64 or arm64. Picks the profiles' `[arch.<name>]` additions
    /// (kernel package, serial console) and the artifacts' files; arm64 on an amd64 machine needs
    /// qemu-user-static (./scripts/setup).
    #[arg(long, default_value = "amd64")]
    pub arch: Arch,
    /// Build with labelled stand-ins for kubeadm, kubelet, containerd, ... (never a real cluster image).
    #[arg(long)]
    pub standins: bool,
}

impl BuildArgs {
    /// The image builder's options: progress spinners unless the output is `json` for a script.
    pub fn options(&self, json: bool) -> Options {
        Options {
            standins: self.standins,
            progress: !json,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub build: BuildArgs,
    /// Machine-readable output (a JSON array of build reports).
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let opts = args.build.options(args.json);
    let arch = args.build.arch;
    let mut reports = Vec::new();
    for role in Role::ALL {
        let r = build::build_for(&cluster, role, arch, &opts)
            .map_err(|e| anyhow::anyhow!("building the {role} {arch} image: {e}"))?;
        if !args.json {
            print_report(&r);
        }
        reports.push(r);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// The human summary of one build: id, files with sizes and digests, stage times.
pub fn print_report(r: &Report) {
    let what = if r.cached {
        format!("up to date (cached, {:.2} s)", r.seconds)
    } else if r.existed {
        format!("rebuilt to the same bytes in {:.1} s", r.seconds)
    } else {
        format!("built in {:.1} s", r.seconds)
    };
    println!("{} image {} ({}): {what}", r.role, r.id, r.arch);
    if r.standins {
        println!(
            "  WARNING: built with STAND-INS for kubeadm, kubelet, containerd, ...: boots and reports, but is never a working cluster"
        );
    }
    println!("  {}/", r.dir.display());
    for (name, f) in &r.files {
        println!(
            "  {name:<16} {:>10}  sha256 {}",
            human(f.size),
            &f.sha256[..16]
        );
    }
    if !r.stages.is_empty() {
        let stages: Vec<String> = r
            .stages
            .iter()
            .map(|s| {
                format!(
                    "{} {:.1} s{}",
                    s.name,
                    s.seconds,
                    if s.cached { " (cached)" } else { "" }
                )
            })
            .collect();
        println!("  stages: {}", stages.join(" · "));
    }
    println!("  pin it: imgbuild pin {} {}", r.role, &r.id);
}
