//! The lab's services inside its namespace: `imgbuild serve` (and dnsmasq as the router's DHCP server in
//! proxy mode), their logs, and HTTP requests to the server from inside the namespace.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::state::Lab;
use crate::config::DhcpMode;
use crate::status::report::Report;
use crate::vm::qemu;

/// Runs `body` on a thread that has entered the network namespace `ns` (so it can reach the server).
pub fn in_netns<T: Send>(ns: &str, body: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<T> {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns affects only this (scoped, short-lived) thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering {ns}: {}", std::io::Error::last_os_error());
            }
            Ok(body())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
    })
}

pub(super) fn http_get_in(ns: &str, url: &str) -> anyhow::Result<String> {
    let url = url.to_string();
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok::<_, anyhow::Error>(rt.block_on(crate::status::client::get(&url))?)
    })?
}

impl Lab {
    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let p = self.opts.dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))
    }

    pub(super) fn start_services(&mut self) -> anyhow::Result<()> {
        let net = self.cluster.network.clone();
        if self.opts.dhcp == DhcpMode::Proxy {
            // The "router's" DHCP server: addresses only (the inventory's fixed ones), no boot information.
            let mut c = self.netns.command("dnsmasq");
            c.args(["-k", "--port=0", "--bind-interfaces", "--no-ping"]);
            c.arg(format!("--interface={}", net.interface));
            c.arg("--dhcp-authoritative");
            let hosts = net.subnet.hosts().collect::<Vec<_>>();
            let (lo, hi) = (hosts[hosts.len() * 3 / 4], hosts[hosts.len() - 2]);
            c.arg(format!(
                "--dhcp-range={lo},{hi},{},1h",
                net.subnet.netmask()
            ));
            for m in &self.cluster.machines {
                c.arg(format!("--dhcp-host={},{}", m.mac, m.ip));
            }
            c.arg(format!(
                "--dhcp-leasefile={}",
                self.opts.dir.join("state/dnsmasq.leases").display()
            ));
            c.arg("--pid-file=");
            c.arg(format!(
                "--log-facility={}",
                self.opts.dir.join("dnsmasq.log").display()
            ));
            c.arg("--log-dhcp");
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            self.children.spawn("dnsmasq", c)?;
        }
        let mut c = self.netns.command(&self.opts.exe.display().to_string());
        c.arg("-c").arg(&self.config).arg("serve");
        c.stdin(Stdio::null())
            .stdout(self.log_file("server.log")?)
            .stderr(self.log_file("server.log")?);
        self.children.spawn("server", c)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http_get_in(self.netns.name(), &format!("{}/healthz", self.server_url)).is_ok() {
                return Ok(());
            }
            if !self.children.running("server") {
                bail!(
                    "imgbuild serve exited at start; its log ({}):\n{}",
                    self.opts.dir.join("server.log").display(),
                    qemu::console_tail(&self.opts.dir.join("server.log"), 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "imgbuild serve did not answer {}/healthz within 20 s",
                    self.server_url
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's current report.
    pub fn status(&self) -> anyhow::Result<Report> {
        let body = http_get_in(
            self.netns.name(),
            &format!("{}/api/status", self.server_url),
        )?;
        serde_json::from_str(&body).context("the server's /api/status is not a status report")
    }
}
