//! Where each artifact goes in the root filesystem, and installing it there.
//!
//! kubeadm/kubelet/kubectl → `/usr/bin`, containerd's tarball `bin/*` → `/usr/local/bin`, runc →
//! `/usr/local/sbin/runc`, the CNI plugins tarball → `/opt/cni/bin`, crictl's tarball → `/usr/local/bin`,
//! `*-manifest` → `/usr/share/imgbuild/manifests/<name>.yaml`. Real files and stand-ins go to the same places.

use std::io::Read;
use std::path::Path;

/// How an artifact is shipped upstream and where it lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A single executable, installed at this path.
    Binary(&'static str),
    /// A release tarball: its regular files under `prefix` are installed into `dir` (mode kept, 0755 at least
    /// for executables). The stand-in installs `standin_binaries` there.
    Tarball {
        /// The directory inside the tarball whose files are installed (`bin/` for containerd, empty for the root).
        prefix: &'static str,
        /// The directory in the root filesystem they are installed into.
        dir: &'static str,
        /// The executables a stand-in tarball provides in `dir`.
        standin_binaries: &'static [&'static str],
    },
    /// A YAML manifest, installed at `/usr/share/imgbuild/manifests/<name>.yaml`.
    Manifest,
}

/// Where the manifests go.
pub const MANIFEST_DIR: &str = "/usr/share/imgbuild/manifests";

/// The kind of a named artifact, or `None` for a name imgbuild does not know how to install.
pub fn kind(name: &str) -> Option<Kind> {
    Some(match name {
        "kubeadm" => Kind::Binary("/usr/bin/kubeadm"),
        "kubelet" => Kind::Binary("/usr/bin/kubelet"),
        "kubectl" => Kind::Binary("/usr/bin/kubectl"),
        "runc" => Kind::Binary("/usr/local/sbin/runc"),
        "containerd" => Kind::Tarball {
            prefix: "bin/",
            dir: "/usr/local/bin",
            standin_binaries: &["containerd"],
        },
        "crictl" => Kind::Tarball {
            prefix: "",
            dir: "/usr/local/bin",
            standin_binaries: &["crictl"],
        },
        "cni-plugins" => Kind::Tarball {
            prefix: "",
            dir: "/opt/cni/bin",
            standin_binaries: &["bridge", "host-local", "loopback", "portmap"],
        },
        n if n.ends_with("-manifest") => Kind::Manifest,
        _ => return None,
    })
}

/// Why an artifact could not be installed into the image's root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `cluster.toml` has an artifact imgbuild does not know how to install (see [`kind`]): remove it, or give it
    /// one of the known names.
    #[error(
        "artifact {name}: imgbuild does not know where to install it; known artifacts are kubeadm, kubelet, kubectl, containerd, runc, cni-plugins, crictl and *-manifest"
    )]
    Unknown {
        /// The artifact's name, its `[artifacts.<name>]` key.
        name: String,
    },
    /// The artifact file could not be read or, for a tarball, unpacked; run `imgbuild fetch` again or check its
    /// URL.
    #[error("artifact {name}: {path}: {detail}")]
    Bad {
        /// The artifact's name.
        name: String,
        /// The artifact file in the cache.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A file or directory inside the root filesystem could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path concerned.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `contents` at `path` inside `root` (parents created), replacing any file there, with `mode`.
pub fn put(root: &Path, path: &str, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let dest = root.join(path.trim_start_matches('/'));
    let io = |source| InstallError::Io {
        path: dest.display().to_string(),
        source,
    };
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(io)?;
    }
    match std::fs::remove_file(&dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::write(&dest, contents).map_err(io)?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(())
}

/// Installs a real, verified artifact file. Returns the paths written.
pub fn install_real(root: &Path, name: &str, file: &Path) -> Result<Vec<String>, InstallError> {
    let k = kind(name).ok_or_else(|| InstallError::Unknown { name: name.into() })?;
    let bad = |detail: String| InstallError::Bad {
        name: name.into(),
        path: file.display().to_string(),
        detail,
    };
    let data = std::fs::read(file).map_err(|e| bad(e.to_string()))?;
    match k {
        Kind::Binary(dest) => {
            put(root, dest, &data, 0o755)?;
            Ok(vec![dest.into()])
        }
        Kind::Manifest => {
            let dest = format!("{MANIFEST_DIR}/{name}.yaml");
            put(root, &dest, &data, 0o644)?;
            Ok(vec![dest])
        }
        Kind::Tarball { prefix, dir, .. } => {
            let reader: Box<dyn Read> = if data.starts_with(&[0x1f, 0x8b]) {
                Box::new(flate2::read::GzDecoder::new(&data[..]))
            } else {
                Box::new(&data[..])
            };
            let mut ar = tar::Archive::new(reader);
            let mut written = Vec::new();
            for entry in ar.entries().map_err(|e| bad(e.to_string()))? {
                let mut entry = entry.map_err(|e| bad(e.to_string()))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let p = entry.path().map_err(|e| bad(e.to_string()))?;
                let p = p.to_string_lossy().trim_start_matches("./").to_string();
                let Some(rest) = p.strip_prefix(prefix) else {
                    continue;
                };
                if rest.is_empty() || rest.contains('/') {
                    continue;
                }
                let mode = entry.header().mode().map_err(|e| bad(e.to_string()))? & 0o7777;
                let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| bad(e.to_string()))?;
                let dest = format!("{dir}/{rest}");
                put(root, &dest, &buf, mode)?;
                written.push(dest);
            }
            if written.is_empty() {
                return Err(bad(format!(
                    "the tarball holds no files under {prefix:?}; is this the right release file?"
                )));
            }
            written.sort();
            Ok(written)
        }
    }
}
