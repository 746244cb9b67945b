//! A node's boot as a state machine, computed from its events.
//!
//! Rules (pure, no clock, no I/O):
//! - A stage is *reached* the first time its event arrives in the current boot. Stages may be skipped (QEMU's iPXE
//!   ROM never asks TFTP for a boot file; in proxy mode the server sees no `dhcp-ack`), and may repeat (OVMF's PXE
//!   does DHCP, then the iPXE it loads does DHCP again): the first time counts, later repeats only update
//!   `last_seen_ms`.
//! - A stage that lies *behind* the current one is ignored, except that `dhcp-offer`, `bootfile` or `ipxe-script`
//!   arriving after the node reached `kernel` (or later, or failed) starts a **new boot**: the reboot case.
//!   The previous boots are kept as a count and by their final stage and image.
//! - `failed` ends the boot with its detail as the reason; the node stays failed until it boots again.
//! - The image a boot uses is read from event details: `image=<id>` (node reports, the iPXE script request) or an
//!   `/images/<id>/` path (HTTP transfers).
//! - Each reached stage has a timestamp and a duration: the time since the previous reached stage of the same boot
//!   (the first stage's duration is 0).

use serde::Serialize;

use super::event::{Event, STAGES};
use crate::config::{MacAddr, Machine};

/// The last stage of a successful boot.
pub const LAST_STAGE: &str = "joined";

/// The position of `stage` in [`STAGES`].
pub fn stage_index(stage: &str) -> Option<usize> {
    STAGES.iter().position(|s| *s == stage)
}

/// One reached stage of a boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageTime {
    /// The stage's name, one of [`STAGES`].
    pub stage: String,
    /// When it was reached (ms since the Unix epoch).
    pub at_ms: u64,
    /// Time since the previous reached stage of this boot.
    pub duration_ms: u64,
    /// The detail of the event that reached it (a file name, an image id, a message); empty when it had none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A finished (superseded) boot of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PastBoot {
    /// Its furthest stage, or `failed: <reason>`.
    pub outcome: String,
    /// The image id that boot used, if an event named it.
    pub image: Option<String>,
    /// When that boot started (its first event), ms since the Unix epoch.
    pub started_ms: u64,
}

/// Where a node is in its boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The machine's MAC address, the key its events are filed under.
    pub mac: MacAddr,
    /// From the inventory; `None` for a MAC that is not in it.
    pub hostname: Option<String>,
    /// The inventory role (`master`, `worker`, `storage`); `None` for an unknown MAC.
    pub role: Option<String>,
    /// The inventory address; `None` for an unknown MAC.
    pub ip: Option<String>,
    /// The furthest stage of the current boot (`None`: no event yet).
    pub stage: Option<String>,
    /// The reason, when the current boot failed.
    pub failed: Option<String>,
    /// `true` once the current boot reached [`LAST_STAGE`].
    pub done: bool,
    /// The image id this boot uses, when an event named it.
    pub image: Option<String>,
    /// The image was built with labelled stand-in binaries (filled in by the server from the image manifest).
    pub standins: bool,
    /// 1 for the first boot, 2 after one reboot, ...
    pub boot: u32,
    /// Start of the current boot (its first event).
    pub started_ms: Option<u64>,
    /// The latest event of the current boot.
    pub last_seen_ms: Option<u64>,
    /// The stages reached in the current boot, in the order reached (the order of [`STAGES`]).
    pub stages: Vec<StageTime>,
    /// Earlier boots, oldest first.
    pub previous: Vec<PastBoot>,
    /// How many boots really joined: reached `joined` after `kubeadm-init` or `kubeadm-join` in the same boot. A
    /// reboot with the state disk kept reaches `joined` without either, so it does not count.
    pub joins: u32,
    /// The node's enrollment as the server sees it (filled in by the server from its enrollment state):
    /// `pending` (approval mode, waiting for `imgbuild enroll approve <host>`), `approved`, `enrolled`, or
    /// `spoofer-refused from <ip>` (a second claimant was refused); `None` before any contact.
    #[serde(default)]
    pub enrollment: Option<String>,
    /// Whether the firmware enforced UEFI Secure Boot in the current boot (the `SecureBoot` EFI variable, read
    /// by the initrd and reported as `secure_boot=on|off` in its first event); `None` until reported.
    #[serde(default)]
    pub secure_boot: Option<bool>,
}

