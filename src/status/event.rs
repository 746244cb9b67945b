//! The event model: boot [`STAGES`], who saw an event ([`Source`]), one [`Event`], and the log every protocol
//! records into ([`Events`]: in memory, appended to `state/events.jsonl`, broadcast to live watchers).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The event log: in memory, appended to a file, and broadcast to live watchers.
pub struct Events {
    list: Mutex<Vec<Event>>,
    file: Option<(PathBuf, Mutex<std::fs::File>)>,
    tx: broadcast::Sender<Event>,
}

impl Events {
    /// A log kept only in memory (tests).
    pub fn in_memory() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Events {
            list: Mutex::new(Vec::new()),
            file: None,
            tx,
        }
    }

    /// Opens (or creates) `path`, loading the events already there. A torn last line (crash mid-write) is skipped.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut list = Vec::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            list.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Event>(l).ok()),
            );
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, _) = broadcast::channel(1024);
        Ok(Events {
            list: Mutex::new(list),
            file: Some((path.to_path_buf(), Mutex::new(f))),
            tx,
        })
    }

    /// Records an event now.
    pub fn record(
        &self,
        mac: MacAddr,
        stage: &str,
        detail: impl Into<String>,
        source: Source,
    ) -> Event {
        let ev = Event {
            at_ms: now_ms(),
            mac,
            stage: stage.to_string(),
            detail: detail.into(),
            source,
        };
        self.push(ev.clone());
        ev
    }

    /// Appends an event with its own timestamp.
    pub fn push(&self, ev: Event) {
        if let Some((path, f)) = &self.file {
            let mut line = serde_json::to_string(&ev).expect("events serialize");
            line.push('\n');
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!(path = %path.display(), error = %e, "cannot append to the event log");
            }
        }
        tracing::info!(mac = %ev.mac, stage = %ev.stage, detail = %ev.detail, "boot event");
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ev.clone());
        let _ = self.tx.send(ev);
    }

    /// Every event so far, oldest first.
    pub fn snapshot(&self) -> Vec<Event> {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Events of one machine, oldest first.
    pub fn for_mac(&self, mac: MacAddr) -> Vec<Event> {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.mac == mac)
            .cloned()
            .collect()
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
