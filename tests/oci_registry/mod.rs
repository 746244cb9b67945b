//! A local OCI registry for tests: Debian's `docker-registry` (the CNCF distribution registry 2.8) on a loopback
//! port, started by PID and stopped on drop, serving small multi-arch images built here from busybox-static with
//! `umoci` and pushed with `skopeo` (the index is pushed with the distribution API). Nothing comes from a public
//! registry.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The arm64 busybox `scripts/setup-arm64` unpacks; without it images are amd64 only.
pub const ARM64_BUSYBOX: &str = "/usr/local/lib/imgbuild/arm64/busybox";

/// One manifest of an OCI index.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: &'static str,
    digest: String,
    size: usize,
    platform: serde_json::Value,
}

/// A running registry.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// The registry's storage directory.
    pub store: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The architectures test images are built for here.
pub fn arches() -> Vec<&'static str> {
    if Path::new(ARM64_BUSYBOX).is_file() {
        vec!["amd64", "arm64"]
    } else {
        eprintln!(
            "note: {ARM64_BUSYBOX} is absent (scripts/setup-arm64): test images are amd64 only"
        );
        vec!["amd64"]
    }
}

impl Registry {
    /// Starts a registry on a free loopback port and waits (bounded) until it answers `/v2/`.
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                store.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry runs (apt-get install docker-registry)");
        let r = Registry {
            child,
            host,
            store,
            dir,
        };
        let t0 = Instant::now();
        while ureq::get(&format!("http://{}/v2/", r.host)).call().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "docker-registry did not answer on {} within 30 s",
                r.host
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    /// Builds `repo:tag` for every architecture of [`arches`] from busybox-static with one extra file
    /// `/etc/imgbuild-test` holding `marker`, and the image's command printing `marker`; pushes each image with
    /// skopeo and an OCI index over them. Returns (index digest, [(arch, manifest digest, config digest)]).
    pub fn push_multiarch(
        &self,
        repo: &str,
        tag: &str,
        marker: &str,
    ) -> (String, Vec<(String, String, String)>) {
        let work = tempfile::tempdir_in(self.dir.path()).unwrap();
        let layout = work.path().join("layout");
        run(Command::new("umoci")
            .arg("init")
            .arg("--layout")
            .arg(&layout));
        let mut entries = Vec::new();
        let mut out = Vec::new();
        for arch in arches() {
            let img = format!("{}:{arch}", layout.display());
            let bundle = work.path().join(format!("bundle-{arch}"));
            run(Command::new("umoci").args(["new", "--image", &img]));
            run(Command::new("umoci")
                .args(["unpack", "--image", &img])
                .arg(&bundle));
            let root = bundle.join("rootfs");
            std::fs::create_dir_all(root.join("bin")).unwrap();
            std::fs::create_dir_all(root.join("etc")).unwrap();
            let bb = if arch == "amd64" {
                "/bin/busybox"
            } else {
                ARM64_BUSYBOX
            };
            std::fs::copy(bb, root.join("bin/busybox")).unwrap();
            std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
            std::fs::write(root.join("etc/imgbuild-test"), format!("{marker}\n")).unwrap();
            run(Command::new("umoci")
                .args(["repack", "--image", &img])
                .arg(&bundle));
            run(Command::new("umoci").args([
                "config",
                "--image",
                &img,
                "--architecture",
                arch,
                "--os",
                "linux",
                "--config.cmd",
                "/bin/busybox",
                "--config.cmd",
                "cat",
                "--config.cmd",
                "/etc/imgbuild-test",
            ]));
            let digestfile = work.path().join(format!("digest-{arch}"));
            run(Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
                .arg(&digestfile)
                .arg(format!("oci:{img}"))
                .arg(format!("docker://{}/{repo}:{tag}-{arch}", self.host)));
            let manifest = std::fs::read_to_string(&digestfile)
                .unwrap()
                .trim()
                .to_string();
            let body = self.get(
                &format!("/v2/{repo}/manifests/{manifest}"),
                "application/vnd.oci.image.manifest.v1+json",
            );
            let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let config = m["config"]["digest"].as_str().unwrap().to_string();
            entries.push(IndexEntry {
                media_type: "application/vnd.oci.image.manifest.v1+json",
                digest: manifest.clone(),
                size: body.len(),
                platform: serde_json::json!({"architecture": arch, "os": "linux"}),
            });
            out.push((arch.to_string(), manifest, config));
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries
        }))
        .unwrap();
        ureq::put(&format!("http://{}/v2/{repo}/manifests/{tag}", self.host))
            .header("Content-Type", "application/vnd.oci.image.index.v1+json")
            .send(&index[..])
            .expect("the registry takes the index");
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&index))
        );
        (digest, out)
    }

    /// GET a registry path with an Accept header; the body.
    pub fn get(&self, path: &str, accept: &str) -> Vec<u8> {
        let mut r = ureq::get(&format!("http://{}{path}", self.host))
            .header("Accept", accept)
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        r.body_mut().read_to_vec().unwrap()
    }

    /// The file the registry serves blob `digest` from.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.store
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}