impl NodeStatus {
    /// An empty status for `mac`, with the inventory's data when the machine is known.
    pub fn new(mac: MacAddr, machine: Option<&Machine>) -> Self {
        NodeStatus {
            mac,
            hostname: machine.map(|m| m.hostname.clone()),
            role: machine.map(|m| m.role.to_string()),
            ip: machine.map(|m| m.ip.to_string()),
            stage: None,
            failed: None,
            done: false,
            image: None,
            standins: false,
            boot: 0,
            started_ms: None,
            last_seen_ms: None,
            stages: Vec::new(),
            previous: Vec::new(),
            joins: 0,
            enrollment: None,
            secure_boot: None,
        }
    }

    /// The name to show: hostname, or the MAC for an unknown machine.
    pub fn name(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| self.mac.to_string())
    }

    /// `stage`, or `failed: <reason>`, or `-` before any event.
    pub fn state_text(&self) -> String {
        match (&self.failed, &self.stage) {
            (Some(r), _) => format!("failed: {r}"),
            (None, Some(s)) => s.clone(),
            (None, None) => "-".into(),
        }
    }

    /// Milliseconds from the first to the latest event of the current boot.
    pub fn elapsed_ms(&self) -> Option<u64> {
        Some(self.last_seen_ms?.saturating_sub(self.started_ms?))
    }

    /// When the current boot reached `stage`.
    pub fn reached(&self, stage: &str) -> Option<&StageTime> {
        self.stages.iter().find(|s| s.stage == stage)
    }

    fn current_index(&self) -> Option<usize> {
        self.stage.as_deref().and_then(stage_index)
    }

    fn begin_boot(&mut self, at_ms: u64) {
        if self.boot > 0 {
            self.previous.push(PastBoot {
                outcome: self.state_text(),
                image: self.image.clone(),
                started_ms: self.started_ms.unwrap_or(at_ms),
            });
        }
        self.boot += 1;
        self.stage = None;
        self.failed = None;
        self.done = false;
        self.image = None;
        self.secure_boot = None;
        self.stages.clear();
        self.started_ms = Some(at_ms);
        self.last_seen_ms = Some(at_ms);
    }

    /// Applies one event of this node. Returns the stage newly reached (with its duration), if any.
    pub fn apply(&mut self, ev: &Event) -> Option<StageTime> {
        let idx = stage_index(&ev.stage);
        let is_failed = ev.stage == "failed";
        if idx.is_none() && !is_failed {
            // Unknown stage names are kept out of the state machine (they stay in the log).
            return None;
        }
        let kernel = stage_index("kernel").expect("kernel is a stage");
        let restarts = matches!(
            ev.stage.as_str(),
            "dhcp-offer" | "bootfile" | "ipxe-script" | "grub-config"
        );
        let past_kernel =
            self.current_index().is_some_and(|i| i >= kernel) || self.failed.is_some();
        if self.boot == 0 || (restarts && past_kernel) {
            self.begin_boot(ev.at_ms);
        }
        self.last_seen_ms = Some(self.last_seen_ms.unwrap_or(ev.at_ms).max(ev.at_ms));
        if let Some(id) = image_in(&ev.detail)
            && self.failed.is_none()
        {
            self.image = Some(id);
        }
        if let Some(sb) = secure_boot_in(&ev.detail) {
            self.secure_boot = Some(sb);
        }
        if self.failed.is_some() {
            return None;
        }
        let prev_at = self
            .stages
            .last()
            .map(|s| s.at_ms)
            .or(self.started_ms)
            .unwrap_or(ev.at_ms);
        let duration_ms = ev.at_ms.saturating_sub(prev_at);
        if is_failed {
            let reason = if ev.detail.is_empty() {
                format!("after {}", self.stage.as_deref().unwrap_or("start"))
            } else {
                ev.detail.clone()
            };
            self.failed = Some(reason);
            return None;
        }
        let idx = idx.expect("checked above");
        if self.current_index().is_some_and(|cur| idx <= cur) {
            return None;
        }
        let st = StageTime {
            stage: ev.stage.clone(),
            at_ms: ev.at_ms,
            duration_ms,
            detail: ev.detail.clone(),
        };
        self.stages.push(st.clone());
        self.stage = Some(ev.stage.clone());
        if ev.stage == LAST_STAGE {
            self.done = true;
            if self
                .stages
                .iter()
                .any(|s| s.stage == "kubeadm-init" || s.stage == "kubeadm-join")
            {
                self.joins += 1;
            }
        }
        Some(st)
    }
}

