//! A real etcd cluster for the tests (Debian's `etcd-server`, the `etcd` binary): N members on 127.0.0.1 with
//! free ports picked per test, data directories in a temp dir, bounded waits, every member killed by its PID on
//! drop. Nothing leaves loopback.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    pub log: PathBuf,
}

/// A running etcd cluster.
pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

/// Free ports on 127.0.0.1 (bound all at once, then released: distinct, and free a moment ago).
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Etcd {
    /// Starts `n` members and waits (at most 60 s) until every one reports healthy.
    pub fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(2 * n);
        let token = format!("imgbuild-test-{}-{}", std::process::id(), ports[0]);
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
                log: dir.path().join(format!("m{i}.log")),
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            let client = format!("http://127.0.0.1:{}", m.client_port);
            let peer = format!("http://127.0.0.1:{}", m.peer_port);
            let child = Command::new("etcd")
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(dir.path().join(&m.name))
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args([
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                ])
                .args(["--initial-cluster-token", &token])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&m.log).unwrap())
                .spawn()
                .expect("etcd runs (Debian package etcd-server)");
            m.child = Some(child);
        }
        let e = Etcd { dir, members };
        let t0 = Instant::now();
        for i in 0..n {
            while !e.healthy(i) {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "etcd member {i} not healthy within 60 s:\n{}",
                    std::fs::read_to_string(&e.members[i].log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        e
    }

    /// Whether member `i` answers `/health` with `"health":"true"`.
    pub fn healthy(&self, i: usize) -> bool {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2"])
            .arg(format!(
                "http://127.0.0.1:{}/health",
                self.members[i].client_port
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"")
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `[state]` for `cluster.toml`, with this cluster's endpoints.
    pub fn state_section(&self, prefix: &str) -> String {
        let eps: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!(
            "\n[state]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\ntimeout_ms = 2000\n",
            eps.join(", ")
        )
    }

    /// Stops member `i` with SIGKILL (its PID only).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
