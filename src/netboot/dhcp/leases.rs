//! DHCP leases: the in-memory table the core reads, and its crash-safe journal `state/dhcp-leases.jsonl`.
//!
//! The journal is append-only JSON lines (`grant`, `release`, `decline`). The socket loop appends the records
//! of a batch of requests, `fdatasync`s once, and only then sends the ACKs: every lease a client was told
//! about is on disk. A torn last line (kill -9 mid-write) was never acknowledged and is skipped on load. A
//! commit that fails (a full disk: a partial write, or a failed sync) truncates the file back to the end of
//! the last good commit before anything else is written, so no torn record ever sits before a good one. On
//! open, and when the journal grows past a threshold, it is compacted: one `grant` per live lease written to a
//! temp file, fsynced and renamed over the journal (atomic replace).

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::MacAddr;

/// The lease journal's file name under `paths.state`.
pub const LEASES_FILE: &str = "dhcp-leases.jsonl";

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The client's hardware address (DHCP `chaddr`).
    pub mac: MacAddr,
    /// The address it holds.
    pub ip: Ipv4Addr,
    /// Unix seconds.
    pub expires: u64,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// An ACK: `mac` holds `ip` until `expires` (Unix seconds). `at` is when it was granted.
    Grant {
        /// The client granted the lease.
        mac: MacAddr,
        /// The address granted.
        ip: Ipv4Addr,
        /// When the lease ends, Unix seconds.
        expires: u64,
        /// When it was granted (or re-written by a compaction), Unix seconds.
        at: u64,
    },
    /// A RELEASE: `mac` gave `ip` back.
    Release {
        /// The client that released it.
        mac: MacAddr,
        /// The address given back.
        ip: Ipv4Addr,
        /// When the RELEASE arrived, Unix seconds.
        at: u64,
    },
    /// A DECLINE: `ip` is in use by someone else on the wire; not handed out until `until`.
    Decline {
        /// The client that declined; all zeros in a line written by compaction.
        mac: MacAddr,
        /// The address the client found in use.
        ip: Ipv4Addr,
        /// Until when the address is not handed out, Unix seconds.
        until: u64,
        /// When the DECLINE arrived (or the compaction ran), Unix seconds.
        at: u64,
    },
}

/// A change the core asks for. `Offer` and `DropOffer` live in memory only; the others are journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Reserve a pool address for an OFFER until `until`.
    Offer {
        /// The client offered the address.
        mac: MacAddr,
        /// The pool address reserved for it.
        ip: Ipv4Addr,
        /// When the reservation lapses, Unix seconds.
        until: u64,
    },
    /// The client chose another server: forget its offer.
    DropOffer {
        /// The client whose offer is withdrawn.
        mac: MacAddr,
    },
    /// An ACK.
    Grant(Lease),
    /// A RELEASE: the client gives its address back; applied only if it holds that address.
    Release {
        /// The client releasing.
        mac: MacAddr,
        /// The address released.
        ip: Ipv4Addr,
    },
    /// A DECLINE: the client found the address in use; it is withdrawn from the client and not handed out until
    /// `until`.
    Decline {
        /// The client declining.
        mac: MacAddr,
        /// The address in use.
        ip: Ipv4Addr,
        /// Until when the address is kept out of the pool, Unix seconds.
        until: u64,
    },
}

impl Change {
    /// The journal line for a durable change.
    pub fn record(&self, now: u64) -> Option<Record> {
        match self {
            Change::Offer { .. } | Change::DropOffer { .. } => None,
            Change::Grant(l) => Some(Record::Grant {
                mac: l.mac,
                ip: l.ip,
                expires: l.expires,
                at: now,
            }),
            Change::Release { mac, ip } => Some(Record::Release {
                mac: *mac,
                ip: *ip,
                at: now,
            }),
            Change::Decline { mac, ip, until } => Some(Record::Decline {
                mac: *mac,
                ip: *ip,
                until: *until,
                at: now,
            }),
        }
    }
}

/// Leases, outstanding offers and declined addresses.
#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    offers: HashMap<MacAddr, (Ipv4Addr, u64)>,
    offered_ips: HashMap<Ipv4Addr, MacAddr>,
    declined: HashMap<Ipv4Addr, u64>,
    /// Where the next pool scan starts (amortised O(1) allocation).
    pub cursor: u32,
    /// No pool address is handed out while set: replicas on a shared state disagree about how the unknown
    /// pools are split (`netboot::replicas::pool_conflicts`), so an address could go to two machines.
    pub pool_paused: bool,
}

