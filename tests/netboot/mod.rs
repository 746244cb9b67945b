//! Shared setup of the netboot integration tests (tests/tftp.rs, tests/http.rs): a private network namespace (only `lo`, with the server's
//! and some machines' addresses), a temp cluster directory, fake-but-valid images, and the real server binary.
//! Everything is torn down by Drop guards, also when a test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imgbuild::config::Role;
use imgbuild::vm::spawn::SpawnTied;
use sha2::{Digest, Sha256};

pub const SERVER: &str = "10.77.0.1";
/// Addresses of inventory machines, added to `lo` so clients can bind them.
pub const MASTER1_IP: &str = "10.77.0.11";
pub const WORKER1_IP: &str = "10.77.0.21";
pub const MASTER1: &str = "52:54:00:77:00:11";
pub const WORKER1: &str = "52:54:00:77:00:21";
pub const STORAGE1: &str = "52:54:00:77:00:31";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A network namespace of our own, deleted on drop.
pub struct Netns {
    pub name: String,
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn must(cmd: &mut Command) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "ibn{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let _ = run(Command::new("ip").args(["netns", "del", &name]));
        must(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.must(&["ip", "link", "set", "lo", "up"]);
        for a in [SERVER, MASTER1_IP, WORKER1_IP] {
            ns.must(&["ip", "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        ns
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    pub fn must(&self, argv: &[&str]) {
        let mut c = self.cmd(argv[0]);
        c.args(&argv[1..]);
        must(&mut c);
    }

    /// Runs `argv` in the namespace, bounded by `timeout` seconds.
    pub fn exec(&self, secs: u32, argv: &[&str]) -> Output {
        let mut c = self.cmd("timeout");
        c.arg(secs.to_string()).args(argv);
        run(&mut c)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temp cluster directory: `cluster.toml` (the example, with `lo` as interface and paths in the temp dir),
/// `images/`, `state/`, and an iPXE binaries directory.
pub struct ClusterDir {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub images: PathBuf,
    pub state: PathBuf,
    pub ipxe_bin: PathBuf,
}

impl ClusterDir {
    /// `ipxe_bin`: `None` = Debian's `/usr/lib/ipxe`; `Some(dir)` = that directory.
    pub fn new(ipxe_bin: Option<&Path>) -> ClusterDir {
        let dir = tempfile::tempdir().unwrap();
        let ipxe_bin = ipxe_bin
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/ipxe"));
        let example = std::fs::read_to_string(repo().join("cluster.toml")).unwrap();
        let mut text = example
            .replace(
                "interface = \"br0\"                # the provisioning",
                "interface = \"lo\"                # the provisioning",
            )
            .replace(
                "ipxe_binaries = \"/usr/lib/ipxe\"",
                &format!("ipxe_binaries = \"{}\"", ipxe_bin.display()),
            );
        assert!(
            text.contains("interface = \"lo\""),
            "example cluster.toml changed"
        );
        text.push_str(&format!(
            "\n[paths]\nprofiles = \"{}\"\nipxe = \"{}\"\nimages = \"images\"\nstate = \"state\"\nsecrets = \"secrets\"\ncache = \"cache\"\n",
            repo().join("profiles").display(),
            repo().join("ipxe").display()
        ));
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        let images = dir.path().join("images");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        ClusterDir {
            config,
            images,
            state,
            ipxe_bin,
            dir,
        }
    }

    /// Writes a fake-but-valid image for `role` (artifacts with distinct contents and a correct manifest).
    /// Returns `(id, files)` with the artifact bytes.
    pub fn make_image(
        &self,
        role: Role,
        standins: bool,
        salt: &str,
    ) -> (String, BTreeMap<String, Vec<u8>>) {
        let mut files = BTreeMap::new();
        for (name, len) in [
            ("vmlinuz", 300_000usize),
            ("initrd.img", 1_500_000),
            ("rootfs.squashfs", 2_000_000),
        ] {
            let mut bytes = Vec::with_capacity(len);
            let mut h = Sha256::digest(format!("{role}{salt}{name}").as_bytes()).to_vec();
            while bytes.len() < len {
                h = Sha256::digest(&h).to_vec();
                bytes.extend_from_slice(&h);
            }
            bytes.truncate(len);
            files.insert(name.to_string(), bytes);
        }
        let role_name = role.to_string();
        let spec = crate::common::ImageSpec {
            role,
            arch: Default::default(),
            profile: &["base", &role_name],
            standins,
            kernel_args: &["net.ifnames=0", "panic=30", "console=ttyS0,115200"],
        };
        let (id, manifest) = crate::common::commit_image(&self.images, &spec, &files);
        files.insert("manifest.json".into(), manifest.to_bytes());
        (id, files)
    }

    /// Runs `imgbuild <args>` with this cluster's config.
    pub fn imgbuild(&self, args: &[&str]) -> Output {
        run(Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("-c")
            .arg(&self.config)
            .args(args))
    }

    /// The events recorded so far (`state/events.jsonl`).
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// `imgbuild serve` running in a namespace; killed on drop.
pub struct Server {
    child: Child,
    pub log: PathBuf,
}

impl Server {
    pub fn start(ns: &Netns, cluster: &ClusterDir) -> Server {
        Self::start_wrapped(ns, cluster, &[])
    }

    /// Like [`Server::start`], with `wrapper` (a command and its arguments) in front of `ip netns exec`: e.g.
    /// `nsenter -t <pid> -m` to run it in another mount namespace. Its log is appended to.
    pub fn start_wrapped(ns: &Netns, cluster: &ClusterDir, wrapper: &[&str]) -> Server {
        let log = cluster.dir.path().join("serve.log");
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).args(["ip", "netns", "exec", &ns.name]);
                c.arg(env!("CARGO_BIN_EXE_imgbuild"));
                c
            }
            None => ns.cmd(env!("CARGO_BIN_EXE_imgbuild")),
        };
        let child = cmd
            .arg("-c")
            .arg(&cluster.config)
            .arg("serve")
            .env("RUST_LOG", "imgbuild=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn_tied()
            .unwrap();
        let s = Server { child, log };
        let t0 = Instant::now();
        loop {
            let up = ns
                .exec(
                    2,
                    &["curl", "-sf", &format!("http://{SERVER}:8080/healthz")],
                )
                .status
                .success();
            if up && s.log_text().contains("TFTP listening") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "server did not come up:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// The server's process id (`ip netns exec` execs it: same process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET http://SERVER:8080{path}` from inside the namespace; returns (status, headers, body).
pub fn http(ns: &Netns, extra: &[&str], path: &str) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let hdr = dir.path().join("hdr");
    let url = format!("http://{SERVER}:8080{path}");
    let mut argv = vec![
        "curl",
        "-s",
        "--path-as-is",
        "-o",
        body.to_str().unwrap(),
        "-D",
        hdr.to_str().unwrap(),
        "-w",
        "%{http_code}",
    ];
    argv.extend_from_slice(extra);
    argv.push(&url);
    let out = ns.exec(20, &argv);
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        code,
        std::fs::read_to_string(&hdr)
            .unwrap_or_default()
            .to_ascii_lowercase(),
        std::fs::read(&body).unwrap_or_default(),
    )
}

/// The value of header `name` (lower case) in a curl `-D` dump.
pub fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim()))
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
