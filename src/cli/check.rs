//! `imgbuild check`: validate the cluster description, the profiles and every template, all problems at once.

use std::process::ExitCode;

use serde::Serialize;

use super::global::Global;
use crate::config::{self, ConfigError, Problem, Role, profile};
use crate::image::tree;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    config: String,
    problems: Vec<String>,
    cluster: Option<String>,
    kubernetes_version: Option<String>,
    machines: Vec<(String, usize)>,
    /// Each machine's identity mode (docs/attestation.md): hostname → `tpm`, `tpm (EK pinned)` or `address`.
    identities: Vec<(String, String)>,
    rendered_files: Vec<(String, usize)>,
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut report = Report {
        ok: false,
        config: cli.config.display().to_string(),
        problems: vec![],
        cluster: None,
        kubernetes_version: None,
        machines: vec![],
        identities: vec![],
        rendered_files: vec![],
    };
    match config::load(&cli.config) {
        Err(ConfigError::Invalid(p)) => problems.extend(p),
        Err(e) => return Err(e.into()),
        Ok(cluster) => {
            report.cluster = Some(cluster.cluster.name.clone());
            report.kubernetes_version = Some(cluster.cluster.kubernetes_version.to_string());
            report.identities = cluster
                .machines
                .iter()
                .map(|m| {
                    let mut mode = match (m.identity, m.ek_sha256) {
                        (crate::config::Identity::Tpm, Some(_)) => "tpm (EK pinned)".to_string(),
                        (crate::config::Identity::Tpm, None) => {
                            "tpm (EK approved at first contact)".to_string()
                        }
                        (i, _) => i.to_string(),
                    };
                    // Only with [attestation] allow_unbound_initrd (else a configuration error, above).
                    if m.identity == crate::config::Identity::Tpm && !m.secure_boot {
                        mode.push_str(
                            ", no Secure Boot: proves iPXE and kernel, not initrd or command line",
                        );
                    }
                    (m.hostname.clone(), mode)
                })
                .collect();
            let engine = crate::template::engine_for(&cluster);
            for role in Role::ALL {
                report
                    .machines
                    .push((role.to_string(), cluster.machines_with_role(role).count()));
                match profile::resolve(&cluster.paths.profiles, role) {
                    Err(ConfigError::Invalid(p)) => problems.extend(p),
                    Err(e) => return Err(e.into()),
                    Ok(prof) => match tree::render(&cluster, &prof, &engine) {
                        Ok(t) => report
                            .rendered_files
                            .push((role.to_string(), t.files.len())),
                        Err(e) => problems.push(Problem {
                            file: cluster.paths.profiles.join(role.as_str()),
                            line: None,
                            column: None,
                            key: String::new(),
                            message: e.to_string(),
                        }),
                    },
                }
            }
            // arm64 machines boot GRUB: its embedded config must render and its modules be installed.
            if cluster.has_arch(crate::config::Arch::Arm64) {
                let grub = crate::netboot::grub::embedded_config(&cluster, &engine, true)
                    .map_err(crate::netboot::grub::GrubError::from)
                    .and_then(|_| crate::netboot::grub::check_modules(&cluster));
                if let Err(e) = grub {
                    problems.push(Problem {
                        file: cli.config.clone(),
                        line: None,
                        column: None,
                        key: "network.grub_modules".into(),
                        message: e.to_string(),
                    });
                }
            }
        }
    }
    // The same problem can be reached through two roles inheriting one profile.
    problems.dedup();
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert(p.to_string()));
    report.problems = problems.iter().map(ToString::to_string).collect();
    report.ok = problems.is_empty();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        let machines: Vec<String> = report
            .machines
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        let files: Vec<String> = report
            .rendered_files
            .iter()
            .map(|(r, n)| format!("{r}: {n} files"))
            .collect();
        println!(
            "{}: ok — cluster {:?}, Kubernetes {}, machines: {}; profiles render ({})",
            report.config,
            report.cluster.as_deref().unwrap_or(""),
            report.kubernetes_version.as_deref().unwrap_or(""),
            machines.join(", "),
            files.join(", ")
        );
        for (host, mode) in &report.identities {
            println!("  {host}: identity {mode}");
        }
    } else {
        eprintln!("{} problem(s):", problems.len());
        for p in &problems {
            eprintln!("  {p}");
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
