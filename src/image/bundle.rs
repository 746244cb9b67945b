//! `imgbuild bundle export/import`: everything `imgbuild fetch` verified — `imgbuild.lock`, the artifact files
//! and the blobs of every container image it locks — as one file to carry to a disconnected site.
//!
//! The bundle is a plain tar (layers are compressed already) with sorted members, fixed owners, modes and times:
//! the same lock and cache give the same bytes. Its first member, `BUNDLE.sha256`, lists the sha256 of every
//! other member; import checks each member against it, each content-addressed file against its own name, and
//! every lock entry against the files, before anything is written to the cache or the lock.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::artifacts;
use super::lock::Lock;
use super::oci::OciError;
use super::oci::blobs::{Blobs, hex_of};
use super::oci::error::io;
use super::oci::pull::entry_blobs;
use crate::config::Cluster;

/// The bundle's table of contents: `<sha256>  <member>` lines.
pub const TOC: &str = "BUNDLE.sha256";
/// The lock inside the bundle.
const LOCK: &str = "imgbuild.lock";

/// What a bundle holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// The bundle file.
    pub path: PathBuf,
    /// sha256 of the bundle file, lowercase hex: compare it on both sides of the air gap.
    pub sha256: String,
    /// Artifact files.
    pub artifacts: usize,
    /// Container images (reference × architecture).
    pub images: usize,
    /// Blobs of those images.
    pub blobs: usize,
    /// Bytes of all members.
    pub bytes: u64,
}

