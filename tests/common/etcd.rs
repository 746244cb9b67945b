//! A real etcd cluster for the tests (Debian's `etcd-server`, the `etcd` binary): N members on 127.0.0.1 with
//! free ports picked per test, data directories in a temp dir, bounded waits, every member killed by its PID on
//! drop. Nothing leaves loopback. [`Etcd::start_tls`] serves clients over TLS only and requires a client
//! certificate (`--client-cert-auth`), with a CA and certificates made for the test by `openssl`.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
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
    /// The TLS material when the members serve clients over TLS.
    pub tls: Option<Tls>,
    /// The namespace the members run in (`None`: this process's, on loopback).
    pub ns: Option<String>,
    /// The address the members listen on.
    pub host: String,
}

/// A CA made for one test, the members' server certificate (for 127.0.0.1) and a client certificate, all PEM.
pub struct Tls {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Tls {
    /// Makes a CA named `name` in `dir` and, signed by it, a server certificate for 127.0.0.1 and a client
    /// certificate (P-256 keys, valid for two days).
    pub fn make(dir: &Path, name: &str) -> Tls {
        Self::make_for(dir, name, "127.0.0.1")
    }

    /// [`Tls::make`] with the server certificate for `host` (and 127.0.0.1).
    pub fn make_for(dir: &Path, name: &str, host: &str) -> Tls {
        std::fs::create_dir_all(dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let f = |n: &str| format!("{name}-{n}");
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    &f("ca.key"),
                    "-out",
                    &f("ca.crt"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ]
            .concat(),
        );
        for (who, ext) in [
            (
                "server",
                format!("subjectAltName=IP:127.0.0.1,IP:{host},DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n"),
            ),
            (
                "client",
                "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n".to_string(),
            ),
        ] {
            std::fs::write(dir.join(f(&format!("{who}.ext"))), ext).unwrap();
            openssl(
                dir,
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-keyout",
                        &f(&format!("{who}.key")),
                        "-out",
                        &f(&format!("{who}.csr")),
                        "-subj",
                        &format!("/CN=imgbuild-test-{who}"),
                    ],
                ]
                .concat(),
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &f(&format!("{who}.csr")),
                    "-CA",
                    &f("ca.crt"),
                    "-CAkey",
                    &f("ca.key"),
                    "-CAcreateserial",
                    "-out",
                    &f(&format!("{who}.crt")),
                    "-days",
                    "2",
                    "-extfile",
                    &f(&format!("{who}.ext")),
                ],
            );
        }
        let p = |n: &str| dir.join(f(n));
        Tls {
            ca: p("ca.crt"),
            ca_key: p("ca.key"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
        }
    }
}

/// `program`, inside namespace `ns` when given (`ip netns exec` execs it: the child's PID is the program's).
fn in_ns(ns: Option<&str>, program: &str) -> Command {
    match ns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
    }
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
        Self::start_with(n, false)
    }

    /// [`Etcd::start`] with clients served over TLS only (`https://`), a client certificate required.
    pub fn start_tls(n: usize) -> Etcd {
        Self::start_with(n, true)
    }

    /// `n` members in namespace `ns` (made by the test) listening on `host`, clients over TLS only with a client
    /// certificate (etcd needs TLS off loopback: `[state]` validation refuses plain `http://` there).
    pub fn start_tls_in(ns: &str, host: &str, n: usize) -> Etcd {
        Self::start_at(n, true, Some(ns), host)
    }

    fn start_with(n: usize, tls: bool) -> Etcd {
        Self::start_at(n, tls, None, "127.0.0.1")
    }

    fn start_at(n: usize, tls: bool, ns: Option<&str>, host: &str) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| Tls::make_for(&dir.path().join("pki"), "etcd-test-ca", host));
        let scheme = if tls.is_some() { "https" } else { "http" };
        // In a namespace of its own every port is free.
        let ports = match ns {
            None => free_ports(2 * n),
            Some(_) => (0..2 * n as u16).map(|i| 2379 + i).collect(),
        };
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
            .map(|m| format!("{}=http://{host}:{}", m.name, m.peer_port))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            let client = format!("{scheme}://{host}:{}", m.client_port);
            let peer = format!("http://{host}:{}", m.peer_port);
            let mut cmd = in_ns(ns, "etcd");
            if let Some(t) = &tls {
                cmd.arg("--cert-file").arg(&t.server_cert);
                cmd.arg("--key-file").arg(&t.server_key);
                cmd.arg("--trusted-ca-file").arg(&t.ca);
                cmd.arg("--client-cert-auth");
            }
            let child = cmd
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
        let e = Etcd {
            dir,
            members,
            tls,
            ns: ns.map(str::to_string),
            host: host.to_string(),
        };
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
        let mut cmd = in_ns(self.ns.as_deref(), "curl");
        cmd.args(["-s", "--max-time", "2"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cacert").arg(&t.ca);
            cmd.arg("--cert").arg(&t.client_cert);
            cmd.arg("--key").arg(&t.client_key);
        }
        let out = cmd
            .arg(format!("{}/health", self.endpoints()[i]))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\"")
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}:{}", self.host, m.client_port)
            })
            .collect()
    }

    /// `[state]` for `cluster.toml`, with this cluster's endpoints.
    pub fn state_section(&self, prefix: &str) -> String {
        let eps: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        let tls = match &self.tls {
            Some(t) => format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
                t.ca.display().to_string(),
                t.client_cert.display().to_string(),
                t.client_key.display().to_string()
            ),
            None => String::new(),
        };
        format!(
            "\n[state]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"{prefix}\"\ntimeout_ms = 2000\n{tls}",
            eps.join(", ")
        )
    }

    /// Freezes member `i` with SIGSTOP (`true`) or thaws it with SIGCONT (`false`), its PID only: a member that
    /// holds its connections open and answers nothing, as a hung host does.
    pub fn pause(&mut self, i: usize, stop: bool) {
        let c = self.members[i].child.as_ref().expect("member running");
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
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
