//! The role layer applied to an unpacked base: machine-specific files removed, artifacts (or stand-ins)
//! installed, the rendered role tree laid over it, and the profile's units enabled through its preset file.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::base::{BaseError, run};
use super::install::{InstallError, put};
use super::tree::{Tree, TreeError};

/// Why the role layer could not be applied to the unpacked base.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The role tree could not be rendered or written.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// An artifact (or stand-in) could not be installed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// A command on the root (`chroot <root> systemctl preset`, `dpkg-query --admindir`) could not start or failed.
    #[error(transparent)]
    Command(#[from] BaseError),
    /// A file of the root filesystem could not be removed or changed.
    #[error("cannot change {path}: {source}")]
    Io {
        /// The path concerned.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The image would carry a fixed iSCSI initiator name, which every node booting it would share and so break
    /// Longhorn's iSCSI: the profile must render `GenerateName=yes`.
    #[error(
        "{path} in the image names one iSCSI initiator ({line}); every node needs its own. The profile must render it as `GenerateName=yes` (profiles/base/initiatorname.iscsi.j2)"
    )]
    SharedInitiator {
        /// The file in the image, `/etc/iscsi/initiatorname.iscsi`.
        path: String,
        /// Its `InitiatorName=` line.
        line: String,
    },
}

/// Files that identify one machine (or the build host: mmdebstrap copies its `/etc/resolv.conf` and
/// `/etc/hostname` into the base) and must not be shared by every node booting the image. `/etc/machine-id` is
/// left empty (systemd makes one per boot); the rest are removed, and the base profile renders its own
/// `/etc/resolv.conf`, `/etc/hostname` and `/etc/hosts` from `cluster.toml` (docs/images.md lists them).
pub const MACHINE_SPECIFIC: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hostname",
    "/etc/mailname",
    "/var/lib/dbus/machine-id",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/credential.secret",
    "/etc/iscsi/initiatorname.iscsi",
];

fn remove(root: &Path, rel: &str) -> Result<(), LayerError> {
    let p = root.join(rel.trim_start_matches('/'));
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LayerError::Io {
            path: p.display().to_string(),
            source,
        }),
    }
}

fn read_dir_sorted(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Removes machine-specific files: the list above, SSH host keys, and the distribution's initrd (nodes boot
/// imgbuild's netboot initrd; Debian's would only be dead weight).
pub fn scrub(root: &Path) -> Result<(), LayerError> {
    for p in MACHINE_SPECIFIC {
        remove(root, p)?;
    }
    for name in read_dir_sorted(&root.join("etc/ssh")) {
        if name.starts_with("ssh_host_") {
            remove(root, &format!("/etc/ssh/{name}"))?;
        }
    }
    for name in read_dir_sorted(&root.join("boot")) {
        if name.starts_with("initrd.img") {
            remove(root, &format!("/boot/{name}"))?;
        }
    }
    // Empty, not absent: systemd then makes a machine id for each boot (transient on the read-only image).
    put(root, "/etc/machine-id", b"", 0o444)?;
    Ok(())
}

/// Checks nothing machine-specific came back with the role layer.
pub fn check_scrubbed(root: &Path) -> Result<(), LayerError> {
    let p = root.join("etc/iscsi/initiatorname.iscsi");
    if let Ok(text) = std::fs::read_to_string(&p)
        && let Some(line) = text.lines().find(|l| l.starts_with("InitiatorName="))
    {
        return Err(LayerError::SharedInitiator {
            path: "/etc/iscsi/initiatorname.iscsi".into(),
            line: line.into(),
        });
    }
    Ok(())
}

/// Lays the rendered role tree over the root (files replaced, never written through a shared inode).
pub fn apply_tree(root: &Path, tree: &Tree) -> Result<(), LayerError> {
    for f in &tree.files {
        put(root, &f.path, &f.contents, f.mode)?;
    }
    Ok(())
}

/// Enables the profile's units the way the rendered preset file says: `systemctl preset` in the root, with the
/// root's own systemctl.
pub fn preset(root: &Path, units: &[String]) -> Result<(), LayerError> {
    if units.is_empty() {
        return Ok(());
    }
    run(Command::new("chroot")
        .arg(root)
        .arg("systemctl")
        .arg("preset")
        .arg("--")
        .args(units))?;
    Ok(())
}

/// Debian package → version, read with dpkg-query from the root's package database.
pub fn packages(root: &Path) -> Result<BTreeMap<String, String>, LayerError> {
    let out = run(Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .arg("-W")
        .arg("-f=${db:Status-Abbrev}\t${Package}\t${Version}\n"))?;
    let mut m = BTreeMap::new();
    for l in out.lines() {
        let mut it = l.split('\t');
        if let (Some(status), Some(name), Some(ver)) = (it.next(), it.next(), it.next())
            && status.starts_with("ii")
        {
            m.insert(name.to_string(), ver.to_string());
        }
    }
    Ok(m)
}

/// The one kernel version installed in the root (`/usr/lib/modules/<version>`).
pub fn kernel_version(root: &Path) -> Result<String, LayerError> {
    let dir = root.join("usr/lib/modules");
    let v = read_dir_sorted(&dir);
    match v.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(LayerError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::other(format!(
                "expected exactly one kernel, found {v:?}; the profile must install one linux-image package"
            )),
        }),
    }
}
