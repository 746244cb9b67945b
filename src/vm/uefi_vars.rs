//! A UEFI variable store with the cluster's Secure Boot keys enrolled, for the lab's Secure Boot VMs (OVMF on
//! amd64, AAVMF on arm64: both keep their variables in the same authenticated-variable layout).
//!
//! [`enrolled`] takes a formatted store (Debian's blank `OVMF_VARS_4M.fd`; for AAVMF, whose blank
//! `AAVMF_VARS.fd` is unformatted zeros the firmware formats on first boot, Debian's formatted
//! `AAVMF_VARS.snakeoil.fd` with its variables cleared), empties its variable area (0xff after the headers)
//! and appends the variables a machine has after its owner enrolled keys: `db`, `KEK`, `PK` (each the EFI
//! signature list `imgbuild secureboot enroll-files` writes; attributes NV|BS|RT|time-based authenticated),
//! `SecureBootEnable` = 1 and `CustomMode` = 0. With PK set the firmware is in user mode and enforces Secure
//! Boot (OVMF's `OVMF_CODE_4M.secboot.fd`, q35 with SMM; AAVMF's `AAVMF_CODE.fd`, which needs no SMM — but
//! nothing protects its variable flash from the guest, see docs/secure-boot.md). This is what `virt-fw-vars
//! --set-pk/--add-kek/--add-db --secure-boot` does, without a Python dependency.

use std::path::Path;

/// `EFI_GLOBAL_VARIABLE` (PK, KEK).
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// `EFI_IMAGE_SECURITY_DATABASE_GUID` (db).
const SECURITY_DB: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/// `EFI_SECURE_BOOT_ENABLE_DISABLE` (SecureBootEnable).
const SECURE_BOOT_ENABLE: &str = "f0a30bc7-af08-4556-99c4-001009c93a44";
/// `EFI_CUSTOM_MODE_ENABLE_GUID` (CustomMode).
const CUSTOM_MODE: &str = "c076ec0c-7028-4399-a072-71ee5c448b9f";

/// NV | BS | RT | TIME_BASED_AUTHENTICATED_WRITE_ACCESS.
const AUTH_ATTRS: u32 = 0x27;
/// NV | BS.
const NV_BS: u32 = 0x03;

/// `VAR_ADDED`.
const STATE_ADDED: u8 = 0x3f;

/// Why the store cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum VarsError {
    /// The template or a signature list could not be read, or the store written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The template is not a formatted OVMF/AAVMF variable store.
    #[error(
        "{0} is not a formatted UEFI variable store (a firmware volume with an authenticated variable store): \
         use Debian's /usr/share/OVMF/OVMF_VARS_4M.fd (amd64) or /usr/share/AAVMF/AAVMF_VARS.snakeoil.fd (arm64)"
    )]
    NotBlank(String),
}

fn guid_bytes(g: &str) -> [u8; 16] {
    let h: String = g.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("a GUID constant"))
        .collect();
    // The first three fields are little-endian on disk.
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

/// One authenticated-store variable: its 60-byte header, UTF-16 name, data, padded to 4 bytes.
fn variable(name: &str, guid: &str, attrs: u32, data: &[u8]) -> Vec<u8> {
    let name16: Vec<u8> = name
        .encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(|c| c.to_le_bytes())
        .collect();
    let mut v = Vec::new();
    v.extend([0xaa, 0x55, STATE_ADDED, 0]);
    v.extend(attrs.to_le_bytes());
    v.extend([0u8; 8]); // monotonic count
    v.extend([0u8; 16]); // time stamp
    v.extend([0u8; 4]); // public key index
    v.extend((name16.len() as u32).to_le_bytes());
    v.extend((data.len() as u32).to_le_bytes());
    v.extend(guid_bytes(guid));
    v.extend(name16);
    v.extend(data);
    while v.len() % 4 != 0 {
        v.push(0xff);
    }
    v
}

/// The start of the variables in a store: after the volume header (its length at 0x30) and the 28-byte
/// variable store header.
fn first_variable(fd: &[u8]) -> Option<usize> {
    let hl = u16::from_le_bytes(fd.get(0x30..0x32)?.try_into().ok()?) as usize;
    if fd.get(0x28..0x2c)? != b"_FVH" {
        return None;
    }
    Some(hl + 28)
}

/// The end of the variable area: the variable store header (after the volume header) holds the store's size
/// at offset 16.
fn store_end(fd: &[u8]) -> Option<usize> {
    let hl = u16::from_le_bytes(fd.get(0x30..0x32)?.try_into().ok()?) as usize;
    let size = u32::from_le_bytes(fd.get(hl + 16..hl + 20)?.try_into().ok()?) as usize;
    Some(hl + size).filter(|e| *e <= fd.len())
}

