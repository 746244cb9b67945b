//! `imgbuild serve`: the netboot server (DHCP, TFTP, HTTP) for the machines in `cluster.toml`.

use std::process::ExitCode;

use super::global::Global;
use crate::netboot::server;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(cli: &Global, _args: &Args) -> anyhow::Result<ExitCode> {
    let shared = server::prepare(&cli.config)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(server::serve(shared))?;
    Ok(ExitCode::SUCCESS)
}
