//! `imgbuild lab`: the whole boot path in QEMU on one Linux machine.
//!
//! As root: a private network namespace with the bridge named by `[network] interface` (the example: `br0` =
//! 10.77.0.1/24), `imgbuild serve` (this same binary) inside it, the role images built (or reused from the
//! cache) and pinned, one QEMU VM per machine on a tap with the inventory's MAC, a blank state disk (and a
//! Longhorn disk on storage nodes), serial console to a log file. The lab then watches the server's
//! `/api/status` until every node reached `joined`, a node failed, or the time ran out. Dropping the [`Lab`]
//! stops every process it started (by PID) and deletes the namespace (taps and bridge with it).
//!
//! Everything the lab writes lives in its directory (default `lab/` beside `cluster.toml`): a generated
//! `cluster.toml` (the user's, with `[paths]` state and secrets pointing into the lab directory and the DHCP
//! mode chosen), `state/`, `secrets/`, `server.log`, `dnsmasq.log` and `vms/<host>/` (disks, console log).
//! Images and the build cache are the user's (shared, content-addressed), so a second run reuses them.
//!
//! Here: [`Lab::prepare`], which runs the steps in order, and [`Lab::teardown`]. What the lab is asked to do
//! ([`Options`]) is in `options`, the running [`Lab`] and its [`Node`]s in `state`; the steps live beside
//! them and extend `Lab` where they need it: `tools` (root, host tools and firmware), `config` (the lab's
//! `cluster.toml`), `images` (build or reuse, then pin, serialised by `lock`), `server` (dnsmasq and
//! `imgbuild serve` in the namespace), `vms` (taps and QEMU), `watch` (waiting on `/api/status`, failures,
//! the summary) and `interrupt` (Ctrl-C / SIGTERM).

use std::path::Path;

use anyhow::{Context, bail};

use super::netns::{Children, Netns};
use super::qemu;
use crate::config::{Arch, Cluster, Machine};

mod config;
mod images;
mod interrupt;
mod lock;
mod ntp;
mod options;
mod replicas;
mod server;
mod state;
mod tools;
mod vms;
mod watch;

pub use images::build_image;
pub use interrupt::{catch_interrupts, interrupted};
pub use options::Options;
pub use replicas::SERVERS_BRIDGE;
pub use server::in_netns;
pub use state::{Lab, Node, Replica};
pub use vms::{DATA_DISK_BYTES, STATE_DISK_BYTES, VmVariant};
pub use watch::{LabFailure, summary};

