//! The lab's own `cluster.toml`, rewritten from the user's: paths made absolute, state and secrets inside the
//! lab directory, the DHCP mode chosen; and variants of it with another profiles directory.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::options::Options;
use crate::config::{Cluster, DhcpMode};

/// Writes the lab's cluster.toml: the user's file with `[paths]` made absolute (profiles, ipxe, images, cache
/// from the user's cluster or the overrides; state and secrets inside the lab dir) and `dhcp_mode` set.
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

    #[test]
    fn lab_config_keeps_the_cluster_and_redirects_state() {
        let d = tempfile::tempdir().unwrap();
        let user_cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        let user = crate::config::load(&user_cfg).unwrap();
        let mut o = Options::new(&user_cfg);
        o.dir = d.path().join("lab");
        o.dhcp = DhcpMode::Proxy;
        o.cache = Some(d.path().join("cache"));
        std::fs::create_dir_all(&o.dir).unwrap();
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
