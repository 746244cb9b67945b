//! The status report (`GET /api/status`, `imgbuild status --json`) and its text table.

use serde::{Deserialize, Serialize};

use super::event::{Event, STAGES};
use super::node::{self, NodeStatus};
use crate::config::Cluster;

/// Every node's boot state, as served by `GET /api/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The cluster's name (`[cluster] name`).
    pub cluster: String,
    /// When the report was made (ms since the Unix epoch).
    pub generated_ms: u64,
    /// The stage names in order (the columns of the web page).
    pub stages: Vec<String>,
    /// Every node: the inventory's machines in inventory order, then unknown MACs that sent events, by MAC.
    pub nodes: Vec<NodeView>,
}

/// One node in the report: [`NodeStatus`] flattened for JSON readers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The MAC address, `52:54:00:12:34:56` form.
    pub mac: String,
    /// The name to show: the hostname, or the MAC for a machine not in the inventory.
    pub name: String,
    /// The inventory hostname; `None` for an unknown MAC.
    pub hostname: Option<String>,
    /// The inventory role (`master`, `worker`, `storage`); `None` for an unknown MAC.
    pub role: Option<String>,
    /// The inventory address; `None` for an unknown MAC.
    pub ip: Option<String>,
    /// Furthest stage of the current boot, `failed: <reason>`, or `-`.
    pub state: String,
    /// The furthest stage of the current boot; `None` before any event.
    pub stage: Option<String>,
    /// The failure reason when the current boot failed.
    pub failed: Option<String>,
    /// Whether the current boot reached `joined`.
    pub done: bool,
    /// The image id the current boot uses, if an event named it.
    pub image: Option<String>,
    /// Whether that image was built with labelled stand-in binaries (`--standins`): not a real cluster.
    pub standins: bool,
    /// The number of the current boot: 1 for the first, 2 after one reboot, ...; 0 before any event.
    pub boot: u32,
    /// How many boots joined the cluster (ran `kubeadm init` or `kubeadm join` and reached `joined`).
    pub joins: u32,
    /// The node's enrollment: `pending`, `approved`, `enrolled`, `spoofer-refused from <ip>`; absent before
    /// any contact (see [`NodeStatus::enrollment`]).
    #[serde(default)]
    pub enrollment: Option<String>,
    /// Start of the current boot (its first event), ms since the Unix epoch.
    pub started_ms: Option<u64>,
    /// Milliseconds from the first to the latest event of the current boot.
    pub elapsed_ms: Option<u64>,
    /// The stages reached in the current boot, in order.
    pub stages: Vec<StageView>,
    /// Earlier boots, oldest first.
    pub previous: Vec<PreviousView>,
    /// Whether the firmware enforced Secure Boot in the current boot, as the node reported; `None` until then.
    #[serde(default)]
    pub secure_boot: Option<bool>,
    /// What to do next when the node has been quiet at its last stage for longer than that stage usually takes
    /// ([`super::hint`]); `None` while it moves, and once it is done or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A reached stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageView {
    /// The stage's name, one of the report's `stages`.
    pub stage: String,
    /// When it was reached, ms since the Unix epoch.
    pub at_ms: u64,
    /// Milliseconds since the previous reached stage of this boot (0 for the first).
    pub duration_ms: u64,
    /// Milliseconds since the boot's first event.
    pub since_start_ms: u64,
    /// The detail of the event that reached it (a file name, an image id, a message); may be empty.
    #[serde(default)]
    pub detail: String,
}

/// An earlier boot of the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousView {
    /// Its furthest stage, or `failed: <reason>`.
    pub outcome: String,
    /// The image id it used, if an event named it.
    pub image: Option<String>,
    /// When it started (its first event), ms since the Unix epoch.
    pub started_ms: u64,
}

impl From<&NodeStatus> for NodeView {
    fn from(n: &NodeStatus) -> Self {
        let start = n.started_ms.unwrap_or(0);
        NodeView {
            mac: n.mac.to_string(),
            name: n.name(),
            hostname: n.hostname.clone(),
            role: n.role.clone(),
            ip: n.ip.clone(),
            state: n.state_text(),
            stage: n.stage.clone(),
            failed: n.failed.clone(),
            done: n.done,
            image: n.image.clone(),
            standins: n.standins,
            boot: n.boot,
            joins: n.joins,
            enrollment: n.enrollment.clone(),
            started_ms: n.started_ms,
            elapsed_ms: n.elapsed_ms(),
            stages: n
                .stages
                .iter()
                .map(|s| StageView {
                    stage: s.stage.clone(),
                    at_ms: s.at_ms,
                    duration_ms: s.duration_ms,
                    since_start_ms: s.at_ms.saturating_sub(start),
                    detail: s.detail.clone(),
                })
                .collect(),
            previous: n
                .previous
                .iter()
                .map(|p| PreviousView {
                    outcome: p.outcome.clone(),
                    image: p.image.clone(),
                    started_ms: p.started_ms,
                })
                .collect(),
            secure_boot: n.secure_boot,
            hint: None,
        }
    }
}

