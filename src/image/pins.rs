//! Pins: which image each role boots on each architecture (`state/pins.toml`). Upgrade or roll back = re-pin,
//! then reboot.
//!
//! ```toml
//! [amd64]
//! master = "<image id>"
//! worker = "<image id>"
//!
//! [arm64]
//! worker = "<image id>"
//! ```
//!
//! The file is replaced atomically (write to a temporary file, fsync, rename), so a crash leaves the old or the
//! new pins, never a torn file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{self, Manifest, ManifestError};
use super::store::{ImageStore, StoreError};
use crate::config::{Arch, Cluster, Role};

/// File name of the pins in the state directory (`[paths] state`): `state/pins.toml`.
pub const PINS_FILE: &str = "pins.toml";

/// The image pinned for a role, with what the boot path needs of its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinnedImage {
    /// The image id (sha256 of its `manifest.json`, lowercase hex); served under `/images/<id>/`.
    pub id: String,
    /// sha256 of the image's `vmlinuz`, from its manifest (iPXE and GRUB check the download against it).
    pub kernel_sha256: String,
    /// sha256 of the image's `initrd.img`, from its manifest.
    pub initrd_sha256: String,
    /// sha256 of the image's `rootfs.squashfs`, from its manifest; passed to the initrd on the kernel command
    /// line (`imgbuild.rootfs_sha256=`).
    pub rootfs_sha256: String,
    /// The kernel arguments of the image's profile (console, net.ifnames=0, ...), from its manifest.
    pub kernel_args: Vec<String>,
    /// The root filesystem's dm-verity root hash and hash offset, from its manifest; on the command line
    /// (`imgbuild.rootfs_verity=`, `imgbuild.rootfs_hash_offset=`) instead of the sha256 when present.
    pub rootfs_verity: Option<crate::image::verity::Verity>,
    /// sha256 of the image's signed `uki.efi`, from its manifest; `None` when the image has no UKI.
    pub uki_sha256: Option<String>,
    /// Built with labelled stand-in binaries: served with a warning, never silently.
    pub standins: bool,
}

/// The pinned image of each (role, architecture).
pub type PinMap = BTreeMap<(Role, Arch), PinnedImage>;

impl PinnedImage {
    /// What the boot decision needs of image `id`, from its manifest.
    pub fn from_manifest(id: &str, m: &Manifest) -> Result<Self, ManifestError> {
        Ok(PinnedImage {
            id: id.to_string(),
            kernel_sha256: m.digest_of(id, manifest::KERNEL)?,
            initrd_sha256: m.digest_of(id, manifest::INITRD)?,
            rootfs_sha256: m.digest_of(id, manifest::ROOTFS)?,
            kernel_args: m.kernel_args.clone(),
            rootfs_verity: m.rootfs_verity.clone(),
            uki_sha256: m.files.get(manifest::UKI).map(|f| f.sha256.clone()),
            standins: m.standins,
        })
    }
}

/// Architecture → role → image id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    amd64: BTreeMap<Role, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    arm64: BTreeMap<Role, String>,
}

#[derive(Debug, thiserror::Error)]
/// Reading, writing or checking the pins failed.
pub enum PinError {
    #[error("cannot read or write {path}: {source}")]
    /// `state/pins.toml` could not be read or written (permissions, disk full, …).
    Io {
        /// The pins file (or its temporary file).
        path: PathBuf,
        #[source]
        /// The underlying I/O error.
        source: std::io::Error,
    },
    #[error("{path} is not a valid pins file: {detail}")]
    /// `state/pins.toml` is not valid TOML of the expected shape (`[amd64]`/`[arm64]` tables of role = id); fix
    /// or remove it and re-pin.
    Parse {
        /// The pins file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// The image is missing or damaged (its manifest cannot be read or does not hash to its id).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "image {id} is a {actual} image; it cannot be pinned for role {role} (build one with `imgbuild profile {role}`)"
    )]
    /// The image was built for another role than the one it is being pinned for.
    WrongRole {
        /// The image id.
        id: String,
        /// The role it was to be pinned for.
        role: Role,
        /// The role the image's manifest says it was built for.
        actual: Role,
    },
}

impl Pins {
    /// Where the pins live: `pins.toml` in the cluster's state directory (`[paths] state`).
    pub fn path(cluster: &Cluster) -> PathBuf {
        cluster.paths.state.join(PINS_FILE)
    }

