//! The event log on disk: `events.jsonl` (live) and `events.jsonl.1` … `events.jsonl.<files-1>` (older), one
//! JSON event a line.
//!
//! - **Load** ([`load`]): every file oldest first, each line parsed on its own ([`parse`]). A line that does not
//!   parse is moved aside — appended to `<file>.corrupt-<ms>` — and the file rewritten (atomically, fsynced)
//!   without it; a file that cannot be read at all, or of which no line parses, is renamed to
//!   `<file>.corrupt-<ms>`. Either way an `ERROR` says what moved where, and every other event loads. A torn
//!   last line (a crash mid-write, never acknowledged) is cut off. Old details are redacted on the way in.
//!   At most `files` such `.corrupt-` files are kept (the oldest go first).
//! - **Append** ([`Disk::append`]): one `write` of the whole line; when it fails (a full disk) the file is
//!   truncated back to the end of the last good record, so no torn record ever sits before the next one.
//! - **Rotate** ([`Disk::rotate`]): when the live file reaches `file_bytes`, it is fsynced and renamed down the
//!   chain (the oldest falls off), and a new live file starts with copies of the sticky events.
//!
//! Durability (fsync batching and group commit) is the caller's: [`Disk::file`] hands out the live file to
//! sync outside the lock.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::event::{Event, now_ms};
use super::redact::redact;

/// What one log file's bytes hold.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The events, in file order, details redacted.
    pub events: Vec<Event>,
    /// Lines that are not an event: (1-based line number, the raw line).
    pub bad: Vec<(usize, Vec<u8>)>,
    /// Whether the last line was torn (no newline and not an event).
    pub torn: bool,
    /// Events whose detail held a secret (now redacted).
    pub redacted: usize,
}

/// Parses one log file's bytes. Blank lines are skipped.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // `split` yields an empty last piece when the file ends with a newline.
    let complete_end = bytes.last() == Some(&b'\n') || bytes.is_empty();
    let last = if complete_end { lines.pop() } else { None };
    debug_assert!(last.is_none_or(|l| l.is_empty()));
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match serde_json::from_slice::<Event>(line) {
            Ok(mut ev) => {
                if let std::borrow::Cow::Owned(r) = redact(&ev.detail) {
                    ev.detail = r;
                    p.redacted += 1;
                }
                p.events.push(ev);
            }
            Err(_) if i + 1 == n && !complete_end => p.torn = true,
            Err(_) => p.bad.push((i + 1, line.to_vec())),
        }
    }
    p
}

/// `events.jsonl.<k>` for `k ≥ 1`, `events.jsonl` for 0.
pub fn rotated(path: &Path, k: u32) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

fn aside(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".corrupt-{}", now_ms()));
    PathBuf::from(s)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Writes `events` to `path` through a temp file: write, fsync, rename, fsync the directory.
