//! The event log every protocol records into ([`Events`]): in memory (bounded, see [`super::history`]), appended
//! to `state/events.jsonl` (rotated and repaired, see [`super::journal`]), broadcast to live watchers.
//!
//! What it promises (also in `docs/security.md`, "Recorded state: durability and bounds"):
//! - only inventory machines are recorded: an event for any other MAC is refused and counted;
//! - details are redacted ([`super::redact`]) and cut to [`MAX_DETAIL`] bytes before anything else sees them;
//! - fsync in batches: a background thread fsyncs the live file once `fsync_batch` events are unsynced, or
//!   `fsync_interval` after the oldest unsynced one, whichever comes first; [`Events::record_acked`] (a node's
//!   report, answered only once durable) wakes it at once and waits: concurrent reports share one fsync;
//! - a failed write (full disk) leaves no torn record: the file is cut back to its last good record.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::event::{Event, Source, now_ms};
use super::history::History;
use super::journal::{self, Disk};
use super::redact::redact;
use super::warn_limit::WarnLimit;
use crate::config::{EventLimits, MacAddr};

/// The longest detail stored (after redaction); the rest is cut.
pub const MAX_DETAIL: usize = 1024;

/// Why an event was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The MAC is not in the inventory: nothing is recorded for it (it is counted).
    #[error(
        "machine {0} is not in the inventory (cluster.toml [[machines]]); its events are not recorded"
    )]
    NotInInventory(MacAddr),
    /// The event could not be written or made durable (a full or failing disk).
    #[error(
        "the event log {path} cannot be written ({message}); free space on the state disk, then retry"
    )]
    Disk {
        /// The live log file.
        path: String,
        /// The operating system's error.
        message: String,
    },
}

/// Counters and gauges of the log, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct EventStats {
    /// Events refused because their MAC is not in the inventory.
    pub refused_not_in_inventory: u64,
    /// Writes that failed (the record was cut back off).
    pub append_errors: u64,
    /// Events written to the log.
    pub written: u64,
    /// fsyncs of the log (written ÷ fsyncs is the mean batch).
    pub fsyncs: u64,
    /// Events written but not yet fsynced.
    pub unsynced: u64,
    /// Rotations of the live file.
    pub rotations: u64,
    /// Corrupt lines moved aside at load.
    pub quarantined_lines: u64,
    /// Unreadable or corrupt files moved aside at load.
    pub quarantined_files: u64,
    /// Events dropped from memory: boots beyond `boots_per_node`, files rotated out.
    pub dropped: u64,
    /// Events kept in memory.
    pub kept: u64,
    /// Bytes over every kept log file.
    pub bytes: u64,
    /// Warnings not logged (rate limit), all kinds.
    pub warnings_suppressed: u64,
    /// Distinct MACs in the history that are not in the inventory (from older logs).
    pub unknown_macs: u64,
}

#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    append_errors: AtomicU64,
    written: AtomicU64,
    fsyncs: AtomicU64,
    rotations: AtomicU64,
    rotated_out: AtomicU64,
    quarantined_lines: AtomicU64,
    quarantined_files: AtomicU64,
}

struct State {
    history: History,
    disk: Option<Disk>,
    /// Lines written (a sequence number per line).
    written: u64,
    /// Lines whose fsync has an outcome.
    settled: u64,
    /// When the oldest unsettled line was written.
    first_unsettled: Option<Instant>,
    /// Ranges of lines whose fsync failed (the latest few).
    failed: VecDeque<(u64, u64, String)>,
    waiters: usize,
    stop: bool,
    inventory: Option<HashSet<MacAddr>>,
}

struct Core {
    state: Mutex<State>,
    work: Condvar,
    settled: Condvar,
    limits: EventLimits,
    warn: WarnLimit,
    counters: Counters,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The event log: in memory, appended to a file, and broadcast to live watchers.
pub struct Events {
    core: Arc<Core>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    tx: broadcast::Sender<Event>,
}

impl Events {
    /// A log kept only in memory (tests), with the default limits, accepting every MAC until
    /// [`Events::set_inventory`].
    pub fn in_memory() -> Self {
        Self::new(
            EventLimits::default(),
            None,
            History::new(EventLimits::default().boots_per_node),
        )
    }

    fn new(limits: EventLimits, disk: Option<Disk>, history: History) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let core = Arc::new(Core {
            state: Mutex::new(State {
                history,
                disk,
                written: 0,
                settled: 0,
                first_unsettled: None,
                failed: VecDeque::new(),
                waiters: 0,
                stop: false,
                inventory: None,
            }),
            work: Condvar::new(),
            settled: Condvar::new(),
            warn: WarnLimit::new(limits.warnings_per_minute),
            limits,
            counters: Counters::default(),
        });
        Events {
            core,
            flusher: Mutex::new(None),
            tx,
        }
    }