/// `secure_boot=on` / `secure_boot=off` in an event detail (the initrd's first event).
pub fn secure_boot_in(detail: &str) -> Option<bool> {
    detail
        .split_whitespace()
        .find_map(|t| match t.strip_prefix("secure_boot=")? {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        })
}

/// The image id named in an event detail: `image=<id>`, `imgbuild.image=<id>`, `image <id>` or an
/// `/images/<id>/` path. An id is 12 to 128 lower-case hex digits (image ids are sha256 digests).
pub fn image_in(detail: &str) -> Option<String> {
    let valid = |s: &str| {
        (12..=128).contains(&s.len())
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    let toks: Vec<&str> = detail
        .split([' ', '&', ',', '?', ';', '\t'])
        .filter(|t| !t.is_empty())
        .collect();
    for (i, tok) in toks.iter().enumerate() {
        let cand = tok
            .strip_prefix("image=")
            .or_else(|| tok.strip_prefix("imgbuild.image="))
            .or_else(|| {
                (*tok == "image")
                    .then(|| toks.get(i + 1).copied())
                    .flatten()
            });
        if let Some(id) = cand
            && valid(id)
        {
            return Some(id.to_string());
        }
    }
    if let Some(pos) = detail.find("/images/") {
        let rest = &detail[pos + "/images/".len()..];
        let id = rest.split('/').next().unwrap_or("");
        if valid(id) && rest.len() > id.len() {
            return Some(id.to_string());
        }
    }
    None
}

/// Every node's status from the event log: the inventory's machines first (in inventory order, even without
/// events), then unknown MACs that produced events (only older logs hold any), by MAC — at most `max_rows`
/// rows in all: the inventory always, then the unknown MACs seen last.
pub fn compute(events: &[Event], machines: &[Machine], max_rows: usize) -> Vec<NodeStatus> {
    let mut nodes: Vec<NodeStatus> = machines
        .iter()
        .map(|m| NodeStatus::new(m.mac, Some(m)))
        .collect();
    let mut unknown: std::collections::BTreeMap<MacAddr, NodeStatus> = Default::default();
    for ev in events {
        if let Some(n) = nodes.iter_mut().find(|n| n.mac == ev.mac) {
            n.apply(ev);
        } else {
            unknown
                .entry(ev.mac)
                .or_insert_with(|| NodeStatus::new(ev.mac, None))
                .apply(ev);
        }
    }
    let room = max_rows.saturating_sub(nodes.len());
    if unknown.len() > room {
        let mut by_seen: Vec<(u64, MacAddr)> = unknown
            .values()
            .map(|n| (n.last_seen_ms.unwrap_or(0), n.mac))
            .collect();
        by_seen.sort_unstable_by(|a, b| b.cmp(a));
        let keep: std::collections::BTreeSet<MacAddr> =
            by_seen.into_iter().take(room).map(|(_, m)| m).collect();
        unknown.retain(|m, _| keep.contains(m));
    }
    nodes.extend(unknown.into_values());
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Source;

    fn mac() -> MacAddr {
        "52:54:00:77:00:21".parse().unwrap()
    }

    fn ev(at: u64, stage: &str, detail: &str) -> Event {
        Event {
            at_ms: at,
            mac: mac(),
            stage: stage.into(),
            detail: detail.into(),
            source: Source::Server,
        }
    }

    fn run(evs: &[Event]) -> NodeStatus {
        let mut n = NodeStatus::new(mac(), None);
        for e in evs {
            n.apply(e);
        }
        n
    }

    #[test]
    fn stages_advance_with_durations_and_skips() {
        let n = run(&[
            ev(1000, "dhcp-offer", ""),
            ev(1200, "dhcp-ack", ""),
            ev(3000, "ipxe-script", "image=abc123abc123"),
            ev(3100, "kernel", "/images/abc123abc123/vmlinuz"),
            ev(4000, "initrd", ""),
        ]);
        assert_eq!(n.stage.as_deref(), Some("initrd"));
        assert_eq!(n.boot, 1);
        assert_eq!(n.image.as_deref(), Some("abc123abc123"));
        let d: Vec<(String, u64)> = n
            .stages
            .iter()
            .map(|s| (s.stage.clone(), s.duration_ms))
            .collect();
        assert_eq!(
            d,
            vec![
                ("dhcp-offer".into(), 0),
                ("dhcp-ack".into(), 200),
                ("ipxe-script".into(), 1800),
                ("kernel".into(), 100),
                ("initrd".into(), 900)
            ]
        );
        assert_eq!(n.elapsed_ms(), Some(3000));
        assert!(!n.done);
    }

    #[test]
    fn second_dhcp_of_the_ipxe_chain_is_not_a_new_boot() {
        let n = run(&[
            ev(0, "dhcp-offer", ""),
            ev(10, "dhcp-ack", ""),
            ev(20, "bootfile", "snponly.efi"),
            ev(30, "dhcp-offer", ""),
            ev(40, "dhcp-ack", ""),
            ev(50, "ipxe-script", ""),
        ]);
        assert_eq!(n.boot, 1);
        assert_eq!(n.stage.as_deref(), Some("ipxe-script"));
        assert_eq!(n.stages.len(), 4);
    }

    #[test]
    fn reboot_starts_a_new_boot_and_counts_joins() {
        let mut evs = vec![
            ev(0, "dhcp-offer", ""),
            ev(5, "kernel", "/images/0000000000aa/vmlinuz"),
        ];
        evs.push(ev(8, "kubeadm-join", ""));
        evs.push(ev(9, "joined", ""));
        evs.push(ev(100, "dhcp-offer", ""));
        evs.push(ev(110, "ipxe-script", "image 0000000000bb"));
        evs.push(ev(120, "systemd", ""));
        evs.push(ev(130, "joined", "already joined"));
        let n = run(&evs);
        assert_eq!(n.boot, 2);
        assert_eq!(n.joins, 1);
        assert_eq!(n.image.as_deref(), Some("0000000000bb"));
        assert_eq!(n.previous.len(), 1);
        assert_eq!(n.previous[0].outcome, "joined");
        assert_eq!(n.previous[0].image.as_deref(), Some("0000000000aa"));
        assert_eq!(n.stage.as_deref(), Some("joined"));
        assert!(n.done);
        assert_eq!(
            n.joins, 1,
            "the second boot reached joined without a kubeadm step"
        );
    }

    #[test]
    fn failed_is_sticky_until_the_next_boot() {
        let n = run(&[
            ev(0, "dhcp-offer", ""),
            ev(5, "kernel", ""),
            ev(6, "failed", "rootfs sha256 mismatch"),
            ev(7, "state-disk", ""),
        ]);
        assert_eq!(n.state_text(), "failed: rootfs sha256 mismatch");
        assert_eq!(n.stage.as_deref(), Some("kernel"));
        let n2 = run(&[
            ev(0, "dhcp-offer", ""),
            ev(1, "failed", ""),
            ev(50, "dhcp-offer", ""),
        ]);
        assert_eq!(n2.failed, None);
        assert_eq!(n2.boot, 2);
        assert_eq!(n2.previous[0].outcome, "failed: after dhcp-offer");
    }

    #[test]
    fn backwards_and_unknown_stages_are_ignored() {
        let n = run(&[
            ev(0, "dhcp-offer", ""),
            ev(5, "initrd", ""),
            ev(6, "dhcp-ack", "renew"),
            ev(7, "bogus", ""),
        ]);
        assert_eq!(n.stage.as_deref(), Some("initrd"));
        assert_eq!(n.boot, 1);
        assert_eq!(n.stages.len(), 2);
    }

    #[test]
    fn image_ids_are_parsed_from_details() {
        let id = "0123456789abcdef";
        assert_eq!(
            image_in(&format!("GET /images/{id}/vmlinuz")).as_deref(),
            Some(id)
        );
        assert_eq!(image_in(&format!("mac=x&image={id}")).as_deref(), Some(id));
        assert_eq!(
            image_in(&format!("imgbuild.image={id} foo")).as_deref(),
            Some(id)
        );
        assert_eq!(image_in(&format!("image {id}")).as_deref(), Some(id));
        assert_eq!(image_in("waiting: no image pinned for role worker"), None);
        assert_eq!(image_in("/images/../etc"), None);
        assert_eq!(image_in("nothing"), None);
    }

    #[test]
    fn compute_lists_inventory_then_unknown() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.toml");
        std::fs::write(&p, text).unwrap();
        let cluster = crate::config::load(&p).unwrap();
        let stranger: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let mut e = ev(1, "dhcp-offer", "");
        e.mac = stranger;
        let mut e2 = ev(2, "dhcp-offer", "");
        e2.mac = "02:00:00:00:00:02".parse().unwrap();
        let all = [ev(0, "dhcp-offer", ""), e, e2];
        let n = cluster.machines.len();
        assert_eq!(compute(&all, &cluster.machines, 100).len(), n + 2);
        // The row cap: the inventory always, then the unknown MAC seen last.
        let capped = compute(&all, &cluster.machines, n + 1);
        assert_eq!(capped.len(), n + 1);
        assert_eq!(capped[n].name(), "02:00:00:00:00:02");
        assert_eq!(compute(&all, &cluster.machines, 1).len(), n);
        let nodes = compute(&all[..2], &cluster.machines, 100);
        assert_eq!(nodes.len(), cluster.machines.len() + 1);
        let w = nodes.iter().find(|n| n.mac == mac()).unwrap();
        assert_eq!(w.hostname.as_deref(), Some("worker-1"));
        assert_eq!(w.stage.as_deref(), Some("dhcp-offer"));
        assert_eq!(nodes.last().unwrap().name(), "02:00:00:00:00:01");
    }
}

