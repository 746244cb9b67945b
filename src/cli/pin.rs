//! `imgbuild pin <role> <image-id>` and `imgbuild pin --list`: which image each role boots.
//!
//! An upgrade or a rollback is: pin, then reboot the machines of the role. A running `imgbuild serve` notices the
//! changed `state/pins.toml` on the next iPXE script request (no restart, no SIGHUP needed).

use std::process::ExitCode;

use anyhow::{Context, bail};

use super::global::Global;
use crate::config::{Arch, Cluster, Role};
use crate::image::store::{self, ImageStore};
use crate::pki::state_store::{self, documents};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The role to pin (master, worker, storage).
    #[arg(required_unless_present = "list")]
    pub role: Option<Role>,
    /// The image id (or a unique prefix of it) from `imgbuild profile <role> --build` / `images/`.
    #[arg(required_unless_present = "list")]
    pub image: Option<String>,
    /// Show the current pins instead.
    #[arg(long, conflicts_with_all = ["role", "image"])]
    pub list: bool,
}

/// Expands a unique prefix of an image id found in the store.
fn expand_id(store: &dyn ImageStore, given: &str) -> anyhow::Result<String> {
    if given.len() == 64 {
        return Ok(given.to_string());
    }
    if given.len() < 6 || !given.bytes().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{given:?} is not an image id: give the 64 hex digits (or at least 6 of them) of an image in {}",
            store.location()
        );
    }
    let mut found: Vec<String> = store
        .list()
        .with_context(|| format!("cannot list {}", store.location()))?
        .into_iter()
        .map(|s| s.id)
        .filter(|n| n.starts_with(given))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no image id in {} starts with {given}", store.location()),
        _ => bail!("{given} matches {} images; give more digits", found.len()),
    }
}

fn describe(store: &dyn ImageStore, id: &str) -> String {
    match store.manifest(id) {
        Ok(m) if m.standins => format!("{id} (built with labelled STAND-INS)"),
        Ok(_) => id.to_string(),
        Err(e) => format!("{id} (UNUSABLE: {e})"),
    }
}

fn hosts(cluster: &Cluster, role: Role, arch: Arch) -> String {
    let h: Vec<&str> = cluster
        .machines_with_role(role)
        .filter(|m| m.arch == arch)
        .map(|m| m.hostname.as_str())
        .collect();
    if h.is_empty() {
        "none in the inventory".into()
    } else {
        h.join(", ")
    }
}

pub fn run(cli: &Global, args: &Args) -> anyhow::Result<ExitCode> {
    let cluster = cli.load_cluster()?;
    let state = state_store::open(&cluster, &state_store::replica_id())?;
    let path = documents::pins_origin(&*state, &cluster.paths.state);
    let pins = documents::pins(&*state, &cluster.paths.state)?;
    let images = store::open(&cluster);
    if args.list {
        println!("pins ({}):", path.display());
        for role in Role::ALL {
            for arch in Arch::ALL {
                let used = cluster.machines_with_role(role).any(|m| m.arch == arch);
                match pins.get(role, arch) {
                    Some(id) => println!("  {role:<8} {arch:<6} {}", describe(&*images, id)),
                    None if used || arch == Arch::Amd64 => println!(
                        "  {role:<8} {arch:<6} (nothing pinned: run `imgbuild profile {role} --arch {arch}` then `imgbuild pin {role} <image-id>`)"
                    ),
                    None => {}
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(role), Some(given)) = (args.role, args.image.as_deref()) else {
        bail!("usage: imgbuild pin <role> <image-id>, or imgbuild pin --list");
    };
    let id = expand_id(&*images, given)?;
    // Checked against the image store first (a pin of a missing image fails here), then applied atomically to
    // the pins in force: with etcd another host may re-pin another role at the same time.
    let arch = pins.clone().pin(&*images, role, &id)?;
    let old = documents::update_pins(&*state, &cluster.paths.state, |p| {
        let old = p.get(role, arch).cloned();
        let changed = old.as_deref() != Some(id.as_str()) && p.pin(&*images, role, &id).is_ok();
        (old, changed)
    })?;
    if old.as_deref() == Some(id.as_str()) {
        println!("{role} ({arch}): already pinned to {id}; nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    match old {
        Some(o) => println!("{role} ({arch}): {o} -> {}", describe(&*images, &id)),
        None => println!("{role} ({arch}): (nothing) -> {}", describe(&*images, &id)),
    }
    println!(
        "Reboot the {role} machines on {arch} ({}) to boot it; a running `imgbuild serve` (every replica, with etcd) uses the new pin from its next boot script.",
        hosts(&cluster, role, arch)
    );
    Ok(ExitCode::SUCCESS)
}
