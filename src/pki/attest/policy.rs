//! What a correctly booted node must show: the quote is the AK's and carries the nonce, the event log replays
//! to the quoted PCRs, every boot application measured into PCR 4 is one of the pinned image's (their
//! Authenticode SHA-256 digests, computed from the image at build time and kept in its manifest), the last one
//! is the image's OS loader (its UKI, or its kernel after iPXE), and, when required, Secure Boot was on.

use std::collections::BTreeMap;

use super::AttestError;
use super::eventlog::{EV_EFI_BOOT_SERVICES_APPLICATION, EventLog};
use super::public::Public;
use super::quote::{Quote, pcr_digest, verify_signature};

/// The SHA-256 PCRs a node quotes (`tpm2_quote -l sha256:0,1,2,3,4,5,6,7`): firmware, its configuration, the
/// boot applications (4) and Secure Boot state (7).
pub const QUOTED_PCRS: [u32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// The expected boot, from the pinned image of the machine's role.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Authenticode SHA-256 digest → file name, of every boot application the image may load (iPXE, the
    /// kernel, the UKI).
    pub boot_apps: BTreeMap<[u8; 32], String>,
    /// The digests one of which the last measured application must have: the UKI, or the kernel.
    pub os_loaders: Vec<[u8; 32]>,
    /// The boot paths this machine may take: each the PCR 4 applications in order, by file name
    /// (`["uki.efi"]`, `["snponly.efi", "vmlinuz"]`). Empty: any order of the image's applications whose last
    /// is an OS loader.
    pub chains: Vec<Vec<String>>,
    /// Secure Boot must have been enabled.
    pub require_secure_boot: bool,
}

/// What a node sent as proof of its boot.
pub struct Evidence<'a> {
    /// The AK's public area (its Name was in the credential the node activated).
    pub ak: &'a Public,
    /// The quote (`TPMS_ATTEST`, `tpm2_quote -m`).
    pub quote: &'a [u8],
    /// Its signature (`TPMT_SIGNATURE`, `tpm2_quote -s`).
    pub signature: &'a [u8],
    /// The firmware's event log (`binary_bios_measurements`).
    pub event_log: &'a [u8],
}

/// A passed attestation.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The boot applications the node loaded, in order (their file names: `snponly.efi → vmlinuz`,
    /// `uki.efi → vmlinuz`).
    pub booted: String,
    /// Secure Boot was on.
    pub secure_boot: bool,
    /// The TPM's reset count (one more at each reboot).
    pub reset_count: u32,
    /// What the log shows in PCRs the quote does not cover (e.g. the kernel's EFI stub's PCR 9 events): not
    /// checked, reported so an operator sees what the chain measured beyond the quote.
    pub unquoted: Vec<String>,
}

/// Checks `ev` against the `nonce` the server gave and the `expected` boot.
pub fn verify(ev: &Evidence, nonce: &[u8], expected: &Expected) -> Result<Verified, AttestError> {
    let quote = Quote::parse(ev.quote)?;
    verify_signature(ev.ak, ev.quote, ev.signature)?;
    if quote.extra_data != nonce {
        return Err(AttestError::StaleNonce);
    }
    let pcrs = quote.sha256_pcrs();
    if pcrs != QUOTED_PCRS {
        return Err(AttestError::Malformed(format!(
            "the quote covers SHA-256 PCRs {pcrs:?}; quote exactly {QUOTED_PCRS:?} (tpm2_quote -l \
             sha256:0,1,2,3,4,5,6,7)"
        )));
    }
    if quote.selection.len() != 1 {
        return Err(AttestError::Malformed(
            "the quote selects more than the SHA-256 bank; quote sha256 only".into(),
        ));
    }
    let log = EventLog::parse(ev.event_log)?;
    let replayed = log.replay();
    let values: Vec<[u8; 32]> = pcrs.iter().map(|&p| replayed[p as usize]).collect();
    if pcr_digest(&values).as_slice() != quote.pcr_digest.as_slice() {
        return Err(AttestError::LogMismatch);
    }
    let (booted, secure_boot) = check_boot(&log, expected)?;
    Ok(Verified {
        booted,
        secure_boot,
        reset_count: quote.reset_count,
        unquoted: unquoted(&log),
    })
}

