//! Helpers shared by the integration tests: a test cluster, rendered role trees, YAML as JSON, images committed
//! into a store directory, the server's application on loopback ([`https`]).

#![allow(dead_code)]

pub mod https;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imgbuild::config::{Arch, Cluster, Role};
use imgbuild::image::manifest::{FileEntry, Inputs, Manifest};
use imgbuild::image::tree::{self, Tree};
use sha2::{Digest, Sha256};
use yaml_rust2::{Yaml, YamlLoader};

/// The repository root.
/// Runs `cmd`, panicking with its output when it cannot start or fails: its stdout then stderr.
pub fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A vendored upstream file: `profiles/standins/vendor/<rel>` (MetalLB and Longhorn at their pinned tags, with their
/// licenses; see `profiles/standins/vendor/README.md`). The repository is self-contained: nothing reads beside it.
pub fn vendor(rel: &str) -> PathBuf {
    repo().join("profiles/standins/vendor").join(rel)
}

/// Writes the example cluster.toml into `dir` (provisioning net moved to 127.77.0.0/24 when `loopback`),
/// with `[paths]` into `dir` and the repository's profiles; `edit` may change the text first.
pub fn write_cluster(dir: &Path, loopback: bool, edit: impl Fn(String) -> String) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("cluster.toml")).unwrap();
    if loopback {
        text = text.replace("10.77.0.", "127.77.0.");
    }
    let text = edit(text);
    let text = format!(
        "{text}\n[paths]\nprofiles = \"{}\"\nipxe = \"{}\"\nstate = \"state\"\nsecrets = \"secrets\"\nimages = \"images\"\ncache = \"cache\"\n",
        repo().join("profiles").display(),
        repo().join("ipxe").display()
    );
    let p = dir.join("cluster.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub fn load(dir: &Path, loopback: bool) -> Cluster {
    imgbuild::config::load(&write_cluster(dir, loopback, |t| t)).unwrap()
}

/// The template engine the product uses for `cluster`.
pub fn engine(cluster: &Cluster) -> imgbuild::template::Engine {
    imgbuild::template::engine_for(cluster)
}

pub fn render(cluster: &Cluster, role: Role) -> Tree {
    let profile = imgbuild::config::profile::resolve(&cluster.paths.profiles, role).unwrap();
    tree::render(cluster, &profile, &engine(cluster)).unwrap()
}

pub fn file<'a>(t: &'a Tree, path: &str) -> &'a str {
    let f = t
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the {} tree", t.role));
    std::str::from_utf8(&f.contents).unwrap()
}

/// Renders a stand-in script (`kubeadm` or `kubectl`) with the master profile's context.
pub fn standin(cluster: &Cluster, name: &str) -> String {
    let profile =
        imgbuild::config::profile::resolve(&cluster.paths.profiles, Role::Master).unwrap();
    let ctx = tree::TemplateContext::new(cluster, &profile);
    engine(cluster)
        .render(&format!("profiles/standins/{name}.sh.j2"), &ctx)
        .unwrap()
}

