//! The directory backend: the state as files, exactly where a single server has always kept them. Enrollment
//! and token updates hold an exclusive `flock` on `state/enrollment.lock` (shared with `imgbuild enroll` and
//! every other process on the host); the other documents are written by the server alone, under a mutex.
//! Every write is atomic and fsynced (`pki::write_atomic`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::backend::{Key, OnChange, StateBackend, StateError, Update};

/// The state directory (`[paths] state`) and the secrets directory (`[paths] secrets`, for the token).
#[derive(Debug)]
pub struct DirState {
    state: PathBuf,
    secrets: PathBuf,
    mutex: Mutex<()>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An exclusive `flock` on `path`, held until the file is dropped.
pub fn flock(path: &Path) -> Result<std::fs::File, StateError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    // SAFETY: flock on a valid, open descriptor; blocks until the lock is ours.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(io(path)(std::io::Error::last_os_error()));
    }
    Ok(f)
}

impl DirState {
    /// The backend over `state` and `secrets`.
    pub fn new(state: &Path, secrets: &Path) -> Self {
        DirState {
            state: state.to_path_buf(),
            secrets: secrets.to_path_buf(),
            mutex: Mutex::new(()),
        }
    }

    /// The file that holds `key`.
    pub fn path(&self, key: Key) -> PathBuf {
        match key {
            Key::Enrollment => self.state.join("enrollment.json"),
            Key::Token => self.secrets.join("token.json"),
            Key::Barrier => self.state.join("barrier.json"),
            Key::ReportCounters => self.state.join("report-counters.json"),
            Key::Pins => self.state.join(crate::image::pins::PINS_FILE),
        }
    }

    /// The lock file updates of `key` take, if any (enrollment and token: the same one, so a publication is
    /// serialized with enrollments).
    fn lock_file(&self, key: Key) -> Option<PathBuf> {
        matches!(key, Key::Enrollment | Key::Token).then(|| self.state.join("enrollment.lock"))
    }

    fn read(&self, key: Key) -> Result<Option<Vec<u8>>, StateError> {
        let p = self.path(key);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }
}

impl StateBackend for DirState {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn replicated(&self) -> bool {
        false
    }

    fn get(&self, key: Key) -> Result<Option<Vec<u8>>, StateError> {
        match self.lock_file(key) {
            Some(l) => {
                let _held = flock(&l)?;
                self.read(key)
            }
            None => self.read(key),
        }
    }

    fn update(&self, key: Key, f: Update<'_>) -> Result<(), StateError> {
        let _held = match self.lock_file(key) {
            Some(l) => Some(flock(&l)?),
            None => None,
        };
        let _g = self.mutex.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.read(key)?;
        if let Some(bytes) = f(cur.as_deref())? {
            let p = self.path(key);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            crate::pki::write_atomic(&p, &bytes, 0o600).map_err(|e| StateError::Invalid {
                key: p.display().to_string(),
                message: format!("cannot write it: {e}"),
            })?;
        }
        Ok(())
    }

    fn watch(&self, _key: Key, _on_change: OnChange) -> Result<bool, StateError> {
        Ok(false)
    }

    fn record_event(&self, _at_ms: u64, _seq: u64, _line: &[u8]) -> Result<(), StateError> {
        Ok(())
    }

    fn events(&self, _limit: usize) -> Result<Vec<Vec<u8>>, StateError> {
        Ok(vec![])
    }

    fn claim_lease(
        &self,
        _ip: std::net::Ipv4Addr,
        _mac: &str,
        _until_ms: u64,
    ) -> Result<bool, StateError> {
        Ok(true)
    }

    fn announce(&self, _id: &str, _info: &[u8], _ttl_secs: i64) -> Result<(), StateError> {
        Ok(())
    }

    fn replicas(&self) -> Result<Vec<Vec<u8>>, StateError> {
        Ok(vec![])
    }

    fn requests(&self) -> Vec<(&'static str, u64)> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_writes_the_same_files_as_before() {
        let d = tempfile::tempdir().unwrap();
        let s = DirState::new(&d.path().join("state"), &d.path().join("secrets"));
        assert_eq!(s.get(Key::Barrier).unwrap(), None);
        assert_eq!(s.create_once(Key::Barrier, b"{}\n").unwrap(), None);
        assert_eq!(
            s.create_once(Key::Barrier, b"[]\n").unwrap().as_deref(),
            Some(&b"{}\n"[..])
        );
        assert_eq!(
            std::fs::read(d.path().join("state/barrier.json")).unwrap(),
            b"{}\n"
        );
        s.update(Key::Enrollment, &mut |cur| {
            assert!(cur.is_none());
            Ok(Some(b"{}".to_vec()))
        })
        .unwrap();
        assert!(d.path().join("state/enrollment.lock").exists());
        assert_eq!(s.get(Key::Enrollment).unwrap().as_deref(), Some(&b"{}"[..]));
    }
}
