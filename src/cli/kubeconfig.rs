//! `imgbuild kubeconfig [-o FILE]`: an admin kubeconfig (`kubernetes-admin`, group `kubeadm:cluster-admins`)
//! signed by the cluster CA, pointing at the control-plane VIP.

use std::path::PathBuf;
use std::process::ExitCode;

use super::global::Global;
use crate::pki::{kubeconfig, secrets, write_atomic};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write to this file (mode 0600) instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let s = secrets::load(&cluster.paths.secrets)?;
    let text = kubeconfig::admin(&cluster, &s, &crate::template::engine_for(&cluster))?;
    match &args.output {
        Some(p) => {
            write_atomic(p, text.as_bytes(), 0o600)?;
            eprintln!(
                "admin kubeconfig written to {} (valid 1 year); export KUBECONFIG={}",
                p.display(),
                p.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
