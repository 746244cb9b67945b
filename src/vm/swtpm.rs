//! A software TPM for a lab VM (swtpm, TPM 2.0): provisioned once per VM with an EK certificate from the lab's
//! own "manufacturer" CA (`swtpm_localca`, made on first use in the lab directory), run as `swtpm socket` on a
//! unix socket QEMU connects to (`-tpmdev emulator`, a `tpm-crb` device); it exits when QEMU disconnects.
//! Machines then enroll by TPM attestation (docs/attestation.md), with `[attestation] manufacturer_ca` set to
//! [`issuer_cert`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::spawn::SpawnTied;

/// A software TPM could not be made or read: the file or tool named, and what went wrong (install swtpm,
/// swtpm-tools and tpm2-tools with `scripts/setup`).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct SwtpmError {
    /// The file, directory or tool concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub detail: String,
}

fn err(path: &Path, e: impl std::fmt::Display) -> SwtpmError {
    SwtpmError {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// The certificate that signs the lab TPMs' EK certificates (configure it as `[attestation] manufacturer_ca`).
pub fn issuer_cert(ca_dir: &Path) -> PathBuf {
    ca_dir.join("issuercert.pem")
}

/// Provisions a TPM state in `state` (EK and platform certificates from the CA in `ca_dir`, made there on first
/// use) unless it exists: a kept VM keeps its TPM, so its EK stays the same across lab runs.
pub fn provision(state: &Path, ca_dir: &Path) -> Result<(), SwtpmError> {
    if state.join("tpm2-00.permall").exists() {
        return Ok(());
    }
    for d in [state, ca_dir] {
        std::fs::create_dir_all(d).map_err(|e| err(d, e))?;
    }
    let conf = ca_dir.join("localca.conf");
    std::fs::write(
        &conf,
        format!(
            "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {1}\ncertserial = {0}/certserial\n",
            ca_dir.display(),
            issuer_cert(ca_dir).display()
        ),
    )
    .map_err(|e| err(&conf, e))?;
    let options = ca_dir.join("localca.options");
    std::fs::write(
        &options,
        "--platform-manufacturer imgbuild-lab\n--platform-version 2.1\n--platform-model QEMU\n",
    )
    .map_err(|e| err(&options, e))?;
    let setup = ca_dir.join("swtpm_setup.conf");
    std::fs::write(
        &setup,
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\n\
             create_certs_tool_options = {}\n",
            conf.display(),
            options.display()
        ),
    )
    .map_err(|e| err(&setup, e))?;
    let out = Command::new("swtpm_setup")
        .args([
            "--tpm2",
            "--create-ek-cert",
            "--create-platform-cert",
            "--overwrite",
            "--tpmstate",
        ])
        .arg(state)
        .arg("--config")
        .arg(&setup)
        .output()
        .map_err(|e| {
            err(
                Path::new("swtpm_setup"),
                format!("{e}; install swtpm and swtpm-tools"),
            )
        })?;
    if !out.status.success() {
        return Err(err(
            state,
            format!(
                "swtpm_setup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// The SHA-256 of the EK (RSA, TCG template) of the TPM in `state`, as `ek_sha256` in `cluster.toml` pins it:
/// read once by running the TPM on a loopback port with `tpm2_createek`, then kept in `state/ek.sha256`.
pub fn ek_sha256(state: &Path) -> Result<String, SwtpmError> {
    let kept = state.join("ek.sha256");
    if let Ok(h) = std::fs::read_to_string(&kept) {
        return Ok(h.trim().to_string());
    }
    let port =
        free_port_pair().ok_or_else(|| err(state, "no two free loopback ports for swtpm"))?;
    let mut tpm = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "startup-clear", "--tpmstate"])
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_tied()
        .map_err(|e| err(Path::new("swtpm"), format!("{e}; install swtpm")))?;
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port + 1)).is_err()
        && t0.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pub_file = state.join("ek.pub");
    let out = Command::new("tpm2_createek")
        .arg("-c")
        .arg(state.join("ek.ctx"))
        .args(["-G", "rsa", "-u"])
        .arg(&pub_file)
        .env(
            "TPM2TOOLS_TCTI",
            format!("swtpm:host=127.0.0.1,port={port}"),
        )
        .output();
    let _ = tpm.kill();
    let _ = tpm.wait();
    let out = out.map_err(|e| {
        err(
            Path::new("tpm2_createek"),
            format!("{e}; install tpm2-tools"),
        )
    })?;
    if !out.status.success() {
        return Err(err(
            state,
            format!(
                "tpm2_createek failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let ek = std::fs::read(&pub_file).map_err(|e| err(&pub_file, e))?;
    let h = hex::encode(sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        ek.get(2..).unwrap_or_default(),
    )));
    std::fs::write(&kept, &h).map_err(|e| err(&kept, e))?;
    Ok(h)
}

fn free_port_pair() -> Option<u16> {
    (0..50).find_map(|_| {
        let a = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        let p = a.local_addr().ok()?.port();
        (p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()).then_some(p)
    })
}

/// `swtpm socket` serving the TPM in `state` on the unix socket `sock` until QEMU disconnects.
pub fn command(state: &Path, sock: &Path) -> Command {
    let mut c = Command::new("swtpm");
    c.args(["socket", "--tpm2", "--terminate", "--tpmstate"])
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// QEMU's arguments for a TPM 2.0 CRB device backed by the swtpm on `sock`.
pub fn qemu_args(sock: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=chrtpm,path={}", sock.display()),
        "-tpmdev".into(),
        "emulator,id=tpm0,chardev=chrtpm".into(),
        "-device".into(),
        "tpm-crb,tpmdev=tpm0".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_gets_a_crb_device_on_the_socket() {
        let a = qemu_args(Path::new("/x/tpm.sock")).join(" ");
        assert!(a.contains("socket,id=chrtpm,path=/x/tpm.sock"), "{a}");
        assert!(a.contains("tpm-crb,tpmdev=tpm0"), "{a}");
    }

    #[test]
    fn a_provisioned_tpm_has_an_ek_certificate_from_the_lab_ca() {
        let d = tempfile::tempdir().unwrap();
        let (state, ca) = (d.path().join("state"), d.path().join("ca"));
        provision(&state, &ca).unwrap();
        assert!(state.join("tpm2-00.permall").exists());
        let issuer = std::fs::read_to_string(issuer_cert(&ca)).unwrap();
        assert!(issuer.contains("BEGIN CERTIFICATE"));
        // Kept: a second call changes nothing.
        let before = std::fs::read(state.join("tpm2-00.permall")).unwrap();
        provision(&state, &ca).unwrap();
        assert_eq!(
            before,
            std::fs::read(state.join("tpm2-00.permall")).unwrap()
        );
        // The EK pin is the SHA-256 of the EK's public area, the same at each read.
        let h = ek_sha256(&state).unwrap();
        assert_eq!(h.len(), 64);
        std::fs::remove_file(state.join("ek.sha256")).unwrap();
        assert_eq!(ek_sha256(&state).unwrap(), h);
    }
}
