//! The boot loaders TFTP and `GET /boot/{name}` may serve: exactly the names the boot decision can give
//! ([`crate::netboot::boot::Booter::boot_loader_names`]), read from `network.ipxe_binaries` (iPXE) or the
//! server's `state/boot/` (the arm64 GRUB image it makes): [`crate::netboot::boot::Booter::boot_loader_dir`].
//!
//! A request is checked by name only: anything with `..`, an absolute path, or a name not on the list is refused
//! before the file system is touched. The configured files themselves may be symlinks (Debian's
//! `/usr/lib/ipxe/ipxe.efi` points at `/boot/ipxe.efi`); they are resolved when read. Contents are cached in
//! memory, keyed by path, size and mtime, so concurrent transfers of one file share one copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

/// Why a requested name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Contains a `..` component.
    Traversal,
    /// Starts with `/` or `\`.
    Absolute,
    /// Not on the allowlist.
    NotAllowed,
}

impl Refusal {
    /// Label for metrics and logs.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::Traversal => "traversal",
            Refusal::Absolute => "absolute",
            Refusal::NotAllowed => "not_allowed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Traversal => "path traversal refused",
            Refusal::Absolute => "absolute paths are refused",
            Refusal::NotAllowed => "file not served",
        })
    }
}

/// Checks a requested name against the allowlist. Returns the allowlisted name.
pub fn check_name(requested: &str, allow: &[&'static str]) -> Result<&'static str, Refusal> {
    if requested.starts_with('/') || requested.starts_with('\\') {
        return Err(Refusal::Absolute);
    }
    if requested
        .split(['/', '\\'])
        .any(|c| c == ".." || c.contains("%2e%2e") || c.contains("%2E%2E"))
    {
        return Err(Refusal::Traversal);
    }
    allow
        .iter()
        .find(|a| **a == requested)
        .copied()
        .ok_or(Refusal::NotAllowed)
}

/// Logs, once at start-up, which boot loaders are present and says clearly which are missing.
pub fn report_missing(dir: &Path, names: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    for name in names {
        let p = dir.join(name);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => {
                tracing::info!(file = %p.display(), size = m.len(), "boot loader available")
            }
            Ok(_) => {
                tracing::warn!(file = %p.display(), "boot loader is not a regular file; it will not be served");
                missing.push(name.to_string());
            }
            Err(e) => {
                let fix = if crate::netboot::boot::is_grub(name) {
                    "the server makes it at start-up from network.grub_modules: see the GRUB error above"
                } else {
                    "install Debian's `ipxe` package or set network.ipxe_binaries to a directory holding it"
                };
                tracing::warn!(file = %p.display(), error = %e, "boot loader MISSING: machines sent {name} will fail to boot; {fix}");
                missing.push(name.to_string());
            }
        }
    }
    missing
}

struct Cached {
    len: u64,
    mtime: Option<SystemTime>,
    bytes: Bytes,
}

/// In-memory cache of boot loader contents.
#[derive(Default)]
pub struct BootFiles {
    cache: Mutex<HashMap<PathBuf, Cached>>,
}

impl BootFiles {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached contents of `name` if they are current (one `stat`, no read: cheap enough for an async task).
    /// `Ok(None)`: not cached or changed; call [`BootFiles::read`] on a blocking thread.
    pub fn cached(&self, dir: &Path, name: &'static str) -> std::io::Result<Option<Bytes>> {
        let path = dir.join(name);
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        let mtime = meta.modified().ok();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        Ok(cache
            .get(&path)
            .filter(|c| c.len == meta.len() && c.mtime == mtime)
            .map(|c| c.bytes.clone()))
    }

    /// The contents of allowlisted `name` in `dir` (follows the configured file's symlink). Re-read when the
    /// file's size or mtime changed.
    pub fn read(&self, dir: &Path, name: &'static str) -> std::io::Result<Bytes> {
        if let Some(b) = self.cached(dir, name)? {
            return Ok(b);
        }
        let path = dir.join(name);
        let meta = std::fs::metadata(&path)?;
        let mtime = meta.modified().ok();
        let bytes = Bytes::from(std::fs::read(&path)?);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            path,
            Cached {
                len: bytes.len() as u64,
                mtime,
                bytes: bytes.clone(),
            },
        );
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: &[&str] = &["undionly.kpxe", "snponly.efi", "ipxe.efi"];

    #[test]
    fn only_exact_allowlisted_names_pass() {
        assert_eq!(check_name("snponly.efi", ALLOW), Ok("snponly.efi"));
        for (name, want) in [
            ("../etc/passwd", Refusal::Traversal),
            ("x/../snponly.efi", Refusal::Traversal),
            ("..\\boot.ini", Refusal::Traversal),
            ("%2e%2e/snponly.efi", Refusal::Traversal),
            ("/etc/passwd", Refusal::Absolute),
            ("/snponly.efi", Refusal::Absolute),
            ("\\snponly.efi", Refusal::Absolute),
            ("SNPONLY.EFI", Refusal::NotAllowed),
            ("snponly.efi ", Refusal::NotAllowed),
            ("ipxe.lkrn", Refusal::NotAllowed),
            ("", Refusal::NotAllowed),
            ("./snponly.efi", Refusal::NotAllowed),
        ] {
            assert_eq!(check_name(name, ALLOW), Err(want), "{name}");
        }
    }

    #[test]
    fn cache_rereads_changed_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ipxe.efi"), b"one").unwrap();
        let bf = BootFiles::new();
        assert_eq!(&bf.read(d.path(), "ipxe.efi").unwrap()[..], b"one");
        std::fs::write(d.path().join("ipxe.efi"), b"second").unwrap();
        assert_eq!(&bf.read(d.path(), "ipxe.efi").unwrap()[..], b"second");
        assert!(bf.read(d.path(), "snponly.efi").is_err());
        assert_eq!(
            report_missing(d.path(), ALLOW),
            vec!["undionly.kpxe", "snponly.efi"]
        );
    }
}
