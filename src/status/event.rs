//! The event model: boot [`STAGES`], who saw an event ([`Source`]) and one [`Event`]. The log every protocol
//! records into is [`super::log::Events`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::MacAddr;

/// What a labelled stand-in binary (kubelet, containerd, runc, crictl, CNI plugins of a `--standins` image)
/// reports: kept in the event log so the user sees what would have run, never a step of the boot state machine.
pub const STANDIN_STAGE: &str = "standin";

/// The boot stages in order. First-boot steps (from the Kubernetes units) follow `firstboot-started`.
pub const STAGES: &[&str] = &[
    "dhcp-offer",
    "dhcp-ack",
    "bootfile",
    "ipxe-script",
    // arm64 machines boot GRUB instead of iPXE: it fetches its per-machine config where iPXE fetches a script.
    "grub-config",
    "kernel",
    "initrd",
    "rootfs-verified",
    "state-disk",
    "systemd",
    // The container images baked into the image, imported into containerd before the kubelet and the join.
    "images-imported",
    "firstboot-started",
    "enrolled",
    "kube-vip",
    "kubeadm-init",
    "init-done",
    "cni",
    "metallb",
    "longhorn",
    "kubeadm-join",
    // A storage node after its join: Longhorn disk annotation and create-default-disk label on its Node.
    "longhorn-node",
    "joined",
];

/// Who saw the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The server observed it (a DHCP packet, a TFTP or HTTP transfer).
    Server,
    /// The node reported it to the event endpoint.
    Node,
}

/// One timestamped event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The machine the event is about (the DHCP client's or reporting node's MAC).
    pub mac: MacAddr,
    /// A stage from [`STAGES`], or `failed`.
    pub stage: String,
    #[serde(default)]
    /// Free text for people: an error message, a file name, a version; may be empty.
    pub detail: String,
    /// Whether the server observed the event or the node reported it.
    pub source: Source,
}

/// Whether a stage is the server handing a node its signed UKI: a `bootfile` whose detail names `uki.efi`
/// (`uki.efi of image … via TFTP`). Like `kernel`, it starts the node's kernel and initrd (the UKI holds both);
/// the status hints and the initrd window of unsigned reports both ask it of a node's last such stage.
pub fn is_uki_fetch(stage: &str, detail: &str) -> bool {
    stage == "bootfile" && detail.starts_with(crate::image::manifest::UKI)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
