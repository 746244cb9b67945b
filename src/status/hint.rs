//! What to do next about a node that stopped moving: a pure function from a node's row and the time to a
//! sentence for the status table, `imgbuild status --json` and the page.
//!
//! A boot that stops between two stages leaves no error anywhere the server can see: the firmware refused a
//! loader ("Access Denied" under Secure Boot), another DHCP server answered first, or the kernel found no
//! network. The server only sees the silence after the last thing the node fetched, so each hint names that last
//! stage, how long the node has been quiet, the likely causes and where to look. A node that finished, failed
//! (the failure says why) or is still within the usual time of its stage gets no hint.

use super::report::NodeView;

/// How long a node may stay at one stage before a hint is shown, per stage (ms), with the hint's causes.
/// Stages not listed (the first-boot steps, which report their own failures and time out on their own) get none.
const QUIET: &[(&str, u64, &str)] = &[
    (
        "dhcp-offer",
        60_000,
        "it was offered an address but never requested it: another DHCP server on the segment may have answered \
         first (`imgbuild doctor` lists the servers it hears), or the firmware did not accept the offer's boot \
         information (wrong client architecture?)",
    ),
    (
        "dhcp-ack",
        90_000,
        "it has its address but never fetched its boot loader: check that the firmware can reach this server's \
         TFTP (UDP 69) or HTTP port, and the machine's console",
    ),
    (
        "bootfile",
        120_000,
        "it fetched its boot loader but never asked for its iPXE script or GRUB config: with Secure Boot on, the \
         firmware refuses the unsigned loader (set `secure_boot = true` for this machine in cluster.toml so it gets \
         a signed UKI); otherwise look at the machine's console",
    ),
    (
        "ipxe-script",
        120_000,
        "iPXE has its script but never fetched the kernel: look at the machine's console for iPXE's error",
    ),
    (
        "grub-config",
        120_000,
        "GRUB has its config but never fetched the kernel: look at the machine's console for GRUB's error",
    ),
    (
        "kernel",
        180_000,
        "it fetched its kernel and initrd but the initrd never reported: the kernel may not find its network \
         (driver, VLAN) or may have panicked; look at the machine's console",
    ),
    (
        "initrd",
        180_000,
        "the initrd started but never reported a verified root filesystem: the download of the root filesystem \
         may have stalled; look at the machine's console",
    ),
];

/// The firmware fetched the machine's signed UKI and nothing has run since.
const UKI_REFUSED: &str = "the firmware fetched its signed UKI but nothing ran: it most likely refused it (Secure \
     Boot \"Access Denied\"). Check that the cluster's db certificate is enrolled in this machine's firmware \
     (`imgbuild secureboot enroll-files`, docs/secure-boot.md) and that the image was built with the cluster's \
     current keys; the machine's console shows the firmware's message";

/// The hint for `node` at `now_ms`, if it has been quiet at its last stage for longer than that stage usually
/// takes. `None` for nodes that are done, failed, or still within the usual time.
pub fn hint(node: &NodeView, now_ms: u64) -> Option<String> {
    if node.done || node.failed.is_some() {
        return None;
    }
    let last = node.stages.iter().max_by_key(|s| s.at_ms)?;
    let quiet = now_ms.saturating_sub(last.at_ms);
    let uki = last.stage == "bootfile" && last.detail.starts_with("uki.efi");
    let (limit, why) = if uki {
        (180_000, UKI_REFUSED)
    } else {
        QUIET
            .iter()
            .find(|(s, _, _)| *s == last.stage)
            .map(|(_, l, w)| (*l, *w))?
    };
    (quiet >= limit).then(|| format!("quiet for {} s since `{}`: {why}", quiet / 1000, last.stage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::report::StageView;

    fn node(stages: &[(&str, u64, &str)]) -> NodeView {
        NodeView {
            mac: "52:54:00:00:00:01".into(),
            name: "worker-1".into(),
            hostname: Some("worker-1".into()),
            role: Some("worker".into()),
            ip: None,
            state: "booting".into(),
            stage: stages.last().map(|s| s.0.to_string()),
            failed: None,
            done: false,
            image: None,
            standins: false,
            boot: 1,
            joins: 0,
            enrollment: None,
            started_ms: Some(0),
            elapsed_ms: None,
            stages: stages
                .iter()
                .map(|(s, at, d)| StageView {
                    stage: s.to_string(),
                    at_ms: *at,
                    duration_ms: 0,
                    since_start_ms: *at,
                    detail: d.to_string(),
                })
                .collect(),
            previous: vec![],
            secure_boot: None,
            hint: None,
        }
    }

    #[test]
    fn a_refused_uki_is_named_with_what_to_check() {
        let n = node(&[
            ("dhcp-offer", 0, ""),
            ("dhcp-ack", 1_000, ""),
            ("bootfile", 2_000, "uki.efi of image 0123abcd via TFTP"),
        ]);
        assert_eq!(hint(&n, 60_000), None, "still within the usual time");
        let h = hint(&n, 200_000).unwrap();
        assert!(h.starts_with("quiet for 198 s since `bootfile`"), "{h}");
        assert!(
            h.contains("Access Denied") && h.contains("imgbuild secureboot enroll-files"),
            "{h}"
        );
    }

    #[test]
    fn an_unsigned_loader_that_never_asked_for_its_script_points_at_secure_boot() {
        let n = node(&[
            ("dhcp-offer", 0, ""),
            ("bootfile", 1_000, "snponly.efi via TFTP"),
        ]);
        let h = hint(&n, 500_000).unwrap();
        assert!(h.contains("secure_boot = true"), "{h}");
    }

    #[test]
    fn an_offer_never_requested_points_at_another_dhcp_server() {
        let n = node(&[("dhcp-offer", 0, "")]);
        assert!(hint(&n, 59_999).is_none());
        assert!(hint(&n, 61_000).unwrap().contains("imgbuild doctor"));
    }

    #[test]
    fn the_status_table_prints_each_hint_under_it() {
        let mut n = node(&[("dhcp-offer", 0, "")]);
        n.hint = hint(&n, 100_000);
        let r = crate::status::report::Report {
            cluster: "c".into(),
            generated_ms: 100_000,
            stages: vec![],
            nodes: vec![n],
        };
        let t = crate::status::report::table(&r);
        assert!(
            t.lines()
                .last()
                .unwrap()
                .starts_with("worker-1: quiet for 100 s since `dhcp-offer`"),
            "{t}"
        );
    }

    #[test]
    fn done_failed_and_first_boot_steps_get_no_hint() {
        let mut n = node(&[("dhcp-offer", 0, "")]);
        n.done = true;
        assert!(hint(&n, 10_000_000).is_none());
        let mut n = node(&[("dhcp-offer", 0, "")]);
        n.failed = Some("kubeadm-join: exit 1".into());
        assert!(hint(&n, 10_000_000).is_none());
        let n = node(&[("dhcp-offer", 0, ""), ("kubeadm-join", 5_000, "")]);
        assert!(
            hint(&n, 10_000_000).is_none(),
            "first-boot steps time out on their own"
        );
        assert!(hint(&node(&[]), 10_000_000).is_none());
    }
}