fn rewrite(path: &Path, events: &[Event]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut buf = Vec::new();
    for e in events {
        buf.extend_from_slice(&line(e));
    }
    let mut f = File::create(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// One event as a log line.
pub fn line(ev: &Event) -> Vec<u8> {
    let mut v = serde_json::to_vec(ev).expect("events serialize");
    v.push(b'\n');
    v
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The events of each file, oldest file first, with the file's generation (the live file's is the highest).
    pub files: Vec<(u64, Vec<Event>)>,
    /// Bytes in the older (rotated) files.
    pub older_bytes: u64,
    /// Lines moved aside.
    pub quarantined_lines: u64,
    /// Whole files moved aside.
    pub quarantined_files: u64,
}

/// Loads every log file (see the module's rules), repairing what it must. `files` is how many are kept;
/// rotated files beyond it (a lowered limit) are removed.
pub fn load(path: &Path, files: u32) -> std::io::Result<Loaded> {
    let mut out = Loaded::default();
    let files = files.max(1);
    // Rotated files beyond the limit.
    for k in files..files + 64 {
        let p = rotated(path, k);
        if p.exists() {
            tracing::warn!(path = %p.display(), "removing an event log file beyond [limits.events] files = {files}");
            std::fs::remove_file(&p)?;
        }
    }
    for k in (0..files).rev() {
        let p = rotated(path, k);
        let generation = u64::from(files - 1 - k);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let to = aside(&p);
                std::fs::rename(&p, &to)?;
                tracing::error!(path = %p.display(), moved_to = %to.display(), error = %e, "EVENT LOG FILE UNREADABLE: moved aside; the other files are loaded. Inspect it, then delete it");
                out.quarantined_files += 1;
                continue;
            }
        };
        let parsed = parse(&bytes);
        if parsed.events.is_empty() && !parsed.bad.is_empty() {
            let to = aside(&p);
            std::fs::rename(&p, &to)?;
            tracing::error!(path = %p.display(), moved_to = %to.display(), lines = parsed.bad.len(), "EVENT LOG FILE CORRUPT (no line is an event): moved aside; the other files are loaded. Inspect it, then delete it");
            out.quarantined_files += 1;
            continue;
        }
        if !parsed.bad.is_empty() {
            let to = aside(&p);
            let mut q = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&to)?;
            for (_, l) in &parsed.bad {
                q.write_all(l)?;
                q.write_all(b"\n")?;
            }
            q.sync_all()?;
            let numbers: Vec<String> = parsed.bad.iter().map(|(n, _)| n.to_string()).collect();
            tracing::error!(path = %p.display(), lines = %numbers.join(","), moved_to = %to.display(), kept = parsed.events.len(), "EVENT LOG CORRUPT LINES moved aside; every other event is loaded. Inspect them, then delete the file");
            out.quarantined_lines += parsed.bad.len() as u64;
        }
        if parsed.torn {
            tracing::info!(path = %p.display(), "cutting a torn last line off the event log (a crash during a write; it was never acknowledged)");
        }
        // A last line without its newline would merge with the next append: rewritten whole.
        let unterminated = bytes.last().is_some_and(|&b| b != b'\n');
        if !parsed.bad.is_empty() || parsed.torn || parsed.redacted > 0 || unterminated {
            rewrite(&p, &parsed.events)?;
        }
        if k > 0 {
            out.older_bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        out.files.push((generation, parsed.events));
    }
    prune_aside(path, files as usize);
    Ok(out)
}

/// Keeps the newest `keep` `.corrupt-` files of this log.
fn prune_aside(path: &Path, keep: usize) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = name.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(u64, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let ms = n
                .strip_prefix(&prefix)?
                .rsplit_once(".corrupt-")?
                .1
                .parse()
                .ok()?;
            Some((ms, e.path()))
        })
        .collect();
    found.sort();
    while found.len() > keep {
        let (_, p) = found.remove(0);
        tracing::warn!(path = %p.display(), "removing an old moved-aside event log file (at most [limits.events] files are kept)");
        let _ = std::fs::remove_file(p);
    }
}

/// The live log file, appended to, and the rotation chain.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    file_bytes: u64,
    files: u32,
    file: Arc<File>,
    len: u64,
    older_bytes: u64,
    generation: u64,
}

