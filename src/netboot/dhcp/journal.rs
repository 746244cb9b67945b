//! The lease journal `state/dhcp-leases.jsonl`: crash-safe, append-only, compacted off the ACK path.
//!
//! The journal is JSON lines ([`Record`]: `grant`, `release`, `decline`). The socket loop appends the records
//! of a batch of requests, `fdatasync`s once, and only then sends the ACKs: every lease a client was told
//! about is on disk. A torn last line (kill -9 mid-write) was never acknowledged and is skipped on load. A
//! commit that fails (a full disk: a partial write, or a failed sync) truncates the file back to the end of
//! the last good commit before anything else is written, so no torn record ever sits before a good one.
//!
//! On open the journal is compacted in place: one `grant` per live lease (and one `decline` per withheld
//! address) written to a temp file, synced and renamed over the journal. When it has grown past a threshold
//! while serving, it is compacted **in the background**, so ACKs do not wait for the whole table to be
//! rewritten:
//! 1. the journal thread takes a snapshot of the table (everything committed so far) and hands it to a
//!    compaction thread, which writes it to `dhcp-leases.jsonl.tmp` and syncs it;
//! 2. meanwhile commits go on to the old journal as always, and every committed record is also kept in memory
//!    (the *tail*);
//! 3. when the temp file is synced, the journal thread, between two batches, appends the tail to it, syncs,
//!    renames it over the journal and syncs the directory; appends go to the new file from then on.
//!
//! At every instant the name `dhcp-leases.jsonl` holds every acknowledged record: the old file until the
//! rename, then snapshot + tail, the same leases. A kill -9 at any step leaves one of the two and at most a stale
//! temp file, which the next compaction overwrites. A compaction that fails (a full disk) removes its temp
//! file and leaves the old journal in use; the next attempt waits for another 10 000 lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};

use super::leases::{LeaseTable, Record};

/// The lease journal's file name under `paths.state`.
pub const LEASES_FILE: &str = "dhcp-leases.jsonl";

/// Journal lines that trigger a compaction at least: max(this, 4 × the live leases at the last compaction).
const COMPACT_MIN_LINES: usize = 10_000;

/// The tail kept in memory while a compaction runs: past this (the compaction thread is stuck on a slow disk)
/// the compaction is abandoned and the memory returned; the old journal stays in use.
const MAX_TAIL_BYTES: usize = 64 << 20;

/// Errors of the lease journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal (or its temp file, or their directory) could not be created, read, written, synced or renamed.
    /// The server cannot promise leases it cannot record; check the disk and the permissions of `state/`.
    #[error("lease journal {path}: {source}")]
    Io {
        /// The journal file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// What [`Journal::maybe_compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// Nothing: the journal is below its threshold, or a compaction is still writing.
    Idle,
    /// A snapshot was handed to the compaction thread.
    Started,
    /// The compacted file replaced the journal.
    Finished,
}

/// A compaction under way.
struct Running {
    /// Lines of the snapshot (the live leases and declines when it was taken).
    snapshot_lines: usize,
    /// The journal's line count when the snapshot was taken: the tail's lines are those appended since.
    lines_at_snapshot: usize,
    /// Committed record bytes since the snapshot, in commit order.
    tail: Vec<u8>,
    /// The compaction thread's answer: the temp file, written, synced and open for appending.
    done: Receiver<std::io::Result<std::fs::File>>,
}

/// The append-only lease journal.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    pending: Vec<u8>,
    /// The file's length after the last successful commit (or rewrite).
    good_len: u64,
    /// A failed commit left bytes after `good_len` that could not be cut off yet.
    torn: bool,
    /// A rename into the journal's name is not known to be on disk yet (its directory sync failed): synced
    /// before the next commit reports success.
    dir_unsynced: bool,
    lines: usize,
    /// Compact when `lines` reaches this.
    compact_at: usize,
    running: Option<Running>,
    /// Lines skipped at open as unreadable (not JSON, not a record, not UTF-8), a torn last line not counted.
    skipped: usize,
}