impl LeaseTable {
    /// The lease of a MAC, expired or not.
    pub fn lease(&self, mac: MacAddr) -> Option<&Lease> {
        self.by_mac.get(&mac)
    }

    /// The address offered to a MAC, if the offer is still open at `now`.
    pub fn offer(&self, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        self.offers
            .get(&mac)
            .filter(|(_, until)| *until > now)
            .map(|(ip, _)| *ip)
    }

    /// Who holds or was offered `ip` at `now` (a declined address is held by nobody in particular: `None`
    /// but [`LeaseTable::is_declined`]).
    pub fn holder(&self, ip: Ipv4Addr, now: u64) -> Option<MacAddr> {
        if let Some(mac) = self.by_ip.get(&ip)
            && self.by_mac.get(mac).is_some_and(|l| l.expires > now)
        {
            return Some(*mac);
        }
        self.offered_ips
            .get(&ip)
            .filter(|mac| self.offer(**mac, now) == Some(ip))
            .copied()
    }

    /// Whether `ip` was declined by a client and is still kept out of the pool at `now` (Unix seconds).
    pub fn is_declined(&self, ip: Ipv4Addr, now: u64) -> bool {
        self.declined.get(&ip).is_some_and(|until| *until > now)
    }

    /// Addresses kept out of use by DECLINEs at `now` (expired ones count until [`LeaseTable::prune`]).
    pub fn declined(&self, now: u64) -> usize {
        self.declined.values().filter(|until| **until > now).count()
    }

    /// Open offers and DECLINEs held in memory, expired or not (what [`LeaseTable::prune`] bounds).
    pub fn held(&self) -> (usize, usize) {
        (self.offers.len(), self.declined.len())
    }

    /// Forgets offers and DECLINEs that ended by `now`; the socket loop calls it every second.
    pub fn prune(&mut self, now: u64) {
        let stale: Vec<MacAddr> = self
            .offers
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(mac, _)| *mac)
            .collect();
        for mac in stale {
            self.remove_offer(mac);
        }
        self.declined.retain(|_, until| *until > now);
    }

    /// Every lease, in no particular order.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_mac.values()
    }

    /// Leases not expired at `now`.
    pub fn live(&self, now: u64) -> usize {
        self.by_mac.values().filter(|l| l.expires > now).count()
    }

    fn remove_lease(&mut self, mac: MacAddr) {
        if let Some(old) = self.by_mac.remove(&mac)
            && self.by_ip.get(&old.ip) == Some(&mac)
        {
            self.by_ip.remove(&old.ip);
        }
    }

    fn remove_offer(&mut self, mac: MacAddr) {
        if let Some((ip, _)) = self.offers.remove(&mac)
            && self.offered_ips.get(&ip) == Some(&mac)
        {
            self.offered_ips.remove(&ip);
        }
    }

    /// Applies a change from the core.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Offer { mac, ip, until } => {
                self.remove_offer(*mac);
                self.offers.insert(*mac, (*ip, *until));
                self.offered_ips.insert(*ip, *mac);
                self.cursor = u32::from(*ip).wrapping_add(1);
            }
            Change::DropOffer { mac } => self.remove_offer(*mac),
            Change::Grant(lease) => {
                self.remove_offer(lease.mac);
                self.remove_lease(lease.mac);
                // An address belongs to one MAC: a grant takes it from any previous holder.
                if let Some(prev) = self.by_ip.get(&lease.ip).copied() {
                    self.by_mac.remove(&prev);
                }
                self.by_ip.insert(lease.ip, lease.mac);
                self.by_mac.insert(lease.mac, lease.clone());
            }
            Change::Release { mac, ip } => {
                if self.by_mac.get(mac).is_some_and(|l| l.ip == *ip) {
                    self.remove_lease(*mac);
                }
            }
            Change::Decline { mac, ip, until } => {
                if self.by_mac.get(mac).is_some_and(|l| l.ip == *ip) {
                    self.remove_lease(*mac);
                }
                self.remove_offer(*mac);
                self.declined.insert(*ip, *until);
            }
        }
    }

    /// Replays a journal record.
    pub fn replay(&mut self, rec: &Record) {
        match rec {
            Record::Grant {
                mac, ip, expires, ..
            } => self.apply(&Change::Grant(Lease {
                mac: *mac,
                ip: *ip,
                expires: *expires,
            })),
            Record::Release { mac, ip, .. } => self.apply(&Change::Release { mac: *mac, ip: *ip }),
            Record::Decline { mac, ip, until, .. } => self.apply(&Change::Decline {
                mac: *mac,
                ip: *ip,
                until: *until,
            }),
        }
    }

    /// The records that rebuild this table's live state (for compaction).
    fn snapshot(&self, now: u64) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .by_mac
            .values()
            .filter(|l| l.expires > now)
            .map(|l| Record::Grant {
                mac: l.mac,
                ip: l.ip,
                expires: l.expires,
                at: now,
            })
            .collect();
        out.extend(
            self.declined
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(ip, until)| Record::Decline {
                    mac: MacAddr([0; 6]),
                    ip: *ip,
                    until: *until,
                    at: now,
                }),
        );
        out.sort_by_key(|r| match r {
            Record::Grant { ip, .. } | Record::Decline { ip, .. } | Record::Release { ip, .. } => {
                u32::from(*ip)
            }
        });
        out
    }
}

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

