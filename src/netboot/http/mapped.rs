//! A stored artifact mapped into memory, so a response body is the page cache itself.
//!
//! Reading a kernel, initrd or root filesystem into a buffer and writing that buffer to the socket copies every
//! byte twice (page cache → buffer → socket); nginx's `sendfile` copies none. hyper takes `Bytes`, not a file
//! descriptor, so `sendfile` is out of reach, but a `Bytes` cut from a mapping of the file costs one copy (the
//! socket write reads the mapped pages) and no buffer. Measured in docs/performance.md ("HTTP: mapped bodies").
//!
//! Each chunk is faulted in before it is handed out (`MADV_POPULATE_READ`, on the blocking pool where the caller
//! runs it), so a root filesystem not yet in the page cache is read from disk there, never by a socket write on
//! an async worker; and a file that became shorter than the mapping is reported as an error (the populate fails
//! with `EFAULT`) instead of the first touch of a missing page raising `SIGBUS`.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Advice, Mmap, MmapOptions};

/// One artifact file, mapped read-only whole. Clones share the mapping.
#[derive(Clone)]
pub struct MappedFile {
    map: Arc<Mmap>,
    /// The whole mapping as `Bytes`: chunks are cheap slices of it that keep the mapping alive until written.
    bytes: Bytes,
}

/// Lets `Bytes` own the mapping.
struct Owner(Arc<Mmap>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The error of an artifact whose bytes end before its manifest entry's size (a short read, or pages past the
/// end of a file truncated under its mapping).
pub fn shorter_than_manifest() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "artifact shorter than its manifest entry",
    )
}

impl MappedFile {
    /// Maps the first `len` bytes of `file` (its size from the manifest, which the store checked).
    pub fn new(file: &File, len: u64) -> io::Result<MappedFile> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        // SAFETY: a mapping is sound while no one changes the file under it. The image store's files are written
        // once (into a temporary file or directory, synced, made read-only, then renamed into place) and never
        // written again: `gc` and the object store's cache remove them by unlinking, which leaves this mapping
        // intact. A file truncated by hand while served would make a touch of its missing pages raise SIGBUS;
        // `chunk` populates each range first, which reports that as EFAULT instead.
        let map = unsafe { MmapOptions::new().len(len).map(file)? };
        let map = Arc::new(map);
        let bytes = Bytes::from_owner(Owner(map.clone()));
        Ok(MappedFile { map, bytes })
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether `other` is this very mapping (a clone of it).
    pub fn same_mapping(&self, other: &MappedFile) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }

    /// The `n` bytes from `start`, faulted in first. Blocks on the disk when they are not cached: call it on the
    /// blocking pool.
    pub fn chunk(&self, start: u64, n: usize) -> io::Result<Bytes> {
        let start = usize::try_from(start).map_err(|_| shorter_than_manifest())?;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(shorter_than_manifest)?;
        if n > 0
            && let Err(e) = self.map.advise_range(Advice::PopulateRead, start, n)
        {
            match e.raw_os_error() {
                // Pages past the file's end: it was truncated under the mapping.
                Some(libc::EFAULT) => return Err(shorter_than_manifest()),
                // A kernel before 5.14 has no MADV_POPULATE_READ: fault the pages in by reading one byte of each.
                Some(libc::EINVAL) => {
                    for i in (start..end).step_by(4096) {
                        std::hint::black_box(self.map[i]);
                    }
                }
                _ => return Err(e),
            }
        }
        Ok(self.bytes.slice(start..end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn chunks_are_the_files_bytes_and_a_range_past_the_end_is_refused() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let m = MappedFile::new(&f, data.len() as u64).unwrap();
        assert_eq!(m.chunk(0, data.len()).unwrap(), data[..]);
        assert_eq!(m.chunk(4095, 2).unwrap(), data[4095..4097]);
        assert_eq!(m.chunk(data.len() as u64, 0).unwrap().len(), 0);
        let e = m.chunk(4096, data.len()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn a_file_truncated_under_the_mapping_is_an_error_not_a_sigbus() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 4 * 4096]).unwrap();
        let m = MappedFile::new(&f, 4 * 4096).unwrap();
        let first = m.chunk(0, 4096).unwrap();
        f.set_len(4096).unwrap();
        // The page still backed by the file is served; the ones past the new end are refused, not touched.
        assert_eq!(first[..], [7u8; 4096][..]);
        let e = m.chunk(2 * 4096, 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
}
