//! `imgbuild secrets init`: generate the cluster's CAs, service-account keys, bootstrap token and discovery
//! hash into the secrets directory (`[paths] secrets`, default `secrets/`), once.

use std::process::ExitCode;

use super::global::Global;
use crate::pki::{PkiError, secrets, secureboot, token};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Generate every secret (and the Secure Boot PK, KEK, db where missing). Refuses to overwrite existing
    /// ones.
    Init,
    /// Show what is there (no secret is printed): discovery hash, token id and expiry.
    Show,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let dir = &cluster.paths.secrets;
    match args.command {
        Sub::Init => {
            // The Secure Boot hierarchy is made where missing, also beside cluster secrets made earlier.
            let made = secureboot::ensure(&cluster)?;
            if !made.is_empty() {
                println!(
                    "Secure Boot keys {} written to {} (mode 0600); enroll them with `imgbuild secureboot \
                     enroll-files DIR` (docs/secure-boot.md)",
                    made.join(", "),
                    secureboot::dir(&cluster).display()
                );
            }
            let s = match secrets::init(dir) {
                Err(PkiError::Exists { .. }) if !made.is_empty() => return Ok(ExitCode::SUCCESS),
                r => r?,
            };
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