/// One line per event in a PCR outside [`QUOTED_PCRS`] (EV_NO_ACTION left out).
pub fn unquoted(log: &EventLog) -> Vec<String> {
    log.events
        .iter()
        .filter(|e| !QUOTED_PCRS.contains(&e.pcr) && e.kind != super::eventlog::EV_NO_ACTION)
        .map(|e| e.describe())
        .collect()
}

/// The boot a (replayed, quote-matched) log shows against the expected one: every PCR 4 application one of the
/// image's, the last its OS loader, Secure Boot when required. Returns the chain loaded and Secure Boot.
pub fn check_boot(log: &EventLog, expected: &Expected) -> Result<(String, bool), AttestError> {
    let mut last = None;
    let mut chain = Vec::new();
    let mut apps = Vec::new();
    for e in log
        .of_pcr(4)
        .filter(|e| e.kind == EV_EFI_BOOT_SERVICES_APPLICATION)
    {
        let d = e.sha256.ok_or(AttestError::LogMismatch)?;
        if !expected.boot_apps.contains_key(&d) {
            return Err(AttestError::PcrMismatch {
                event: e.describe(),
                expected: expected_list(expected),
            });
        }
        chain.push(expected.boot_apps[&d].as_str());
        apps.push(e);
        last = Some((d, e));
    }
    check_path(&chain, &apps, expected)?;
    let booted = match last {
        Some((d, _)) if expected.os_loaders.contains(&d) => chain.join(" → "),
        Some((_, e)) => {
            return Err(AttestError::PcrMismatch {
                event: format!(
                    "{} (the last application loaded is not the OS loader)",
                    e.describe()
                ),
                expected: expected_list(expected),
            });
        }
        None => {
            return Err(AttestError::PcrMismatch {
                event: "no EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4".into(),
                expected: expected_list(expected),
            });
        }
    };
    let secure_boot = log.secure_boot_enabled();
    if expected.require_secure_boot && !secure_boot {
        return Err(AttestError::SecureBootOff);
    }
    Ok((booted, secure_boot))
}

/// The applications, in order, must be one of the machine's boot paths (when it has any): the first event where
/// they leave every path is named (an image of the right set loaded the wrong way round, iPXE where the
/// firmware must start the UKI itself, a kernel started without the loader the path has).
fn check_path(
    chain: &[&str],
    apps: &[&super::eventlog::Event],
    expected: &Expected,
) -> Result<(), AttestError> {
    let paths = &expected.chains;
    if paths.is_empty()
        || paths
            .iter()
            .any(|p| p.iter().map(String::as_str).eq(chain.iter().copied()))
    {
        return Ok(());
    }
    let fits = |n: usize| {
        paths.iter().any(|p| {
            p.len() >= n
                && p[..n]
                    .iter()
                    .map(String::as_str)
                    .eq(chain[..n].iter().copied())
        })
    };
    let shown = paths
        .iter()
        .map(|p| p.join(" → "))
        .collect::<Vec<_>>()
        .join(" or ");
    let event = match (1..=chain.len()).find(|&n| !fits(n)) {
        Some(n) => format!(
            "{} ({}, application {n} of the boot) is not what this machine's boot path loads there",
            apps[n - 1].describe(),
            chain[n - 1]
        ),
        None => format!(
            "{} ({}) ends the boot before its path does",
            apps.last()
                .map_or_else(|| "the log".into(), |e| e.describe()),
            chain.last().copied().unwrap_or("nothing")
        ),
    };
    Err(AttestError::BootPathMismatch {
        event,
        expected: format!("this machine boots {shown}"),
    })
}