impl Disk {
    /// Opens the live file of a log [`load`] has read (creating it), at generation `files - 1`.
    pub fn open(
        path: &Path,
        loaded: &Loaded,
        file_bytes: u64,
        files: u32,
    ) -> std::io::Result<Disk> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        sync_dir(path)?;
        Ok(Disk {
            path: path.to_path_buf(),
            file_bytes,
            files: files.max(1),
            file: Arc::new(file),
            len,
            older_bytes: loaded.older_bytes,
            generation: u64::from(files.max(1) - 1),
        })
    }

    /// The live file (to fsync outside the lock).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// The live file's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The path of the live file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk over every kept file.
    pub fn bytes(&self) -> u64 {
        self.len + self.older_bytes
    }

    /// Appends one line. On failure the file is cut back to its last good record.
    pub fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        match (&*self.file).write_all(line) {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(t) = self.file.set_len(self.len) {
                    tracing::error!(path = %self.path.display(), error = %t, "cannot cut a failed write back off the event log; the next load moves the torn line aside");
                }
                Err(e)
            }
        }
    }

    /// Whether the live file has reached its size.
    pub fn full(&self) -> bool {
        self.len >= self.file_bytes
    }

    /// Rotates: fsyncs the live file, renames the chain down (the oldest file falls off), starts a new live
    /// file with `carry` (the sticky events) and fsyncs it and the directory. Returns the new generation;
    /// generations up to `new - files` are gone.
    pub fn rotate(&mut self, carry: &[Event]) -> std::io::Result<u64> {
        self.file.sync_data()?;
        if self.files == 1 {
            std::fs::remove_file(&self.path)?;
        } else {
            for k in (1..self.files).rev() {
                let from = rotated(&self.path, k - 1);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, k))?;
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let mut head = Vec::new();
        for e in carry {
            head.extend_from_slice(&line(e));
        }
        (&file).write_all(&head)?;
        file.sync_data()?;
        sync_dir(&self.path)?;
        self.file = Arc::new(file);
        self.len = head.len() as u64;
        self.older_bytes = (1..self.files)
            .filter_map(|k| std::fs::metadata(rotated(&self.path, k)).ok())
            .map(|m| m.len())
            .sum();
        self.generation += 1;
        Ok(self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Source;

    fn ev(at: u64, detail: &str) -> Event {
        Event {
            at_ms: at,
            mac: "52:54:00:77:00:21".parse().unwrap(),
            stage: "kernel".into(),
            detail: detail.into(),
            source: Source::Server,
        }
    }

    #[test]
    fn parse_keeps_good_lines_and_separates_bad_and_torn_ones() {
        let mut b = line(&ev(1, ""));
        b.extend_from_slice(b"{not json\n\n");
        b.extend_from_slice(&line(&ev(2, "--token abcdef.0123456789abcdef")));
        b.extend_from_slice(&b"\xff\xfe binary\n"[..]);
        b.extend_from_slice(&line(&ev(3, ""))[..20]);
        let p = parse(&b);
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.events[1].detail, "--token [redacted]");
        assert_eq!(p.redacted, 1);
        assert_eq!(
            p.bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![2, 5]
        );
        assert!(p.torn);
    }

    #[test]
    fn load_moves_bad_lines_and_unreadable_files_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut b = line(&ev(1, ""));
        b.extend_from_slice(b"garbage\n");
        b.extend_from_slice(&line(&ev(2, "")));
        std::fs::write(&path, &b).unwrap();
        std::fs::write(rotated(&path, 1), b"\x00\x01\x02\n").unwrap();
        std::fs::create_dir(rotated(&path, 2)).unwrap();
        std::fs::write(rotated(&path, 7), line(&ev(0, ""))).unwrap();
        let l = load(&path, 4).unwrap();
        let all: Vec<u64> = l
            .files
            .iter()
            .flat_map(|(_, e)| e.iter().map(|e| e.at_ms))
            .collect();
        assert_eq!(all, vec![1, 2]);
        assert_eq!((l.quarantined_lines, l.quarantined_files), (1, 2));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [line(&ev(1, "")), line(&ev(2, ""))].concat()
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.iter().filter(|n| n.contains(".corrupt-")).count(),
            3,
            "{names:?}"
        );
        assert!(!rotated(&path, 7).exists());
        let aside = names
            .iter()
            .find(|n| n.starts_with("events.jsonl.corrupt-"))
            .unwrap();
        assert_eq!(std::fs::read(dir.path().join(aside)).unwrap(), b"garbage\n");
    }

    #[test]
    fn rotation_keeps_the_newest_files_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let l = load(&path, 3).unwrap();
        let mut d = Disk::open(&path, &l, 300, 3).unwrap();
        let sticky = ev(0, "sticky");
        for i in 1..=40 {
            d.append(&line(&ev(i, ""))).unwrap();
            if d.full() {
                d.rotate(std::slice::from_ref(&sticky)).unwrap();
            }
            assert!(d.bytes() <= 3 * (300 + 200), "{}", d.bytes());
        }
        let l = load(&path, 3).unwrap();
        let all: Vec<u64> = l
            .files
            .iter()
            .flat_map(|(_, e)| e.iter().map(|e| e.at_ms))
            .collect();
        assert_eq!(all.iter().max(), Some(&40));
        assert!(all.len() < 40 && all.contains(&0), "{all:?}");
        let mut newest: Vec<u64> = all.into_iter().filter(|&a| a > 0).collect();
        let n = newest.len() as u64;
        newest.dedup();
        assert_eq!(
            newest,
            (41 - n..=40).collect::<Vec<_>>(),
            "the newest events, none missing"
        );
        assert!(!rotated(&path, 3).exists());
    }
}
