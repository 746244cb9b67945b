//! `imgbuild secrets init`: generate the cluster's CAs, service-account keys, bootstrap token and discovery
//! hash into the secrets directory (`[paths] secrets`, default `secrets/`), once.

use std::process::ExitCode;

use super::global::Global;
use crate::pki::{secrets, token};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Generate every secret. Refuses to overwrite existing ones.
    Init,
    /// Show what is there (no secret is printed): discovery hash, token id and expiry.
    Show,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let dir = &cluster.paths.secrets;
    match args.command {
        Sub::Init => {
            let s = secrets::init(dir)?;
            println!(
                "secrets written to {} (mode 0700/0600; never put them in an image or in git)",
                s.dir.display()
            );
            println!("discovery hash: {}", s.discovery_hash);
            println!(
                "bootstrap token valid until {} (the first master renews it once the cluster runs)",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.token_expires_unix)
                )
            );
        }
        Sub::Show => {
            let s = secrets::load(dir)?;
            let id = s.token.token.split('.').next().unwrap_or_default();
            println!("secrets: {}", dir.display());
            println!("discovery hash: {}", s.discovery_hash);
            let left = s.token.expires_unix.saturating_sub(token::now_unix());
            println!(
                "bootstrap token {id}.… ({}) expires {} ({})",
                s.token.source,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.token.expires_unix)
                ),
                if left == 0 {
                    "EXPIRED".to_string()
                } else {
                    format!(
                        "in {}",
                        humantime::format_duration(std::time::Duration::from_secs(left))
                    )
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
