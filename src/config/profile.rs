//! Role profiles: `profiles/<name>/profile.toml`, data that says what a node of a role carries.
//!
//! A profile names the profile it `inherits` from (`master`, `worker` and `storage` inherit `base`). Resolving
//! merges the chain: lists are appended without duplicates, sysctls and files are overridden by the child.
//!
//! A profile is resolved for one CPU architecture: an `[arch.<name>]` table (`amd64`, `arm64`) adds `packages`
//! and `kernel_args` for that architecture only, after the profile's common lists (so an architecture's
//! `console=` comes last and wins). The base profile keeps the kernel package (`linux-image-<arch>`) and the
//! serial console (`ttyS0` on amd64, `ttyAMA0` on arm64) there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{ConfigError, Problem};
use super::model::{Arch, Role};
use super::validate::{Checker, Seg};

/// `profile.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    description: String,
    inherits: Option<String>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    kernel_modules: Vec<String>,
    #[serde(default)]
    kernel_args: Vec<String>,
    #[serde(default)]
    enable_units: Vec<String>,
    #[serde(default)]
    sysctl: BTreeMap<String, toml::Value>,
    #[serde(default)]
    files: Vec<FileEntry>,
    /// Per-architecture additions, keyed by Debian's architecture name.
    #[serde(default)]
    arch: BTreeMap<String, ArchEntry>,
}

/// `[arch.<name>]`: what a profile adds on one architecture.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchEntry {
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    kernel_args: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: String,
    template: String,
    #[serde(default = "default_mode")]
    mode: String,
}

fn default_mode() -> String {
    "0644".into()
}

/// One file a node carries, rendered from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSpec {
    /// Absolute path inside the node's root filesystem.
    pub path: String,
    /// Template name for the engine, e.g. `profiles/base/containerd-config.toml.j2`.
    pub template: String,
    /// Permission bits.
    pub mode: u32,
    /// The profile that defined it.
    pub from: String,
}

/// A fully resolved profile: the chain merged.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// The role the profile was resolved for.
    pub role: Role,
    /// The architecture the profile was resolved for (its `[arch.<name>]` additions are merged in).
    pub arch: Arch,
    /// The role profile's `description`: one line saying what a node of the role is.
    pub description: String,
    /// Profiles merged, base first.
    pub chain: Vec<String>,
    /// Debian packages of the whole chain and of the architecture, without duplicates.
    pub packages: Vec<String>,
    /// Kernel modules loaded at boot (rendered into the modules-load file).
    pub kernel_modules: Vec<String>,
    /// Kernel command-line arguments of the image, common ones first, then the architecture's (so its `console=`
    /// wins).
    pub kernel_args: Vec<String>,
    /// systemd units enabled in the image (through the rendered preset file and `systemctl preset`).
    pub enable_units: Vec<String>,
    /// Sysctls by key (e.g. `net.ipv4.ip_forward`), values as text; a child profile overrides its parent's.
    pub sysctl: BTreeMap<String, String>,
    /// Every file the role carries, a child's entry replacing its parent's for the same path.
    pub files: Vec<FileSpec>,
}

fn push_unique(into: &mut Vec<String>, from: &[String]) {
    for x in from {
        if !into.contains(x) {
            into.push(x.clone());
        }
    }
}

