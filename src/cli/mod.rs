//! The `imgbuild` command line: parsing (clap) and one module per subcommand.

mod build;
mod bundle;
mod check;
mod doctor;
mod enroll;
mod fetch;
mod gc;
pub mod global;
mod images;
mod kubeconfig;
mod lab;
mod pin;
mod profile;
mod pull;
mod push;
mod secrets;
mod secureboot;
mod serve;
pub mod status;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use global::Global;

/// From power-on to a working kubeadm cluster: node images and the netboot server.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version, about, propagate_version = true)]
pub struct Cli {
    /// `--config`, `-v`: what every subcommand takes.
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    /// The subcommand to run.
    pub command: Command,
}

#[derive(Debug, Subcommand)]
/// The subcommands; each variant's arguments are defined in the subcommand's module.
pub enum Command {
    /// Validate cluster.toml, every profile and every template; report all problems at once.
    Check(check::Args),
    /// Build the image of one role (master, worker, storage), or show / render its profile.
    Profile(profile::Args),
    /// Build the image of every role.
    Build(build::Args),
    /// Download and verify every artifact and container image into the cache; write or check imgbuild.lock.
    Fetch(fetch::Args),
    /// Carry the fetched artifacts, container images and imgbuild.lock to a disconnected site as one file.
    Bundle(bundle::Args),
    /// List the images in the store.
    Images(images::Args),
    /// Re-hash an image against its id.
    Verify(verify::Args),
    /// Remove images no role pins, keeping the newest N.
    Gc(gc::Args),
    /// Upload an image from the local store to the S3 bucket of `[store]` (artifacts first, manifest last).
    Push(push::Args),
    /// Download an image from the S3 bucket of `[store]` into the local store, verified by sha256.
    Pull(pull::Args),
    /// Pin the image a role boots (`pin <role> <image-id>`), or list the pins (`pin --list`).
    Pin(pin::Args),
    /// Generate the cluster's secrets (CAs, service-account keys, bootstrap token) once.
    Secrets(secrets::Args),
    /// UEFI Secure Boot: write the files that enroll the cluster's keys into firmware.
    Secureboot(secureboot::Args),
    /// Show or change enrollment: open or close the window, re-arm a node.
    Enroll(enroll::Args),
    /// Write an admin kubeconfig for the cluster (client certificate signed by the cluster CA).
    Kubeconfig(kubeconfig::Args),
    /// Check this host before serving: interface, address, ports, another DHCP server, pins, secrets.
    Doctor(doctor::Args),
    /// Run the netboot server: DHCP, TFTP and HTTP on the provisioning network.
    Serve(serve::Args),
    /// Boot the cluster in QEMU VMs from the real server in a private network namespace (needs root).
    Lab(lab::Args),
    /// Show every node's boot stage from a running server (`--json`, `--watch`).
    Status(status::Args),
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "imgbuild=info",
        1 => "imgbuild=debug",
        _ => "imgbuild=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: under systemd stderr is the journal, which would store the escape
    // codes as text (and NO_COLOR, https://no-color.org, turns it off everywhere).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.global.resolve_default();
    init_tracing(cli.global.verbose);
    let result = match &cli.command {
        Command::Check(a) => check::run(&cli.global, a),
        Command::Profile(a) => profile::run(&cli.global, a),
        Command::Build(a) => build::run(&cli.global, a),
        Command::Fetch(a) => fetch::run(&cli.global, a),
        Command::Bundle(a) => bundle::run(&cli.global, a),
        Command::Images(a) => images::run(&cli.global, a),
        Command::Verify(a) => verify::run(&cli.global, a),
        Command::Gc(a) => gc::run(&cli.global, a),
        Command::Pin(a) => pin::run(&cli.global, a),
        Command::Push(a) => push::run(&cli.global, a),
        Command::Pull(a) => pull::run(&cli.global, a),
        Command::Doctor(a) => doctor::run(&cli.global, a),
        Command::Serve(a) => serve::run(&cli.global, a),
        Command::Status(a) => status::run(&cli.global, a),
        Command::Lab(a) => lab::run(&cli.global, a),
        Command::Secrets(a) => secrets::run(&cli.global, a),
        Command::Secureboot(a) => secureboot::run(&cli.global, a),
        Command::Enroll(a) => enroll::run(&cli.global, a),
        Command::Kubeconfig(a) => kubeconfig::run(&cli.global, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
