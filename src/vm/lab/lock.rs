//! An exclusive `flock` that serialises image builds of labs and tests sharing one build cache.

use std::path::Path;

use anyhow::{Context, bail};

/// An exclusive `flock` on `path` while the value lives (serialises image builds of concurrent labs/tests).
pub(super) struct FileLock(std::fs::File);

impl FileLock {
    pub(super) fn acquire(path: &Path) -> anyhow::Result<FileLock> {
        use std::os::fd::AsRawFd;
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking our own descriptor.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}