fn read_one(dir: &Path, name: &str, problems: &mut Vec<Problem>) -> Option<(ProfileFile, PathBuf)> {
    let path = dir.join(name).join("profile.toml");
    let src = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem {
                file: path.clone(),
                line: None,
                column: None,
                key: String::new(),
                message: format!("cannot read profile {name:?}: {e}; each role needs profiles/{name}/profile.toml"),
            });
            return None;
        }
    };
    let mut c = Checker::new(&path, &src);
    let parsed: ProfileFile = match toml::from_str(&src) {
        Ok(p) => p,
        Err(e) => {
            let (line, column) = e
                .span()
                .map(|sp| super::error::line_col(&src, sp.start))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            problems.push(Problem {
                file: path,
                line,
                column,
                key: String::new(),
                message: e.message().trim().to_string(),
            });
            return None;
        }
    };
    for (i, f) in parsed.files.iter().enumerate() {
        let at = |k: &str| vec![Seg::Key("files".into()), Seg::Index(i), Seg::Key(k.into())];
        if !f.path.starts_with('/') || f.path.split('/').any(|s| s == ".." || s == ".") {
            c.error(
                &at("path"),
                format!("{:?} must be an absolute path without '.' or '..'", f.path),
            );
        }
        if f.template.contains("..") || f.template.starts_with('/') {
            c.error(
                &at("template"),
                format!("{:?} must name a file beside profile.toml", f.template),
            );
        } else if !dir.join(name).join(&f.template).is_file() {
            c.error(
                &at("template"),
                format!(
                    "template {:?} does not exist in {}",
                    f.template,
                    dir.join(name).display()
                ),
            );
        }
        if u32::from_str_radix(&f.mode, 8).map_or(true, |m| m > 0o7777) {
            c.error(
                &at("mode"),
                format!("{:?} is not an octal file mode such as \"0644\"", f.mode),
            );
        }
    }
    for (k, v) in &parsed.sysctl {
        let at = vec![Seg::Key("sysctl".into()), Seg::Key(k.clone())];
        if !k.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }) {
            c.error(
                &at,
                format!("{k:?} is not a sysctl name such as net.ipv4.ip_forward"),
            );
        }
        if !(v.is_integer() || v.is_str()) {
            c.error(&at, "a sysctl value must be a number or a string");
        }
    }
    for (i, m) in parsed.kernel_modules.iter().enumerate() {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            c.error(
                &[Seg::Key("kernel_modules".into()), Seg::Index(i)],
                format!("{m:?} is not a kernel module name"),
            );
        }
    }
    for (i, u) in parsed.enable_units.iter().enumerate() {
        let ok = [
            ".service", ".timer", ".socket", ".target", ".mount", ".path",
        ]
        .iter()
        .any(|s| u.ends_with(s));
        if !ok {
            c.error(
                &[Seg::Key("enable_units".into()), Seg::Index(i)],
                format!("{u:?} is not a systemd unit name (it needs a suffix such as .service)"),
            );
        }
    }
    for (a, entry) in &parsed.arch {
        if let Err(e) = a.parse::<Arch>() {
            c.error(&[Seg::Key("arch".into()), Seg::Key(a.clone())], e);
        }
        for (i, p) in entry.packages.iter().enumerate() {
            if p.is_empty() || p.contains(char::is_whitespace) {
                c.error(
                    &[
                        Seg::Key("arch".into()),
                        Seg::Key(a.clone()),
                        Seg::Key("packages".into()),
                        Seg::Index(i),
                    ],
                    format!("{p:?} is not a Debian package name"),
                );
            }
        }
    }
    let bad = !c.problems.is_empty();
    problems.append(&mut c.problems);
    (!bad).then_some((parsed, path))
}

/// Loads `profiles/<role>/` and everything it inherits, merged, for amd64 (see [`resolve_for`]).
pub fn resolve(profiles_dir: &Path, role: Role) -> Result<Profile, ConfigError> {
    resolve_for(profiles_dir, role, Arch::Amd64)
}

/// Loads `profiles/<role>/` and everything it inherits, merged, with each profile's `[arch.<arch>]` additions.
pub fn resolve_for(profiles_dir: &Path, role: Role, arch: Arch) -> Result<Profile, ConfigError> {
    let mut problems = Vec::new();
    let mut chain: Vec<(String, ProfileFile)> = Vec::new();
    let mut name = role.as_str().to_string();
    loop {
        if chain.iter().any(|(n, _)| *n == name) {
            problems.push(Problem {
                file: profiles_dir.join(&name).join("profile.toml"),
                line: None,
                column: None,
                key: "inherits".into(),
                message: format!("inheritance cycle through {name:?}"),
            });
            break;
        }
        let Some((pf, _)) = read_one(profiles_dir, &name, &mut problems) else {
            break;
        };
        let parent = pf.inherits.clone();
        chain.push((name.clone(), pf));
        match parent {
            Some(p) => name = p,
            None => break,
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    chain.reverse();
    let mut out = Profile {
        role,
        arch,
        description: String::new(),
        chain: chain.iter().map(|(n, _)| n.clone()).collect(),
        packages: vec![],
        kernel_modules: vec![],
        kernel_args: vec![],
        enable_units: vec![],
        sysctl: BTreeMap::new(),
        files: vec![],
    };
    for (name, pf) in &chain {
        if !pf.description.is_empty() {
            out.description = pf.description.clone();
        }
        let for_arch = pf.arch.get(arch.as_str());
        push_unique(&mut out.packages, &pf.packages);
        push_unique(&mut out.kernel_modules, &pf.kernel_modules);
        push_unique(&mut out.kernel_args, &pf.kernel_args);
        if let Some(a) = for_arch {
            push_unique(&mut out.packages, &a.packages);
            push_unique(&mut out.kernel_args, &a.kernel_args);
        }
        push_unique(&mut out.enable_units, &pf.enable_units);
        for (k, v) in &pf.sysctl {
            let v = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.sysctl.insert(k.clone(), v);
        }
        for f in &pf.files {
            let spec = FileSpec {
                path: f.path.clone(),
                template: format!("profiles/{name}/{}", f.template),
                mode: u32::from_str_radix(&f.mode, 8).unwrap_or(0o644),
                from: name.clone(),
            };
            match out.files.iter_mut().find(|x| x.path == f.path) {
                Some(existing) => *existing = spec,
                None => out.files.push(spec),
            }
        }
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
