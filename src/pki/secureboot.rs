//! The UEFI Secure Boot key hierarchy of a cluster and the files that enroll it into firmware.
//!
//! `secrets/secureboot/` holds `PK`, `KEK` and `db` as `<name>.key` (PKCS#8 PEM, 0600) and `<name>.crt` (PEM),
//! each a self-signed RSA 2048 certificate (the size every UEFI implementation accepts). The db key signs the
//! UKIs ([`crate::image::uki`]); the KEK signs db updates; the PK signs KEK updates. A site that brings its own
//! db key (`[secure_boot] db_key`, `db_cert`) gets only PK and KEK made here.
//!
//! [`enroll_files`] writes what firmware in setup mode takes: the certificates (PEM and DER, for firmware menus
//! that enroll from a file), EFI signature lists (`.esl`, efitools' `cert-to-efi-sig-list`) and signed
//! authenticated updates (`.auth`, `sign-efi-sig-list`: PK self-signed, KEK signed by PK, db signed by KEK).
//! No private key is ever written there.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{PkiError, ca, io_err, write_atomic};
use crate::config::{Cluster, SECUREBOOT_DIR};

/// The three keys of the hierarchy, in enrollment order (db first: once PK is set, setup mode ends).
pub const KEYS: &[&str] = &["db", "KEK", "PK"];

/// The EFI variable each key is enrolled as, and the key its `.auth` update is signed with.
fn signer(name: &str) -> &'static str {
    match name {
        "db" => "KEK",
        "KEK" => "PK",
        _ => "PK",
    }
}

/// The Secure Boot directory under the secrets directory.
pub fn dir(cluster: &Cluster) -> PathBuf {
    cluster.paths.secrets.join(SECUREBOOT_DIR)
}

/// The certificate (`.crt`) and key (`.key`) path of `name` (`PK`, `KEK`, `db`); db's is the configured one.
pub fn paths(cluster: &Cluster, name: &str) -> (PathBuf, PathBuf) {
    if name == "db" {
        return (
            cluster.secure_boot.db_cert.clone(),
            cluster.secure_boot.db_key.clone(),
        );
    }
    let d = dir(cluster);
    (d.join(format!("{name}.crt")), d.join(format!("{name}.key")))
}

/// The owner GUID of the signature lists: fixed per cluster name (so re-made enroll files are the same lists).
pub fn owner_guid(cluster: &Cluster) -> String {
    let h = hex::encode(Sha256::digest(
        format!("imgbuild secure boot owner {}", cluster.cluster.name).as_bytes(),
    ));
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Makes the keys of the hierarchy that are missing (never overwrites one); returns the names made.
pub fn ensure(cluster: &Cluster) -> Result<Vec<&'static str>, PkiError> {
    let d = dir(cluster);
    super::secrets::ensure_dir(&cluster.paths.secrets)?;
    super::secrets::ensure_dir(&d)?;
    let mut made = Vec::new();
    for name in ["PK", "KEK", "db"] {
        let (crt, key) = paths(cluster, name);
        if name == "db" && cluster.secure_boot.own_db {
            continue;
        }
        if crt.exists() || key.exists() {
            continue;
        }
        let ck = ca::new_ca(&format!(
            "imgbuild {} Secure Boot {name}",
            cluster.cluster.name
        ))?;
        write_atomic(&key, ck.key_pem.as_bytes(), 0o600)?;
        write_atomic(&crt, ck.cert_pem.as_bytes(), 0o600)?;
        made.push(name);
    }
    Ok(made)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), PkiError> {
    let out = cmd.output().map_err(|e| PkiError::Invalid {
        path: what.to_string(),
        message: format!("cannot run it ({e}): install efitools and openssl"),
    })?;
    if !out.status.success() {
        return Err(PkiError::Invalid {
            path: what.to_string(),
            message: format!(
                "failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

/// Writes the enrollment files into `out`: for each of PK, KEK, db its `.crt` (PEM), `.cer` (DER), `.esl`
/// and `.auth`; returns the files written. The keys must exist (`imgbuild secrets init`).
pub fn enroll_files(cluster: &Cluster, out: &Path) -> Result<Vec<PathBuf>, PkiError> {
    for name in KEYS {
        let (crt, key) = paths(cluster, name);
        for f in [&crt, &key] {
            if !f.is_file() {
                return Err(PkiError::Missing {
                    dir: f
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    file: f
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                });
            }
        }
    }
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let guid = owner_guid(cluster);
    let mut written = Vec::new();
    for name in KEYS {
        let (crt, _) = paths(cluster, name);
        let pem = out.join(format!("{name}.crt"));
        std::fs::copy(&crt, &pem).map_err(io_err(&pem))?;
        let der = out.join(format!("{name}.cer"));
        run(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&crt)
                .arg("-out")
                .arg(&der),
            "openssl x509 -outform DER",
        )?;
        let esl = out.join(format!("{name}.esl"));
        run(
            Command::new("cert-to-efi-sig-list")
                .args(["-g", &guid])
                .arg(&crt)
                .arg(&esl),
            "cert-to-efi-sig-list",
        )?;
        let (scrt, skey) = paths(cluster, signer(name));
        let auth = out.join(format!("{name}.auth"));
        run(
            Command::new("sign-efi-sig-list")
                .args(["-g", &guid, "-k"])
                .arg(&skey)
                .arg("-c")
                .arg(&scrt)
                .arg(name)
                .arg(&esl)
                .arg(&auth),
            "sign-efi-sig-list",
        )?;
        written.extend([pem, der, esl, auth]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_guid_is_a_fixed_version_4_uuid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let c = crate::config::load(&root.join("cluster.toml")).unwrap();
        let g = owner_guid(&c);
        assert_eq!(g, owner_guid(&c));
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
        assert_eq!(&g[19..20], "8");
        assert_eq!(signer("db"), "KEK");
        assert_eq!(signer("KEK"), "PK");
        assert_eq!(signer("PK"), "PK");
    }
}