    /// Reads the pins; a missing file means nothing is pinned yet.
    pub fn load(path: &Path) -> Result<Pins, PinError> {
        match std::fs::read_to_string(path) {
            Ok(s) => Self::parse(&s, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Pins::default()),
            Err(source) => Err(PinError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses the pins from their text; `origin` (a file, or where a shared state keeps them) names them in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Pins, PinError> {
        toml::from_str(text).map_err(|e| PinError::Parse {
            path: origin.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// The pins as the text `pins.toml` holds.
    pub fn to_text(&self) -> String {
        format!(
            "# Which image each role boots. Written by `imgbuild pin <role> <image-id>`.\n{}",
            toml::to_string(self).expect("pins serialize")
        )
    }

    /// Writes the pins atomically.
    pub fn save(&self, path: &Path) -> Result<(), PinError> {
        let io = |source| PinError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = self.to_text();
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(text.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    fn slot(&self, arch: Arch) -> &BTreeMap<Role, String> {
        match arch {
            Arch::Amd64 => &self.amd64,
            Arch::Arm64 => &self.arm64,
        }
    }

    /// The image pinned for `role` on `arch`.
    pub fn get(&self, role: Role, arch: Arch) -> Option<&String> {
        self.slot(arch).get(&role)
    }

    /// Every pin: (role, arch, image id).
    pub fn iter(&self) -> impl Iterator<Item = (Role, Arch, &String)> {
        Arch::ALL
            .into_iter()
            .flat_map(move |a| self.slot(a).iter().map(move |(r, id)| (*r, a, id)))
    }

    /// Pins `id` for `role` after checking the image exists, is intact and is of that role. The architecture
    /// is the image's own (from its manifest); it is returned.
    pub fn pin(&mut self, store: &dyn ImageStore, role: Role, id: &str) -> Result<Arch, PinError> {
        let m = store.manifest(id)?;
        if m.role != role {
            return Err(PinError::WrongRole {
                id: id.to_string(),
                role,
                actual: m.role,
            });
        }
        let slot = match m.arch {
            Arch::Amd64 => &mut self.amd64,
            Arch::Arm64 => &mut self.arm64,
        };
        slot.insert(role, id.to_string());
        Ok(m.arch)
    }

    /// The boot decision's view: each pinned (role, arch) with its image's digests. Pins whose image is
    /// missing, damaged or of another architecture are left out, with a warning naming the command that
    /// fixes it.
    pub fn resolve(&self, store: &dyn ImageStore) -> PinMap {
        let mut out = BTreeMap::new();
        for (role, arch, id) in self.iter() {
            let m = store
                .manifest(id)
                .and_then(|m| Ok((m.arch, PinnedImage::from_manifest(id, &m)?)));
            match m {
                Ok((built, p)) if built == arch => {
                    out.insert((role, arch), p);
                }
                Ok((built, _)) => {
                    tracing::warn!(%role, %arch, image = %id, "the image pinned under [{arch}] is built for {built}; ignored: run `imgbuild profile {role} --arch {arch}` and `imgbuild pin {role} <id>`")
                }
                Err(e) => {
                    tracing::warn!(%role, %arch, error = %e, "pinned image unusable; run `imgbuild profile {role} --arch {arch}` and `imgbuild pin {role} <id>`")
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{Inputs, Manifest};
    use crate::image::store::DirStore;

    /// A minimal intact image of `role` for `arch` in `store`; returns its id.
    fn image(store: &DirStore, role: Role, arch: Arch) -> String {
        let st = store.staging().unwrap();
        for (n, b) in [
            ("vmlinuz", b"k"),
            ("initrd.img", b"i"),
            ("rootfs.squashfs", b"r"),
        ] {
            std::fs::write(st.path().join(n), b).unwrap();
        }
        let m = Manifest {
            format: 1,
            role,
            arch,
            profile: vec![role.to_string()],
            standins: false,
            kernel_args: vec![],
            inputs: Inputs::default(),
            files: BTreeMap::new(),
            rootfs_verity: None,
            boot_apps: Default::default(),
        };
        store.commit(st, m).unwrap().id
    }

    #[test]
    fn pins_are_kept_per_role_and_arch_and_survive_a_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let images = DirStore::new(&d.path().join("images"));
        let amd = image(&images, Role::Worker, Arch::Amd64);
        let arm = image(&images, Role::Worker, Arch::Arm64);
        let mut pins = Pins::default();
        assert_eq!(pins.pin(&images, Role::Worker, &amd).unwrap(), Arch::Amd64);
        assert_eq!(pins.pin(&images, Role::Worker, &arm).unwrap(), Arch::Arm64);
        assert_eq!(pins.get(Role::Worker, Arch::Amd64), Some(&amd));
        assert_eq!(pins.get(Role::Worker, Arch::Arm64), Some(&arm));
        let path = d.path().join("state/pins.toml");
        pins.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[amd64]") && text.contains("[arm64]"),
            "{text}"
        );
        assert_eq!(Pins::load(&path).unwrap(), pins);
        let resolved = pins.resolve(&images);
        assert_eq!(resolved[&(Role::Worker, Arch::Arm64)].id, arm);
        assert_eq!(resolved[&(Role::Worker, Arch::Amd64)].id, amd);
        // A role mismatch is refused with the command that builds the right image.
        let e = pins
            .pin(&images, Role::Master, &amd)
            .unwrap_err()
            .to_string();
        assert!(e.contains("imgbuild profile master"), "{e}");
    }

    #[test]
    fn a_hand_edited_pin_of_the_wrong_arch_is_not_served() {
        let d = tempfile::tempdir().unwrap();
        let images = DirStore::new(&d.path().join("images"));
        let amd = image(&images, Role::Worker, Arch::Amd64);
        let path = d.path().join("pins.toml");
        std::fs::write(&path, format!("[arm64]\nworker = \"{amd}\"\n")).unwrap();
        let pins = Pins::load(&path).unwrap();
        assert!(pins.resolve(&images).is_empty());
        // Unknown sections (a typo, or the old `[pins]` layout) are an error naming the file, not silence.
        std::fs::write(&path, format!("[pins]\nworker = \"{amd}\"\n")).unwrap();
        let e = Pins::load(&path).unwrap_err().to_string();
        assert!(e.contains("pins.toml") && e.contains("pins"), "{e}");
    }
}