impl NodeView {
    /// The state text, followed by the enrollment when it needs a person: `[enrollment: pending]` (run
    /// `imgbuild enroll approve <host>`) or `[enrollment: spoofer-refused from <ip>]`.
    pub fn state_with_enrollment(&self) -> String {
        match &self.enrollment {
            Some(e) if e == "pending" || e.starts_with("spoofer") => {
                format!("{} [enrollment: {e}]", self.state)
            }
            _ => self.state.clone(),
        }
    }

    /// When this boot reached `stage`, in ms since its first event.
    pub fn since_start(&self, stage: &str) -> Option<u64> {
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .map(|s| s.since_start_ms)
    }
}

/// Whether an image was built with stand-ins, from its manifest in `store` (unknown ids: `false`).
pub fn image_standins(store: &dyn crate::image::store::ImageStore, id: &str) -> bool {
    store.manifest(id).map(|m| m.standins).unwrap_or(false)
}

/// Builds the report from the event log and the cluster (stand-in flags read from the image manifests).
pub fn build(cluster: &Cluster, events: &[Event]) -> Report {
    let mut nodes = node::compute(
        events,
        &cluster.machines,
        cluster.limits.events.status_rows as usize,
    );
    let mut cache: std::collections::BTreeMap<String, bool> = Default::default();
    let store = crate::image::store::open(cluster);
    for n in &mut nodes {
        if let Some(id) = &n.image {
            n.standins = *cache
                .entry(id.clone())
                .or_insert_with(|| image_standins(&*store, id));
        }
    }
    let now = super::event::now_ms();
    Report {
        cluster: cluster.cluster.name.clone(),
        generated_ms: now,
        stages: STAGES.iter().map(|s| s.to_string()).collect(),
        nodes: nodes
            .iter()
            .map(|n| {
                let mut v = NodeView::from(n);
                let last =
                    v.stages
                        .iter()
                        .max_by_key(|s| s.at_ms)
                        .map(|s| super::hint::LastStage {
                            stage: &s.stage,
                            at_ms: s.at_ms,
                            detail: &s.detail,
                        });
                v.hint = super::hint::hint(v.done, v.failed.is_some(), last, now);
                v
            })
            .collect(),
    }
}

fn secs(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
        None => "-".into(),
    }
}

fn short(id: &Option<String>) -> String {
    match id {
        Some(id) => id.chars().take(12).collect(),
        None => "-".into(),
    }
}

/// The status table as text: one line per node (name, role, ip, boot number, state, elapsed, image).
pub fn table(report: &Report) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "ROLE".into(),
        "IP".into(),
        "BOOT".into(),
        "STAGE".into(),
        "ELAPSED".into(),
        "SECBOOT".into(),
        "IMAGE".into(),
    ]];
    for n in &report.nodes {
        let mut image = short(&n.image);
        if n.standins {
            image.push_str(" (standins)");
        }
        rows.push([
            n.name.clone(),
            n.role.clone().unwrap_or_else(|| "unknown".into()),
            n.ip.clone().unwrap_or_else(|| "-".into()),
            n.boot.to_string(),
            n.state_with_enrollment(),
            secs(n.elapsed_ms),
            match n.secure_boot {
                Some(true) => "on".into(),
                Some(false) => "off".into(),
                None => "-".into(),
            },
            image,
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for n in &report.nodes {
        if let Some(h) = &n.hint {
            out.push_str(&format!("{}: {h}\n", n.name));
        }
    }
    out
}

/// Per-stage durations of every node's current boot: one line per node, `stage +duration` pairs.
pub fn durations(report: &Report) -> String {
    let mut out = String::new();
    for n in &report.nodes {
        if n.stages.is_empty() {
            continue;
        }
        let parts: Vec<String> = n
            .stages
            .iter()
            .map(|s| format!("{} {:.1}s", s.stage, s.duration_ms as f64 / 1000.0))
            .collect();
        out.push_str(&format!(
            "{} (boot {}, total {}): {}\n",
            n.name,
            n.boot,
            secs(n.elapsed_ms),
            parts.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Source;

    #[test]
    fn table_and_json_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.toml");
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster.toml"), &p).unwrap();
        let cluster = crate::config::load(&p).unwrap();
        let mac = cluster.machines[0].mac;
        let ev = |at, stage: &str| Event {
            at_ms: at,
            mac,
            stage: stage.into(),
            detail: String::new(),
            source: Source::Server,
        };
        let r = build(&cluster, &[ev(1000, "dhcp-offer"), ev(3500, "kernel")]);
        let t = table(&r);
        let first = t.lines().nth(1).unwrap();
        assert!(first.starts_with("master-1"), "{t}");
        assert!(first.contains("kernel") && first.contains("2.5s"), "{t}");
        // The events are from 1970: master-1 has been quiet at `kernel` since, and its hint follows the table.
        assert_eq!(t.lines().count(), 1 + cluster.machines.len() + 1, "{t}");
        assert!(
            t.lines().last().unwrap().starts_with("master-1: quiet for"),
            "{t}"
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.nodes[0].since_start("kernel"), Some(2500));
        assert!(
            durations(&r).contains("master-1 (boot 1, total 2.5s): dhcp-offer 0.0s, kernel 2.5s")
        );
    }
}
