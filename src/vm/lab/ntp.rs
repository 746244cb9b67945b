//! The lab's NTP server: chronyd inside the lab's namespace, at the server's address, when the lab's
//! `[network] ntp` names that address (the example cluster's default: the gateway, which is the server in the
//! lab). The nodes' timesyncd then really synchronises, so each node's `firstboot-started` report can say
//! `synchronized=yes` with the offset timesyncd measured, as on a real provisioning network with a time server.
//! chronyd runs with `-x` (it never sets the host's clock) and asks no other server (`local stratum 8`); its
//! configuration is the template `profiles/lab/chrony.conf.j2`.

use std::process::Stdio;

use anyhow::Context;
use serde::Serialize;

use super::state::Lab;

/// The template of chronyd's configuration.
pub const CHRONY_TEMPLATE: &str = "profiles/lab/chrony.conf.j2";

#[derive(Serialize)]
struct Ctx {
    address: String,
    subnet: String,
    dir: String,
}

impl Lab {
    /// Starts chronyd at the server's address when the lab's nodes are told to use it for time. Returns whether
    /// it started (`false`: the cluster's NTP servers are elsewhere, which the lab cannot reach).
    pub(super) fn start_ntp(&mut self) -> anyhow::Result<bool> {
        let net = self.cluster.network.clone();
        let server = net.server.to_string();
        if !net.ntp.contains(&server) {
            if self.opts.verbose {
                eprintln!(
                    "lab: [network] ntp ({}) does not name the server's address {server}: no NTP server in the lab, \
                     the nodes will report their clocks unsynchronised",
                    net.ntp.join(", ")
                );
            }
            return Ok(false);
        }
        if !crate::image::base::on_path("chronyd", std::env::var_os("PATH").as_deref()) {
            anyhow::bail!(
                "chronyd is not installed: the lab serves time to its nodes at {server} ([network] ntp); run \
                 scripts/setup (Debian's chrony package)"
            );
        }
        let dir = self.opts.dir.join("ntp");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = crate::template::engine_for(&self.cluster).render(
            CHRONY_TEMPLATE,
            &Ctx {
                address: server,
                subnet: net.subnet.to_string(),
                dir: dir.display().to_string(),
            },
        )?;
        let path = dir.join("chrony.conf");
        std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        let log = std::fs::File::create(self.opts.dir.join("chronyd.log"))?;
        // With replicas, beside the first one (it holds the server's address).
        let mut c = match self.replicas.first() {
            Some(r) => r.netns.command("chronyd"),
            None => self.netns.command("chronyd"),
        };
        c.args(["-d", "-x", "-f"]).arg(&path);
        c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.children.spawn("chronyd", c)?;
        Ok(true)
    }
}