fn bad(path: &Path, detail: impl Into<String>) -> OciError {
    OciError::Bundle {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn sha_file(p: &Path) -> std::io::Result<String> {
    let d = super::oci::blobs::digest_file(p)?;
    Ok(d.trim_start_matches("sha256:").to_string())
}

/// Writes the bundle of the cluster's lock and cache to `out`. Every locked file must be in the cache with its
/// digest (run `imgbuild fetch` first).
pub fn export(cluster: &Cluster, out: &Path) -> Result<Summary, OciError> {
    let lock_text = std::fs::read(&cluster.paths.lock).map_err(io(&cluster.paths.lock))?;
    let lock = Lock::load(&cluster.paths.lock)?;
    // member name → file on disk (the lock is added from memory).
    let mut members: BTreeMap<String, PathBuf> = BTreeMap::new();
    let adir = artifacts::cache_dir(cluster);
    for a in &lock.artifacts {
        let p = adir.join(&a.sha256);
        if sha_file(&p).ok().as_deref() != Some(a.sha256.as_str()) {
            return Err(OciError::Missing {
                image: format!("artifact {}", a.name),
                arch: a.url.clone(),
                reason: format!("{} is not in the cache with its locked sha256", p.display()),
            });
        }
        members.insert(format!("artifacts/{}", a.sha256), p);
    }
    let blobs = Blobs::under(&cluster.paths.cache);
    for e in &lock.images {
        let all = entry_blobs(&blobs, e).map_err(|reason| OciError::Missing {
            image: e.reference.clone(),
            arch: e.arch.clone(),
            reason,
        })?;
        for d in all {
            let hex = hex_of(&d).expect("verified digest").to_string();
            members.insert(format!("oci/blobs/sha256/{hex}"), blobs.path(&d));
        }
    }
    let mut toc = format!("{}  {LOCK}\n", hex::encode(Sha256::digest(&lock_text)));
    for name in members.keys() {
        // Content-addressed: the name is the digest, verified above.
        let hex = name.rsplit('/').next().expect("member name");
        toc += &format!("{hex}  {name}\n");
    }
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    let mut bytes = 0u64;
    {
        let mut t = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
        t.mode(tar::HeaderMode::Deterministic);
        let mut add = |name: &str, size: u64, r: &mut dyn Read| -> Result<(), OciError> {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            t.append_data(&mut h, name, r).map_err(io(out))?;
            bytes += size;
            Ok(())
        };
        add(TOC, toc.len() as u64, &mut toc.as_bytes())?;
        add(LOCK, lock_text.len() as u64, &mut &lock_text[..])?;
        for (name, p) in &members {
            let mut f = std::fs::File::open(p).map_err(io(p))?;
            let size = f.metadata().map_err(io(p))?.len();
            add(name, size, &mut f)?;
        }
        let w = t.into_inner().map_err(io(out))?;
        w.into_inner()
            .map_err(|e| OciError::Io {
                path: out.to_path_buf(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(io(out))?;
    }
    tmp.persist(out).map_err(|e| OciError::Io {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(Summary {
        path: out.to_path_buf(),
        sha256: sha_file(out).map_err(io(out))?,
        artifacts: lock.artifacts.len(),
        images: lock.images.len(),
        blobs: members.keys().filter(|m| m.starts_with("oci/")).count(),
        bytes,
    })
}

/// Imports a bundle into the cluster's cache and lock. Every member is verified before it enters the cache; the
/// lock is written last, and only when every file it names arrived. An existing, different `imgbuild.lock` is
/// refused (move it away first). `expect_sha256`, when given, must be the bundle file's sha256.
pub fn import(
    cluster: &Cluster,
    bundle: &Path,
    expect_sha256: Option<&str>,
) -> Result<Summary, OciError> {
    let sha = sha_file(bundle).map_err(io(bundle))?;
    if let Some(want) = expect_sha256
        && !want.eq_ignore_ascii_case(&sha)
    {
        return Err(bad(
            bundle,
            format!("its sha256 is {sha}, not {want}: it was damaged or replaced on the way"),
        ));
    }
    let f = std::fs::File::open(bundle).map_err(io(bundle))?;
    let mut ar = tar::Archive::new(std::io::BufReader::new(f));
    let mut toc: Option<BTreeMap<String, String>> = None;
    let mut lock_text: Option<Vec<u8>> = None;
    let adir = artifacts::cache_dir(cluster);
    let blobs = Blobs::under(&cluster.paths.cache);
    let mut bytes = 0u64;
    let mut seen = 0usize;
    for entry in ar.entries().map_err(io(bundle))? {
        let mut entry = entry.map_err(io(bundle))?;
        let name = entry
            .path()
            .map_err(io(bundle))?
            .to_string_lossy()
            .into_owned();
        if name == TOC {
            let mut s = String::new();
            entry.read_to_string(&mut s).map_err(io(bundle))?;
            let mut m = BTreeMap::new();
            for l in s.lines() {
                let (h, n) = l
                    .split_once("  ")
                    .ok_or_else(|| bad(bundle, format!("{TOC} has a malformed line {l:?}")))?;
                m.insert(n.to_string(), h.to_string());
            }
            toc = Some(m);
            continue;
        }
        let Some(toc) = &toc else {
            return Err(bad(bundle, format!("{TOC} is not its first member")));
        };
        let want = toc
            .get(&name)
            .ok_or_else(|| bad(bundle, format!("member {name} is not listed in {TOC}")))?
            .clone();
        let dest_dir: Option<PathBuf> = if name == LOCK {
            None
        } else {
            let (dir, h) = if let Some(h) = name.strip_prefix("artifacts/") {
                (adir.clone(), h)
            } else if let Some(h) = name.strip_prefix("oci/blobs/sha256/") {
                (blobs.dir.clone(), h)
            } else {
                return Err(bad(bundle, format!("unexpected member {name}")));
            };
            if h != want {
                return Err(bad(
                    bundle,
                    format!("member {name} is not named by its digest {want}"),
                ));
            }
            Some(dir)
        };
        let mut h = Sha256::new();
        let got = match &dest_dir {
            None => {
                let mut v = Vec::new();
                entry.read_to_end(&mut v).map_err(io(bundle))?;
                h.update(&v);
                lock_text = Some(v);
                hex::encode(h.finalize())
            }
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io(d))?;
                let mut tmp = tempfile::NamedTempFile::new_in(d).map_err(io(d))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = entry.read(&mut buf).map_err(io(bundle))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    tmp.write_all(&buf[..n]).map_err(io(d))?;
                }
                let got = hex::encode(h.finalize());
                if got == want {
                    tmp.as_file().sync_all().map_err(io(d))?;
                    let dest = d.join(&want);
                    tmp.persist(&dest).map_err(|e| OciError::Io {
                        path: dest.clone(),
                        source: e.error,
                    })?;
                }
                got
            }
        };
        if got != want {
            return Err(bad(
                bundle,
                format!(
                    "member {name} has sha256 {got}, but {TOC} lists {want}: the bundle is damaged"
                ),
            ));
        }
        bytes += entry.size();
        seen += 1;
    }
    let toc = toc.ok_or_else(|| bad(bundle, format!("it has no {TOC}")))?;
    if seen != toc.len() {
        return Err(bad(
            bundle,
            format!(
                "{TOC} lists {} members but the bundle holds {seen}: it is truncated",
                toc.len()
            ),
        ));
    }
    let lock_text = lock_text.ok_or_else(|| bad(bundle, format!("it has no {LOCK}")))?;
    // The lock parses, and names only files that are now in the cache.
    let staged = tempfile::NamedTempFile::new().map_err(io(bundle))?;
    std::fs::write(staged.path(), &lock_text).map_err(io(staged.path()))?;
    let lock = Lock::load(staged.path())?;
    for a in &lock.artifacts {
        if !toc.contains_key(&format!("artifacts/{}", a.sha256)) {
            return Err(bad(
                bundle,
                format!(
                    "its lock names artifact {} ({}) but the file is not in it",
                    a.name, a.sha256
                ),
            ));
        }
    }
    for e in &lock.images {
        entry_blobs(&blobs, e).map_err(|reason| {
            bad(
                bundle,
                format!("image {} ({}): {reason}", e.reference, e.arch),
            )
        })?;
    }
    match std::fs::read(&cluster.paths.lock) {
        Ok(cur) if cur == lock_text => {}
        Ok(_) => {
            return Err(bad(
                bundle,
                format!(
                    "{} exists and differs from the bundle's lock; move it away (or commit it) and import again",
                    cluster.paths.lock.display()
                ),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = cluster.paths.lock.parent().unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
            tmp.write_all(&lock_text).map_err(io(dir))?;
            tmp.persist(&cluster.paths.lock).map_err(|e| OciError::Io {
                path: cluster.paths.lock.clone(),
                source: e.error,
            })?;
        }
        Err(e) => return Err(io(&cluster.paths.lock)(e)),
    }
    Ok(Summary {
        path: bundle.to_path_buf(),
        sha256: sha,
        artifacts: lock.artifacts.len(),
        images: lock.images.len(),
        blobs: toc.keys().filter(|m| m.starts_with("oci/")).count(),
        bytes,
    })
}