#[cfg(test)]
mod secure_boot_tests {
    use super::*;

    #[test]
    fn secure_boot_is_read_from_the_initrd_event_and_reset_by_a_reboot() {
        assert_eq!(
            secure_boot_in("network up on eth0 10.77.0.21 secure_boot=on"),
            Some(true)
        );
        assert_eq!(secure_boot_in("secure_boot=off"), Some(false));
        assert_eq!(secure_boot_in("secure_boot=maybe"), None);
        assert_eq!(secure_boot_in("network up"), None);
        let mac: MacAddr = "52:54:00:77:00:21".parse().unwrap();
        let mut n = NodeStatus::new(mac, None);
        assert_eq!(n.secure_boot, None);
        for (i, (stage, detail)) in [
            ("bootfile", "uki.efi of image x via HTTP"),
            ("initrd", "network up on eth0 10.77.0.21 secure_boot=on"),
            ("rootfs-verified", ""),
        ]
        .iter()
        .enumerate()
        {
            n.apply(&Event {
                at_ms: 1000 * (i as u64 + 1),
                mac,
                stage: stage.to_string(),
                detail: detail.to_string(),
                source: crate::status::Source::Node,
            });
        }
        assert_eq!(n.secure_boot, Some(true));
        n.apply(&Event {
            at_ms: 9000,
            mac,
            stage: "dhcp-offer".into(),
            detail: String::new(),
            source: crate::status::Source::Server,
        });
        assert_eq!(n.secure_boot, None, "a new boot has not reported yet");
    }
}
