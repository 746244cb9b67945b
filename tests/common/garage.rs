//! A real 3-node Garage cluster (the S3-compatible object store `scripts/setup` installs) on the loopback of a
//! network namespace the test made: each node with its own metadata and data directories in a temp dir, an RPC
//! secret made for this cluster, replication factor 3, the layout assigned and applied, a key and a bucket
//! made with the `garage` CLI. Every wait is bounded; nodes are killed by their PID on drop.
//!
//! Include it with `#[path = "common/garage.rs"] mod garage;` beside `mod netboot;`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// S3 API port of node `i` (in the namespace: no other process can hold it).
fn s3_port(i: usize) -> u16 {
    3900 + 10 * i as u16
}

/// The `garage` binary: `GARAGE_BIN`, else on PATH, else `~/.cargo/bin/garage` (where `scripts/setup` puts it).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    });
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/garage"));
    on_path
        .or(home.filter(|p| p.is_file()))
        .expect("garage is not installed: run scripts/setup (cargo install --locked garage@2.5.0)")
}

/// The running cluster.
pub struct Garage {
    ns: String,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Child>>,
    /// The S3 endpoint of node 0, inside the namespace.
    pub endpoint: String,
    /// The region the nodes answer as.
    pub region: String,
    /// The bucket made for the test.
    pub bucket: String,
    /// The access key id and secret of the key allowed on the bucket.
    pub key_id: String,
    /// The secret access key.
    pub secret: String,
}

fn hex_random(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    hex::encode(b)
}

impl Garage {
    /// Starts three nodes in namespace `ns`, forms the cluster, and makes the key and the bucket.
    pub fn start(ns: &str) -> Garage {
        Self::start_at(ns, "127.0.0.1")
    }

    /// [`Garage::start`] with the nodes listening on `host` (an address of the namespace).
    pub fn start_at(ns: &str, host: &str) -> Garage {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let secret = hex_random(32);
        let mut g = Garage {
            ns: ns.to_string(),
            nodes: Vec::new(),
            endpoint: format!("http://{host}:{}", s3_port(0)),
            region: "garage".into(),
            bucket: "imgbuild-images".into(),
            key_id: String::new(),
            secret: String::new(),
            dir,
        };
        for i in 0..3 {
            let d = g.dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(d.join("meta")).unwrap();
            std::fs::create_dir_all(d.join("data")).unwrap();
            let conf = format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                 metadata_fsync = false\ndata_fsync = false\nreplication_factor = 3\n\
                 rpc_bind_addr = \"{host}:{rpc}\"\nrpc_public_addr = \"{host}:{rpc}\"\n\
                 rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"garage\"\n\
                 api_bind_addr = \"{host}:{s3}\"\nroot_domain = \".s3.garage.localhost\"\n",
                meta = d.join("meta").display(),
                data = d.join("data").display(),
                rpc = s3_port(i) + 1,
                s3 = s3_port(i),
            );
            std::fs::write(g.conf(i), conf).unwrap();
            let log = std::fs::File::create(d.join("garage.log")).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(binary())
                .arg("-c")
                .arg(g.conf(i))
                .arg("server")
                .env("RUST_LOG", "garage=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            g.nodes.push(Some(child));
        }
        // Each node's id, once its RPC answers.
        let ids: Vec<String> = (0..3)
            .map(|i| {
                let out = g.wait_cli(i, &["node", "id", "-q"], 30);
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .collect();
        for id in &ids[1..] {
            g.wait_cli(0, &["node", "connect", id], 20);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            g.wait_cli(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short], 20);
        }
        g.wait_cli(0, &["layout", "apply", "--version", "1"], 20);
        let out = g.wait_cli(0, &["key", "create", "imgbuild-test"], 30);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let field = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or_else(|| panic!("no {name} in `garage key create`:\n{text}"))
                .to_string()
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.wait_cli(0, &["bucket", "create", &g.bucket.clone()], 30);
        g.wait_cli(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &g.bucket.clone(),
                "--key",
                "imgbuild-test",
            ],
            30,
        );
        eprintln!(
            "garage: 3 nodes up, layout applied, key and bucket made in {:?}",
            t0.elapsed()
        );
        g
    }

    fn conf(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}/garage.toml"))
    }

    /// `garage -c <node i's config> <args>` in the namespace, bounded to 20 s.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "timeout", "20"])
            .arg(binary())
            .arg("-c")
            .arg(self.conf(i))
            .args(args)
            .env("RUST_LOG", "garage=warn")
            .output()
            .unwrap()
    }

    /// Runs the CLI until it succeeds, for at most `secs` seconds (the cluster settles in the meantime).
    fn wait_cli(&self, i: usize, args: &[&str], secs: u64) -> Output {
        let t0 = Instant::now();
        loop {
            let out = self.cli(i, args);
            if out.status.success() {
                return out;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "garage {args:?} kept failing for {secs} s: {}{}\nnode logs:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The nodes' logs, for failure messages.
    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let p = self.dir.path().join(format!("node{i}/garage.log"));
                format!(
                    "-- node{i}\n{}",
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Kills node `i` (by its PID) and waits for it.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A credentials file for the key (mode 0600) at `path`.
    pub fn write_credentials(&self, path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            path,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                self.key_id, self.secret
            ),
        )
        .unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The `[store]` table pointing at this cluster, with the credentials file and cache given.
    pub fn store_toml(&self, credentials: &Path, cache: &Path) -> String {
        format!(
            "\n[store]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{}\"\nregion = \"{}\"\ncache = \"{}\"\ncredentials_file = \"{}\"\n",
            self.endpoint,
            self.bucket,
            self.region,
            cache.display(),
            credentials.display()
        )
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (only that thread, and the threads it starts,
/// are in it): the test reaches the object store on the namespace's loopback directly.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let fd = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread with a namespace file we opened; it changes only this thread's namespace.
        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}
