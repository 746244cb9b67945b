//! Packing the root filesystem: `mksquashfs` with its reproducibility settings.
//!
//! zstd compression (level [`ZSTD_LEVEL`], [`BLOCK_SIZE`] blocks), `-noappend`, every file time and the filesystem time fixed at
//! [`SOURCE_DATE_EPOCH`](super::base::SOURCE_DATE_EPOCH), numeric owners as unpacked (`tar --numeric-owner`),
//! directory entries sorted by mksquashfs itself. Same tree → same bytes, whatever the thread count.

use std::path::Path;
use std::process::Command;

use super::base::{BaseError, SOURCE_DATE_EPOCH, run};

/// zstd level: 6 packs a Debian root about as small as mksquashfs's default level 15, several times faster
/// (measured in docs/images.md).
pub const ZSTD_LEVEL: &str = "6";
/// Block size.
///
/// mksquashfs's `-b`: 128 KiB, its default. The node reads the root filesystem at random on every boot (systemd,
/// its libraries, hundreds of unit files and small scripts, each packed into a shared fragment block), and
/// squashfs decompresses — and dm-verity hashes — a whole block for any page of it: 1 MiB blocks compressed a
/// little better but made every boot pay for up to 8× the bytes it used (docs/images.md, "Boot path").
pub const BLOCK_SIZE: &str = "128K";

/// Packs `root` into the squashfs image `out`.
pub fn pack(root: &Path, out: &Path) -> Result<(), BaseError> {
    let epoch = SOURCE_DATE_EPOCH.to_string();
    run(Command::new("mksquashfs")
        .arg(root)
        .arg(out)
        .args([
            "-comp",
            "zstd",
            "-Xcompression-level",
            ZSTD_LEVEL,
            "-b",
            BLOCK_SIZE,
        ])
        .args(["-noappend", "-no-progress", "-quiet"])
        .args(["-all-time", &epoch, "-mkfs-time", &epoch])
        // mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time/-mkfs-time.
        .env_remove("SOURCE_DATE_EPOCH"))?;
    Ok(())
}
