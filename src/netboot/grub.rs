//! The arm64 netboot loaders. Debian ships no arm64 iPXE, so arm64 machines boot GRUB: the server makes
//! `grubnetaa64.efi` (PXE) and `grubhttpaa64.efi` (UEFI HTTP Boot: also asks DHCP, as GRUB 2.06 takes no network
//! settings from an HTTP Boot) at start-up with `grub-mkimage` from Debian's arm64 GRUB modules (`network.grub_modules`,
//! extracted from `grub-efi-arm64-bin` by `scripts/setup`) and an embedded configuration rendered from
//! `ipxe/grub-embedded.cfg.j2`. That configuration only says where to ask: `GET /grub/{mac}` on the server,
//! which answers from the boot decision like `/ipxe/{mac}` does for iPXE (templates `ipxe/*.grub.j2`).
//!
//! The image lands in `state/boot/` (written to a temporary file, then renamed); TFTP and `GET /boot/` serve it
//! from there under its allowlisted name.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::boot::{GRUB_ARM64_BOOTFILE, GRUB_ARM64_HTTP_BOOTFILE, made_loader_dir};
use crate::config::Cluster;
use crate::template::{Engine, TemplateError};

/// The GRUB modules built into the image: network boot (efinet, net, tftp, http), the Linux loader (with gzio
/// for Debian's compressed arm64 kernels), and the commands the templates use.
pub const MODULES: &[&str] = &[
    "efinet",
    "net",
    "tftp",
    "http",
    "linux",
    "gzio",
    "normal",
    "configfile",
    "echo",
    "sleep",
    "test",
    "reboot",
];

/// The template of the configuration embedded in the image.
pub const EMBEDDED_TEMPLATE: &str = "ipxe/grub-embedded.cfg.j2";

