//! The Authenticode SHA-256 digest of a PE/COFF image (Microsoft's "Windows Authenticode Portable Executable
//! Signature Format"): what UEFI firmware measures into PCR 4 when it loads a boot application
//! (`EV_EFI_BOOT_SERVICES_APPLICATION`) and what a Secure Boot signature signs. The server computes it from the
//! image's own `uki.efi` / `vmlinuz` and the boot loaders it serves, so it knows in advance what a correctly
//! booted machine measured (docs/attestation.md).
//!
//! Hashed: the headers without the checksum field and the certificate-table directory entry, then each
//! section's raw data in file order, then any data after the sections except the certificate table.

use sha2::{Digest, Sha256};

/// Why a file has no Authenticode digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a PE image this can hash: {0}")]
pub struct PeError(pub String);

fn u16_at(b: &[u8], off: usize) -> Result<u16, PeError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| PeError(format!("truncated at offset {off}")))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, PeError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| PeError(format!("truncated at offset {off}")))
}

fn range(b: &[u8], from: usize, to: usize) -> Result<&[u8], PeError> {
    b.get(from..to).ok_or_else(|| {
        PeError(format!(
            "range {from}..{to} outside the file ({} bytes)",
            b.len()
        ))
    })
}

/// The Authenticode SHA-256 of `pe`.
pub fn sha256(pe: &[u8]) -> Result<[u8; 32], PeError> {
    if pe.get(..2) != Some(b"MZ") {
        return Err(PeError("no MZ header".into()));
    }
    let pe_off = u32_at(pe, 0x3c)? as usize;
    if pe.get(pe_off..pe_off + 4) != Some(b"PE\0\0") {
        return Err(PeError("no PE signature".into()));
    }
    let coff = pe_off + 4;
    let sections = u16_at(pe, coff + 2)? as usize;
    let opt_size = u16_at(pe, coff + 16)? as usize;
    let opt = coff + 20;
    let (n_dirs_off, dirs) = match u16_at(pe, opt)? {
        0x10b => (opt + 92, opt + 96),
        0x20b => (opt + 108, opt + 112),
        m => return Err(PeError(format!("optional header magic 0x{m:x}"))),
    };
    let checksum = opt + 64;
    let header_size = u32_at(pe, opt + 60)? as usize;
    let n_dirs = u32_at(pe, n_dirs_off)? as usize;
    let cert_dir = dirs + 4 * 8;
    let (cert_off, cert_size) = if n_dirs > 4 {
        (
            u32_at(pe, cert_dir)? as usize,
            u32_at(pe, cert_dir + 4)? as usize,
        )
    } else {
        (0, 0)
    };
    let mut h = Sha256::new();
    h.update(range(pe, 0, checksum)?);
    if n_dirs > 4 {
        h.update(range(pe, checksum + 4, cert_dir)?);
        h.update(range(pe, cert_dir + 8, header_size)?);
    } else {
        h.update(range(pe, checksum + 4, header_size)?);
    }
    let table = opt + opt_size;
    let mut raw: Vec<(usize, usize)> = (0..sections)
        .map(|i| {
            let s = table + i * 40;
            Ok((u32_at(pe, s + 20)? as usize, u32_at(pe, s + 16)? as usize))
        })
        .collect::<Result<_, PeError>>()?;
    raw.retain(|&(_, size)| size > 0);
    raw.sort();
    let mut hashed = header_size;
    for (off, size) in raw {
        h.update(range(pe, off, off + size)?);
        hashed += size;
    }
    let end = if cert_size > 0 && cert_off > 0 {
        pe.len().saturating_sub(cert_size)
    } else {
        pe.len()
    };
    if end > hashed {
        h.update(range(pe, hashed, end)?);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_pe() {
        assert!(sha256(b"not a pe").is_err());
        let mut b = vec![0u8; 0x100];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c] = 0x80;
        assert_eq!(sha256(&b).unwrap_err(), PeError("no PE signature".into()));
    }

    #[test]
    fn the_checksum_field_does_not_count_and_a_header_byte_does() {
        // Against osslsigncode's digest: tests/attest_swtpm.rs. systemd-boot-efi is in .ci/apt-packages.
        let stub = std::fs::read(super::super::uki::stub(crate::config::Arch::Amd64))
            .expect("systemd-boot-efi's linuxx64.efi.stub (apt-get install systemd-boot-efi)");
        let a = sha256(&stub).unwrap();
        let mut c = stub.clone();
        let pe_off = u32_at(&c, 0x3c).unwrap() as usize;
        c[pe_off + 24 + 64] ^= 0xff;
        assert_eq!(sha256(&c).unwrap(), a);
        c[pe_off + 24 + 4] ^= 1;
        assert_ne!(sha256(&c).unwrap(), a);
    }
}
