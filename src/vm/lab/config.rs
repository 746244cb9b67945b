//! The lab's own `cluster.toml`, rewritten from the user's: paths made absolute, state and secrets inside the
//! lab directory, the DHCP mode chosen; and variants of it with another profiles directory.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::options::Options;
use crate::config::{Cluster, DhcpMode};

/// Writes the lab's cluster.toml: the user's file with `[paths]` made absolute (profiles, ipxe, images, cache
/// from the user's cluster or the overrides; state and secrets inside the lab dir) and `dhcp_mode` set.
/// The lab's TPM "manufacturer" CA (made by `vm::swtpm::provision` on first use).
pub(super) fn tpm_ca_dir(opts: &Options) -> PathBuf {
    opts.dir.join("tpm-ca")
}

pub(super) fn write_config(opts: &Options, user: &Cluster) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("reading {}", opts.config.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", opts.config.display()))?;
    // The lab's config lives in the lab dir: a path relative to the user's working directory (`-c cluster.toml`
    // gives `./profiles`) would be read relative to the lab dir instead.
    let abs = |p: &Path| -> String {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let images = opts.images.clone().unwrap_or(user.paths.images.clone());
    let cache = opts.cache.clone().unwrap_or(user.paths.cache.clone());
    let paths = toml_edit::table();
    doc["paths"] = paths;
    doc["paths"]["profiles"] = toml_edit::value(abs(&user.paths.profiles));
    doc["paths"]["ipxe"] = toml_edit::value(abs(&user.paths.ipxe));
    doc["paths"]["images"] = toml_edit::value(abs(&images));
    doc["paths"]["cache"] = toml_edit::value(abs(&cache));
    doc["paths"]["state"] = toml_edit::value(abs(&opts.dir.join("state")));
    doc["paths"]["secrets"] = toml_edit::value(abs(&opts.dir.join("secrets")));
    // The lab's network is private: always end iPXE's IPv6 wait there.
    doc["network"]["router_advertisements"] = toml_edit::value(true);
    doc["network"]["dhcp_mode"] = toml_edit::value(match opts.dhcp {
        DhcpMode::Full => "full",
        DhcpMode::Proxy => "proxy",
    });
    if opts.secure_boot {
        if doc.get("secure_boot").is_none() {
            doc["secure_boot"] = toml_edit::table();
        }
        doc["secure_boot"]["enabled"] = toml_edit::value(true);
        // A machine the lab boots with BIOS firmware cannot enforce Secure Boot: it boots through iPXE as a
        // machine without Secure Boot does (one lab run proves both chains side by side).
        for_each_machine(&mut doc, |host, t| {
            if opts.firmware_for(host) == crate::vm::qemu::Firmware::Bios {
                t["secure_boot"] = toml_edit::value(false);
            }
        });
    }
    if opts.tpm {
        // docs/attestation.md: every machine enrolls by TPM; EK certificates come from the lab's CA.
        if doc.get("attestation").is_none() {
            doc["attestation"] = toml_edit::table();
        }
        doc["attestation"]["identity"] = toml_edit::value("tpm");
        let mut cas = toml_edit::Array::new();
        cas.push(abs(&crate::vm::swtpm::issuer_cert(&tpm_ca_dir(opts))));
        doc["attestation"]["manufacturer_ca"] = toml_edit::value(cas);
        // Each amd64 machine the lab boots with UEFI firmware gets its TPM now (kept across runs) and its EK pinned:
        // no approval step, and another TPM claiming the machine is refused before and after it enrolled.
        let mut failed = None;
        let secure_by_role = secure_boot_roles(&doc);
        let mut unbound = Vec::new();
        for_each_machine(&mut doc, |host, t| {
            let arm = t.get("arch").and_then(|a| a.as_str()) == Some("arm64");
            // A machine this lab does not boot gets no TPM (each one costs a swtpm_setup run); nor does one it
            // boots with BIOS firmware (the attestation policy checks UEFI boot applications, docs/attestation.md).
            let booted = opts
                .nodes
                .as_ref()
                .is_none_or(|n| n.iter().any(|h| h == host));
            if arm || !booted || opts.firmware_for(host) == crate::vm::qemu::Firmware::Bios {
                t["identity"] = toml_edit::value("address");
                return;
            }
            // A UEFI machine without Secure Boot proves iPXE and its kernel only (docs/attestation.md): the lab
            // boots one on purpose (that chain), and says so in its configuration.
            let role = t.get("role").and_then(|r| r.as_str()).unwrap_or_default();
            let secure = t
                .get("secure_boot")
                .and_then(|v| v.as_bool())
                .unwrap_or_else(|| secure_by_role.iter().any(|r| r == role));
            if !secure {
                unbound.push(host.to_string());
            }
            let state = opts.dir.join("vms").join(host).join("tpm");
            let ek = crate::vm::swtpm::provision(&state, &tpm_ca_dir(opts))
                .and_then(|()| crate::vm::swtpm::ek_sha256(&state));
            match ek {
                Ok(ek) => t["ek_sha256"] = toml_edit::value(ek),
                Err(e) => failed = failed.take().or(Some(e)),
            }
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        if !unbound.is_empty() {
            doc["attestation"]["allow_unbound_initrd"] = toml_edit::value(true);
            if opts.verbose {
                eprintln!(
                    "lab: {} enroll by TPM without Secure Boot (iPXE → kernel: initrd and command line not proven; \
                     [attestation] allow_unbound_initrd = true, docs/attestation.md)",
                    unbound.join(", ")
                );
            }
        }
    }
    let out = opts.dir.join("cluster.toml");
    std::fs::write(&out, doc.to_string()).with_context(|| format!("writing {}", out.display()))?;
    // The artifact lock lives beside the config: let the lab's config see the user's.
    if user.paths.lock.exists() {
        let link = opts.dir.join(
            user.paths
                .lock
                .file_name()
                .unwrap_or_else(|| std::ffi::OsStr::new("imgbuild.lock")),
        );
        let _ = std::fs::remove_file(&link);
        std::fs::copy(&user.paths.lock, &link)
            .with_context(|| format!("copying {}", user.paths.lock.display()))?;
    }
    Ok(out)
}

/// Calls `f` with the hostname and table of every `[[machines]]` entry of `doc` that has a hostname.
fn for_each_machine(
    doc: &mut toml_edit::DocumentMut,
    mut f: impl FnMut(&str, &mut toml_edit::Table),
) {
    if let Some(ms) = doc
        .get_mut("machines")
        .and_then(|m| m.as_array_of_tables_mut())
    {
        for t in ms.iter_mut() {
            let Some(host) = t
                .get("hostname")
                .and_then(|h| h.as_str())
                .map(str::to_string)
            else {
                continue;
            };
            f(&host, t);
        }
    }
}

/// The roles whose machines boot with Secure Boot unless their entry says otherwise: `[secure_boot] roles` (every
/// role when absent) if `[secure_boot] enabled`, else none (as `config::validate::secure_boot` resolves them).
fn secure_boot_roles(doc: &toml_edit::DocumentMut) -> Vec<String> {
    let sb = doc.get("secure_boot");
    if !sb
        .and_then(|t| t.get("enabled"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
    {
        return Vec::new();
    }
    match sb.and_then(|t| t.get("roles")).and_then(|r| r.as_array()) {
        Some(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        None => crate::config::Role::ALL.map(|r| r.to_string()).to_vec(),
    }
}

/// Writes `out`: the lab's `config` with `[paths] profiles` pointing at `profiles` (a second image of the same
/// cluster for upgrade / rollback scenarios).
pub(super) fn write_variant(config: &Path, profiles: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    doc["paths"]["profiles"] = toml_edit::value(profiles.display().to_string());
    std::fs::write(out, doc.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's example cluster, and lab options for it in a fresh directory (lab dir and cache inside).
    fn example_lab() -> (tempfile::TempDir, Cluster, Options) {
        let d = tempfile::tempdir().unwrap();
        let user_cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        let user = crate::config::load(&user_cfg).unwrap();
        let mut o = Options::new(&user_cfg);
        o.dir = d.path().join("lab");
        o.cache = Some(d.path().join("cache"));
        std::fs::create_dir_all(&o.dir).unwrap();
        (d, user, o)
    }

    #[test]
    fn with_tpm_every_amd64_uefi_machine_has_its_own_pinned_tpm_and_the_lab_ca() {
        let (_dir, user, mut o) = example_lab();
        o.tpm = true;
        o.firmware = crate::vm::qemu::Firmware::Uefi;
        let lab = crate::config::load(&write_config(&o, &user).unwrap()).unwrap();
        assert_eq!(
            lab.attestation.manufacturer_ca,
            vec![crate::vm::swtpm::issuer_cert(&tpm_ca_dir(&o))]
        );
        let pins: std::collections::BTreeSet<_> =
            lab.machines.iter().map(|m| m.ek_sha256).collect();
        assert_eq!(pins.len(), lab.machines.len(), "each machine its own EK");
        assert!(
            lab.machines
                .iter()
                .all(|m| m.identity == crate::config::Identity::Tpm && m.ek_sha256.is_some())
        );
        // None boots with Secure Boot: the iPXE chain's weaker proof is accepted in so many words.
        assert!(lab.attestation.allow_unbound_initrd);
        // A second run keeps the TPMs (and so the pins).
        let again = crate::config::load(&write_config(&o, &user).unwrap()).unwrap();
        assert_eq!(
            again
                .machines
                .iter()
                .map(|m| m.ek_sha256)
                .collect::<Vec<_>>(),
            lab.machines.iter().map(|m| m.ek_sha256).collect::<Vec<_>>()
        );
    }

    #[test]
    fn machines_booted_with_bios_have_neither_secure_boot_nor_a_tpm() {
        let (_dir, user, mut o) = example_lab();
        o.secure_boot = true;
        o.tpm = true;
        o.nodes = Some(vec!["master-1".into(), "worker-1".into()]);
        o.firmware_of = vec![("worker-1".into(), crate::vm::qemu::Firmware::Uefi)];
        let lab = crate::config::load(&write_config(&o, &user).unwrap()).unwrap();
        let m = lab.machine_by_hostname("master-1").unwrap();
        assert!(!m.secure_boot);
        assert_eq!(m.identity, crate::config::Identity::Address);
        let w = lab.machine_by_hostname("worker-1").unwrap();
        assert!(w.secure_boot);
        assert_eq!(w.identity, crate::config::Identity::Tpm);
        assert!(w.ek_sha256.is_some());
        // The only TPM machine boots its signed UKI: nothing weaker is accepted.
        assert!(!lab.attestation.allow_unbound_initrd);
    }

    #[test]
    fn lab_config_keeps_the_cluster_and_redirects_state() {
        let (d, user, mut o) = example_lab();
        o.dhcp = DhcpMode::Proxy;
        let p = write_config(&o, &user).unwrap();
        let lab = crate::config::load(&p).unwrap();
        assert_eq!(lab.network.dhcp_mode, DhcpMode::Proxy);
        assert!(lab.network.router_advertisements);
        assert_eq!(lab.paths.state, o.dir.join("state"));
        assert_eq!(lab.paths.secrets, o.dir.join("secrets"));
        assert_eq!(lab.paths.cache, d.path().join("cache"));
        assert_eq!(lab.paths.images, user.paths.images);
        assert_eq!(lab.paths.profiles, user.paths.profiles);
        assert_eq!(lab.machines.len(), user.machines.len());
        // The image inputs (cluster, base, artifacts) are unchanged, so images are shared with the user's.
        assert_eq!(
            serde_json::to_string(&lab.cluster).unwrap(),
            serde_json::to_string(&user.cluster).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&lab.artifacts).unwrap(),
            serde_json::to_string(&user.artifacts).unwrap()
        );
    }

    #[test]
    fn lab_config_paths_are_absolute_when_the_user_config_path_is_relative() {
        // `./scripts/lab` runs `imgbuild -c cluster.toml lab`: every path must still point at the user's files.
        let d = tempfile::tempdir().unwrap();
        let user_cfg = Path::new("cluster.toml");
        let user = crate::config::load(user_cfg).unwrap();
        let mut o = Options::new(user_cfg);
        o.dir = d.path().join("lab");
        std::fs::create_dir_all(&o.dir).unwrap();
        let p = write_config(&o, &user).unwrap();
        let lab = crate::config::load(&p).unwrap();
        for path in [
            &lab.paths.profiles,
            &lab.paths.ipxe,
            &lab.paths.images,
            &lab.paths.cache,
        ] {
            assert!(path.is_absolute(), "{}", path.display());
        }
        assert!(lab.paths.profiles.join("master/profile.toml").is_file());
        assert!(lab.paths.ipxe.is_dir());
        let relative_dir = Options::new(user_cfg);
        assert!(
            relative_dir.dir.is_relative(),
            "the default lab dir is beside the config"
        );
    }
}
