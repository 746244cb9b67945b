//! What to do next about a node that stopped moving: a pure function from a node's row and the time to a
//! sentence for the status table, `imgbuild status --json` and the page.
//!
//! A boot that stops between two stages leaves no error anywhere the server can see: the firmware refused a
//! loader ("Access Denied" under Secure Boot), another DHCP server answered first, or the kernel found no
//! network. The server only sees the silence after the last thing the node fetched, so each hint names that last
//! stage, how long the node has been quiet, the likely causes and where to look. A node that finished, failed
//! (the failure says why) or is still within the usual time of its stage gets no hint.

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

/// A node's last stage, as far as a hint needs it.
#[derive(Debug, Clone, Copy)]
pub struct LastStage<'a> {
    /// The stage's name.
    pub stage: &'a str,
    /// When it was reached (ms since the Unix epoch).
    pub at_ms: u64,
    /// Its detail (a UKI fetch says `uki.efi of image …`).
    pub detail: &'a str,
}

/// The hint for a node whose latest stage is `last`, at `now_ms`, if it has been quiet there for longer than
/// that stage usually takes. `None` for nodes that are `done`, `failed`, have no stage, or are still within the
/// usual time.
pub fn hint(done: bool, failed: bool, last: Option<LastStage<'_>>, now_ms: u64) -> Option<String> {
    if done || failed {
        return None;
    }
    let last = last?;
    let quiet = now_ms.saturating_sub(last.at_ms);
    let uki = super::event::is_uki_fetch(last.stage, last.detail);
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

    fn at<'a>(stage: &'a str, at_ms: u64, detail: &'a str) -> Option<LastStage<'a>> {
        Some(LastStage {
            stage,
            at_ms,
            detail,
        })
    }

    #[test]
    fn a_refused_uki_is_named_with_what_to_check() {
        let last = at("bootfile", 2_000, "uki.efi of image 0123abcd via TFTP");
        assert_eq!(
            hint(false, false, last, 60_000),
            None,
            "still within the usual time"
        );
        let h = hint(false, false, last, 200_000).unwrap();
        assert!(h.starts_with("quiet for 198 s since `bootfile`"), "{h}");
        assert!(
            h.contains("Access Denied") && h.contains("imgbuild secureboot enroll-files"),
            "{h}"
        );
    }

    #[test]
    fn an_unsigned_loader_that_never_asked_for_its_script_points_at_secure_boot() {
        let h = hint(
            false,
            false,
            at("bootfile", 1_000, "snponly.efi via TFTP"),
            500_000,
        )
        .unwrap();
        assert!(h.contains("secure_boot = true"), "{h}");
    }

    #[test]
    fn an_offer_never_requested_points_at_another_dhcp_server() {
        let last = at("dhcp-offer", 0, "");
        assert!(hint(false, false, last, 59_999).is_none());
        assert!(
            hint(false, false, last, 61_000)
                .unwrap()
                .contains("imgbuild doctor")
        );
    }

    #[test]
    fn done_failed_and_first_boot_steps_get_no_hint() {
        let last = at("dhcp-offer", 0, "");
        assert!(hint(true, false, last, 10_000_000).is_none());
        assert!(hint(false, true, last, 10_000_000).is_none());
        assert!(
            hint(false, false, at("kubeadm-join", 5_000, ""), 10_000_000).is_none(),
            "first-boot steps time out on their own"
        );
        assert!(hint(false, false, None, 10_000_000).is_none());
    }
}