/// Writes `out`: the formatted store `template` with its variables cleared, then PK, KEK and db set from the
/// signature lists in `esl_dir` (`PK.esl`, `KEK.esl`, `db.esl`) and Secure Boot enabled.
pub fn enrolled(template: &Path, esl_dir: &Path, out: &Path) -> Result<(), VarsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| VarsError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let mut fd = read(template)?;
    let (start, end) = first_variable(&fd)
        .zip(store_end(&fd))
        .filter(|(s, e)| s < e)
        .ok_or_else(|| VarsError::NotBlank(template.display().to_string()))?;
    fd[start..end].fill(0xff);
    let mut vars = Vec::new();
    for (name, guid) in [("db", SECURITY_DB), ("KEK", GLOBAL), ("PK", GLOBAL)] {
        let esl = read(&esl_dir.join(format!("{name}.esl")))?;
        vars.extend(variable(name, guid, AUTH_ATTRS, &esl));
    }
    vars.extend(variable(
        "SecureBootEnable",
        SECURE_BOOT_ENABLE,
        NV_BS,
        &[1],
    ));
    vars.extend(variable("CustomMode", CUSTOM_MODE, NV_BS, &[0]));
    if end < start + vars.len() + 64 {
        return Err(VarsError::NotBlank(template.display().to_string()));
    }
    fd[start..start + vars.len()].copy_from_slice(&vars);
    std::fs::write(out, fd).map_err(|source| VarsError::Io {
        path: out.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout matches the variables of Debian's snakeoil-enrolled store byte for byte where it is fixed.
    #[test]
    fn variables_have_ovmfs_layout() {
        let v = variable("PK", GLOBAL, AUTH_ATTRS, &[1, 2, 3]);
        assert_eq!(&v[..8], &[0xaa, 0x55, 0x3f, 0, 0x27, 0, 0, 0]);
        assert_eq!(u32::from_le_bytes(v[36..40].try_into().unwrap()), 6);
        assert_eq!(u32::from_le_bytes(v[40..44].try_into().unwrap()), 3);
        assert_eq!(
            &v[44..60],
            &[
                0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03,
                0x2b, 0x8c
            ]
        );
        assert_eq!(v.len() % 4, 0);
        let Ok(snake) = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd") else {
            return;
        };
        // Debian's store keeps its db (935 bytes of list) at 0x3cf4: the same header fields as ours.
        let at = 0x3cf4;
        assert_eq!(&snake[at..at + 8], &[0xaa, 0x55, 0x3f, 0, 0x27, 0, 0, 0]);
        assert_eq!(&snake[at + 44..at + 60], &guid_bytes(SECURITY_DB));
        let blank = std::fs::read(super::super::qemu::OVMF_VARS).unwrap();
        assert_eq!(first_variable(&blank), Some(0x64));
    }

    /// AAVMF's formatted store (Debian's snakeoil one) comes out with only our variables: its own PK, KEK, db and
    /// boot entries are cleared, ours follow the headers in order, and the FTW area after the store is kept.
    #[test]
    fn an_aavmf_store_is_cleared_then_enrolled() {
        let tpl = Path::new(super::super::qemu::AAVMF_VARS_FORMATTED);
        let Ok(orig) = std::fs::read(tpl) else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        for (n, b) in [("PK", 1u8), ("KEK", 2), ("db", 3)] {
            std::fs::write(d.path().join(format!("{n}.esl")), vec![b; 40]).unwrap();
        }
        let out = d.path().join("vars.fd");
        enrolled(tpl, d.path(), &out).unwrap();
        let fd = std::fs::read(&out).unwrap();
        assert_eq!(fd.len(), orig.len());
        let (mut at, end) = (first_variable(&fd).unwrap(), store_end(&fd).unwrap());
        let mut names = Vec::new();
        while fd[at..at + 2] == [0xaa, 0x55] {
            let nl = u32::from_le_bytes(fd[at + 36..at + 40].try_into().unwrap()) as usize;
            let dl = u32::from_le_bytes(fd[at + 40..at + 44].try_into().unwrap()) as usize;
            let n16: Vec<u16> = fd[at + 60..at + 60 + nl - 2]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            names.push(String::from_utf16(&n16).unwrap());
            at = (at + 60 + nl + dl).div_ceil(4) * 4;
        }
        assert_eq!(names, ["db", "KEK", "PK", "SecureBootEnable", "CustomMode"]);
        assert!(fd[at..end].iter().all(|b| *b == 0xff));
        assert_eq!(fd[end..], orig[end..]);
    }
}
