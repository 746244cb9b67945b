//! `imgbuild doctor [--json] [--no-probe]`: checks this host before the first `imgbuild serve` and reports every
//! problem at once, each with its fix (see `netboot::doctor`). Exit status 1 when there is any.

use std::process::ExitCode;

use super::global::Global;
use crate::netboot::doctor;

#[derive(Debug, clap::Args)]
/// Options of `imgbuild doctor`.
pub struct Args {
    /// Print the problems as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not broadcast a DHCP DISCOVER on the interface to look for another DHCP server.
    #[arg(long)]
    pub no_probe: bool,
}

/// Runs the checks and prints the report.
pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let problems = rt.block_on(doctor::check(&cluster, &cli.config, !args.no_probe));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&problems)?);
    } else {
        print!("{}", doctor::render(&problems));
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
