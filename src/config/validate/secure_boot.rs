//! `[secure_boot]`: the roles that boot signed UKIs, the db key pair (both or neither), and each machine's
//! `secure_boot` against it (amd64 and arm64: Debian's OVMF and AAVMF both enforce Secure Boot once keys are
//! enrolled, see docs/secure-boot.md).

use std::path::Path;

use super::checker::{Checker, Seg, p};
use crate::config::model::{DEFAULT_UKI_STATE_DISK, Machine, Role, SECUREBOOT_DIR, SecureBoot};
use crate::config::raw;

/// Checks `[secure_boot]`; `secrets` is the resolved secrets directory (the default key pair lives there).
pub(super) fn check(
    c: &mut Checker,
    sb: &raw::SecureBootRaw,
    root: &Path,
    secrets: &Path,
) -> Option<SecureBoot> {
    let mut roles = Vec::new();
    let mut ok = true;
    match &sb.roles {
        None => roles = vec![Role::Master, Role::Worker, Role::Storage],
        Some(list) => {
            for (i, r) in list.iter().enumerate() {
                match r.parse::<Role>() {
                    Ok(r) => roles.push(r),
                    Err(e) => {
                        c.error(&p!["secure_boot", "roles", i], e);
                        ok = false;
                    }
                }
            }
        }
    }
    let dir = secrets.join(SECUREBOOT_DIR);
    let (db_key, db_cert, own_db) = match (&sb.db_key, &sb.db_cert) {
        (None, None) => (dir.join("db.key"), dir.join("db.crt"), false),
        (Some(k), Some(crt)) => (root.join(k), root.join(crt), true),
        (Some(_), None) => {
            c.error(
                &p!["secure_boot", "db_key"],
                "db_key is given without db_cert: give both (your db key and its certificate, PEM), or neither \
                 to use the pair `imgbuild secrets init` makes",
            );
            return None;
        }
        (None, Some(_)) => {
            c.error(
                &p!["secure_boot", "db_cert"],
                "db_cert is given without db_key: give both (your db key and its certificate, PEM), or neither \
                 to use the pair `imgbuild secrets init` makes",
            );
            return None;
        }
    };
    let state_disk = sb
        .state_disk
        .clone()
        .unwrap_or_else(|| DEFAULT_UKI_STATE_DISK.into());
    if !state_disk.starts_with("/dev/") || !state_disk.bytes().all(safe_path_byte) {
        c.error(
            &p!["secure_boot", "state_disk"],
            format!(
                "{state_disk:?} is not a block device path of safe characters (A-Z a-z 0-9 / _ . : -); expected \
                 a path such as /dev/vda or /dev/disk/by-id/..."
            ),
        );
        ok = false;
    }
    ok.then_some(SecureBoot {
        enabled: sb.enabled,
        roles,
        db_key,
        db_cert,
        own_db,
        state_disk,
        init_blank: sb.init_blank,
    })
}

/// The bytes the initrd accepts in a state disk path (it is a kernel command-line word).
fn safe_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b':' | b'-')
}

/// Resolves each machine's `secure_boot` (its own setting, else its role's default when enabled) and reports
/// a machine that asks for Secure Boot where it cannot have it.
pub(super) fn resolve_machines(
    c: &mut Checker,
    sb: &SecureBoot,
    raw_machines: &[raw::MachineRaw],
    machines: &mut [Machine],
) {
    for (i, m) in machines.iter_mut().enumerate() {
        let asked = raw_machines.get(i).and_then(|r| r.secure_boot);
        m.secure_boot = match asked {
            Some(true) if !sb.enabled => {
                c.error(
                    &p!["machines", i, "secure_boot"],
                    "secure_boot = true but [secure_boot] enabled is not true: set `enabled = true` under \
                     [secure_boot] (images then carry a signed UKI), or drop this key",
                );
                false
            }
            Some(v) => v,
            None => sb.enabled && sb.roles.contains(&m.role),
        };
        if !m.secure_boot {
            continue;
        }
        // The initrd of a signed UKI takes its state disk from the signed, role-level command line, never from an
        // answer that could be tampered with: the inventory must say the same.
        if m.state_disk != sb.state_disk {
            c.error(
                &p!["machines", i, "state_disk"],
                format!(
                    "{:?} differs from [secure_boot] state_disk = {:?}, the state disk on the signed UKI command \
                     line this machine boots (a UKI names no machine): use {:?} here, set [secure_boot] state_disk \
                     to it, or set `secure_boot = false` on this machine",
                    m.state_disk, sb.state_disk, sb.state_disk
                ),
            );
        }
        if m.init_blank != sb.init_blank {
            c.error(
                &p!["machines", i, "init_blank"],
                format!(
                    "init_blank = {} differs from [secure_boot] init_blank = {}, which the signed UKI command line \
                     this machine boots carries (a UKI names no machine): make them equal, or set \
                     `secure_boot = false` on this machine",
                    m.init_blank, sb.init_blank
                ),
            );
        }
    }
}