impl Lab {
    /// Sets up everything but the VMs: lab dir, config, secrets, images (built or reused) and pins, the
    /// namespace with bridge and taps, dnsmasq (proxy mode) and the server, which it waits for.
    pub fn prepare(opts: Options) -> anyhow::Result<Lab> {
        let user = crate::config::load(&opts.config)?;
        let machines = select_machines(&opts, &user)?;
        if machines.is_empty() {
            bail!("no machines to boot");
        }
        tools::check_tools(&opts, &machines)?;
        reset_dir(&opts.dir)?;
        let config = config::write_config(&opts, &user)?;
        let cluster = crate::config::load(&config)?;
        {
            // Concurrent labs share the kept CA: one at a time.
            std::fs::create_dir_all(&cluster.paths.cache)?;
            let _ca_lock = lock::FileLock::acquire(&cluster.paths.cache.join("lab-ca.lock"))?;
            keep_provisioning_ca(&cluster, false)?;
            images::imgbuild(&opts.exe, &config, &["secrets", "init"])?;
            keep_provisioning_ca(&cluster, true)?;
        }
        // Secure Boot: the machines' inventory entries as the lab's config resolves them, and a variable store
        // with the cluster's keys enrolled (from the files `imgbuild secureboot enroll-files` writes).
        let machines: Vec<_> = machines
            .iter()
            .map(|m| {
                cluster
                    .machine_by_hostname(&m.hostname)
                    .cloned()
                    .unwrap_or_else(|| m.clone())
            })
            .collect();
        // One store per architecture: OVMF's for amd64, AAVMF's for arm64.
        let mut enrolled_vars = Vec::new();
        if opts.secure_boot {
            let dir = opts.dir.join("secureboot");
            crate::pki::secureboot::enroll_files(&cluster, &dir)?;
            for (arch, template, name) in [
                (Arch::Amd64, qemu::OVMF_VARS, "OVMF_VARS.enrolled.fd"),
                (
                    Arch::Arm64,
                    qemu::AAVMF_VARS_FORMATTED,
                    "AAVMF_VARS.enrolled.fd",
                ),
            ] {
                if machines.iter().any(|m| m.arch == arch && m.secure_boot) {
                    let vars = dir.join(name);
                    crate::vm::uefi_vars::enrolled(Path::new(template), &dir, &vars)?;
                    enrolled_vars.push((arch, vars));
                }
            }
        }

        // Images: one per role and architecture in use, built under a lock (concurrent labs share the cache),
        // then pinned.
        let images::Pinned { images, standins } =
            images::build_and_pin(&opts, &config, &cluster, &machines)?;

        let accel = qemu::best_accel_cached(&cluster.paths.cache);
        let netns = Netns::create(&opts.prefix)?;
        let net = &cluster.network;
        // With the server elsewhere on the bridge, the namespace keeps the subnet's last host address.
        // With replicas, the nodes' side has only the relay's address (a /32: the servers' side holds the subnet).
        let (own, len) = match (opts.external_server, opts.replicas) {
            (_, true) => (replicas::relay_address(net), 32),
            (false, false) => (Some(net.server), net.subnet.prefix_len()),
            (true, false) => (net.subnet.hosts().last(), net.subnet.prefix_len()),
        };
        let own = own.context("the lab's subnet has no host address for the namespace")?;
        netns.add_bridge(&net.interface, &format!("{own}/{len}"))?;
        let nodes = vms::add_nodes(&opts, &netns, net, &machines, accel, &enrolled_vars)?;
        let mut lab = Lab {
            children: Children::new(),
            replicas: Vec::new(),
            netns,
            server_url: net.http_base(),
            config,
            cluster,
            nodes,
            accel,
            images,
            standins,
            opts,
        };
        if lab.opts.replicas {
            lab.add_servers_segment()?;
        } else if !lab.opts.external_server {
            lab.start_ntp()?;
            lab.start_services()?;
        }
        Ok(lab)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// Adds a tap `tap` on the lab's bridge (for a VM the caller starts, e.g. the server's with
    /// [`Options::external_server`]).
    pub fn add_tap(&self, tap: &str) -> anyhow::Result<()> {
        Ok(self.netns.add_tap(tap, &self.cluster.network.interface)?)
    }

    /// Runs `program` with `args` inside the lab's namespace as the lab's process `name`, its stdout and stderr
    /// appended to `log`: stopped by PID with the lab, or earlier by [`Lab::stop_process`]. Returns its PID.
    pub fn spawn_in_netns(
        &mut self,
        name: &str,
        program: &str,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut c = self.netns.command(program);
        c.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        Ok(self.children.spawn(name, c)?)
    }

    /// Whether the lab's process `name` (see [`Lab::spawn_in_netns`]) still runs.
    pub fn process_running(&mut self, name: &str) -> bool {
        self.children.running(name)
    }

    /// Stops the lab's process `name` (by PID) now.
    pub fn stop_process(&mut self, name: &str) {
        self.children.stop(name)
    }

    /// Stops every process and deletes the namespace now (also what dropping the lab does).
    pub fn teardown(mut self) {
        self.children.stop_all();
    }
}

/// The machines `--nodes` names (all of the inventory without it), in that order.
fn select_machines(opts: &Options, user: &Cluster) -> anyhow::Result<Vec<Machine>> {
    Ok(match &opts.nodes {
        None => user.machines.clone(),
        Some(names) => {
            let mut v = Vec::new();
            for n in names {
                let m = user.machine_by_hostname(n).with_context(|| {
                    format!(
                        "--nodes: no machine {n:?} in {}; known: {}",
                        opts.config.display(),
                        user.machines
                            .iter()
                            .map(|m| m.hostname.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                v.push(m.clone());
            }
            v
        }
    })
}

/// The lab's provisioning CA lives on across runs in the shared cache (`cache/lab-provisioning-ca/`): images
/// carry its certificate, so a new CA per run would rebuild every role layer. `save = false` copies a kept CA
/// into the fresh secrets directory (which `secrets init` then keeps); `save = true` keeps the one just made.
/// A lab's CA is a test CA: a real site keeps its provisioning CA in `secrets/` only.
fn keep_provisioning_ca(cluster: &Cluster, save: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let kept = cluster.paths.cache.join("lab-provisioning-ca");
    let names = [
        crate::pki::provisioning::PROVISIONING_CA_CERT,
        crate::pki::provisioning::PROVISIONING_CA_KEY,
    ];
    let (from, to) = if save {
        (&cluster.paths.secrets, &kept)
    } else {
        (&kept, &cluster.paths.secrets)
    };
    if !names.iter().all(|n| from.join(n).exists()) || names.iter().any(|n| to.join(n).exists()) {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(to)
        .with_context(|| format!("creating {}", to.display()))?;
    for n in names {
        let dst = to.join(n);
        std::fs::copy(from.join(n), &dst).with_context(|| format!("copying {}", dst.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// A fresh lab: earlier state, secrets and disks go; `vms/` and `state/` are created empty.
fn reset_dir(dir: &Path) -> anyhow::Result<()> {
    for sub in ["state", "secrets", "vms"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    for sub in ["vms", "state"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}
