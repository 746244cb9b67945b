//! The mappings of recently served artifacts, kept ([`MappingCache`]).
//!
//! Mapping an artifact for each request and unmapping it when the response is sent costs more server CPU than
//! anything but the copy to the socket: measured with `PERF=1 bench/http`, `MADV_POPULATE_READ` on a fresh
//! mapping (page tables filled page by page) and `munmap` (page tables torn down) were ~17 % of each `ipxe.efi`
//! request and ~26 % of each 64 MiB one. Images are immutable, so a mapping made once stays right for as long as
//! its file exists; later requests slice the same mapping, whose page tables are already filled.
//!
//! Every request still opens the file through the image store (symlinks and sizes checked, a removed image
//! refused) and the cache is keyed by the opened file's device and inode: it only saves the mapping, never a
//! check. An entry holds its file open, so its inode number cannot be reused while it is kept. Bounds: at most
//! [`KEEP`] files and [`KEEP_BYTES`] bytes mapped (past either, the cache starts again empty); a file larger than
//! [`LARGEST`] is mapped per request as before. A file unlinked since (`imgbuild gc`, the object store's cache
//! making room) would hold its disk space while mapped: at most once a second, at a request, entries whose file
//! has no name left are dropped. Gauges: `imgbuild_http_mapped_files`, `imgbuild_http_mapped_bytes`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::mapped::MappedFile;
use crate::netboot::metrics::HttpMetrics;

/// Files kept mapped at most.
pub const KEEP: usize = 64;
/// Bytes kept mapped at most (address space and, while resident, page cache the mappings point at).
pub const KEEP_BYTES: u64 = 1 << 30;
/// Files larger than this are mapped per request.
pub const LARGEST: u64 = KEEP_BYTES / 4;
/// How often, at most, kept entries are checked for files unlinked since.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Entry {
    map: MappedFile,
    /// Keeps the inode (and so the key) unique while kept; `fstat` on it tells whether it was unlinked.
    file: File,
}

struct Kept {
    by_inode: HashMap<(u64, u64), Entry>,
    bytes: u64,
    swept: Instant,
}

/// Kept mappings of stored artifacts, by device and inode.
pub struct MappingCache {
    kept: Mutex<Kept>,
    metrics: HttpMetrics,
}

impl MappingCache {
    /// An empty cache reporting its size in `metrics`.
    pub fn new(metrics: HttpMetrics) -> Self {
        MappingCache {
            kept: Mutex::new(Kept {
                by_inode: HashMap::new(),
                bytes: 0,
                swept: Instant::now(),
            }),
            metrics,
        }
    }

    /// The first `len` bytes of `file` mapped: a kept mapping of the same inode and length, or a new one (kept
    /// when it fits the bounds). Blocks (`fstat`, `mmap`): call it on the blocking pool.
    pub fn map(&self, file: &File, len: u64) -> io::Result<MappedFile> {
        if len > LARGEST {
            return MappedFile::new(file, len);
        }
        let meta = file.metadata()?;
        let key = (meta.dev(), meta.ino());
        {
            let mut kept = self.lock();
            self.sweep(&mut kept);
            if let Some(e) = kept.by_inode.get(&key)
                && e.map.len() as u64 == len
            {
                return Ok(e.map.clone());
            }
        }
        let map = MappedFile::new(file, len)?;
        let entry = Entry {
            map: map.clone(),
            file: file.try_clone()?,
        };
        let mut kept = self.lock();
        if kept.by_inode.len() >= KEEP || kept.bytes + len > KEEP_BYTES {
            kept.by_inode.clear();
            kept.bytes = 0;
        }
        if let Some(old) = kept.by_inode.insert(key, entry) {
            kept.bytes -= old.map.len() as u64;
        }
        kept.bytes += len;
        self.report(&kept);
        Ok(map)
    }

    /// How many files are kept mapped now.
    pub fn len(&self) -> usize {
        self.lock().by_inode.len()
    }

    /// Whether no file is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the entries whose file was unlinked, at most once per [`SWEEP_EVERY`].
    fn sweep(&self, kept: &mut Kept) {
        if kept.swept.elapsed() < SWEEP_EVERY {
            return;
        }
        kept.swept = Instant::now();
        let before = kept.by_inode.len();
        kept.by_inode
            .retain(|_, e| e.file.metadata().map(|m| m.nlink() > 0).unwrap_or(false));
        if kept.by_inode.len() != before {
            kept.bytes = kept.by_inode.values().map(|e| e.map.len() as u64).sum();
            self.report(kept);
        }
    }

    fn report(&self, kept: &Kept) {
        self.metrics.mapped_files.set(kept.by_inode.len() as i64);
        self.metrics.mapped_bytes.set(kept.bytes as i64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic while holding the lock leaves a map that is still valid.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(dir: &std::path::Path, name: &str, data: &[u8]) -> File {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(data).unwrap();
        File::open(&p).unwrap()
    }

    #[test]
    fn a_second_open_of_the_same_file_gets_the_kept_mapping_and_another_file_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let c = MappingCache::new(HttpMetrics::default());
        let a = file_of(dir.path(), "a", &[1u8; 5000]);
        let m1 = c.map(&a, 5000).unwrap();
        let again = File::open(dir.path().join("a")).unwrap();
        let m2 = c.map(&again, 5000).unwrap();
        assert!(m1.same_mapping(&m2), "not the kept mapping");
        let b = file_of(dir.path(), "b", &[2u8; 100]);
        let mb = c.map(&b, 100).unwrap();
        assert!(!mb.same_mapping(&m1));
        assert_eq!(mb.chunk(0, 100).unwrap()[..], [2u8; 100][..]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.metrics.mapped_bytes.get(), 5100);
    }

    #[test]
    fn a_file_replaced_under_its_name_is_mapped_anew_and_the_unlinked_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let c = MappingCache::new(HttpMetrics::default());
        let old = file_of(dir.path(), "f", &[1u8; 4096]);
        let m_old = c.map(&old, 4096).unwrap();
        // gc removes it; a new image brings a file of the same name and size with other bytes.
        std::fs::remove_file(dir.path().join("f")).unwrap();
        let new = file_of(dir.path(), "f", &[9u8; 4096]);
        let m_new = c.map(&new, 4096).unwrap();
        assert!(!m_new.same_mapping(&m_old));
        assert_eq!(m_new.chunk(0, 4096).unwrap()[..], [9u8; 4096][..]);
        assert_eq!(c.len(), 2);
        // The next request after SWEEP_EVERY drops the unlinked file's entry (its disk space comes back).
        c.lock().swept -= SWEEP_EVERY;
        c.map(&new, 4096).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.metrics.mapped_files.get(), 1);
    }

    #[test]
    fn bounds_files_and_bytes_and_leaves_large_files_unkept() {
        let dir = tempfile::tempdir().unwrap();
        let c = MappingCache::new(HttpMetrics::default());
        let files: Vec<File> = (0..KEEP + 1)
            .map(|i| file_of(dir.path(), &format!("f{i}"), &[i as u8; 10]))
            .collect();
        for f in &files {
            c.map(f, 10).unwrap();
            assert!(c.len() <= KEEP);
        }
        // The 65th started the cache again: it alone is kept.
        assert_eq!(c.len(), 1);
        // Over LARGEST: mapped, not kept (a sparse file, no disk used).
        let big = File::create(dir.path().join("big")).unwrap();
        big.set_len(LARGEST + 4096).unwrap();
        let big = File::open(dir.path().join("big")).unwrap();
        c.map(&big, LARGEST + 4096).unwrap();
        assert_eq!(c.len(), 1);
    }
}
