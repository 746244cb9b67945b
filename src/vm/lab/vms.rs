//! The lab's VMs: one per machine on its own tap with the inventory's MAC, powered on with blank disks, off,
//! and booted all at once.

use std::path::PathBuf;

use anyhow::Context;

use super::options::Options;
use super::state::{Lab, Node};
use super::watch::LabFailure;
use crate::config::{Arch, Machine, Network, Role};
use crate::status::report::Report;
use crate::vm::netns::Netns;
use crate::vm::qemu::{self, Accel, VmSpec};

/// Size of each VM's blank state disk (sparse).
pub const STATE_DISK_BYTES: u64 = 8 << 30;
/// Size of a storage node's blank Longhorn disk (sparse).
pub const DATA_DISK_BYTES: u64 = 16 << 30;

/// The MAC of a machine's decoy NIC: locally administered (02:…), the machine's last three bytes, so it is
/// never an inventory MAC.
fn decoy_mac(mac: crate::config::MacAddr) -> crate::config::MacAddr {
    let b = mac.to_string();
    format!("02:00:00:{}", &b[9..])
        .parse()
        .expect("a MAC with its first three bytes replaced is a MAC")
}

/// With `--tpm`, the software TPM of a machine the lab's config enrolls by TPM (`config::write_config` decides which:
/// amd64 machines it boots with UEFI firmware): provisioned in `vms/<host>/tpm` (kept across runs, so its EK
/// stays), served on `vms/<host>/tpm.sock` when the VM starts.
fn tpm_socket(
    opts: &Options,
    m: &Machine,
    dir: &std::path::Path,
) -> anyhow::Result<Option<PathBuf>> {
    if !opts.tpm || m.identity != crate::config::Identity::Tpm {
        return Ok(None);
    }
    crate::vm::swtpm::provision(&dir.join("tpm"), &super::config::tpm_ca_dir(opts))?;
    Ok(Some(dir.join("tpm.sock")))
}

/// Adds a tap per machine to the bridge in `netns` and plans each machine's VM (disks and console under
/// `vms/<host>/` in the lab directory).
pub(super) fn add_nodes(
    opts: &Options,
    netns: &Netns,
    net: &Network,
    machines: &[Machine],
    accel: Accel,
    enrolled_vars: &[(Arch, PathBuf)],
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for (i, m) in machines.iter().enumerate() {
        let tap = format!("{}t{i}", opts.prefix);
        netns.add_tap(&tap, &net.interface)?;
        let dir = opts.dir.join("vms").join(&m.hostname);
        let mut disks = vec![dir.join("state.img")];
        if m.role == Role::Storage {
            disks.push(dir.join("longhorn.img"));
        }
        nodes.push(Node {
            machine: m.clone(),
            spec: VmSpec {
                name: m.hostname.clone(),
                mac: m.mac,
                decoy_mac: opts
                    .decoy_nic
                    .contains(&m.hostname)
                    .then(|| decoy_mac(m.mac)),
                arch: m.arch,
                tap,
                firmware: opts.firmware_for(&m.hostname),
                accel,
                memory_mb: opts.memory_mb,
                disks,
                console_log: dir.join("console.log"),
                secure_boot_vars: enrolled_vars
                    .iter()
                    .find(|(a, _)| *a == m.arch && m.secure_boot)
                    .map(|(_, v)| v.clone()),
                tpm_socket: tpm_socket(opts, m, &dir)?,
                boot_dir: None,
                dir,
            },
        });
    }
    Ok(nodes)
}

/// How [`Lab::start_vm_as`] changes a machine's VM for one power-on; `None` keeps the machine's own.
#[derive(Debug, Clone, Default)]
pub struct VmVariant {
    /// A directory given to the firmware as a FAT disk booted before the network ([`VmSpec::boot_dir`]).
    pub boot_dir: Option<PathBuf>,
    /// Another software TPM's state directory (provisioned with an EK certificate from the lab's TPM CA when
    /// new): another TPM in the machine's place, as a spoofer would have.
    pub tpm_state: Option<PathBuf>,
    /// Another state disk (`/dev/vda`, created blank when missing).
    pub state_disk: Option<PathBuf>,
    /// Another console log.
    pub console_log: Option<PathBuf>,
    /// The QEMU process's nice value (`setpriority`, inherited from before exec): a lab runs a VM that only waits
    /// for others at a lower priority, so the VMs on its critical path get the cores (TCG: one per vCPU).
    pub nice: Option<i32>,
}

