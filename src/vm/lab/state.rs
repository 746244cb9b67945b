//! The running lab's state: the [`Lab`] (what the steps in the sibling files read and extend) and its
//! [`Node`]s. Building it is `mod.rs`'s job; the `impl Lab` blocks live with the concern they serve.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::options::Options;
use crate::config::{Arch, Cluster, Machine, Role};
use crate::vm::netns::{Children, Netns};
use crate::vm::qemu::{Accel, VmSpec};

/// A running lab. Drop tears it down (processes by PID, then the namespace).
pub struct Lab {
    // Field order matters: children stop before the namespace is deleted.
    pub(super) children: Children,
    /// The server replicas ([`Options::replicas`]), each with its namespace (deleted after the processes stop).
    pub replicas: Vec<Replica>,
    pub(super) netns: Netns,
    /// What the lab was asked to do.
    pub opts: Options,
    /// The generated cluster.toml the server uses.
    pub config: PathBuf,
    /// The generated cluster.toml, loaded.
    pub cluster: Cluster,
    /// The VMs, one per machine booted.
    pub nodes: Vec<Node>,
    /// `http://server:port` (reachable only inside the namespace).
    pub server_url: String,
    /// How QEMU runs here (KVM or TCG).
    pub accel: Accel,
    /// Image ids pinned per role by [`Lab::prepare`].
    pub images: Vec<(Role, Arch, String)>,
    /// Whether the pinned images carry stand-ins.
    pub standins: bool,
}

/// One VM of the lab.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its machine in the inventory.
    pub machine: Machine,
    /// Its QEMU VM.
    pub spec: VmSpec,
}

/// A running replica: its name (`replica-a`, ...), server address, namespace and configuration.
#[derive(Debug)]
pub struct Replica {
    /// `replica-a`, `replica-b`: the lab's process name and the replica's name in the shared state.
    pub name: String,
    /// Its `[network] server`.
    pub server: Ipv4Addr,
    /// Its `cluster.toml` (the lab's with the caller's `[state]` and `[store]`, its server and state).
    pub config: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    pub(super) netns: Netns,
}

impl Replica {
    /// Its `http://server:port`.
    pub fn url(&self, net: &crate::config::Network) -> String {
        net.http_base_at(self.server)
    }

    /// The namespace it runs in.
    pub fn netns(&self) -> &str {
        self.netns.name()
    }
}
