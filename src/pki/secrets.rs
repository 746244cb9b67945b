//! The `secrets/` directory: everything a cluster must keep private, generated once by `imgbuild secrets init`.
//!
//! Layout (kubeadm's file names, so the directory can be copied into `/etc/kubernetes/pki` as is):
//! `ca.crt`, `ca.key`, `front-proxy-ca.crt`, `front-proxy-ca.key`, `etcd/ca.crt`, `etcd/ca.key`, `sa.key`,
//! `sa.pub`; plus `token.json` (the current bootstrap token and its expiry), `discovery-hash`
//! (`sha256:<hex>`) and `publish.key` (the key the first master signs token renewals with); and the node API's
//! trust: `provisioning-ca.crt` / `.key` (the HTTPS server's CA, `super::provisioning`) and `report.key` (the
//! master key of per-node report keys, `super::report_auth`).
//! Directories are 0700, files 0600. Nothing here ever goes into an image.

use std::path::{Path, PathBuf};

use rand::Rng;
use serde::Serialize;

use super::ca::{self, CertAndKey};
use super::token::{self, BootstrapToken};
use super::{PkiError, io_err, write_atomic};

/// The CA files a control-plane node needs (relative to the pki directory), in kubeadm's names.
pub const CA_FILES: &[&str] = &[
    "ca.crt",
    "ca.key",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
    "sa.key",
    "sa.pub",
];

/// The files `secrets init` writes besides the CA set: the token, the discovery hash, the publish key.
pub const OTHER_FILES: &[&str] = &["token.json", "discovery-hash", "publish.key"];

/// The files of the node API's trust (`provisioning-ca.crt` and `.key`, `report.key`). `secrets init` adds the
/// missing ones to a directory that already holds the cluster's secrets (made by an older imgbuild), and keeps a
/// provisioning CA already there (the lab keeps one across runs so its images stay cached).
pub const TRUST_FILES: &[&str] = &[
    super::provisioning::PROVISIONING_CA_CERT,
    super::provisioning::PROVISIONING_CA_KEY,
    super::report_auth::REPORT_KEY_FILE,
];

/// Every file `secrets init` writes.
pub fn all_files() -> impl Iterator<Item = &'static str> {
    CA_FILES
        .iter()
        .chain(OTHER_FILES)
        .chain(TRUST_FILES)
        .copied()
}

/// Writes whichever of [`TRUST_FILES`] is missing: the provisioning CA (both files, or neither) and the report
/// master key. Returns the names written.
fn init_trust(dir: &Path) -> Result<Vec<&'static str>, PkiError> {
    use super::provisioning::{PROVISIONING_CA_CERT, PROVISIONING_CA_KEY};
    let mut written = Vec::new();
    let crt = dir.join(PROVISIONING_CA_CERT).exists();
    let key = dir.join(PROVISIONING_CA_KEY).exists();
    if crt != key {
        return Err(PkiError::Invalid {
            path: dir.join(PROVISIONING_CA_KEY).display().to_string(),
            message: format!(
                "{PROVISIONING_CA_CERT} and {PROVISIONING_CA_KEY} go together; restore the missing one, or move both \
                 away and run `imgbuild secrets init` again (then rebuild the images: they carry the CA certificate)"
            ),
        });
    }
    if !crt {
        let ca = super::provisioning::new_ca()?;
        write_atomic(&dir.join(PROVISIONING_CA_KEY), ca.key_pem.as_bytes(), 0o600)?;
        write_atomic(
            &dir.join(PROVISIONING_CA_CERT),
            ca.cert_pem.as_bytes(),
            0o600,
        )?;
        written.extend([PROVISIONING_CA_CERT, PROVISIONING_CA_KEY]);
    }
    let rk = super::report_auth::REPORT_KEY_FILE;
    if !dir.join(rk).exists() {
        let k: [u8; 32] = rand::rng().random();
        write_atomic(
            &dir.join(rk),
            format!("{}\n", hex::encode(k)).as_bytes(),
            0o600,
        )?;
        written.push(rk);
    }
    Ok(written)
}