impl Lab {
    fn node(&self, host: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.machine.hostname == host)
            .with_context(|| format!("no VM {host} in this lab"))
    }

    /// Powers a VM on (its disks are created blank the first time, kept afterwards).
    pub fn start_vm(&mut self, host: &str) -> anyhow::Result<()> {
        self.start_vm_as(host, &VmVariant::default())
    }

    /// Powers a machine's VM on (same MAC, same tap: the same machine to the network) changed as `v` says, for
    /// this power-on only: another boot disk, another TPM (a spoofer), another state disk and console.
    pub fn start_vm_as(&mut self, host: &str, v: &VmVariant) -> anyhow::Result<()> {
        let mut node = self.node(host)?.clone();
        if let Some(d) = &v.boot_dir {
            node.spec.boot_dir = Some(d.clone());
        }
        if let Some(d) = &v.state_disk {
            node.spec.disks[0] = d.clone();
        }
        if let Some(c) = &v.console_log {
            node.spec.console_log = c.clone();
        }
        let tpm_state = match &v.tpm_state {
            Some(t) => {
                anyhow::ensure!(
                    node.spec.tpm_socket.is_some(),
                    "{host} has no TPM in this lab"
                );
                crate::vm::swtpm::provision(t, &super::config::tpm_ca_dir(&self.opts))?;
                t.clone()
            }
            None => node.spec.dir.join("tpm"),
        };
        for (i, d) in node.spec.disks.iter().enumerate() {
            qemu::blank_disk(
                d,
                if i == 0 {
                    STATE_DISK_BYTES
                } else {
                    DATA_DISK_BYTES
                },
            )?;
        }
        if let Some(sock) = &node.spec.tpm_socket {
            // Its own TPM first: QEMU connects to the socket at start (swtpm exits when QEMU disconnects).
            let _ = std::fs::remove_file(sock);
            self.children.spawn(
                &format!("tpm:{host}"),
                crate::vm::swtpm::command(&tpm_state, sock),
            )?;
            let t0 = std::time::Instant::now();
            while !sock.exists() {
                anyhow::ensure!(
                    t0.elapsed() < std::time::Duration::from_secs(20),
                    "swtpm for {host} did not create {} within 20 s",
                    sock.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let mut cmd = qemu::command(&self.netns, &node.spec)?;
        if let Some(n) = v.nice {
            use std::os::unix::process::CommandExt;
            // SAFETY: setpriority is async-signal-safe; it only changes the child's own scheduling priority.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        self.children.spawn(&format!("vm:{host}"), cmd)?;
        Ok(())
    }

    /// Powers a VM off (kills QEMU); its disks stay.
    pub fn stop_vm(&mut self, host: &str) {
        self.children.stop(&format!("vm:{host}"));
    }

    /// Whether the VM's QEMU is running.
    pub fn vm_running(&mut self, host: &str) -> bool {
        self.children.running(&format!("vm:{host}"))
    }

    /// Console log path of `host`.
    pub fn console(&self, host: &str) -> PathBuf {
        self.opts.dir.join("vms").join(host).join("console.log")
    }

    /// Boots every VM and waits until all reached `joined` (or fails).
    pub fn boot_all(&mut self) -> Result<Report, Box<LabFailure>> {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.machine.hostname.clone())
            .collect();
        for h in &hosts {
            if let Err(e) = self.start_vm(h) {
                return Err(self.failure(None, &format!("cannot start the VM {h}: {e:#}"), None));
            }
        }
        let limit = self.opts.timeout;
        self.wait(&hosts, 1, limit, |n| n.done)
    }
}
