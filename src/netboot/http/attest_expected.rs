//! What a TPM machine must have booted (docs/attestation.md): the boot applications of the image pinned for its
//! role, as the image's manifest records them (`boot_apps`: Authenticode SHA-256 computed when the image was
//! built), checked once against the files themselves and cached per image id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::Machine;
use crate::image::authenticode;
use crate::image::manifest::{KERNEL, UKI, boot_app_digest};
use crate::netboot::boot::{UEFI_BOOTFILE, UEFI_BOOTFILE_FULL};
use crate::netboot::state::Shared;
use crate::pki::attest::policy::Expected;

/// Expected boot applications by pinned image id.
pub type ExpectedCache = Arc<Mutex<HashMap<String, Arc<Expected>>>>;

/// The boot applications of the image pinned for `m` now (the pins as [`Shared::booter`] has them after any
/// re-pin), and that image's id: its kernel and UKI as its manifest records them, and the iPXE binaries the
/// server hands out (cached per image id).
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
    let chains = boot_paths(booter.uki_image(m).is_some());
    if let Some(e) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&img.id) {
        return Ok((
            Arc::new(Expected {
                require_secure_boot,
                chains,
                ..(**e).clone()
            }),
            img.id.clone(),
        ));
    }
    let store = crate::image::store::open(&shared.cluster());
    let manifest = store
        .manifest(&img.id)
        .map_err(|e| format!("image {}: {e}", img.id))?;
    let mut e = Expected {
        require_secure_boot,
        ..Default::default()
    };
    let mut names = vec![KERNEL];
    if img.uki_sha256.is_some() {
        names.push(UKI);
    }
    for name in names {
        let recorded = manifest.boot_apps.get(name).ok_or_else(|| {
            format!(
                "image {}: its manifest records no Authenticode digest of {name} (boot_apps): it was built \
                 before imgbuild recorded them, or {name} is not a PE image; rebuild it (`imgbuild build`) and \
                 pin the new image (`imgbuild pin`)",
                img.id
            )
        })?;
        // The file as the store has it (its sha256 checked against the manifest) must give the recorded digest.
        let mut a = store
            .open(&img.id, name)
            .map_err(|e| format!("image {}: {e}", img.id))?;
        let mut bytes = Vec::with_capacity(a.size as usize);
        std::io::Read::read_to_end(&mut a.reader, &mut bytes)
            .map_err(|e| format!("image {} {name}: {e}", img.id))?;
        let actual = boot_app_digest(&bytes);
        if actual.as_deref() != Some(recorded.as_str()) {
            return Err(format!(
                "image {}: {name}'s Authenticode SHA-256 is {}, its manifest records {recorded}: the image \
                 store was modified; rebuild the image (`imgbuild build`) and pin it",
                img.id,
                actual.as_deref().unwrap_or("none (not a PE image)"),
            ));
        }
        let mut d = [0u8; 32];
        hex::decode_to_slice(recorded, &mut d)
            .map_err(|e| format!("image {}: boot_apps {name}: {e}", img.id))?;
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
    Ok((
        Arc::new(Expected {
            chains,
            ..(*e).clone()
        }),
        img.id.clone(),
    ))
}