    /// Opens (or creates) the log at `path` (`state/events.jsonl`) and its rotated files, loading the events
    /// there: corrupt lines and unreadable files are moved aside with an error in the log, a torn last line is
    /// cut off, the rest loads (see [`super::journal`]). Starts the fsync thread.
    pub fn open(path: &Path, limits: &EventLimits) -> std::io::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let loaded = journal::load(path, limits.files)?;
        let mut history = History::new(limits.boots_per_node);
        for (generation, events) in &loaded.files {
            for ev in events {
                if !history.is_sticky_copy(ev) {
                    history.push(ev.clone(), *generation);
                }
            }
        }
        let disk = Disk::open(path, &loaded, limits.file_bytes, limits.files)?;
        tracing::info!(path = %path.display(), events = history.len(), bytes = disk.bytes(), "event log loaded");
        let events = Self::new(limits.clone(), Some(disk), history);
        let c = &events.core.counters;
        c.quarantined_lines
            .store(loaded.quarantined_lines, Ordering::Relaxed);
        c.quarantined_files
            .store(loaded.quarantined_files, Ordering::Relaxed);
        let core = events.core.clone();
        let handle = std::thread::Builder::new()
            .name("event-log-fsync".into())
            .spawn(move || flusher(&core))?;
        *events.flusher.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(events)
    }

    /// From now on, only events of these MACs are recorded (the inventory; set again on reload).
    pub fn set_inventory(&self, macs: impl IntoIterator<Item = MacAddr>) {
        self.core.lock().inventory = Some(macs.into_iter().collect());
    }

    /// How many MACs the inventory holds (0 before [`Events::set_inventory`]).
    pub fn inventory_len(&self) -> usize {
        self.core.lock().inventory.as_ref().map_or(0, HashSet::len)
    }

    /// The limits the log runs with.
    pub fn limits(&self) -> &EventLimits {
        &self.core.limits
    }

    /// The rate limit for warnings about what callers send (shared with the routes that refuse them).
    pub fn warn_limit(&self) -> &WarnLimit {
        &self.core.warn
    }

    /// Counts (and warns about, rate-limited) a caller refused because `mac` is not in the inventory: the
    /// routes that refuse before reaching the log call this, so every refusal is counted in one place.
    pub fn refused_outside_inventory(&self, mac: MacAddr, what: &str) {
        self.core.counters.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.core.warn.allow("not-in-inventory") {
            tracing::warn!(%mac, suppressed = n, "{what} for {mac} not recorded: the MAC is not in the inventory");
        }
    }

    /// Records an event now (a server observation: durable within the fsync bound). A refused event is
    /// counted and returned all the same.
    pub fn record(
        &self,
        mac: MacAddr,
        stage: &str,
        detail: impl Into<String>,
        source: Source,
    ) -> Event {
        let ev = Event {
            at_ms: now_ms(),
            mac,
            stage: stage.to_string(),
            detail: detail.into(),
            source,
        };
        match self.store(ev.clone(), false) {
            Ok(ev) => ev,
            Err(_) => ev,
        }
    }

    /// Records an event now and returns once it is on disk (fsynced, shared with concurrent callers): what a
    /// node's report is acknowledged with. Refused for a MAC outside the inventory or when the disk fails.
    pub fn record_acked(
        &self,
        mac: MacAddr,
        stage: &str,
        detail: impl Into<String>,
        source: Source,
    ) -> Result<Event, EventError> {
        self.store(
            Event {
                at_ms: now_ms(),
                mac,
                stage: stage.to_string(),
                detail: detail.into(),
                source,
            },
            true,
        )
    }

    /// Appends an event with its own timestamp (durable within the fsync bound).
    pub fn push(&self, ev: Event) {
        let _ = self.store(ev, false);
    }

    fn store(&self, mut ev: Event, acked: bool) -> Result<Event, EventError> {
        if let std::borrow::Cow::Owned(r) = redact(&ev.detail) {
            ev.detail = r;
        }
        if ev.detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !ev.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            ev.detail.truncate(cut);
        }
        let core = &*self.core;
        let mut st = core.lock();
        if st.inventory.as_ref().is_some_and(|i| !i.contains(&ev.mac)) {
            drop(st);
            self.refused_outside_inventory(ev.mac, &format!("event {}", ev.stage));
            return Err(EventError::NotInInventory(ev.mac));
        }
        let mut seq = None;
        let mut disk_error = None;
        if let Some(disk) = st.disk.as_mut() {
            match disk.append(&journal::line(&ev)) {
                Ok(()) => {
                    core.counters.written.fetch_add(1, Ordering::Relaxed);
                    let full = disk.full();
                    st.written += 1;
                    seq = Some(st.written);
                    st.first_unsettled.get_or_insert_with(Instant::now);
                    if full {
                        self.rotate(&mut st);
                    }
                    if acked || st.written - st.settled >= u64::from(core.limits.fsync_batch) {
                        core.work.notify_one();
                    }
                }
                Err(e) => {
                    core.counters.append_errors.fetch_add(1, Ordering::Relaxed);
                    let path = disk.path().display().to_string();
                    if let Some(n) = core.warn.allow("event-log-write") {
                        tracing::error!(path = %path, error = %e, suppressed = n, "cannot append to the event log (cut back to the last good record); free space on the state disk");
                    }
                    disk_error = Some(EventError::Disk {
                        path,
                        message: e.to_string(),
                    });
                }
            }
        }
        if acked && let Some(e) = disk_error {
            return Err(e);
        }
        let generation = st.disk.as_ref().map_or(0, Disk::generation);
        st.history.push(ev.clone(), generation);
        if let (true, Some(seq)) = (acked, seq) {
            st.waiters += 1;
            while st.settled < seq && !st.stop {
                st = core.settled.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.waiters -= 1;
            if let Some((_, _, msg)) = st
                .failed
                .iter()
                .find(|(lo, hi, _)| (*lo..=*hi).contains(&seq))
            {
                return Err(EventError::Disk {
                    path: st
                        .disk
                        .as_ref()
                        .map(|d| d.path().display().to_string())
                        .unwrap_or_default(),
                    message: msg.clone(),
                });
            }
        }
        drop(st);
        tracing::info!(mac = %ev.mac, stage = %ev.stage, detail = %ev.detail, "boot event");
        let _ = self.tx.send(ev.clone());
        Ok(ev)
    }

    /// Rotates the live file (under the lock): its events stay in memory until their file falls off the chain.
    fn rotate(&self, st: &mut State) {
        let core = &*self.core;
        let carry = st.history.sticky();
        let Some(disk) = st.disk.as_mut() else {
            return;
        };
        match disk.rotate(&carry) {
            Ok(generation) => {
                core.counters.rotations.fetch_add(1, Ordering::Relaxed);
                // The old file was fsynced before it moved, the new one after its head was written.
                st.settled = st.written;
                st.first_unsettled = None;
                core.settled.notify_all();
                let files = u64::from(core.limits.files);
                if generation >= files {
                    let dropped = st.history.drop_generations_upto(generation - files);
                    core.counters
                        .rotated_out
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                }
                tracing::info!(path = %disk.path().display(), "event log rotated");
            }
            Err(e) => {
                if let Some(n) = core.warn.allow("event-log-rotate") {
                    tracing::error!(path = %disk.path().display(), error = %e, suppressed = n, "cannot rotate the event log; it keeps growing past [limits.events] file_bytes until this is fixed");
                }
            }
        }
    }

    /// Every event kept, oldest first.
    pub fn snapshot(&self) -> Vec<Event> {
        self.core.lock().history.events().cloned().collect()
    }

    /// Events of one machine, oldest first.
    pub fn for_mac(&self, mac: MacAddr) -> Vec<Event> {
        self.core
            .lock()
            .history
            .events()
            .filter(|e| e.mac == mac)
            .cloned()
            .collect()
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The log's counters and gauges.
    pub fn stats(&self) -> EventStats {
        let st = self.core.lock();
        let c = &self.core.counters;
        let unknown_macs = match &st.inventory {
            Some(inv) => st
                .history
                .events()
                .filter(|e| !inv.contains(&e.mac))
                .map(|e| e.mac)
                .collect::<HashSet<_>>()
                .len() as u64,
            None => 0,
        };
        EventStats {
            refused_not_in_inventory: c.refused.load(Ordering::Relaxed),
            append_errors: c.append_errors.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            unsynced: st.written - st.settled,
            rotations: c.rotations.load(Ordering::Relaxed),
            quarantined_lines: c.quarantined_lines.load(Ordering::Relaxed),
            quarantined_files: c.quarantined_files.load(Ordering::Relaxed),
            dropped: st.history.pruned() + c.rotated_out.load(Ordering::Relaxed),
            kept: st.history.len() as u64,
            bytes: st.disk.as_ref().map_or(0, Disk::bytes),
            warnings_suppressed: self.core.warn.suppressed(),
            unknown_macs,
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.core.lock().stop = true;
        self.core.work.notify_all();
        if let Some(h) = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
}

/// The fsync thread: fsyncs the live file when a caller waits, when `fsync_batch` lines are unsynced, or
/// `fsync_interval` after the oldest unsynced line; everything written before the fsync starts is covered.
fn flusher(core: &Core) {
    let interval = Duration::from_millis(core.limits.fsync_interval_ms);
    let batch = u64::from(core.limits.fsync_batch);
    loop {
        let mut st = core.lock();
        loop {
            let pending = st.written - st.settled;
            let due = st.first_unsettled.is_some_and(|t| t.elapsed() >= interval);
            if pending > 0 && (st.waiters > 0 || pending >= batch || due || st.stop) {
                break;
            }
            if st.stop {
                return;
            }
            let wait = match st.first_unsettled {
                Some(t) if pending > 0 => interval.saturating_sub(t.elapsed()),
                _ => Duration::from_secs(1),
            };
            st = core
                .work
                .wait_timeout(st, wait.max(Duration::from_millis(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let (from, target) = (st.settled + 1, st.written);
        let Some(file) = st.disk.as_ref().map(Disk::file) else {
            return;
        };
        let path = st.disk.as_ref().map(|d| d.path().display().to_string());
        drop(st);
        let res = file.sync_data();
        core.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        let mut st = core.lock();
        if let Err(e) = res {
            if let Some(n) = core.warn.allow("event-log-fsync") {
                tracing::error!(path = ?path, error = %e, suppressed = n, "cannot fsync the event log: the last events may not survive a power cut; check the state disk");
            }
            st.failed.push_back((from, target, e.to_string()));
            if st.failed.len() > 64 {
                st.failed.pop_front();
            }
        }
        if target > st.settled {
            st.settled = target;
        }
        st.first_unsettled = (st.written > st.settled).then(Instant::now);
        core.settled.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        format!("52:54:00:77:00:{n:02x}").parse().unwrap()
    }

    #[test]
    fn acked_events_are_durable_and_batched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let limits = EventLimits {
            fsync_interval_ms: 10_000,
            fsync_batch: 1000,
            ..Default::default()
        };
        let ev = Events::open(&path, &limits).unwrap();
        ev.set_inventory([mac(0x11), mac(0x21)]);
        for _ in 0..50 {
            ev.record(mac(0x21), "kernel", "", Source::Server);
        }
        assert_eq!(ev.stats().unsynced, 50, "server events wait for the batch");
        ev.record_acked(mac(0x11), "init-done", "ok", Source::Node)
            .unwrap();
        let s = ev.stats();
        assert_eq!((s.unsynced, s.fsyncs), (0, 1), "{s:?}");
        assert!(matches!(
            ev.record_acked(mac(0x99), "joined", "", Source::Node),
            Err(EventError::NotInInventory(_))
        ));
        ev.record(mac(0x99), "dhcp-offer", "", Source::Server);
        assert_eq!(ev.stats().refused_not_in_inventory, 2);
        drop(ev);
        let again = Events::open(&path, &limits).unwrap();
        assert_eq!(again.snapshot().len(), 51);
    }

    #[test]
    fn details_are_redacted_and_cut_before_storing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let ev = Events::open(&path, &EventLimits::default()).unwrap();
        let mut rx = ev.subscribe();
        ev.record(
            mac(0x21),
            "failed",
            format!(
                "token-renew --publish abcdef.0123456789abcdef {}",
                "x".repeat(3000)
            ),
            Source::Node,
        );
        let got = rx.try_recv().unwrap();
        assert!(
            got.detail
                .starts_with("token-renew --publish [redacted] xxx")
        );
        assert_eq!(got.detail.len(), MAX_DETAIL);
        drop(ev);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("abcdef.0123456789abcdef"));
    }

    #[test]
    fn rotation_keeps_the_barrier_and_bounds_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let limits = EventLimits {
            file_bytes: 4096,
            files: 3,
            ..Default::default()
        };
        let ev = Events::open(&path, &limits).unwrap();
        ev.record(
            mac(0x11),
            "init-done",
            "kubeadm init finished",
            Source::Node,
        );
        for i in 0..2000 {
            ev.record(mac(0x21), "kernel", format!("n={i}"), Source::Server);
            assert!(ev.stats().bytes <= 3 * (4096 + 200));
        }
        let s = ev.stats();
        assert!(s.rotations > 10 && s.dropped > 1000, "{s:?}");
        let has_barrier = |e: &Events| e.for_mac(mac(0x11)).iter().any(|e| e.stage == "init-done");
        assert!(has_barrier(&ev));
        let last = ev.snapshot().last().unwrap().detail.clone();
        drop(ev);
        let again = Events::open(&path, &limits).unwrap();
        assert!(
            has_barrier(&again),
            "the barrier survives rotation and restart"
        );
        assert_eq!(again.snapshot().last().unwrap().detail, last);
        assert_eq!(
            again.for_mac(mac(0x11)).len(),
            1,
            "the sticky copies are loaded once"
        );
    }
}
