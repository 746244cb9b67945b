//! `imgbuild check` and `imgbuild profile` as a user runs them.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgbuild"))
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cluster.toml")
}

#[test]
fn check_passes_on_the_example() {
    let out = bin()
        .arg("--config")
        .arg(example())
        .arg("check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("ok") && s.contains("3 master, 2 worker, 2 storage"),
        "{s}"
    );
}

#[test]
fn check_reports_every_problem_with_file_line_and_key_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(example()).unwrap();
    let src = src
        .replacen(
            "mac = \"52:54:00:77:00:22\"",
            "mac = \"52:54:00:77:00:21\"",
            1,
        )
        .replacen("role = \"storage\"", "role = \"stroage\"", 1);
    let cfg = tmp.path().join("cluster.toml");
    std::fs::write(&cfg, src).unwrap();
    let out = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // Misspelling one storage role also leaves Longhorn with fewer storage nodes than replicas.
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        err.contains("longhorn.replicas: 2 replicas but only 1 storage node(s)"),
        "{err}"
    );
    assert!(
        err.contains("machines[4].mac: duplicate MAC 52:54:00:77:00:21"),
        "{err}"
    );
    assert!(
        err.contains(
            "machines[5].role: unknown role \"stroage\"; valid roles are master, worker, storage"
        ),
        "{err}"
    );
    assert!(err.contains(&format!("{}:", cfg.display())), "{err}");
}

#[test]
fn check_json_is_machine_readable() {
    let out = bin()
        .arg("--config")
        .arg(example())
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["cluster"], "homelab");
}

#[test]
fn check_names_a_broken_profile_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let profiles = tmp.path().join("profiles");
    copy_dir(&repo.join("profiles"), &profiles);
    let worker = profiles.join("worker/profile.toml");
    let text = std::fs::read_to_string(&worker).unwrap();
    // The broken entry comes after the profile's own files.
    let idx = text.matches("[[files]]").count();
    std::fs::write(
        &worker,
        format!("{text}\n[[files]]\npath = \"etc/relative\"\ntemplate = \"missing.j2\"\n"),
    )
    .unwrap();
    let src = std::fs::read_to_string(repo.join("cluster.toml")).unwrap();
    std::fs::write(tmp.path().join("cluster.toml"), src).unwrap();
    std::fs::create_dir_all(tmp.path().join("ipxe")).unwrap();
    let out = bin()
        .arg("--config")
        .arg(tmp.path().join("cluster.toml"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("worker/profile.toml:"), "{err}");
    assert!(
        err.contains(&format!(
            "files[{idx}].path: \"etc/relative\" must be an absolute path"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "files[{idx}].template: template \"missing.j2\" does not exist"
        )),
        "{err}"
    );
}

#[test]
fn profile_show_prints_the_merged_chain() {
    let out = bin()
        .arg("--config")
        .arg(example())
        .args(["profile", "storage", "--show", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chain"], serde_json::json!(["base", "storage"]));
    let mods: Vec<&str> = v["kernel_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        mods.contains(&"iscsi_tcp") && mods.contains(&"br_netfilter"),
        "{mods:?}"
    );
}

#[test]
fn unknown_role_on_the_command_line_is_refused_with_the_valid_ones() {
    let out = bin()
        .arg("--config")
        .arg(example())
        .args(["profile", "etcd", "--show"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("valid roles are master, worker, storage"),
        "{err}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn check_says_when_arm64_machines_cannot_boot_for_want_of_grub_modules() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut src = std::fs::read_to_string(example()).unwrap();
    src = src.replacen(
        "router_advertisements = true",
        &format!(
            "router_advertisements = true\ngrub_modules = \"{}/nowhere\"",
            tmp.path().display()
        ),
        1,
    );
    let mut src = common::with_arm64_machine(&src);
    src.push_str(&format!(
        "\n[paths]\nprofiles = \"{repo}/profiles\"\nipxe = \"{repo}/ipxe\"\n"
    ));
    let cfg = tmp.path().join("cluster.toml");
    std::fs::write(&cfg, src).unwrap();
    let out = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("network.grub_modules") && err.contains("./scripts/setup"),
        "{err}"
    );
}

/// Log lines written to something that is not a terminal (a pipe here; the journal under systemd) carry no ANSI
/// colour codes.
#[test]
fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(example()).unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        format!("{text}\n[paths]\nprofiles = \"{repo}/profiles\"\nipxe = \"{repo}/ipxe\"\n"),
    )
    .unwrap();
    // No secrets beside this cluster.toml: `check` warns (a log line) that images could not enroll.
    let out = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provisioning-ca.crt is missing"), "{err}");
    // Once, though every role is rendered.
    assert_eq!(
        err.matches("provisioning-ca.crt is missing").count(),
        1,
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in a log written to a pipe: {err:?}"
    );
}
