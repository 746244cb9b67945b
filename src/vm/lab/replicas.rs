//! The lab with server replicas ([`Options::replicas`](super::Options::replicas)): two `imgbuild serve`
//! processes on a servers' segment, behind a DHCP relay (Debian's `dhcrelay`) on the nodes' segment, sharing
//! state in etcd and images in an object store that the caller starts on the servers' segment.
//!
//! The lab's namespace is the router between the two segments:
//!
//! ```text
//!   VMs ── br0 (nodes; the relay's address /32, its giaddr) ── lab namespace ── brs (servers; the subnet's
//!                                                                                 last address /24: etcd, S3)
//!                                                                                  ├─ replica A ns: br0 = server
//!                                                                                  └─ replica B ns: br0 = 2nd
//! ```
//!
//! Both segments hold addresses of the one lab subnet, so the images (built for `[network] server`, replica A)
//! and the inventory stay as they are: the namespace answers ARP on each side for the addresses on the other
//! (proxy ARP, a host route per machine and the VIP towards the nodes) and forwards between them. DHCP
//! broadcasts never cross it: only the relay forwards them, to both replicas, with option 82. Each replica runs
//! in its own namespace with its own `[network] server` from `[state] dhcp_replicas`, its own state directory
//! (replica A's is the lab's) and the lab's secrets.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::server::http_get_in;
use super::state::{Lab, Replica};
use crate::vm::netns::Netns;

/// The servers' bridge in the lab's namespace.
pub const SERVERS_BRIDGE: &str = "brs";

/// The relay's address on the nodes' segment (its `giaddr`): the subnet's second host address.
pub(super) fn relay_address(net: &crate::config::Network) -> Option<Ipv4Addr> {
    net.subnet.hosts().nth(1)
}

/// The lab namespace's address on the servers' segment (where the caller runs etcd and the object store): the
/// subnet's last host address.
pub(super) fn shared_address(net: &crate::config::Network) -> Option<Ipv4Addr> {
    net.subnet.hosts().last()
}