/// The loaded secrets.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// The `secrets/` directory they were read from (`[paths] secrets`).
    pub dir: PathBuf,
    /// The cluster CA (`ca.crt`, `ca.key`, `CN=kubernetes`): signs the API server's and every client certificate.
    pub ca: CertAndKey,
    /// The front-proxy CA (`front-proxy-ca.crt`, `.key`): signs the API server's aggregation-layer client
    /// certificate.
    pub front_proxy_ca: CertAndKey,
    /// The etcd CA (`etcd/ca.crt`, `etcd/ca.key`): signs etcd's server and peer certificates.
    pub etcd_ca: CertAndKey,
    /// The service-account signing key (`sa.key`), an RSA private key in PEM.
    pub sa_key: String,
    /// Its public key (`sa.pub`), PEM, with which API servers verify service-account tokens.
    pub sa_pub: String,
    /// The current kubeadm bootstrap token and its expiry (`token.json`).
    pub token: BootstrapToken,
    /// kubeadm's CA discovery hash of `ca.crt`, `sha256:<hex>` (`discovery-hash`), for `kubeadm join`.
    pub discovery_hash: String,
    /// Hex text; the HMAC key of token publications (see [`super::enroll`]).
    pub publish_key: String,
    /// Hex text (`report.key`); the master key each node's report key is derived from
    /// ([`super::report_auth::node_key`]).
    pub report_key: String,
}

/// What `secrets init` made (printed to the user; holds no secret).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The `secrets/` directory written.
    pub dir: PathBuf,
    /// kubeadm's CA discovery hash, `sha256:<hex>`: public, safe to print.
    pub discovery_hash: String,
    /// When the bootstrap token expires, Unix seconds.
    pub token_expires_unix: u64,
}

pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Generates every secret into `dir`. Refuses if any of the files already exists.
pub fn init(dir: &Path) -> Result<Summary, PkiError> {
    let cluster_files: Vec<&str> = CA_FILES.iter().chain(OTHER_FILES).copied().collect();
    let present: Vec<&str> = cluster_files
        .iter()
        .copied()
        .filter(|f| dir.join(f).exists())
        .collect();
    if present.len() == cluster_files.len() {
        // An older secrets directory: add the node API's trust files, nothing else.
        let written = init_trust(dir)?;
        if written.is_empty() {
            return Err(PkiError::Exists {
                dir: dir.display().to_string(),
                file: cluster_files[0].to_string(),
            });
        }
        let s = load(dir)?;
        return Ok(Summary {
            dir: dir.to_path_buf(),
            discovery_hash: s.discovery_hash,
            token_expires_unix: s.token.expires_unix,
        });
    }
    if let Some(f) = present.first() {
        return Err(PkiError::Exists {
            dir: dir.display().to_string(),
            file: f.to_string(),
        });
    }
    ensure_dir(dir)?;
    ensure_dir(&dir.join("etcd"))?;
    init_trust(dir)?;
    let cluster_ca = ca::new_ca("kubernetes")?;
    let front = ca::new_ca("front-proxy-ca")?;
    let etcd = ca::new_ca("etcd-ca")?;
    let (sa_key, sa_pub) = ca::service_account_keys()?;
    let hash = ca::discovery_hash(&cluster_ca.cert_pem)?;
    let tok = BootstrapToken {
        token: token::generate(),
        expires_unix: token::now_unix() + token::DEFAULT_TTL_SECS,
        source: "secrets init".into(),
        // Not published yet: the first master's first publication is always newer.
        published_unix: 0,
    };
    let key: [u8; 32] = rand::rng().random();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("ca.crt", cluster_ca.cert_pem.into_bytes()),
        ("ca.key", cluster_ca.key_pem.into_bytes()),
        ("front-proxy-ca.crt", front.cert_pem.into_bytes()),
        ("front-proxy-ca.key", front.key_pem.into_bytes()),
        ("etcd/ca.crt", etcd.cert_pem.into_bytes()),
        ("etcd/ca.key", etcd.key_pem.into_bytes()),
        ("sa.key", sa_key.into_bytes()),
        ("sa.pub", sa_pub.into_bytes()),
        ("discovery-hash", format!("{hash}\n").into_bytes()),
        (
            "publish.key",
            format!("{}\n", hex::encode(key)).into_bytes(),
        ),
        // Last: its presence marks a complete set.
        ("token.json", token_json(&tok)),
    ];
    for (name, bytes) in files {
        write_atomic(&dir.join(name), &bytes, 0o600)?;
    }
    Ok(Summary {
        dir: dir.to_path_buf(),
        discovery_hash: hash,
        token_expires_unix: tok.expires_unix,
    })
}

fn token_json(t: &BootstrapToken) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(t).expect("token serializes");
    v.push(b'\n');
    v
}

fn read(dir: &Path, name: &str) -> Result<String, PkiError> {
    let p = dir.join(name);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PkiError::Missing {
            dir: dir.display().to_string(),
            file: name.to_string(),
        }),
        Err(e) => Err(io_err(&p)(e)),
    }
}

