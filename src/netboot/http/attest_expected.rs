//! What a TPM machine must have booted (docs/attestation.md): the boot applications of the image pinned for its
//! role, computed from the image's own files (Authenticode SHA-256) and cached per image id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::Machine;
use crate::image::authenticode;
use crate::netboot::boot::{UEFI_BOOTFILE, UEFI_BOOTFILE_FULL, UKI_BOOTFILE};
use crate::netboot::state::Shared;
use crate::pki::attest::policy::Expected;

/// The image file the kernel is (an EFI stub: a PE image iPXE loads).
const KERNEL: &str = "vmlinuz";

/// Expected boot applications by pinned image id.
pub type ExpectedCache = Arc<Mutex<HashMap<String, Arc<Expected>>>>;

/// The boot applications of the image pinned for `m` now, and that image's id: its kernel and UKI from the
/// store, and the iPXE binaries the server hands out (cached per image id).
pub(super) fn expected_for(
    shared: &Shared,
    cache: &ExpectedCache,
    m: &Machine,
) -> Result<(Arc<Expected>, String), String> {
    let booter = shared.booter();
    let img = booter.pins.get(&(m.role, m.arch)).ok_or_else(|| {
        format!(
            "no image is pinned for {} {}; build and pin one (`imgbuild build`, `imgbuild pin`)",
            m.role, m.arch
        )
    })?;
    let require_secure_boot = shared.cluster().attestation.require_secure_boot;
    if let Some(e) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&img.id) {
        return Ok((
            Arc::new(Expected {
                require_secure_boot,
                ..(**e).clone()
            }),
            img.id.clone(),
        ));
    }
    let store = crate::image::store::open(&shared.cluster());
    let mut e = Expected {
        require_secure_boot,
        ..Default::default()
    };
    let mut names = vec![KERNEL];
    if img.uki_sha256.is_some() {
        names.push(UKI_BOOTFILE);
    }
    for name in names {
        let mut a = store
            .open(&img.id, name)
            .map_err(|e| format!("image {}: {e}", img.id))?;
        let mut bytes = Vec::with_capacity(a.size as usize);
        std::io::Read::read_to_end(&mut a.reader, &mut bytes)
            .map_err(|e| format!("image {} {name}: {e}", img.id))?;
        let d =
            authenticode::sha256(&bytes).map_err(|e| format!("image {} {name}: {e}", img.id))?;
        e.boot_apps.insert(d, name.to_string());
        e.os_loaders.push(d);
    }
    for name in [UEFI_BOOTFILE, UEFI_BOOTFILE_FULL] {
        if let Ok(bytes) = std::fs::read(booter.boot_loader_dir(name).join(name))
            && let Ok(d) = authenticode::sha256(&bytes)
        {
            e.boot_apps.insert(d, name.to_string());
        }
    }
    let e = Arc::new(e);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(img.id.clone(), e.clone());
    Ok((e, img.id.clone()))
}