impl Lab {
    /// Sets the lab's namespace up as the router between the nodes' and the servers' segments (see the module
    /// documentation): called by [`Lab::prepare`] after the nodes' bridge got the relay's address.
    pub(super) fn add_servers_segment(&self) -> anyhow::Result<()> {
        let net = &self.cluster.network;
        let shared = shared_address(net).context("the lab's subnet has no last host address")?;
        self.netns.add_bridge(
            SERVERS_BRIDGE,
            &format!("{shared}/{}", net.subnet.prefix_len()),
        )?;
        // The nodes' addresses (and the VIP) are on the nodes' side; everything else of the subnet is on the
        // servers' side (the /24 route of brs).
        let mut on_nodes: Vec<Ipv4Addr> = self.cluster.machines.iter().map(|m| m.ip).collect();
        on_nodes.push(self.cluster.control_plane.vip);
        for ip in on_nodes {
            self.netns.ip(&[
                "route",
                "replace",
                &format!("{ip}/32"),
                "dev",
                &net.interface,
            ])?;
        }
        let mut sysctl = String::from("echo 1 > /proc/sys/net/ipv4/ip_forward");
        for dev in [net.interface.as_str(), SERVERS_BRIDGE] {
            sysctl.push_str(&format!(
                " && echo 1 > /proc/sys/net/ipv4/conf/{dev}/proxy_arp && echo 0 > /proc/sys/net/ipv4/neigh/{dev}/proxy_delay \
                 && echo 0 > /proc/sys/net/ipv4/conf/{dev}/rp_filter"
            ));
        }
        let out = self
            .netns
            .command("sh")
            .args(["-c", &sysctl])
            .output()
            .context("running sh in the lab's namespace")?;
        if !out.status.success() {
            bail!(
                "cannot set forwarding and proxy ARP in the lab's namespace: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The lab namespace's address on the servers' segment: run etcd and the object store there (inside
    /// [`Lab::netns`]) before [`Lab::start_replicas`].
    pub fn shared_address(&self) -> Ipv4Addr {
        shared_address(&self.cluster.network).expect("checked by prepare")
    }

    /// Starts the replicas behind the relay: one per `[state] dhcp_replicas` address in `extra` (TOML added to
    /// the lab's `cluster.toml`: `[state]` with `backend = "etcd"`, `[store]`), each in its own namespace on the
    /// servers' segment; pushes the lab's images to the store and pins them in the shared state; starts the
    /// NTP server beside the first replica, then `dhcrelay` forwarding from the nodes' segment to every replica.
    /// Waits until each replica answers `/healthz` and listens for DHCP.
    pub fn start_replicas(&mut self, extra: &str) -> anyhow::Result<()> {
        let extra_doc: toml_edit::DocumentMut =
            extra.parse().context("the replicas' extra TOML")?;
        let text = std::fs::read_to_string(&self.config)?;
        let mut base: toml_edit::DocumentMut = text.parse()?;
        for (k, v) in extra_doc.iter() {
            base[k] = v.clone();
        }
        let servers: Vec<Ipv4Addr> = base["state"]["dhcp_replicas"]
            .as_array()
            .context("the replicas' [state] needs dhcp_replicas (every replica's address)")?
            .iter()
            .filter_map(|v| v.as_str()?.parse().ok())
            .collect();
        if servers.first() != Some(&self.cluster.network.server) || servers.len() < 2 {
            bail!(
                "[state] dhcp_replicas must start with the lab's server {} and name at least two replicas",
                self.cluster.network.server
            );
        }
        let net = self.cluster.network.clone();
        for (i, server) in servers.iter().enumerate() {
            let name = format!("replica-{}", (b'a' + i as u8) as char);
            let dir = self.opts.dir.join(&name);
            std::fs::create_dir_all(&dir)?;
            let mut doc = base.clone();
            doc["network"]["server"] = toml_edit::value(server.to_string());
            // Each replica its own read-through cache of the object store (a replica starts empty).
            if doc.get("store").is_some() {
                doc["store"]["cache"] =
                    toml_edit::value(dir.join("store-cache").display().to_string());
            }
            if i > 0 {
                let state = dir.join("state");
                std::fs::create_dir_all(&state)?;
                doc["paths"]["state"] = toml_edit::value(state.display().to_string());
            }
            let config = dir.join("cluster.toml");
            std::fs::write(&config, doc.to_string())?;
            let netns = Netns::create(&format!("{}r", self.opts.prefix))?;
            let outer = format!("{}{}", self.opts.prefix, (b'a' + i as u8) as char);
            self.netns.ip(&[
                "link",
                "add",
                &outer,
                "type",
                "veth",
                "peer",
                "name",
                &net.interface,
                "netns",
                netns.name(),
            ])?;
            self.netns
                .ip(&["link", "set", &outer, "master", SERVERS_BRIDGE, "up"])?;
            netns.ip(&[
                "addr",
                "add",
                &format!("{server}/{}", net.subnet.prefix_len()),
                "dev",
                &net.interface,
            ])?;
            netns.ip(&["link", "set", &net.interface, "up"])?;
            let log = self.opts.dir.join(format!("{name}.log"));
            self.replicas.push(Replica {
                name,
                server: *server,
                config,
                log,
                netns,
            });
        }
        // The images in the object store and pinned in the shared state, before any replica serves.
        for (role, _, id) in self.images.clone() {
            self.replica_cli(&["push", &id])?;
            self.replica_cli(&["pin", &role.to_string(), &id])?;
        }
        self.start_ntp()?;
        for i in 0..self.replicas.len() {
            self.start_replica(i)?;
        }
        let relay = relay_address(&net).context("no relay address")?;
        let mut args = vec![
            "-4".to_string(),
            "-d".into(),
            "-a".into(),
            "-pf".into(),
            self.opts.dir.join("dhcrelay.pid").display().to_string(),
            "-id".into(),
            net.interface.clone(),
            "-iu".into(),
            SERVERS_BRIDGE.into(),
        ];
        args.extend(self.replicas.iter().map(|r| r.server.to_string()));
        let log = self.opts.dir.join("dhcrelay.log");
        self.spawn_in_netns("dhcrelay", "dhcrelay", &args, &log)?;
        let t0 = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Sending on")
        {
            if t0.elapsed() > Duration::from_secs(10) || !self.process_running("dhcrelay") {
                bail!(
                    "dhcrelay (relay {relay}) did not start: {}",
                    crate::vm::qemu::console_tail(&log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Starts replica `i` (again, after [`Lab::kill_replica`]) and waits until it serves.
    pub fn start_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let r = &self.replicas[i];
        let (name, url, log) = (r.name.clone(), r.url(&self.cluster.network), r.log.clone());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut c = r.netns.command(&self.opts.exe.display().to_string());
        c.arg("-c").arg(&r.config).arg("serve");
        c.env("IMGBUILD_REPLICA", &name);
        c.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        self.children.spawn(&name, c)?;
        let ns = self.replicas[i].netns().to_string();
        let t0 = Instant::now();
        loop {
            let dhcp = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("DHCP server listening")
                .count();
            if http_get_in(&ns, &format!("{url}/healthz")).is_ok() && dhcp > 0 {
                return Ok(());
            }
            if !self.children.running(&name) {
                bail!(
                    "{name} exited at start; its log ({}):\n{}",
                    log.display(),
                    crate::vm::qemu::console_tail(&log, 20)
                );
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("{name} did not serve {url}/healthz within 30 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills replica `i` with SIGKILL (by its PID), as a crash would.
    pub fn kill_replica(&mut self, i: usize) {
        let name = self.replicas[i].name.clone();
        self.children.kill(&name);
    }

    /// `imgbuild -c <replica A's cluster.toml> <args>` inside the lab's namespace (where etcd and the object store
    /// are reachable): what an operator runs on one host. Returns its stdout.
    pub fn replica_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let r = self.replicas.first().context("no replicas started")?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.netns.name()])
            .arg(&self.opts.exe)
            .arg("-c")
            .arg(&r.config)
            .args(args)
            .env("NO_COLOR", "1");
        super::images::stdout_of(
            c,
            &format!("`imgbuild {}` (replica A's config)", args.join(" ")),
        )
    }
}