/// Reads the token store (`token.json`).
pub fn load_token(dir: &Path) -> Result<BootstrapToken, PkiError> {
    let text = read(dir, "token.json")?;
    let t: BootstrapToken = serde_json::from_str(&text).map_err(|e| PkiError::Invalid {
        path: dir.join("token.json").display().to_string(),
        message: format!(
            "{e}; it holds {{\"token\": \"abcdef.0123456789abcdef\", \"expires_unix\": N}}"
        ),
    })?;
    if !token::is_valid(&t.token) {
        return Err(PkiError::Invalid {
            path: dir.join("token.json").display().to_string(),
            message: "the token is not of the form [a-z0-9]{6}.[a-z0-9]{16}".into(),
        });
    }
    Ok(t)
}

/// Replaces the token store atomically.
pub fn save_token(dir: &Path, t: &BootstrapToken) -> Result<(), PkiError> {
    write_atomic(&dir.join("token.json"), &token_json(t), 0o600)
}

/// Loads every secret, checking the discovery hash still matches the CA.
pub fn load(dir: &Path) -> Result<Secrets, PkiError> {
    let pair = |c: &str, k: &str| -> Result<CertAndKey, PkiError> {
        Ok(CertAndKey {
            cert_pem: read(dir, c)?,
            key_pem: read(dir, k)?,
        })
    };
    let s = Secrets {
        dir: dir.to_path_buf(),
        ca: pair("ca.crt", "ca.key")?,
        front_proxy_ca: pair("front-proxy-ca.crt", "front-proxy-ca.key")?,
        etcd_ca: pair("etcd/ca.crt", "etcd/ca.key")?,
        sa_key: read(dir, "sa.key")?,
        sa_pub: read(dir, "sa.pub")?,
        token: load_token(dir)?,
        discovery_hash: read(dir, "discovery-hash")?.trim().to_string(),
        publish_key: read(dir, "publish.key")?.trim().to_string(),
        report_key: read(dir, super::report_auth::REPORT_KEY_FILE)?
            .trim()
            .to_string(),
    };
    let computed = ca::discovery_hash(&s.ca.cert_pem)?;
    if computed != s.discovery_hash {
        return Err(PkiError::Invalid {
            path: dir.join("discovery-hash").display().to_string(),
            message: format!(
                "does not match ca.crt (computed {computed}); the CA was replaced by hand?"
            ),
        });
    }
    Ok(s)
}

impl Secrets {
    /// The CA files for a control-plane node: kubeadm file name → PEM text.
    pub fn ca_files(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("ca.crt", self.ca.cert_pem.as_str()),
            ("ca.key", self.ca.key_pem.as_str()),
            ("front-proxy-ca.crt", self.front_proxy_ca.cert_pem.as_str()),
            ("front-proxy-ca.key", self.front_proxy_ca.key_pem.as_str()),
            ("etcd/ca.crt", self.etcd_ca.cert_pem.as_str()),
            ("etcd/ca.key", self.etcd_ca.key_pem.as_str()),
            ("sa.key", self.sa_key.as_str()),
            ("sa.pub", self.sa_pub.as_str()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_private_files_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("secrets");
        let sum = init(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(dir.join("etcd"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        for f in all_files() {
            let m = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o600, "{f}");
        }
        let s = load(&dir).unwrap();
        assert_eq!(s.discovery_hash, sum.discovery_hash);
        assert!(token::is_valid(&s.token.token));
        assert!(s.token.expires_unix > token::now_unix());
        assert_eq!(s.publish_key.len(), 64);
        let before = std::fs::read(dir.join("ca.key")).unwrap();
        let err = init(&dir).unwrap_err().to_string();
        assert!(
            err.contains("refusing to overwrite") && err.contains("rotate"),
            "{err}"
        );
        assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), before);
        // One missing file is not a reason to regenerate the rest.
        std::fs::remove_file(dir.join("publish.key")).unwrap();
        assert!(init(&dir).is_err());
        assert!(load(&dir).unwrap_err().to_string().contains("secrets init"));
    }

    #[test]
    fn load_rejects_a_replaced_ca() {
        let d = tempfile::tempdir().unwrap();
        init(d.path()).unwrap();
        let other = ca::new_ca("kubernetes").unwrap();
        std::fs::write(d.path().join("ca.crt"), other.cert_pem).unwrap();
        assert!(
            load(d.path())
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
    }
}
