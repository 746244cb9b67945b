//! What accepted node reports leave in durable server state, beside the event log and independent of it: the
//! init-done barrier (`state/barrier.json`, written once, fsynced, never derived from events) and the last
//! accepted report counter of each enrolled node (`state/report-counters.json`, for replay protection across
//! server restarts). Both are replaced atomically ([`super::write_atomic`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::PkiError;
use super::state_store::{Key, StateBackend, StateError, dir::DirState, parse_json, to_json};
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

/// The durable report state of a server: loaded at start, written through on every change. With a replicated
/// backend (etcd) it is re-read under the lock before every check, so every replica sees every other's barrier
/// and counters.
#[derive(Debug)]
pub struct ReportState {
    backend: Arc<dyn StateBackend>,
    inner: Mutex<Inner>,
}

fn load(b: &dyn StateBackend) -> Result<Inner, PkiError> {
    let barrier: Option<Barrier> = match b.get(Key::Barrier)? {
        Some(bytes) => parse_json(b, Key::Barrier, &bytes)?,
        None => None,
    };
    let counters = match b.get(Key::ReportCounters)? {
        Some(bytes) => parse_json(b, Key::ReportCounters, &bytes)?,
        None => BTreeMap::new(),
    };
    Ok(Inner { barrier, counters })
}

impl ReportState {
    /// The state in `state_dir` (absent files: no barrier, no counters).
    pub fn open(state_dir: &Path) -> Result<Self, PkiError> {
        Self::open_in(Arc::new(DirState::new(state_dir, state_dir)))
    }

    /// The state kept by `backend`.
    pub fn open_in(backend: Arc<dyn StateBackend>) -> Result<Self, PkiError> {
        let inner = load(&*backend)?;
        Ok(ReportState {
            backend,
            inner: Mutex::new(inner),
        })
    }

    /// An empty state that writes to `backend` (when what it holds cannot be read).
    pub fn empty(backend: Arc<dyn StateBackend>) -> Self {
        ReportState {
            backend,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Runs `f` under the state's lock (check a report and commit it atomically with respect to others).
    pub fn with<T>(&self, f: impl FnOnce(&mut Inner, &ReportState) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if self.backend.replicated() {
            match load(&*self.backend) {
                Ok(fresh) => *g = fresh,
                Err(e) => {
                    tracing::error!("cannot re-read the report state: {e}; using the last one read")
                }
            }
        }
        f(&mut g, self)
    }

    /// The barrier, if reached.
    pub fn barrier(&self) -> Option<Barrier> {
        {
            let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.barrier.is_some() || !self.backend.replicated() {
                return g.barrier.clone();
            }
        }
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

    /// Stores `ctr` as `mac`'s last counter (written and fsynced, or committed in etcd, before it returns). With
    /// replicas, a counter another replica accepted in between (the same report twice) is refused as an error.
    pub fn commit_ctr(
        &mut self,
        st: &ReportState,
        mac: MacAddr,
        enrolled_at_ms: u64,
        ctr: u64,
    ) -> Result<(), PkiError> {
        let c = Counter {
            enrolled_at_ms,
            ctr,
        };
        let b = &*st.backend;
        let mut merged = None;
        b.update(Key::ReportCounters, &mut |cur| {
            let mut map = if b.replicated() {
                match cur {
                    Some(bytes) => parse_json(b, Key::ReportCounters, bytes)?,
                    None => BTreeMap::new(),
                }
            } else {
                self.counters.clone()
            };
            if let Some(old) = map.get(&mac)
                && old.enrolled_at_ms == enrolled_at_ms
                && old.ctr >= ctr
                && b.replicated()
            {
                return Err(StateError::Invalid {
                    key: Key::ReportCounters.name().into(),
                    message: format!(
                        "{mac}: counter {ctr} was already accepted by another replica (a replay)"
                    ),
                });
            }
            map.insert(mac, c);
            let bytes = to_json(&map);
            merged = Some(map);
            Ok(Some(bytes))
        })?;
        if let Some(m) = merged {
            self.counters = m;
        }
        Ok(())
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
        let be = &*st.backend;
        let held = match be.create_once(Key::Barrier, &to_json(&Some(&b)))? {
            Some(before) => parse_json::<Option<Barrier>>(be, Key::Barrier, &before)?.unwrap_or(b),
            None => b,
        };
        self.barrier = Some(held.clone());
        Ok(held)
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