impl Journal {
    /// Loads the journal at `path` (creating it), compacts it, and returns it with the table it describes.
    pub fn open(path: &Path, now: u64) -> Result<(Journal, LeaseTable), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut table = LeaseTable::default();
        let mut skipped = 0;
        // Bytes, not text: a line that is not UTF-8 (a damaged block) is skipped like any other unreadable line
        // instead of stopping the server.
        match std::fs::read(path) {
            Ok(bytes) => {
                let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
                // The text after the last newline (empty when the file ends with one) is the last line.
                let last = lines.len() - 1;
                for (n, line) in lines.iter().enumerate() {
                    if line.trim_ascii().is_empty() {
                        continue;
                    }
                    match serde_json::from_slice::<Record>(line) {
                        Ok(rec) => table.replay(&rec),
                        // The last line may be torn by a crash mid-write; it was never acknowledged.
                        Err(_) if n == last => {
                            tracing::info!(path = %path.display(), "skipping a torn last line in the lease journal (crash during a write)")
                        }
                        Err(e) => {
                            skipped += 1;
                            tracing::warn!(path = %path.display(), line = n + 1, error = %e, "skipping an unreadable lease journal line")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let snapshot = table.snapshot(now);
        let snapshot_lines = snapshot.len();
        let tmp = temp_path(path);
        let mut file = write_snapshot(&tmp, snapshot).map_err(io)?;
        replace(&tmp, path, &mut file, &[]).map_err(|e| io(e.into_inner()))?;
        let good_len = file.metadata().map_err(io)?.len();
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                pending: Vec::new(),
                good_len,
                torn: false,
                dir_unsynced: false,
                lines: snapshot_lines,
                compact_at: compact_threshold(snapshot_lines),
                running: None,
                skipped,
            },
            table,
        ))
    }

    /// Lines skipped at open as unreadable (not JSON, not a record, not UTF-8); a torn last line, left by a
    /// crash mid-write, is not counted. They are gone from the file after the open's compaction.
    pub fn skipped_lines(&self) -> usize {
        self.skipped
    }

    /// Queues a record; nothing is durable until [`Journal::commit`].
    pub fn append(&mut self, rec: &Record) {
        // Serializing our own record cannot fail.
        if serde_json::to_writer(&mut self.pending, rec).is_ok() {
            self.pending.push(b'\n');
            self.lines += 1;
        }
    }

    /// Whether records are waiting for [`Journal::commit`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the queued records and `fdatasync`s: after `Ok`, they survive kill -9 and power loss. After
    /// `Err` none of them is in the file: it is cut back to the end of the last good commit (now, or before
    /// the next write if cutting fails too), and the caller must not acknowledge them.
    pub fn commit(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let res = self
            .sync_dir_if_needed()
            .and_then(|_| self.cut_torn_tail())
            .and_then(|_| self.file.write_all(&self.pending))
            .and_then(|_| self.file.sync_data());
        if res.is_err() {
            self.torn = true;
            // Best effort now; retried before the next write if it fails.
            let _ = self.cut_torn_tail();
        } else {
            self.good_len += self.pending.len() as u64;
            self.keep_for_compaction();
        }
        self.pending.clear();
        res.map_err(|source| self.io(source))
    }

    /// While a compaction runs, the records just committed also go to its tail (they are not in its snapshot).
    fn keep_for_compaction(&mut self) {
        let Some(run) = &mut self.running else {
            return;
        };
        if run.tail.len() + self.pending.len() > MAX_TAIL_BYTES {
            tracing::warn!(
                path = %self.path.display(),
                bytes = run.tail.len(),
                "abandoning a lease journal compaction: its temp file is still not written (is the disk of the state directory stuck?); the journal stays as it is"
            );
            self.running = None;
            self.compact_at = self.lines + COMPACT_MIN_LINES;
            return;
        }
        run.tail.extend_from_slice(&self.pending);
    }

    /// After a failed commit: truncates the file to the last good length (the file is opened for appending,
    /// so the next write lands right after the last good record) and syncs that.
    fn cut_torn_tail(&mut self) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.good_len)?;
            self.file.sync_all()?;
            self.torn = false;
            tracing::info!(path = %self.path.display(), bytes = self.good_len, "lease journal cut back to its last good record after a failed write");
        }
        Ok(())
    }

    /// After a compaction whose directory sync failed: the rename must be on disk before anything appended to
    /// the new file is acknowledged.
    fn sync_dir_if_needed(&mut self) -> std::io::Result<()> {
        if self.dir_unsynced {
            sync_parent(&self.path)?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Call between batches, after their records were committed and replayed into `table`. Starts a
    /// compaction in the background when the journal has grown to its threshold (max(10 000, 4 × the live
    /// leases at the last compaction) lines), and swaps in the compacted file once it is written. The work
    /// done here, on the caller's thread, is the snapshot of `table` and, at the swap, writing and syncing the
    /// records committed since the snapshot, the rename and the directory sync.
    pub fn maybe_compact(
        &mut self,
        table: &LeaseTable,
        now: u64,
    ) -> Result<Compaction, JournalError> {
        if let Some(run) = &self.running {
            return match run.done.try_recv() {
                Err(TryRecvError::Empty) => Ok(Compaction::Idle),
                Ok(answer) => self.settle(Some(answer)),
                Err(TryRecvError::Disconnected) => self.settle(None),
            };
        }
        if self.lines < self.compact_at || self.torn {
            return Ok(Compaction::Idle);
        }
        let snapshot = table.snapshot(now);
        let snapshot_lines = snapshot.len();
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        let tmp = temp_path(&self.path);
        let spawned = std::thread::Builder::new()
            .name("dhcp-compact".into())
            .spawn(move || {
                let _ = tx.send(write_snapshot(&tmp, snapshot));
            });
        if let Err(e) = spawned {
            return Err(self.give_up(e));
        }
        self.running = Some(Running {
            snapshot_lines,
            lines_at_snapshot: self.lines,
            tail: Vec::new(),
            done,
        });
        Ok(Compaction::Started)
    }

    /// Waits for a running compaction and swaps it in (tests, and a clean shutdown).
    pub fn finish_compaction(&mut self) -> Result<Compaction, JournalError> {
        let Some(run) = &self.running else {
            return Ok(Compaction::Idle);
        };
        let answer = run.done.recv().ok();
        self.settle(answer)
    }

    /// Acts on the compaction thread's answer (`None`: it ended without one): swaps the written file in, or
    /// gives the compaction up.
    fn settle(
        &mut self,
        answer: Option<std::io::Result<std::fs::File>>,
    ) -> Result<Compaction, JournalError> {
        match answer {
            Some(Ok(file)) => self.finish(file).map(|()| Compaction::Finished),
            Some(Err(e)) => Err(self.give_up(e)),
            None => Err(self.give_up(std::io::Error::other(
                "the compaction thread ended without an answer",
            ))),
        }
    }

    /// Appends the tail to the synced snapshot file, syncs it, renames it over the journal and syncs the
    /// directory; from then on commits go to it.
    fn finish(&mut self, mut file: std::fs::File) -> Result<(), JournalError> {
        let run = self
            .running
            .take()
            .expect("finish with a compaction running");
        let tmp = temp_path(&self.path);
        match replace(&tmp, &self.path, &mut file, &run.tail) {
            Ok(()) => {}
            Err(Replace::Before(e)) => return Err(self.give_up(e)),
            Err(Replace::DirSync(e)) => {
                // The rename happened: the name now points at the new file, which holds everything. Until the
                // directory sync succeeds, commits fail rather than acknowledge into a file that power loss
                // could take back.
                self.dir_unsynced = true;
                self.switch_to(file, &run);
                return Err(self.io(e));
            }
        }
        self.switch_to(file, &run);
        Ok(())
    }

    fn switch_to(&mut self, file: std::fs::File, run: &Running) {
        self.good_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = file;
        self.torn = false;
        self.lines = run.snapshot_lines + (self.lines - run.lines_at_snapshot);
        self.compact_at = compact_threshold(run.snapshot_lines);
        tracing::debug!(path = %self.path.display(), lines = self.lines, "lease journal compacted");
    }

    /// A failed compaction: its temp file goes (a full disk must get its space back), the old journal stays,
    /// and the next attempt waits for another [`COMPACT_MIN_LINES`] lines.
    fn give_up(&mut self, e: std::io::Error) -> JournalError {
        self.running = None;
        let tmp = temp_path(&self.path);
        let _ = std::fs::remove_file(&tmp);
        self.compact_at = self.lines + COMPACT_MIN_LINES;
        JournalError::Io {
            path: tmp,
            source: e,
        }
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn compact_threshold(live_lines: usize) -> usize {
    COMPACT_MIN_LINES.max(4 * live_lines)
}

fn temp_path(path: &Path) -> PathBuf {
    path.with_extension("jsonl.tmp")
}

/// Writes `records` (sorted by address) to `tmp` (created anew), syncs it, and returns it open for appending. A failed
/// write removes the temp file: a full disk must not keep half a snapshot holding its space.
fn write_snapshot(tmp: &Path, mut records: Vec<Record>) -> std::io::Result<std::fs::File> {
    // By address: a file a person can read and compare.
    records.sort_by_key(|r| match r {
        Record::Grant { ip, .. } | Record::Decline { ip, .. } | Record::Release { ip, .. } => {
            u32::from(*ip)
        }
    });
    let written = (|| {
        // A stale temp file (a kill -9 mid-compaction) goes first: appending cannot be combined with truncating.
        match std::fs::remove_file(tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(tmp)?;
        let mut buf = Vec::new();
        for r in &records {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        f.write_all(&buf)?;
        f.sync_all()?;
        Ok(f)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// Where [`replace`] failed.
enum Replace {
    /// Before the rename: the journal is untouched.
    Before(std::io::Error),
    /// After the rename, syncing the directory.
    DirSync(std::io::Error),
}

impl Replace {
    fn into_inner(self) -> std::io::Error {
        match self {
            Replace::Before(e) | Replace::DirSync(e) => e,
        }
    }
}

/// Appends `tail` to the synced `tmp` file, syncs it, renames `tmp` over `path` and syncs the directory.
fn replace(tmp: &Path, path: &Path, file: &mut std::fs::File, tail: &[u8]) -> Result<(), Replace> {
    if !tail.is_empty() {
        file.write_all(tail)
            .and_then(|_| file.sync_data())
            .map_err(Replace::Before)?;
    }
    std::fs::rename(tmp, path).map_err(Replace::Before)?;
    sync_parent(path).map_err(Replace::DirSync)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
