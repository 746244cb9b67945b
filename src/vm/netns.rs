//! A private network namespace with a bridge and taps, torn down when dropped.
//!
//! Everything the lab and the boot tests create lives inside one namespace named `<prefix>-<pid>-<n>`; nothing
//! touches the host's interfaces. Dropping the [`Netns`] deletes the namespace (its bridge and taps go with it).
//! Namespaces left by a process that died (kill -9) are removed by the next [`Netns::create`] with the same prefix.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// An `ip` command failed.
#[derive(Debug, thiserror::Error)]
#[error("`ip {args}` failed: {detail}")]
pub struct IpError {
    /// The arguments given to `ip`, joined by spaces.
    pub args: String,
    /// Why it failed: its stderr, or that `ip` could not be started (install iproute2).
    pub detail: String,
}

/// Runs `ip <args>`.
pub fn ip(args: &[&str]) -> Result<(), IpError> {
    let err = |detail: String| IpError {
        args: args.join(" "),
        detail,
    };
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run ip: {e} (install iproute2)")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// A network namespace this process created. Deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Netns {
    /// Creates `<prefix>-<pid>-<n>` with `lo` up. Names stay within the kernel's limits for the tests' prefixes.
    pub fn create(prefix: &str) -> Result<Netns, IpError> {
        Self::remove_stale(prefix);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Self::create_named(&name)
    }

    /// Creates the namespace `name` (fails if it exists).
    pub fn create_named(name: &str) -> Result<Netns, IpError> {
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Deletes `<prefix>-<pid>-*` namespaces whose process is gone.
    fn remove_stale(prefix: &str) {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&format!("{prefix}-")) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !pid_alive(pid) {
                tracing::info!(netns = %name, "removing a namespace left by a dead process");
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }

    /// The namespace's name, `<prefix>-<pid>-<n>` (for `ip netns exec` and `ip -n`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), IpError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Adds a bridge (no STP, no forwarding delay, no multicast snooping: router solicitations to ff02::2 must
    /// reach the server's socket even before the bridge has seen its MLD report) with `cidr` (e.g. `10.77.0.1/24`) and brings it up.
    pub fn add_bridge(&self, bridge: &str, cidr: &str) -> Result<(), IpError> {
        self.ip(&[
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        self.ip(&["addr", "add", cidr, "dev", bridge])?;
        self.ip(&["link", "set", bridge, "up"])
    }

    /// Adds a persistent tap device enslaved to `bridge`, up.
    pub fn add_tap(&self, tap: &str, bridge: &str) -> Result<(), IpError> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["link", "set", tap, "master", bridge])?;
        self.ip(&["link", "set", tap, "up"])
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which execs: the child's PID is the
    /// program's).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, error = %e, "cannot delete the network namespace");
        }
    }
}

/// Child processes started by this process, stopped by PID (SIGTERM, then SIGKILL after a grace period) when
/// dropped, and killed by the kernel when this process dies without dropping them. Each child runs in its own process group so a terminal's Ctrl-C reaches only us, and we stop them in
/// order.
#[derive(Debug, Default)]
pub struct Children {
    list: Vec<(String, std::process::Child)>,
}

impl Children {
    /// An empty set: no children started yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `cmd` in its own process group and keeps it. The child is killed by the kernel if this process
    /// dies without dropping the set (kill -9, a test killed at its time limit): see [`super::spawn`].
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> std::io::Result<u32> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = super::spawn::spawn(cmd)?;
        let pid = child.id();
        self.list.push((name.to_string(), child));
        Ok(pid)
    }

    /// The exit status of `name` if it has exited (`None`: still running or unknown).
    pub fn try_wait(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.list
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// Whether `name` is still running.
    pub fn running(&mut self, name: &str) -> bool {
        self.list.iter().any(|(n, _)| n == name) && self.try_wait(name).is_none()
    }

    /// Stops `name` (SIGTERM, 3 s grace, SIGKILL) and forgets it.
    pub fn stop(&mut self, name: &str) {
        if let Some(i) = self.list.iter().position(|(n, _)| n == name) {
            let (n, c) = self.list.remove(i);
            stop_child(&n, c);
        }
    }

    /// Kills `name` with SIGKILL now (no grace: as a crash would end it), reaps it and forgets it.
    pub fn kill(&mut self, name: &str) {
        if let Some(i) = self.list.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.list.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops every child, newest first.
    pub fn stop_all(&mut self) {
        while let Some((n, c)) = self.list.pop() {
            stop_child(&n, c);
        }
    }
}

fn stop_child(name: &str, mut c: std::process::Child) {
    if c.try_wait().ok().flatten().is_some() {
        return;
    }
    let pid = c.id() as libc::pid_t;
    // SAFETY: kill(2) on a PID we spawned and have not reaped yet, so it cannot have been reused.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if c.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tracing::warn!(%name, pid, "did not stop on SIGTERM; killing");
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists(name: &str) -> bool {
        std::path::Path::new(&format!("/run/netns/{name}")).exists()
    }

    #[test]
    fn root_netns_guard_builds_bridge_and_taps_and_removes_everything() {
        let ns = Netns::create("iblnt").unwrap();
        let name = ns.name().to_string();
        ns.add_bridge("br0", "10.77.0.1/24").unwrap();
        ns.add_tap("iblnt0", "br0").unwrap();
        let out = ns.command("ip").args(["-br", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&out.stdout);
        assert!(links.contains("br0") && links.contains("iblnt0"), "{links}");
        // A child in the namespace, stopped by PID before the namespace goes.
        let mut kids = Children::new();
        let mut sleep = ns.command("sleep");
        sleep.arg("600");
        let pid = kids.spawn("sleep", sleep).unwrap();
        assert!(kids.running("sleep"));
        drop(kids);
        // We waited on it, so it is gone (not even a zombie).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(ns);
        assert!(!exists(&name), "namespace {name} left behind");
    }

    #[test]
    fn root_stale_namespaces_of_dead_processes_are_removed() {
        // A PID that cannot be alive: above the kernel's pid_max default range.
        let stale = "iblst-4194399-0";
        ip(&["netns", "add", stale]).unwrap();
        let ns = Netns::create("iblst").unwrap();
        assert!(!exists(stale), "stale namespace not removed");
        assert!(exists(ns.name()));
        drop(ns);
    }
}
