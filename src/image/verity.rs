//! The dm-verity hash tree of the root filesystem, appended to `rootfs.squashfs`.
//!
//! `veritysetup format` writes the hash tree (with its superblock) after the squashfs data in the same file, at
//! [`Verity::hash_offset`] (the squashfs size, a multiple of 4 KiB). Its salt is the sha256 of the squashfs
//! bytes and its UUID is made from that salt, so the same squashfs gives the same tree, the same root hash and
//! the same file bytes: the build stays reproducible. The initrd opens the file with `veritysetup open` and
//! the root hash from the kernel command line (signed in a UKI) and mounts it at once; every block is checked
//! against the tree when it is read.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::base::{BaseError, run};

/// dm-verity's data and hash block size; a squashfs padded by mksquashfs (4 KiB) is a whole number of blocks.
pub const BLOCK: u64 = 4096;

/// What the initrd needs to open the root filesystem with dm-verity; recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    /// The root hash of the tree, lowercase hex (`veritysetup open … <root hash>`): the root filesystem's identity.
    pub root_hash: String,
    /// Where the hash tree (its superblock first) starts in `rootfs.squashfs`, in bytes: the squashfs's size.
    pub hash_offset: u64,
    /// The salt, lowercase hex: sha256 of the squashfs bytes (content-derived, so rebuilds give the same tree).
    pub salt: String,
}

/// The UUID recorded in the verity superblock, made from the salt (so it is fixed by the content too).
pub fn uuid_from_salt(salt: &str) -> String {
    let h = &salt[..32];
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BaseError + '_ {
    move |source| BaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends the dm-verity hash tree of the squashfs `file` to it (padding the squashfs to [`BLOCK`] first if
/// needed) and returns the parameters the initrd needs.
pub fn append(file: &Path) -> Result<Verity, BaseError> {
    let meta = std::fs::metadata(file).map_err(io(file))?;
    let size = meta.len().div_ceil(BLOCK) * BLOCK;
    if size != meta.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .map_err(io(file))?;
        f.set_len(size).map_err(io(file))?;
    }
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(file).map_err(io(file))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(file))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let salt = hex::encode(h.finalize());
    let out = run(Command::new("veritysetup")
        .arg("format")
        .arg(format!("--hash-offset={size}"))
        .arg(format!("--salt={salt}"))
        .arg(format!("--uuid={}", uuid_from_salt(&salt)))
        .args([
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(file)
        .arg(file))?;
    let root_hash = root_hash_of(&out).ok_or_else(|| BaseError::Command {
        command: format!("veritysetup format {}", file.display()),
        status: "printed no root hash".into(),
        tail: out.clone(),
    })?;
    Ok(Verity {
        root_hash,
        hash_offset: size,
        salt,
    })
}

/// The `Root hash:` line of `veritysetup format`'s output.
fn root_hash_of(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_and_root_hash_are_read_from_fixed_formats() {
        let salt = "d47be107f3c7f913b2af2dd18ca81bd3daddefa45949214bab1c1dd69954d244";
        assert_eq!(uuid_from_salt(salt), "d47be107-f3c7-f913-b2af-2dd18ca81bd3");
        let out = "VERITY header information for a.img\nUUID:  \tx\nRoot hash:      \ta8065951e95e3ff3b52906ecadfc6ab03aa8c7a7ec536774f42141aa705839a1\n";
        assert_eq!(
            root_hash_of(out).as_deref(),
            Some("a8065951e95e3ff3b52906ecadfc6ab03aa8c7a7ec536774f42141aa705839a1")
        );
        assert_eq!(root_hash_of("Root hash: zz"), None);
    }

    /// Same bytes in, same tree and file bytes out; one changed byte changes the root hash.
    #[test]
    fn the_tree_is_reproducible_and_bound_to_the_content() {
        if !crate::image::base::on_path("veritysetup", std::env::var_os("PATH").as_deref()) {
            eprintln!("veritysetup not installed (cryptsetup-bin): skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut outs = Vec::new();
        for (name, flip) in [("a", false), ("b", false), ("c", true)] {
            let p = d.path().join(name);
            let mut bytes = data.clone();
            if flip {
                bytes[1000] ^= 1;
            }
            std::fs::write(&p, &bytes).unwrap();
            let v = append(&p).unwrap();
            assert_eq!(v.hash_offset % BLOCK, 0);
            assert!(v.hash_offset >= data.len() as u64);
            outs.push((v, std::fs::read(&p).unwrap()));
        }
        assert_eq!(outs[0], outs[1]);
        assert_ne!(outs[0].0.root_hash, outs[2].0.root_hash);
    }
}
