//! Rendering the role layers: every file parses in its format, and rendering is deterministic.

use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild::config::{self, Role, profile};
use imgbuild::image::tree;
use imgbuild::template::Engine;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn render_all() -> Vec<tree::Tree> {
    let cluster = config::load(&root().join("cluster.toml")).expect("example valid");
    let engine = Engine::new(&cluster.paths.profiles, &cluster.paths.ipxe);
    Role::ALL
        .iter()
        .map(|r| {
            let p = profile::resolve(&cluster.paths.profiles, *r).expect("profile resolves");
            tree::render(&cluster, &p, &engine).expect("renders")
        })
        .collect()
}

#[test]
fn every_rendered_yaml_and_toml_file_parses() {
    let mut checked = 0;
    for t in render_all() {
        for f in &t.files {
            let text = std::str::from_utf8(&f.contents).expect("text files are UTF-8");
            if f.path.ends_with(".yaml") || f.path.ends_with(".yml") {
                yaml_rust2::YamlLoader::load_from_str(text)
                    .unwrap_or_else(|e| panic!("{} ({}) is not YAML: {e}", f.path, t.role));
                checked += 1;
            } else if f.path.ends_with(".toml") {
                text.parse::<toml::Table>()
                    .unwrap_or_else(|e| panic!("{} ({}) is not TOML: {e}", f.path, t.role));
                checked += 1;
            }
            assert!(
                !text.contains("{{") && !text.contains("{%"),
                "{} has unrendered template syntax",
                f.path
            );
        }
    }
    assert!(
        checked >= 6,
        "expected YAML/TOML files in every role, checked {checked}"
    );
}

#[test]
fn containerd_uses_the_systemd_cgroup_driver() {
    for t in render_all() {
        let f = t
            .files
            .iter()
            .find(|f| f.path == "/etc/containerd/config.toml")
            .expect("containerd config");
        let v: toml::Table = std::str::from_utf8(&f.contents).unwrap().parse().unwrap();
        let opts = &v["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]
            ["options"];
        assert_eq!(opts["SystemdCgroup"].as_bool(), Some(true), "{}", t.role);
    }
}

#[test]
fn roles_carry_their_modules_and_storage_its_multipath_blacklist() {
    let trees = render_all();
    let file = |role: &str, path: &str| -> Option<String> {
        trees
            .iter()
            .find(|t| t.role == role)
            .and_then(|t| t.files.iter().find(|f| f.path == path))
            .map(|f| String::from_utf8(f.contents.clone()).unwrap())
    };
    let storage_mods = file("storage", "/etc/modules-load.d/imgbuild.conf").unwrap();
    for m in ["overlay", "br_netfilter", "iscsi_tcp"] {
        assert!(storage_mods.lines().any(|l| l == m), "storage lacks {m}");
    }
    assert!(
        !file("master", "/etc/modules-load.d/imgbuild.conf")
            .unwrap()
            .contains("iscsi_tcp")
    );
    assert!(
        file("storage", "/etc/multipath.conf")
            .unwrap()
            .contains("blacklist")
    );
    assert!(file("worker", "/etc/multipath.conf").is_none());
    let sysctl = file("worker", "/etc/sysctl.d/90-imgbuild.conf").unwrap();
    assert!(sysctl.contains("net.ipv4.ip_forward = 1"));
}

#[test]
fn rendering_twice_gives_byte_identical_trees() {
    let bin = env!("CARGO_BIN_EXE_imgbuild");
    let tmp = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for round in 0..2 {
        let dir = tmp.path().join(format!("r{round}"));
        let out = Command::new(bin)
            .args([
                "--config",
                root().join("cluster.toml").to_str().unwrap(),
                "profile",
                "storage",
                "--render",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        digests.push(dir_digest(&dir));
    }
    assert_eq!(digests[0], digests[1]);
    assert!(
        digests[0].len() >= 10,
        "rendered too few files: {}",
        digests[0].len()
    );
}

/// (relative path, mode, contents) of every file under `dir`, sorted.
fn dir_digest(dir: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    mode,
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}