fn expected_list(e: &Expected) -> String {
    e.boot_apps
        .iter()
        .map(|(d, n)| format!("{n} sha256:{}", hex::encode(d)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::eventlog::{
        EV_EFI_ACTION, EV_EFI_VARIABLE_DRIVER_CONFIG, EV_SEPARATOR, build_log, variable_data,
    };
    use super::*;

    const AK: &[u8] = include_bytes!("../../../tests/fixtures/attest/ak.pub");
    const MSG: &[u8] = include_bytes!("../../../tests/fixtures/attest/quote.msg");
    const SIG: &[u8] = include_bytes!("../../../tests/fixtures/attest/quote.sig");
    const NONCE: &[u8] = include_bytes!("../../../tests/fixtures/attest/nonce.bin");

    fn expected() -> Expected {
        Expected {
            boot_apps: [([0xaa; 32], "uki.efi".to_string())].into(),
            os_loaders: vec![[0xaa; 32]],
            chains: vec![],
            require_secure_boot: false,
        }
    }

    #[test]
    fn the_fixture_quote_of_an_unbooted_tpm_fails_only_at_pcr4() {
        // The swtpm quote was made with all PCRs zero and PCRs 0,4,7 selected: the right nonce and signature
        // pass, then the selection is refused (a node quotes 0-7).
        let ak = Public::from_tpm2b(AK).unwrap();
        let log = build_log(&[]);
        let ev = Evidence {
            ak: &ak,
            quote: MSG,
            signature: SIG,
            event_log: &log,
        };
        let e = verify(&ev, NONCE, &expected()).unwrap_err();
        assert!(e.to_string().contains("quote exactly"), "{e}");
        // An old nonce is refused before anything else is looked at.
        let e = verify(&ev, b"another nonce", &expected()).unwrap_err();
        assert!(matches!(e, AttestError::StaleNonce), "{e}");
    }

    fn pcr4_only(
        events: &[(u32, u32, [u8; 32], Vec<u8>)],
        exp: &Expected,
    ) -> Result<String, AttestError> {
        check_boot(&EventLog::parse(&build_log(events)).unwrap(), exp).map(|(b, _)| b)
    }

    #[test]
    fn a_foreign_application_is_named_in_the_refusal() {
        let events = vec![
            (
                4,
                EV_EFI_ACTION,
                [1; 32],
                b"Calling EFI Application from Boot Option".to_vec(),
            ),
            (4, EV_SEPARATOR, [2; 32], vec![0; 4]),
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, [0xbb; 32], vec![]),
        ];
        let e = pcr4_only(&events, &expected()).unwrap_err().to_string();
        assert!(
            e.contains("event #3 (PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION)"),
            "{e}"
        );
        assert!(e.contains(&hex::encode([0xbb; 32])), "{e}");
        assert!(e.contains("uki.efi sha256:aaaa"), "{e}");
    }

    #[test]
    fn secure_boot_is_required_when_asked() {
        let mut exp = expected();
        exp.require_secure_boot = true;
        let app = (4, EV_EFI_BOOT_SERVICES_APPLICATION, [0xaa; 32], vec![]);
        assert!(matches!(
            pcr4_only(std::slice::from_ref(&app), &exp),
            Err(AttestError::SecureBootOff)
        ));
        let sb = (
            7,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            [3; 32],
            variable_data("SecureBoot", &[1]),
        );
        assert_eq!(pcr4_only(&[sb, app.clone()], &exp).unwrap(), "uki.efi");
        // iPXE then the UKI: the last must be the OS loader.
        exp.require_secure_boot = false;
        exp.boot_apps.insert([0xcc; 32], "snponly.efi".into());
        let ipxe = (4, EV_EFI_BOOT_SERVICES_APPLICATION, [0xcc; 32], vec![]);
        assert_eq!(
            pcr4_only(&[ipxe.clone(), app], &exp).unwrap(),
            "snponly.efi → uki.efi"
        );
        let e = pcr4_only(&[ipxe], &exp).unwrap_err().to_string();
        assert!(e.contains("not the OS loader"), "{e}");
        assert!(
            pcr4_only(&[], &exp)
                .unwrap_err()
                .to_string()
                .contains("no EV_EFI_BOOT_SERVICES_APPLICATION")
        );
    }

    #[test]
    fn the_real_uki_boot_passes_for_its_image_and_fails_for_another() {
        let log = EventLog::parse(include_bytes!(
            "../../../tests/fixtures/attest/ovmf-uki.eventlog"
        ))
        .unwrap();
        let d = |h: &str| -> [u8; 32] { hex::decode(h).unwrap().try_into().unwrap() };
        let (uki, kernel) = (
            d("41731ae9a5312325b4c06e210b737860ee313cc2331e65afcf31aee609d6e91f"),
            d("fe1bfd69b8f653dd1d59e42793d7fe96aa4e6644a7cad4bc269510dc41409f7a"),
        );
        let mut exp = Expected {
            boot_apps: [
                (uki, "uki.efi".to_string()),
                (kernel, "vmlinuz".to_string()),
            ]
            .into(),
            os_loaders: vec![uki, kernel],
            chains: vec![],
            require_secure_boot: false,
        };
        assert_eq!(
            check_boot(&log, &exp).unwrap(),
            ("uki.efi → vmlinuz".to_string(), false)
        );
        // Secure Boot was off in that boot.
        exp.require_secure_boot = true;
        assert!(matches!(
            check_boot(&log, &exp),
            Err(AttestError::SecureBootOff)
        ));
        // Another image's UKI (e.g. one kernel argument changed): the UKI event is named.
        exp.require_secure_boot = false;
        exp.boot_apps.remove(&uki);
        exp.boot_apps.insert([1; 32], "uki.efi".into());
        let e = check_boot(&log, &exp).unwrap_err().to_string();
        assert!(
            e.contains("(PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION) sha256:41731ae9"),
            "{e}"
        );
    }

    /// The applications of an image that can boot both ways (its UKI, its kernel) and the iPXE binaries.
    fn both_ways(chains: &[&[&str]]) -> Expected {
        Expected {
            boot_apps: [
                ([0xaa; 32], "uki.efi".to_string()),
                ([0xbb; 32], "vmlinuz".to_string()),
                ([0xcc; 32], "snponly.efi".to_string()),
                ([0xdd; 32], "ipxe.efi".to_string()),
            ]
            .into(),
            os_loaders: vec![[0xaa; 32], [0xbb; 32]],
            chains: chains
                .iter()
                .map(|c| c.iter().map(|s| s.to_string()).collect())
                .collect(),
            require_secure_boot: false,
        }
    }

    fn apps(digests: &[u8]) -> Vec<(u32, u32, [u8; 32], Vec<u8>)> {
        digests
            .iter()
            .map(|&d| (4, EV_EFI_BOOT_SERVICES_APPLICATION, [d; 32], vec![]))
            .collect()
    }

    #[test]
    fn the_ipxe_path_is_the_served_ipxe_then_the_pinned_kernel_and_nothing_else() {
        // As attest_expected::boot_paths(false) has it: iPXE's probe loads the kernel once before it starts it.
        let ipxe = both_ways(&[
            &["snponly.efi", "vmlinuz", "vmlinuz"],
            &["snponly.efi", "vmlinuz"],
            &["ipxe.efi", "vmlinuz", "vmlinuz"],
            &["ipxe.efi", "vmlinuz"],
        ]);
        assert_eq!(
            pcr4_only(&apps(&[0xcc, 0xbb, 0xbb]), &ipxe).unwrap(),
            "snponly.efi → vmlinuz → vmlinuz"
        );
        assert_eq!(
            pcr4_only(&apps(&[0xcc, 0xbb]), &ipxe).unwrap(),
            "snponly.efi → vmlinuz"
        );
        assert_eq!(
            pcr4_only(&apps(&[0xdd, 0xbb]), &ipxe).unwrap(),
            "ipxe.efi → vmlinuz"
        );
        // Another kernel after iPXE (another image's, or one built with something changed): that event is named.
        let e = pcr4_only(&apps(&[0xcc, 0x11]), &ipxe).unwrap_err();
        assert!(matches!(e, AttestError::PcrMismatch { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("event #2 (PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION) sha256:1111"),
            "{e}"
        );
        // iPXE's probe loaded the pinned kernel, then it started another: the second kernel event is named.
        let e = pcr4_only(&apps(&[0xcc, 0xbb, 0x11]), &ipxe)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("event #3 (PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION) sha256:1111"),
            "{e}"
        );
        // The image's own files, but not the way the server boots this machine: named where they leave the path.
        for (booted, at, name) in [
            (
                vec![0xaa],
                "event #1",
                "(uki.efi, application 1 of the boot)",
            ),
            (
                vec![0xcc, 0xaa],
                "event #2",
                "(uki.efi, application 2 of the boot)",
            ),
            (
                vec![0xbb],
                "event #1",
                "(vmlinuz, application 1 of the boot)",
            ),
            (
                vec![0xcc, 0xbb, 0xbb, 0xbb],
                "event #4",
                "(vmlinuz, application 4 of the boot)",
            ),
        ] {
            let e = pcr4_only(&apps(&booted), &ipxe).unwrap_err();
            assert!(matches!(e, AttestError::BootPathMismatch { .. }), "{e}");
            let e = e.to_string();
            assert!(e.contains(at) && e.contains(name), "{booted:?}: {e}");
            assert!(
                e.contains(
                    "this machine boots snponly.efi → vmlinuz → vmlinuz or snponly.efi → vmlinuz or"
                ),
                "{e}"
            );
            assert_eq!(
                AttestError::BootPathMismatch {
                    event: String::new(),
                    expected: String::new()
                }
                .outcome(),
                "pcr-mismatch"
            );
        }
        // iPXE alone (it loaded no kernel, or the kernel was not measured): the boot ends before its path does.
        let e = pcr4_only(&apps(&[0xcc]), &ipxe).unwrap_err().to_string();
        assert!(
            e.contains("event #1") && e.contains("ends the boot before its path does"),
            "{e}"
        );
    }

    #[test]
    fn a_secure_boot_machine_must_have_started_its_uki_not_ipxe() {
        let uki = both_ways(&[&["uki.efi"], &["uki.efi", "vmlinuz"]]);
        assert_eq!(pcr4_only(&apps(&[0xaa]), &uki).unwrap(), "uki.efi");
        assert_eq!(
            pcr4_only(&apps(&[0xaa, 0xbb]), &uki).unwrap(),
            "uki.efi → vmlinuz"
        );
        // iPXE and the bare kernel (whose command line and initrd PCR 4 does not show) are refused for it.
        let e = pcr4_only(&apps(&[0xcc, 0xbb]), &uki)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("event #1") && e.contains("(snponly.efi, application 1"),
            "{e}"
        );
    }

    #[test]
    fn events_outside_the_quote_are_reported_with_their_tag() {
        let mut tag = 0x8F3B_22EDu32.to_le_bytes().to_vec();
        let text = b"LOADED_IMAGE::LoadOptions\0";
        tag.extend((text.len() as u32).to_le_bytes());
        tag.extend(text);
        let log = build_log(&[
            (4, EV_EFI_BOOT_SERVICES_APPLICATION, [0xaa; 32], vec![]),
            (9, super::super::eventlog::EV_EVENT_TAG, [0x42; 32], tag),
        ]);
        let u = unquoted(&EventLog::parse(&log).unwrap());
        assert_eq!(u.len(), 1, "{u:?}");
        assert!(
            u[0].contains("(PCR 9, EV_EVENT_TAG \"LOADED_IMAGE::LoadOptions\") sha256:4242"),
            "{u:?}"
        );
    }
}