/// The append-only lease journal.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    pending: Vec<u8>,
    /// The file's length after the last successful commit (or rewrite).
    good_len: u64,
    /// A failed commit left bytes after `good_len` that could not be cut off yet.
    torn: bool,
    lines: usize,
    /// Compact when `lines` reaches this: max(10 000, 4 × the live leases at the last compaction).
    compact_at: usize,
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
        let file = Self::rewrite(path, &table.snapshot(now)).map_err(io)?;
        let good_len = file.metadata().map_err(io)?.len();
        let lines = table.live(now);
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                pending: Vec::new(),
                good_len,
                torn: false,
                lines,
                compact_at: 10_000.max(4 * lines),
                skipped,
            },
            table,
        ))
    }

    /// Writes `records` to a temp file, fsyncs it, renames it over `path`, fsyncs the directory, and
    /// returns `path` opened for appending.
    fn rewrite(path: &Path, records: &[Record]) -> std::io::Result<std::fs::File> {
        let tmp = path.with_extension("jsonl.tmp");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            let mut buf = Vec::new();
            for r in records {
                serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            // A full disk: do not leave a half temp file holding the space.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        std::fs::OpenOptions::new().append(true).open(path)
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
            .cut_torn_tail()
            .and_then(|_| self.file.write_all(&self.pending))
            .and_then(|_| self.file.sync_data());
        self.pending.clear();
        if res.is_err() {
            self.torn = true;
            // Best effort now; retried before the next write if it fails.
            let _ = self.cut_torn_tail();
        } else {
            self.good_len = self
                .file
                .metadata()
                .map(|m| m.len())
                .unwrap_or(self.good_len);
        }
        res.map_err(|source| JournalError::Io {
            path: self.path.clone(),
            source,
        })
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

    /// Rewrites the journal from the table when it has grown to many times the live leases (O(1) unless it
    /// compacts).
    pub fn maybe_compact(&mut self, table: &LeaseTable, now: u64) -> Result<(), JournalError> {
        if self.lines < self.compact_at {
            return Ok(());
        }
        let live = table.live(now);
        self.commit()?;
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file = Self::rewrite(&self.path, &table.snapshot(now)).map_err(io)?;
        self.good_len = self.file.metadata().map_err(io)?.len();
        self.torn = false;
        self.lines = live;
        self.compact_at = 10_000.max(4 * live);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn grant_takes_address_from_previous_holder_and_release_frees() {
        let mut t = LeaseTable::default();
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        t.apply(&Change::Grant(Lease {
            mac: mac(1),
            ip,
            expires: 100,
        }));
        t.apply(&Change::Grant(Lease {
            mac: mac(2),
            ip,
            expires: 100,
        }));
        assert!(t.lease(mac(1)).is_none());
        assert_eq!(t.holder(ip, 0), Some(mac(2)));
        t.apply(&Change::Release { mac: mac(2), ip });
        assert_eq!(t.holder(ip, 0), None);
    }

    #[test]
    fn journal_survives_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases.jsonl");
        let (mut j, _) = Journal::open(&p, 0).unwrap();
        for n in 1..=3u8 {
            j.append(
                &Change::Grant(Lease {
                    mac: mac(n),
                    ip: Ipv4Addr::new(10, 0, 0, n),
                    expires: 1000,
                })
                .record(1)
                .unwrap(),
            );
        }
        j.append(
            &Change::Release {
                mac: mac(2),
                ip: Ipv4Addr::new(10, 0, 0, 2),
            }
            .record(2)
            .unwrap(),
        );
        j.commit().unwrap();
        drop(j);
        // A crash in the middle of the next line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"op\":\"grant\",\"mac\":\"52:54")
            .unwrap();
        let (_, t) = Journal::open(&p, 10).unwrap();
        assert_eq!(t.live(10), 2);
        assert_eq!(t.lease(mac(3)).unwrap().ip, Ipv4Addr::new(10, 0, 0, 3));
        assert!(t.lease(mac(2)).is_none());
        // Compacted: exactly the live leases.
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 2);
        // Expired leases are dropped at compaction.
        let (_, t) = Journal::open(&p, 2000).unwrap();
        assert_eq!(t.live(2000), 0);
    }

    #[test]
    fn journal_compacts_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases.jsonl");
        let (mut j, mut t) = Journal::open(&p, 0).unwrap();
        // 12 000 renewals of the same 3 leases.
        for i in 0..12_000u64 {
            let c = Change::Grant(Lease {
                mac: mac((i % 3) as u8),
                ip: Ipv4Addr::new(10, 0, 0, (i % 3) as u8 + 1),
                expires: 1000 + i,
            });
            j.append(&c.record(i).unwrap());
            t.apply(&c);
            if i % 100 == 99 {
                j.commit().unwrap();
                j.maybe_compact(&t, 0).unwrap();
            }
        }
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(lines < 10_000, "not compacted: {lines} lines");
        let (_, back) = Journal::open(&p, 0).unwrap();
        for n in 0..3u8 {
            assert_eq!(back.lease(mac(n)), t.lease(mac(n)));
        }
    }

    fn grant(n: u8) -> Record {
        Change::Grant(Lease {
            mac: mac(n),
            ip: Ipv4Addr::new(10, 0, 0, n),
            expires: 1000,
        })
        .record(1)
        .unwrap()
    }

    /// A disk that fills mid-commit (RLIMIT_FSIZE stands for the full disk: the write stops part-way with
    /// EFBIG, as it would with ENOSPC): the commit fails, the file is cut back to its last good record, and
    /// the next commit after space returns lands right after it. nextest runs each test in its own process,
    /// so the limit touches nothing else.
    #[test]
    fn a_failed_commit_truncates_back_to_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases.jsonl");
        let (mut j, _) = Journal::open(&p, 0).unwrap();
        j.append(&grant(1));
        j.commit().unwrap();
        let good = std::fs::metadata(&p).unwrap().len();
        // SAFETY: ignoring SIGXFSZ and setting this process's file size limit; both restored below.
        let old = unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let mut old = std::mem::zeroed::<libc::rlimit>();
            libc::getrlimit(libc::RLIMIT_FSIZE, &mut old);
            let tight = libc::rlimit {
                rlim_cur: good + 70,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &tight), 0);
            old
        };
        for n in 2..=4 {
            j.append(&grant(n));
        }
        let failed = j.commit();
        // SAFETY: restoring the limit read above.
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &old) };
        assert!(failed.is_err(), "the write should have hit the limit");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), good, "not cut back");
        j.append(&grant(5));
        j.commit().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        for line in text.lines() {
            serde_json::from_str::<Record>(line).unwrap();
        }
        let (_, t) = Journal::open(&p, 10).unwrap();
        assert!(t.lease(mac(1)).is_some() && t.lease(mac(5)).is_some());
        assert!((2..=4).all(|n| t.lease(mac(n)).is_none()));
    }

    #[test]
    fn prune_forgets_ended_offers_and_declines() {
        let mut t = LeaseTable::default();
        let ip = |n| Ipv4Addr::new(10, 0, 0, n);
        t.apply(&Change::Offer {
            mac: mac(1),
            ip: ip(1),
            until: 100,
        });
        t.apply(&Change::Offer {
            mac: mac(2),
            ip: ip(2),
            until: 300,
        });
        t.apply(&Change::Decline {
            mac: mac(3),
            ip: ip(3),
            until: 100,
        });
        assert_eq!(t.held(), (2, 1));
        assert_eq!(t.declined(50), 1);
        t.prune(100);
        assert_eq!(t.held(), (1, 0));
        assert_eq!(t.offer(mac(2), 100), Some(ip(2)));
        assert_eq!(t.holder(ip(1), 0), None);
    }
}
