//! The template engine: minijinja with strict undefined variables and no auto-escaping.
//!
//! Every text a node or firmware receives (units, kubeadm configs, manifests, iPXE scripts) is a template under
//! `profiles/` or `ipxe/`. Names are relative to those roots' parent: `profiles/base/crictl.yaml.j2`,
//! `ipxe/boot.ipxe.j2`. Nothing else on disk can be loaded. The server's own web pages (`web/*.html.j2`), the
//! kernel command line (`ipxe/cmdline.j2`) and the fallback scripts are compiled into the binary
//! (`BUILTIN_TEMPLATES`), so `imgbuild serve` shows its status page and answers every boot request wherever it
//! runs. [`engine_for`] is the engine of a cluster.

use std::path::{Path, PathBuf};

use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use crate::config::Cluster;

/// A template failed to load or render. The message names the template, the line and the undefined variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("template {name}: {detail}")]
pub struct TemplateError {
    /// The template's name, relative to the template roots' parent (e.g. `ipxe/boot.ipxe.j2`).
    pub name: String,
    /// minijinja's message, with the line and the undefined variable when it has them.
    pub detail: String,
}

/// Templates compiled into the binary; they take precedence over files of the same name. The server's web
/// pages, from the repository's `web/` directory (values in them are escaped with `|e`), and the texts of
/// `ipxe/` the server must always be able to send: the kernel command line (read by the image's initrd and
/// first-boot units) and the fallback scripts sent when no other script can be.
const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    ("web/status.html.j2", include_str!("../web/status.html.j2")),
    (CMDLINE_TEMPLATE, include_str!("../ipxe/cmdline.j2")),
    (UKI_CMDLINE_TEMPLATE, include_str!("../ipxe/uki-cmdline.j2")),
    (
        SERVER_ERROR_TEMPLATE,
        include_str!("../ipxe/server-error.j2"),
    ),
    (
        UNKNOWN_ADDRESS_TEMPLATE,
        include_str!("../ipxe/unknown-address.grub.j2"),
    ),
];

/// The kernel command line of a machine with a pinned image (built in).
pub const CMDLINE_TEMPLATE: &str = "ipxe/cmdline.j2";
/// The role-level kernel command line signed into a UKI (built in: the initrd reads it).
pub const UKI_CMDLINE_TEMPLATE: &str = "ipxe/uki-cmdline.j2";
/// The script sent when a boot script template fails to render (built in).
pub const SERVER_ERROR_TEMPLATE: &str = "ipxe/server-error.j2";
/// The GRUB answer for an address no inventory machine has (built in).
pub const UNKNOWN_ADDRESS_TEMPLATE: &str = "ipxe/unknown-address.grub.j2";

/// The engine: cheap to clone, safe to share across threads.
#[derive(Clone)]
pub struct Engine {
    env: Environment<'static>,
}

fn sane(rest: &str) -> bool {
    !rest.is_empty()
        && !rest.starts_with('/')
        && rest
            .split('/')
            .all(|s| !s.is_empty() && s != ".." && s != "." && !s.contains('\\'))
}

impl Engine {
    /// An engine reading `profiles/...` from `profiles_dir` and `ipxe/...` from `ipxe_dir`.
    pub fn new(profiles_dir: &Path, ipxe_dir: &Path) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // YAML, TOML, shell and iPXE are not HTML: never escape, whatever the file extension.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("static syntax config is valid"),
        );
        let roots: Vec<(&'static str, PathBuf)> = vec![
            ("profiles/", profiles_dir.to_path_buf()),
            ("ipxe/", ipxe_dir.to_path_buf()),
        ];
        env.set_loader(move |name: &str| {
            for (prefix, dir) in &roots {
                if let Some(rest) = name.strip_prefix(prefix) {
                    if !sane(rest) {
                        return Ok(None);
                    }
                    return match std::fs::read_to_string(dir.join(rest)) {
                        Ok(s) => Ok(Some(s)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            format!("cannot read template {name}: {e}"),
                        )),
                    };
                }
            }
            Ok(None)
        });
        for (name, source) in BUILTIN_TEMPLATES {
            env.add_template(name, source)
                .expect("the built-in templates parse");
        }
        Engine { env }
    }

    /// Renders template `name` with `ctx` (any serializable value, usually a struct or `serde_json::Value`).
    pub fn render<S: Serialize>(&self, name: &str, ctx: &S) -> Result<String, TemplateError> {
        let err = |e: minijinja::Error| {
            let mut detail = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                detail.push_str(&format!(": {s}"));
                src = s.source();
            }
            TemplateError {
                name: name.to_string(),
                detail,
            }
        };
        let tmpl = self.env.get_template(name).map_err(err)?;
        tmpl.render(minijinja::Value::from(Serde(ctx))).map_err(err)
    }

    /// Renders a template given as a string (used by tests and one-line formats).
    pub fn render_str<S: Serialize>(&self, source: &str, ctx: &S) -> Result<String, TemplateError> {
        self.env
            .render_str(source, minijinja::Value::from(Serde(ctx)))
            .map_err(|e| TemplateError {
                name: "<inline>".into(),
                detail: e.to_string(),
            })
    }
}

/// The engine for a cluster: its profile and iPXE directories (`paths.profiles`, `paths.ipxe`).
pub fn engine_for(cluster: &Cluster) -> Engine {
    Engine::new(&cluster.paths.profiles, &cluster.paths.ipxe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> (tempfile::TempDir, Engine) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("profiles/base")).unwrap();
        std::fs::create_dir_all(d.path().join("ipxe")).unwrap();
        std::fs::write(
            d.path().join("profiles/base/a.yaml.j2"),
            "name: {{ name }}\nq: \"{{ q }}\"\n",
        )
        .unwrap();
        std::fs::write(d.path().join("secret"), "no").unwrap();
        let e = Engine::new(&d.path().join("profiles"), &d.path().join("ipxe"));
        (d, e)
    }

    #[test]
    fn strict_undefined_is_an_error_naming_the_variable() {
        let (_d, e) = engine();
        let err = e
            .render("profiles/base/a.yaml.j2", &serde_json::json!({"name": "x"}))
            .unwrap_err();
        assert!(err.to_string().contains("profiles/base/a.yaml.j2"), "{err}");
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    #[test]
    fn yaml_is_not_escaped_and_trailing_newline_kept() {
        let (_d, e) = engine();
        let out = e
            .render(
                "profiles/base/a.yaml.j2",
                &serde_json::json!({"name": "<a&b>", "q": "x'y"}),
            )
            .unwrap();
        assert_eq!(out, "name: <a&b>\nq: \"x'y\"\n");
    }

    #[test]
    fn only_profiles_and_ipxe_roots_load() {
        let (_d, e) = engine();
        for bad in [
            "secret",
            "profiles/../secret",
            "ipxe/../secret",
            "/etc/passwd",
            "profiles//base/a.yaml.j2",
        ] {
            assert!(
                e.render(bad, &serde_json::json!({})).is_err(),
                "{bad} must not load"
            );
        }
    }
}