/// Why the server could not make the arm64 GRUB loaders at start-up; arm64 machines cannot netboot until fixed.
#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    /// `network.grub_modules` does not hold Debian's arm64-efi GRUB modules: run `./scripts/setup` or point
    /// the key at such a directory.
    #[error(
        "{dir}: no arm64 GRUB modules ({detail}); arm64 machines cannot boot. Run ./scripts/setup (it extracts \
         Debian's grub-efi-arm64-bin there) or set network.grub_modules to a directory holding arm64-efi modules"
    )]
    Modules {
        /// The configured module directory (`network.grub_modules`).
        dir: PathBuf,
        /// What is wrong, e.g. `moddep.lst missing` (it checks `moddep.lst`, `kernel.img`, `efinet.mod`,
        /// `http.mod`).
        detail: String,
    },
    /// The embedded configuration template `ipxe/grub-embedded.cfg.j2` failed to render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Writing the embedded configuration or the loader under `state/boot/` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    #[error(
        "grub-mkimage failed ({status}): {stderr}; install Debian's grub-common (./scripts/setup installs it)"
    )]
    /// `grub-mkimage` could not be started or exited with an error: install Debian's `grub-common`.
    Mkimage {
        /// Its exit status, or `not started` when it could not be run.
        status: String,
        /// Its standard error (trimmed), or why it could not be started.
        stderr: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GrubError + '_ {
    move |source| GrubError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The embedded configuration for `cluster`; `http_boot`: for the HTTP Boot loader (asks DHCP first).
pub fn embedded_config(
    cluster: &Cluster,
    engine: &Engine,
    http_boot: bool,
) -> Result<String, TemplateError> {
    let net = &cluster.network;
    engine.render(
        EMBEDDED_TEMPLATE,
        &json!({
            "server": net.server.to_string(),
            "http_device": net.grub_http_device(),
            "cluster": cluster.cluster.name,
            "http_boot": http_boot,
        }),
    )
}

/// Checks that `network.grub_modules` holds arm64 GRUB modules.
pub fn check_modules(cluster: &Cluster) -> Result<(), GrubError> {
    let mods = &cluster.network.grub_modules;
    for f in ["moddep.lst", "kernel.img", "efinet.mod", "http.mod"] {
        if !mods.join(f).is_file() {
            return Err(GrubError::Modules {
                dir: mods.clone(),
                detail: format!("{f} missing"),
            });
        }
    }
    Ok(())
}

/// Makes both loaders in `state/boot/` for `cluster` and returns their paths.
pub fn make(cluster: &Cluster, engine: &Engine) -> Result<Vec<PathBuf>, GrubError> {
    check_modules(cluster)?;
    [
        (GRUB_ARM64_BOOTFILE, false),
        (GRUB_ARM64_HTTP_BOOTFILE, true),
    ]
    .into_iter()
    .map(|(name, http_boot)| make_one(cluster, engine, name, http_boot))
    .collect()
}

fn make_one(
    cluster: &Cluster,
    engine: &Engine,
    name: &str,
    http_boot: bool,
) -> Result<PathBuf, GrubError> {
    let mods = &cluster.network.grub_modules;
    let out_dir = made_loader_dir(cluster);
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    let cfg_text = embedded_config(cluster, engine, http_boot)?;
    let tmp = tempfile::Builder::new()
        .prefix(".grub-")
        .tempdir_in(&out_dir)
        .map_err(io(&out_dir))?;
    let cfg = tmp.path().join("embedded.cfg");
    std::fs::write(&cfg, cfg_text).map_err(io(&cfg))?;
    let img = tmp.path().join(name);
    let out = Command::new("grub-mkimage")
        .arg("--format=arm64-efi")
        .arg(format!("--directory={}", mods.display()))
        .arg("--prefix=/grub")
        .arg(format!("--config={}", cfg.display()))
        .arg(format!("--output={}", img.display()))
        .args(MODULES)
        .output()
        .map_err(|e| GrubError::Mkimage {
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(GrubError::Mkimage {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let dest = out_dir.join(name);
    std::fs::rename(&img, &dest).map_err(io(&dest))?;
    Ok(dest)
}

/// At server start: makes the GRUB image when the inventory has arm64 machines. A failure is logged with its
/// fix and does not stop the server (amd64 machines still boot).
pub fn prepare(cluster: &Cluster, engine: &Engine) {
    if !cluster.has_arch(crate::config::Arch::Arm64) {
        return;
    }
    match make(cluster, engine) {
        Ok(files) => {
            for p in files {
                tracing::info!(file = %p.display(), "arm64 GRUB netboot loader made")
            }
        }
        Err(e) => tracing::error!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_asks_the_server_for_the_machine_s_config() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cluster = crate::config::load(&repo.join("cluster.toml")).unwrap();
        let engine = crate::template::engine_for(&cluster);
        let pxe = embedded_config(&cluster, &engine, false).unwrap();
        assert!(
            pxe.contains("configfile (http,10.77.0.1)/grub/${net_default_mac}"),
            "{pxe}"
        );
        assert!(!pxe.contains("net_bootp"), "{pxe}");
        let http = embedded_config(&cluster, &engine, true).unwrap();
        let (dhcp, fetch) = (
            http.find("net_bootp").unwrap(),
            http.find("configfile (http,10.77.0.1)/grub/by-address")
                .unwrap(),
        );
        assert!(dhcp < fetch, "{http}");
    }

    #[test]
    fn missing_modules_name_the_fix() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cluster = crate::config::load(&repo.join("cluster.toml")).unwrap();
        let d = tempfile::tempdir().unwrap();
        cluster.network.grub_modules = d.path().join("none");
        cluster.paths.state = d.path().join("state");
        let engine = crate::template::engine_for(&cluster);
        let e = make(&cluster, &engine).unwrap_err();
        assert!(matches!(e, GrubError::Modules { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("./scripts/setup") && e.contains("moddep.lst"),
            "{e}"
        );
    }
}