pub fn to_json(y: &Yaml) -> serde_json::Value {
    use serde_json::Value;
    match y {
        Yaml::Real(s) => s.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let k = match k {
                        Yaml::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (k, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unsupported YAML node {other:?}"),
    }
}

/// Every document of a YAML text (empty documents dropped). Panics with the text's name on a parse error.
pub fn yaml_docs(name: &str, text: &str) -> Vec<serde_json::Value> {
    YamlLoader::load_from_str(text)
        .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"))
        .iter()
        .filter(|d| !d.is_null())
        .map(to_json)
        .collect()
}

/// Headless Chromium as every test runs it: no sandbox (tests run as root), no GPU, and nothing fetched from
/// the internet on its own (no QUIC, background networking, component updates or sync).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Loads `url` in headless Chromium (Debian's `chromium`; inside network namespace `netns` when given) and
/// returns the DOM after the page's scripts ran for 5 s of virtual time, with Chromium's stderr.
pub fn chromium_dom(netns: Option<&str>, url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "timeout", "60", "chromium"]);
            c
        }
        None => {
            let mut c = std::process::Command::new("timeout");
            c.args(["60", "chromium"]);
            c
        }
    };
    let out = cmd
        .args(CHROMIUM_FLAGS)
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium; scripts/setup installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Headless Chromium saves a screenshot of `url` (1600×900, after 5 s of virtual time) to `png`.
pub fn chromium_screenshot(url: &str, png: &Path) {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("timeout")
        .args(["60", "chromium"])
        .args(CHROMIUM_FLAGS)
        .args([
            "--hide-scrollbars",
            "--window-size=1600,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium; scripts/setup installs it)");
    assert!(
        png.exists(),
        "chromium made no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The repository's example `cluster.toml`, as text.
pub fn example_text() -> String {
    std::fs::read_to_string(repo().join("cluster.toml")).unwrap()
}

/// The arm64 worker the arm64 tests add to the example inventory ([`with_arm64_machine`]).
pub const ARM64_WORKER: &str = "arm-worker-1";
/// Its MAC.
pub const ARM64_WORKER_MAC: &str = "52:54:00:77:00:41";

/// A `[[machines]]` entry for an arm64 machine whose state disk is /dev/vda.
pub fn arm64_machine(hostname: &str, role: &str, mac: &str, ip: &str, init_blank: bool) -> String {
    let mut s = format!(
        "\n[[machines]]\nhostname = \"{hostname}\"\nrole = \"{role}\"\narch = \"arm64\"\nmac = \"{mac}\"\n\
         ip = \"{ip}\"\nstate_disk = \"/dev/vda\"\n"
    );
    if init_blank {
        s.push_str("init_blank = true\n");
    }
    s
}

/// `text` (a cluster.toml, usually [`example_text`]) plus the arm64 worker [`ARM64_WORKER`]
/// ([`ARM64_WORKER_MAC`], 10.77.0.41, blank state disk initialised).
pub fn with_arm64_machine(text: &str) -> String {
    format!(
        "{text}{}",
        arm64_machine(ARM64_WORKER, "worker", ARM64_WORKER_MAC, "10.77.0.41", true)
    )
}

/// The boot stages of `imgbuild::status::STAGES` from `first` through `last`, in order, without those in `skip`.
pub fn stages(first: &str, last: &str, skip: &[&str]) -> Vec<&'static str> {
    let pos = |s: &str| {
        imgbuild::status::STAGES
            .iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("unknown stage {s}"))
    };
    imgbuild::status::STAGES[pos(first)..=pos(last)]
        .iter()
        .copied()
        .filter(|s| !skip.contains(s))
        .collect()
}

/// What an image committed by [`commit_image`] says of itself (its manifest but for the files).
pub struct ImageSpec<'a> {
    pub role: Role,
    pub arch: Arch,
    pub profile: &'a [&'a str],
    pub standins: bool,
    pub kernel_args: &'a [&'a str],
}

/// Commits an image made of `files` (name → bytes) into the store directory `images`, as `imgbuild build` leaves
/// it: the files, then `manifest.json` with their sizes and digests. Returns its id and manifest.
pub fn commit_image(
    images: &Path,
    spec: &ImageSpec,
    files: &BTreeMap<String, Vec<u8>>,
) -> (String, Manifest) {
    let manifest = Manifest {
        format: 1,
        role: spec.role,
        arch: spec.arch,
        profile: spec.profile.iter().map(|p| p.to_string()).collect(),
        standins: spec.standins,
        kernel_args: spec.kernel_args.iter().map(|a| a.to_string()).collect(),
        inputs: Inputs::default(),
        files: files
            .iter()
            .map(|(n, b)| {
                (
                    n.clone(),
                    FileEntry {
                        size: b.len() as u64,
                        sha256: hex::encode(Sha256::digest(b)),
                    },
                )
            })
            .collect(),
        rootfs_verity: None,
        // As the store's commit records them: the Authenticode digest of each boot application that is a PE.
        boot_apps: files
            .iter()
            .filter(|(n, _)| imgbuild::image::manifest::BOOT_APPS.contains(&n.as_str()))
            .filter_map(|(n, b)| Some((n.clone(), imgbuild::image::manifest::boot_app_digest(b)?)))
            .collect(),
    };
    let id = manifest.id();
    let d = images.join(&id);
    std::fs::create_dir_all(&d).unwrap();
    for (n, b) in files {
        std::fs::write(d.join(n), b).unwrap();
    }
    std::fs::write(d.join("manifest.json"), manifest.to_bytes()).unwrap();
    (id, manifest)
}

/// A test's working directory that is removed when the test passes and kept when it panics (its path printed),
/// so a failed VM lab leaves its servers', relay's and engines' logs to read. Declare it before the `Lab`: the lab
/// (its VMs, namespaces and server processes) is dropped first, then this.
pub struct KeptOnFailure(Option<tempfile::TempDir>);

impl KeptOnFailure {
    pub fn new() -> Self {
        Self(Some(tempfile::tempdir().expect("a temporary directory")))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("present until drop").path()
    }
}

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && std::thread::panicking()
        {
            eprintln!(
                "the test failed: its directory is kept for diagnosis at {}",
                dir.keep().display()
            );
        }
    }
}
