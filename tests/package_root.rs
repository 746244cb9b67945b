//! The Debian package (`scripts/package`): it builds, `lintian` finds no error in it, and installed with apt
//! into a fresh Debian root made by mmdebstrap it gives the files, the `imgbuild` system user, its directories
//! (secrets 0700) and a unit `systemd-analyze verify` accepts and `systemd-analyze security` scores. The
//! packaged binary validates the packaged configuration in the chroot: nothing from the source checkout is
//! needed at run time. Needs root (mmdebstrap's root mode, chroot) and the Debian mirror.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{repo, run_ok as run};

/// The uid of `user` in the root's /etc/passwd and its login shell.
fn passwd(root: &Path, user: &str) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f[0] == user).then(|| (f[2].parse().unwrap(), f[6].to_string()))
    })
}

#[test]
fn root_package_builds_lints_clean_and_installs_into_a_fresh_debian_root() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let deb = run(Command::new(repo().join("scripts/package"))
        .arg(&out)
        .env("IMGBUILD_BIN", env!("CARGO_BIN_EXE_imgbuild")));
    let deb = PathBuf::from(deb.lines().last().unwrap().trim());
    assert!(deb.is_file(), "{}", deb.display());
    eprintln!("package built in {:.1}s", started.elapsed().as_secs_f64());

    // lintian: warnings are shown, an error fails.
    let lint = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .unwrap();
    let lint_text = String::from_utf8_lossy(&lint.stdout).to_string();
    assert!(lint.status.success(), "lintian errors:\n{lint_text}");
    assert!(
        !lint_text.lines().any(|l| l.starts_with("E:")),
        "{lint_text}"
    );
    eprintln!("lintian:\n{lint_text}");

    // A fresh Debian root; downloaded packages are kept between runs in target/tmp (like the image cache).
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("imgbuild-package-apt-cache");
    std::fs::create_dir_all(&cache).unwrap();
    // The root on tmpfs when there is one (dpkg's many small writes and syncs: ~2.5x faster here).
    let shm = std::path::Path::new("/dev/shm");
    let rootdir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let root = rootdir.path().join("root");
    let name = deb.file_name().unwrap().to_str().unwrap().to_string();
    run(Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--include=systemd",
            "--skip=essential/unlink",
            "--dpkgopt=force-unsafe-io",
            "--aptopt=Acquire::Languages \"none\"",
        ])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives",
            cache.display()
        ))
        .arg(format!("--customize-hook=copy-in {} /tmp", deb.display()))
        .arg(format!(
            "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/{name}"
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            cache.display()
        ))
        .arg("--customize-hook=chroot \"$1\" apt-get clean")
        .arg("bookworm")
        .arg(&root));
    eprintln!(
        "installed in a fresh root after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    for f in [
        "usr/bin/imgbuild",
        "usr/share/imgbuild/profiles/base/profile.toml",
        "usr/share/imgbuild/profiles/worker/profile.toml",
        "usr/share/imgbuild/ipxe/boot.ipxe.j2",
        "usr/share/man/man1/imgbuild.1.gz",
        "usr/share/doc/imgbuild/copyright",
        "usr/share/doc/imgbuild/install.md",
        "etc/imgbuild/cluster.toml",
        "lib/systemd/system/imgbuild.service",
        "usr/lib/ipxe/undionly.kpxe",
    ] {
        assert!(root.join(f).is_file(), "{f} missing after installation");
    }
    let (uid, shell) = passwd(&root, "imgbuild").expect("no imgbuild user");
    assert!(uid < 1000, "imgbuild is not a system user: uid {uid}");
    assert_eq!(shell, "/usr/sbin/nologin");
    for (d, mode) in [
        ("var/lib/imgbuild", 0o750),
        ("var/lib/imgbuild/state", 0o750),
        ("var/lib/imgbuild/secrets", 0o700),
        ("var/cache/imgbuild/images", 0o755),
    ] {
        let m = std::fs::metadata(root.join(d)).unwrap();
        assert_eq!(m.uid(), uid, "{d} is not owned by imgbuild");
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{d}");
    }

    // The packaged binary reads the packaged configuration (its default when ./cluster.toml does not exist),
    // profiles and templates: no source checkout.
    let check = run(Command::new("chroot")
        .arg(&root)
        .args(["/usr/bin/imgbuild", "check"])
        .env_remove("IMGBUILD_CONFIG"));
    assert!(check.contains("/etc/imgbuild/cluster.toml: ok"), "{check}");
    eprintln!("imgbuild check in the chroot: {check}");

    let unit = "/lib/systemd/system/imgbuild.service";
    let verify = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(unit));
    assert!(verify.trim().is_empty(), "systemd-analyze verify: {verify}");
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("imgbuild.service"));
    let line = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{security}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    eprintln!("{line}");
    // docs/install.md states 1.6; a change to the unit that weakens it fails here.
    assert!(score <= 2.0, "{security}");
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
}
