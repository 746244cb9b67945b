//! `imgbuild secureboot enroll-files DIR`: the files that enroll the cluster's Secure Boot keys (PK, KEK, db)
//! into firmware in setup mode: certificates (PEM, DER), EFI signature lists and signed `.auth` updates.

use std::path::PathBuf;
use std::process::ExitCode;

use super::global::Global;
use crate::pki::secureboot;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Write PK/KEK/db as .crt, .cer, .esl and .auth into DIR (no private key).
    EnrollFiles {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    match &args.command {
        Sub::EnrollFiles { dir } => {
            let files = secureboot::enroll_files(&cluster, dir)?;
            for f in &files {
                println!("{}", f.display());
            }
            println!(
                "enroll in this order with the firmware in setup mode: db.auth, KEK.auth, PK.auth (writing PK \
                 ends setup mode); firmware menus take the .cer files. See docs/secure-boot.md"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
