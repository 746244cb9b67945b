//! Cluster secrets and how nodes get them.
//!
//! - [`ca`]: the kubeadm CA set (cluster, front-proxy, etcd), the service-account key pair, client
//!   certificates and the discovery hash.
//! - [`token`]: kubeadm bootstrap tokens.
//! - [`secrets`]: the `secrets/` directory (`imgbuild secrets init`), written once, mode 0700/0600.
//! - [`kubeconfig`]: the admin kubeconfig for the user (`imgbuild kubeconfig`).
//! - [`provisioning`]: the provisioning CA and the server's HTTPS certificate issued from it.
//! - [`report_auth`]: who may report what about a node (address before enrollment, per-node HMAC after).
//! - [`enroll`]: the enrollment store, the rules (a pure `decide`), the bundle and the token publication
//!   signature. The HTTP routes nodes use at first boot (`/api/enroll/{mac}`, `/api/barrier/init-done`,
//!   `/api/token`) are `netboot::http::{enroll, barrier, token}`.
//! - [`attest`]: TPM-attested enrollment (EK, credential activation, quote, event log, policy).
//! - [`state_store`]: the server's shared state (enrollment, token, barrier, counters, pins, leases, event
//!   history) behind one interface: the state directory, or etcd for replicas.

pub mod attest;
pub mod ca;
pub mod enroll;
pub mod kubeconfig;
pub mod provisioning;
pub mod publish;
pub mod report_auth;
pub mod report_state;
pub mod secrets;
pub mod secureboot;
pub mod state_store;
pub mod token;

/// A secrets or enrollment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file under `secrets/` or `state/` failed (permissions, disk full, …).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Generating a key pair or certificate failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated (e.g. the cluster CA, the service-account key).
        what: String,
        /// The error from `rcgen`.
        #[source]
        source: rcgen::Error,
    },
    /// A stored secret or state file exists but cannot be used (bad PEM, malformed JSON, malformed token);
    /// fix or restore the file named.
    #[error("{path}: {message}")]
    Invalid {
        /// The file that is invalid.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    #[error(
        "secrets already exist in {dir} ({file} is there); refusing to overwrite them. To rotate: stop the server, \
         move {dir} away (keep it until every node has rejoined), run `imgbuild secrets init` again, then \
         `imgbuild enroll --reset <host>` for every node and rebuild the cluster"
    )]
    /// `imgbuild secrets init` found secrets already there and refuses to overwrite them (the message says how
    /// to rotate).
    Exists {
        /// The secrets directory (`[paths] secrets` in `cluster.toml`).
        dir: String,
        /// The existing file that was found first.
        file: String,
    },
    /// The shared state (`[state]`: the state directory or etcd) could not be read or written.
    #[error(transparent)]
    State(#[from] state_store::StateError),
    #[error("no secrets in {dir} ({file} is missing); run `imgbuild secrets init` first")]
    /// A secret file is absent: run `imgbuild secrets init` first.
    Missing {
        /// The secrets directory (`[paths] secrets` in `cluster.toml`).
        dir: String,
        /// The file that is missing.
        file: String,
    },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temp file in the same directory, fsync, rename, fsync the
/// directory) with permission bits `mode`. A crash leaves either the old or the new file, never a torn one.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    // The new name is durable only once the directory is: an error here is an error of the write (the enrollment
    // store must not hand out a bundle it may forget).
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}
