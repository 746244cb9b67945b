//! What accepted node reports leave in durable server state, beside the event log and independent of it: the
//! init-done barrier (`state/barrier.json`, written once, fsynced, never derived from events) and the last
//! accepted report counter of each enrolled node (`state/report-counters.json`, for replay protection across
//! server restarts). Both are replaced atomically ([`super::write_atomic`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{PkiError, io_err};

/// [`super::write_atomic`], creating the state directory first if needed.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    super::write_atomic(path, bytes, mode)
}
use crate::config::MacAddr;

/// The init-done barrier, once reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    /// When the first master's signed `init-done` was accepted, ms since the epoch.
    pub at_ms: u64,
    /// The first master's MAC.
    pub mac: MacAddr,
}

/// The last accepted counter of one enrollment of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The enrollment the counter belongs to (its report key derives from it).
    pub enrolled_at_ms: u64,
    /// The last accepted counter.
    pub ctr: u64,
}

/// The state under its lock (see [`ReportState::with`]).
#[derive(Debug, Default)]
pub struct Inner {
    barrier: Option<Barrier>,
    counters: BTreeMap<MacAddr, Counter>,
}

/// The durable report state of a server: loaded at start, written through on every change.
#[derive(Debug)]
pub struct ReportState {
    barrier_path: PathBuf,
    counters_path: PathBuf,
    inner: Mutex<Inner>,
}

fn read_json<T: serde::de::DeserializeOwned + Default>(p: &Path) -> Result<T, PkiError> {
    match std::fs::read_to_string(p) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| PkiError::Invalid {
            path: p.display().to_string(),
            message: format!(
                "{e}; the file is written by imgbuild only — restore it from a backup"
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(io_err(p)(e)),
    }
}

impl ReportState {
    /// The state in `state_dir` (absent files: no barrier, no counters).
    pub fn open(state_dir: &Path) -> Result<Self, PkiError> {
        let barrier_path = state_dir.join("barrier.json");
        let counters_path = state_dir.join("report-counters.json");
        let barrier: Option<Barrier> = read_json(&barrier_path)?;
        let counters = read_json(&counters_path)?;
        Ok(ReportState {
            barrier_path,
            counters_path,
            inner: Mutex::new(Inner { barrier, counters }),
        })
    }

    /// An empty state that writes to `state_dir` (when the files there cannot be read).
    pub fn empty(state_dir: &Path) -> Self {
        ReportState {
            barrier_path: state_dir.join("barrier.json"),
            counters_path: state_dir.join("report-counters.json"),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Runs `f` under the state's lock (check a report and commit it atomically with respect to others).
    pub fn with<T>(&self, f: impl FnOnce(&mut Inner, &ReportState) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g, self)
    }

    /// The barrier, if reached.
    pub fn barrier(&self) -> Option<Barrier> {
        self.with(|i, _| i.barrier.clone())
    }
}

impl Inner {
    /// The last accepted counter of `mac`'s enrollment at `enrolled_at_ms` (a counter of an earlier enrollment
    /// does not count).
    pub fn last_ctr(&self, mac: MacAddr, enrolled_at_ms: u64) -> Option<u64> {
        self.counters
            .get(&mac)
            .filter(|c| c.enrolled_at_ms == enrolled_at_ms)
            .map(|c| c.ctr)
    }

    /// Stores `ctr` as `mac`'s last counter (written and fsynced before it returns).
    pub fn commit_ctr(
        &mut self,
        st: &ReportState,
        mac: MacAddr,
        enrolled_at_ms: u64,
        ctr: u64,
    ) -> Result<(), PkiError> {
        let before = self.counters.insert(
            mac,
            Counter {
                enrolled_at_ms,
                ctr,
            },
        );
        let mut v = serde_json::to_vec_pretty(&self.counters).expect("counters serialize");
        v.push(b'\n');
        write_atomic(&st.counters_path, &v, 0o600).inspect_err(|_| {
            match before {
                Some(b) => self.counters.insert(mac, b),
                None => self.counters.remove(&mac),
            };
        })
    }

    /// Records the barrier, once: a later call keeps the first record. Returns the record in force.
    pub fn reach_barrier(
        &mut self,
        st: &ReportState,
        mac: MacAddr,
        at_ms: u64,
    ) -> Result<Barrier, PkiError> {
        if let Some(b) = &self.barrier {
            return Ok(b.clone());
        }
        let b = Barrier { at_ms, mac };
        let mut v = serde_json::to_vec_pretty(&Some(&b)).expect("barrier serializes");
        v.push(b'\n');
        write_atomic(&st.barrier_path, &v, 0o600)?;
        self.barrier = Some(b.clone());
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_is_written_once_and_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let mac: MacAddr = "52:54:00:77:00:11".parse().unwrap();
        let st = ReportState::open(d.path()).unwrap();
        assert_eq!(st.barrier(), None);
        st.with(|i, s| {
            i.reach_barrier(s, mac, 10).unwrap();
            assert_eq!(i.reach_barrier(s, mac, 20).unwrap().at_ms, 10);
            i.commit_ctr(s, mac, 5, 3).unwrap();
        });
        let again = ReportState::open(d.path()).unwrap();
        assert_eq!(again.barrier().unwrap().at_ms, 10);
        again.with(|i, _| {
            assert_eq!(i.last_ctr(mac, 5), Some(3));
            assert_eq!(i.last_ctr(mac, 6), None, "a new enrollment starts afresh");
        });
    }
}
