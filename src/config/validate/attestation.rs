//! `[attestation]` and each machine's `identity` and `ek_sha256`: TPM-attested enrollment (docs/attestation.md).

use std::path::Path;

use super::checker::{Checker, Seg, p};
use crate::config::model::{Arch, Attestation, Identity, Machine};
use crate::config::raw;

/// Checks `[attestation]`; relative certificate paths are resolved against `root`.
pub(super) fn check(c: &mut Checker, a: &raw::AttestationRaw, root: &Path) -> Option<Attestation> {
    let default_identity = match a.identity.as_deref() {
        None => Identity::Address,
        Some(s) => match s.parse::<Identity>() {
            Ok(i) => i,
            Err(e) => {
                c.error(&p!["attestation", "identity"], e);
                return None;
            }
        },
    };
    let mut ok = true;
    let mut manufacturer_ca = Vec::new();
    for (i, f) in a.manufacturer_ca.iter().enumerate() {
        if f.trim().is_empty() {
            c.error(
                &p!["attestation", "manufacturer_ca", i],
                "an empty path: give a PEM file of a TPM manufacturer's CA certificate, relative to cluster.toml",
            );
            ok = false;
        } else {
            manufacturer_ca.push(root.join(f));
        }
    }
    ok.then_some(Attestation {
        default_identity,
        manufacturer_ca,
        require_secure_boot: a.require_secure_boot,
        allow_unbound_initrd: a.allow_unbound_initrd,
    })
}

/// Parses `ek_sha256`: 64 hex digits (a `sha256:` prefix is allowed).
pub(super) fn parse_ek_sha256(s: &str) -> Result<[u8; 32], String> {
    let h = s.strip_prefix("sha256:").unwrap_or(s);
    let bytes = hex::decode(h).map_err(|_| {
        format!(
            "{s:?} is not hex; expected the 64 hex digits `imgbuild enroll` shows for a pending TPM (the \
             SHA-256 of the EK's public area)"
        )
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "{s:?} has {} bytes; expected 32 (64 hex digits, the SHA-256 of the EK's public area)",
            b.len()
        )
    })
}

/// Resolves each machine's `identity` (its own, else `[attestation] identity`) and `ek_sha256`, and reports
/// settings that cannot work together.
pub(super) fn resolve_machines(
    c: &mut Checker,
    a: &Attestation,
    raw_machines: &[raw::MachineRaw],
    machines: &mut [Machine],
) {
    for (i, m) in machines.iter_mut().enumerate() {
        let Some(r) = raw_machines.get(i) else {
            continue;
        };
        m.identity = match r.identity.as_deref() {
            None => a.default_identity,
            Some(s) => match s.parse::<Identity>() {
                Ok(id) => id,
                Err(e) => {
                    c.error(&p!["machines", i, "identity"], e);
                    continue;
                }
            },
        };
        if let Some(ek) = &r.ek_sha256 {
            if m.identity != Identity::Tpm {
                c.error(
                    &p!["machines", i, "ek_sha256"],
                    "ek_sha256 is set but this machine's identity is \"address\": set `identity = \"tpm\"` on it \
                     (or `[attestation] identity = \"tpm\"`), or drop ek_sha256",
                );
                continue;
            }
            match parse_ek_sha256(ek) {
                Ok(h) => m.ek_sha256 = Some(h),
                Err(e) => c.error(&p!["machines", i, "ek_sha256"], e),
            }
        }
        if m.identity == Identity::Tpm && m.arch == Arch::Arm64 {
            c.error(
                &p!["machines", i, "identity"],
                "identity = \"tpm\" on an arm64 machine: attestation checks the UEFI boot chain of amd64 images \
                 only; set identity = \"address\" on it",
            );
        }
        if m.identity == Identity::Tpm && a.require_secure_boot && !m.secure_boot {
            c.error(
                &p!["machines", i, "identity"],
                "[attestation] require_secure_boot = true but this TPM machine does not boot with Secure Boot: \
                 set `secure_boot = true` on it (with [secure_boot] enabled), or require_secure_boot = false",
            );
        } else if m.identity == Identity::Tpm
            && m.arch == Arch::Amd64
            && !m.secure_boot
            && !a.allow_unbound_initrd
        {
            // docs/attestation.md, "The iPXE path": Debian 12's iPXE hands the kernel an initrd no
            // measurement covers, so a host on the LAN that swaps it in flight would pass attestation.
            c.error(
                &p!["machines", i, "identity"],
                "identity = \"tpm\" on a machine that boots without Secure Boot: it boots iPXE → kernel, whose \
                 initrd (fetched over plain HTTP) and command line no TPM measurement covers, so attestation \
                 could not prove it runs the pinned image. Set `secure_boot = true` on it (with [secure_boot] \
                 enabled: it then boots the signed UKI, which binds kernel, initrd and command line), or set \
                 identity = \"address\", or accept a proof of the iPXE binary and kernel only with \
                 [attestation] allow_unbound_initrd = true",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ek_sha256_accepts_64_hex_digits_with_or_without_prefix() {
        let h = "ab".repeat(32);
        assert_eq!(parse_ek_sha256(&h).unwrap(), [0xab; 32]);
        assert_eq!(parse_ek_sha256(&format!("sha256:{h}")).unwrap(), [0xab; 32]);
        assert!(parse_ek_sha256("abcd").unwrap_err().contains("has 2 bytes"));
        assert!(
            parse_ek_sha256(&"zz".repeat(32))
                .unwrap_err()
                .contains("not hex")
        );
    }
}
