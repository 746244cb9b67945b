//! The lab's images: built (or taken from the shared cache) and pinned by running this same `imgbuild` binary
//! (`profile`, `pin`, `secrets`) on the lab's configuration.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::lock::FileLock;
use super::options::Options;
use super::state::Lab;
use crate::config::{Arch, Cluster, Machine, Role};
use crate::status::report;

/// Runs `imgbuild -c <config> <args>` and returns its stdout; on failure the error carries its stderr.
pub(super) fn imgbuild(exe: &Path, config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new(exe);
    c.arg("-c").arg(config).args(args);
    stdout_of(c, &format!("`imgbuild {}`", args.join(" ")))
}

/// Runs `c` (stdin closed) and returns its stdout; `what` names it in the errors: one that cannot start, and one
/// that fails, with its stderr.
pub(super) fn stdout_of(mut c: Command, what: &str) -> anyhow::Result<String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds (or takes from the cache) the image of `role` for `arch` and returns its id. Its progress lines go to
/// stderr as they happen when `progress`, else only its errors.
pub fn build_image(
    exe: &Path,
    config: &Path,
    cache: &Path,
    (role, arch): (Role, Arch),
    standins: bool,
    progress: bool,
) -> anyhow::Result<String> {
    let _lock = FileLock::acquire(&cache.join("lab-build.lock"))?;
    let role_s = role.to_string();
    let mut args = vec!["profile", role_s.as_str(), "--json"];
    if arch != Arch::Amd64 {
        args.extend(["--arch", arch.as_str()]);
    }
    if standins {
        args.push("--standins");
    }
    // The build's progress (one line per stage) goes to our stderr as it happens (unless `progress` is off: then
    // only its errors); only stdout (the JSON report) is read.
    let mut cmd = Command::new(exe);
    if !progress {
        cmd.env("RUST_LOG", "error");
    }
    let out = cmd
        .arg("-c")
        .arg(config)
        .args(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", exe.display()))
        .and_then(|o| {
            if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                Err(anyhow::anyhow!(
                    "`imgbuild {}` failed ({}); its messages are above",
                    args.join(" "),
                    o.status
                ))
            }
        })
        .map_err(|e| {
        if standins {
            e
        } else {
            e.context(format!(
                "cannot build the real {role} image. Without kubeadm, kubelet and friends (`imgbuild fetch` needs \
                 dl.k8s.io and GitHub, unreachable from here) the lab cannot form a cluster; \
                 `imgbuild lab --standins` boots the labelled stand-in images instead"
            ))
        }
    })?;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("`imgbuild profile {role} --json` printed no JSON report"))?;
    v["id"]
        .as_str()
        .map(str::to_string)
        .context("the build report has no image id")
}

/// The images [`build_and_pin`] pinned.
pub(super) struct Pinned {
    /// Image id per role and architecture.
    pub(super) images: Vec<(Role, Arch, String)>,
    /// Whether any of them carries stand-ins.
    pub(super) standins: bool,
}

/// Builds (or reuses) and pins one image per role and architecture `machines` use.
pub(super) fn build_and_pin(
    opts: &Options,
    config: &Path,
    cluster: &Cluster,
    machines: &[Machine],
) -> anyhow::Result<Pinned> {
    let mut slots: Vec<(Role, Arch)> = machines.iter().map(|m| (m.role, m.arch)).collect();
    slots.sort_by_key(|(r, a)| (r.to_string(), *a));
    slots.dedup();
    let mut images = Vec::new();
    let mut standins = false;
    for (role, arch) in slots {
        if opts.verbose {
            eprintln!(
                "lab: building (or reusing) the {role} image for {arch}{}",
                if opts.standins { " with stand-ins" } else { "" }
            );
        }
        let id = build_image(
            &opts.exe,
            config,
            &cluster.paths.cache,
            (role, arch),
            opts.standins,
            opts.build_progress,
        )?;
        standins |= report::image_standins(&*crate::image::store::open(cluster), &id);
        imgbuild(&opts.exe, config, &["pin", &role.to_string(), &id])?;
        images.push((role, arch, id));
    }
    Ok(Pinned { images, standins })
}

impl Lab {
    /// Builds (or reuses) the amd64 image of `role` (same stand-in choice as the lab) and returns its id.
    pub fn build(&self, role: Role) -> anyhow::Result<String> {
        self.build_amd64(&self.config, role)
    }

    /// Builds (or reuses) the amd64 image of `role` as `config` describes it, in the lab's cache.
    fn build_amd64(&self, config: &Path, role: Role) -> anyhow::Result<String> {
        build_image(
            &self.opts.exe,
            config,
            &self.cluster.paths.cache,
            (role, Arch::Amd64),
            self.opts.standins,
            self.opts.build_progress,
        )
    }

    /// Builds the image of `role` from another profiles directory (same cluster, same cache): a second image id
    /// for upgrade / rollback scenarios. The server's configuration is not touched.
    pub fn build_with_profiles(&self, role: Role, profiles: &Path) -> anyhow::Result<String> {
        let variant = self.opts.dir.join("cluster-variant.toml");
        super::config::write_variant(&self.config, profiles, &variant)?;
        self.build_amd64(&variant, role)
    }

    /// `imgbuild pin <role> <id>` on the lab's configuration (the running server picks it up).
    pub fn pin(&self, role: Role, id: &str) -> anyhow::Result<()> {
        imgbuild(
            &self.opts.exe,
            &self.config,
            &["pin", &role.to_string(), id],
        )
        .map(|_| ())
    }
}