/// The PCR 4 applications, in order, of the way the server boots a machine (docs/attestation.md): a Secure
/// Boot machine's firmware starts the pinned image's signed UKI itself (its stub starts the kernel without
/// LoadImage under Secure Boot, with LoadImage when it is off: then the kernel follows); any other UEFI machine
/// gets iPXE (`snponly.efi` over PXE, `ipxe.efi` by HTTP Boot), which loads the pinned kernel with LoadImage —
/// twice with Debian 12's iPXE, whose `efi_image_probe` tries LoadImage (then UnloadImage) to recognise an EFI
/// image before `efi_image_exec` loads it again to start it: the firmware measures both (seen in the ProxyDHCP
/// lab's event log: `snponly.efi → vmlinuz → vmlinuz`). One kernel event is allowed too, for an iPXE that
/// recognises the image without LoadImage; every kernel event must be the pinned kernel either way.
pub fn boot_paths(uki: bool) -> Vec<Vec<String>> {
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    if uki {
        vec![path(&[UKI]), path(&[UKI, KERNEL])]
    } else {
        [UEFI_BOOTFILE, UEFI_BOOTFILE_FULL]
            .into_iter()
            .flat_map(|ipxe| [path(&[ipxe, KERNEL, KERNEL]), path(&[ipxe, KERNEL])])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::config::{Cluster, Role};
    use crate::image::manifest::{FileEntry, INITRD, Inputs, Manifest, ROOTFS};
    use crate::image::pins::Pins;
    use crate::status::Events;

    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    const OTHER_PE: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

    /// The example cluster under a temporary directory (its images and state there); nothing pinned at start.
    fn shared() -> (tempfile::TempDir, Arc<Shared>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.toml");
        let root = env!("CARGO_MANIFEST_DIR");
        let text = std::fs::read_to_string(format!("{root}/cluster.toml")).unwrap();
        let text =
            format!("{text}\n[paths]\nprofiles = \"{root}/profiles\"\nipxe = \"{root}/ipxe\"\n");
        std::fs::write(&p, text).unwrap();
        let cluster = crate::config::load(&p).unwrap();
        let s = Shared::new(p, cluster, Default::default(), Events::in_memory());
        (dir, Arc::new(s))
    }

    fn master(c: &Cluster) -> Machine {
        c.machines
            .iter()
            .find(|m| m.role == Role::Master)
            .unwrap()
            .clone()
    }

    /// A master image's manifest listing `files` (sizes, sha256), with no boot_apps.
    fn manifest(files: &BTreeMap<&str, Vec<u8>>) -> Manifest {
        let entry = |b: &Vec<u8>| FileEntry {
            size: b.len() as u64,
            sha256: hex::encode(Sha256::digest(b)),
        };
        Manifest {
            format: 1,
            role: Role::Master,
            arch: Default::default(),
            profile: vec!["base".into(), "master".into()],
            standins: true,
            kernel_args: vec![],
            inputs: Inputs::default(),
            files: files
                .iter()
                .map(|(n, b)| (n.to_string(), entry(b)))
                .collect(),
            rootfs_verity: None,
            boot_apps: BTreeMap::new(),
        }
    }

    /// An image written into the store directory as it is, manifest as given (what an older build or a modified
    /// store leaves).
    fn write_image(images: &Path, files: &BTreeMap<&str, Vec<u8>>, m: &Manifest) -> String {
        let id = m.id();
        let d = images.join(&id);
        std::fs::create_dir_all(&d).unwrap();
        for (n, b) in files {
            std::fs::write(d.join(n), b).unwrap();
        }
        std::fs::write(d.join("manifest.json"), m.to_bytes()).unwrap();
        id
    }

    fn pin(s: &Shared, id: &str) {
        let c = s.cluster();
        let mut p = Pins::load(&Pins::path(&c)).unwrap();
        p.pin(&*crate::image::store::open(&c), Role::Master, id)
            .unwrap();
        p.save(&Pins::path(&c)).unwrap();
    }

    #[test]
    fn expects_the_boot_apps_the_manifest_recorded_at_build_and_refuses_images_without_or_with_others()
     {
        let (_d, s) = shared();
        let c = s.cluster();
        let m = master(&c);
        let kernel = std::fs::read(STUB).expect("systemd-boot-efi");
        let files: BTreeMap<&str, Vec<u8>> = [
            (KERNEL, kernel.clone()),
            (INITRD, b"initrd".to_vec()),
            (ROOTFS, b"rootfs".to_vec()),
        ]
        .into_iter()
        .collect();
        let cache = ExpectedCache::default();

        // Committed through the store (as `imgbuild build` does): the manifest records the kernel's Authenticode
        // digest, and that is what attestation expects once it is pinned (pins.toml written after the server
        // state was made: `booter()` picks the re-pin up).
        let store = crate::image::store::open(&c);
        let st = store.staging().unwrap();
        for (n, b) in &files {
            std::fs::write(st.path().join(n), b).unwrap();
        }
        let built = store.commit(st, manifest(&BTreeMap::new())).unwrap().id;
        let recorded = store.manifest(&built).unwrap().boot_apps;
        let digest = authenticode::sha256(&kernel).unwrap();
        assert_eq!(recorded.get(KERNEL), Some(&hex::encode(digest)));
        assert_eq!(recorded.len(), 1, "only PE boot applications: {recorded:?}");
        pin(&s, &built);
        let (e, id) = expected_for(&s, &cache, &m).unwrap();
        assert_eq!(id, built);
        assert_eq!(e.boot_apps.get(&digest).map(String::as_str), Some(KERNEL));
        assert_eq!(e.os_loaders, vec![digest]);
        // The example's master boots without Secure Boot: iPXE, then the pinned kernel.
        assert!(!m.secure_boot);
        assert_eq!(e.chains, boot_paths(false));
        assert_eq!(
            boot_paths(false),
            [
                vec!["snponly.efi", "vmlinuz", "vmlinuz"],
                vec!["snponly.efi", "vmlinuz"],
                vec!["ipxe.efi", "vmlinuz", "vmlinuz"],
                vec!["ipxe.efi", "vmlinuz"]
            ]
        );
        assert_eq!(
            boot_paths(true),
            [vec!["uki.efi"], vec!["uki.efi", "vmlinuz"]]
        );

        // An image whose manifest has no boot_apps (built before they were recorded): refused, saying to rebuild.
        let old = write_image(&c.paths.images, &files, &manifest(&files));
        pin(&s, &old);
        let err = expected_for(&s, &cache, &m).unwrap_err();
        assert!(
            err.contains(&old)
                && err.contains("records no Authenticode digest")
                && err.contains("rebuild"),
            "{err}"
        );

        // A manifest recording another digest than its kernel has: refused, naming both.
        let mut lying = manifest(&files);
        let other = authenticode::sha256(&std::fs::read(OTHER_PE).unwrap()).unwrap();
        lying.boot_apps.insert(KERNEL.into(), hex::encode(other));
        let lying = write_image(&c.paths.images, &files, &lying);
        pin(&s, &lying);
        let err = expected_for(&s, &cache, &m).unwrap_err();
        assert!(
            err.contains(&hex::encode(digest))
                && err.contains(&hex::encode(other))
                && err.contains("modified"),
            "{err}"
        );
    }
}
