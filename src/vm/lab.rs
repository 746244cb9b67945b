//! `imgbuild lab`: the whole boot path in QEMU on one Linux machine.
//!
//! As root: a private network namespace with the bridge named by `[network] interface` (the example: `br0` =
//! 10.77.0.1/24), `imgbuild serve` (this same binary) inside it, the role images built (or reused from the
//! cache) and pinned, one QEMU VM per machine on a tap with the inventory's MAC, a blank state disk (and a
//! Longhorn disk on storage nodes), serial console to a log file. The lab then watches the server's
//! `/api/status` until every node reached `joined`, a node failed, or the time ran out. Dropping the [`Lab`]
//! stops every process it started (by PID) and deletes the namespace (taps and bridge with it).
//!
//! Everything the lab writes lives in its directory (default `lab/` beside `cluster.toml`): a generated
//! `cluster.toml` (the user's, with `[paths]` state and secrets pointing into the lab directory and the DHCP
//! mode chosen), `state/`, `secrets/`, `server.log`, `dnsmasq.log` and `vms/<host>/` (disks, console log).
//! Images and the build cache are the user's (shared, content-addressed), so a second run reuses them.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::netns::{Children, Netns};
use super::qemu::{self, Accel, Firmware, VmSpec};
use crate::config::{Arch, Cluster, DhcpMode, Machine, Role};
use crate::status::report::{self, NodeView, Report};

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag the lab's loops check (they then return, and the guards tear everything
/// down) instead of killing the process with the namespace still there.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Size of each VM's blank state disk (sparse).
pub const STATE_DISK_BYTES: u64 = 8 << 30;
/// Size of a storage node's blank Longhorn disk (sparse).
pub const DATA_DISK_BYTES: u64 = 16 << 30;

/// What `imgbuild lab` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The user's cluster.toml (the lab's is generated from it).
    pub config: PathBuf,
    /// The lab directory (wiped of earlier state at start).
    pub dir: PathBuf,
    /// Hostnames to boot; `None`: every machine in the inventory.
    pub nodes: Option<Vec<String>>,
    pub firmware: Firmware,
    pub dhcp: DhcpMode,
    /// Build and boot images with the labelled stand-in binaries.
    pub standins: bool,
    /// Overall time limit for every node to reach `joined`.
    pub timeout: Duration,
    pub memory_mb: u32,
    /// Override the images / cache directories (tests share one build).
    pub images: Option<PathBuf>,
    pub cache: Option<PathBuf>,
    /// The `imgbuild` binary to run for `serve`, `profile`, `pin`, `secrets` (default: this executable).
    pub exe: PathBuf,
    /// Namespace name prefix.
    pub prefix: String,
    /// Print progress (live table on a terminal, one line per stage change otherwise).
    pub verbose: bool,
}

impl Options {
    /// Defaults for `config`: lab dir `lab/` beside it, BIOS, full DHCP, 20 minutes, 2 GiB per VM.
    pub fn new(config: &Path) -> Options {
        let dir = config
            .parent()
            .map(|p| p.join("lab"))
            .unwrap_or_else(|| PathBuf::from("lab"));
        Options {
            config: config.to_path_buf(),
            dir,
            nodes: None,
            firmware: Firmware::Bios,
            dhcp: DhcpMode::Full,
            standins: false,
            timeout: Duration::from_secs(20 * 60),
            memory_mb: 2048,
            images: None,
            cache: None,
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("imgbuild")),
            prefix: "ibl".into(),
            verbose: true,
        }
    }
}

/// One VM of the lab.
#[derive(Debug, Clone)]
pub struct Node {
    pub machine: Machine,
    pub spec: VmSpec,
}

/// A running lab. Drop tears it down (processes by PID, then the namespace).
pub struct Lab {
    // Field order matters: children stop before the namespace is deleted.
    children: Children,
    netns: Netns,
    pub opts: Options,
    /// The generated cluster.toml the server uses.
    pub config: PathBuf,
    pub cluster: Cluster,
    pub nodes: Vec<Node>,
    /// `http://server:port` (reachable only inside the namespace).
    pub server_url: String,
    pub accel: Accel,
    /// Image ids pinned per role by [`Lab::prepare`].
    pub images: Vec<(Role, Arch, String)>,
    /// Whether the pinned images carry stand-ins.
    pub standins: bool,
}

fn check_tools(opts: &Options, machines: &[Machine]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "imgbuild lab needs root: it creates a network namespace, a bridge and taps (run it with sudo)"
        );
    }
    let mut need = vec!["ip"];
    for arch in Arch::ALL {
        if machines.iter().any(|m| m.arch == arch) {
            need.push(qemu::binary(arch));
        }
    }
    if opts.dhcp == DhcpMode::Proxy {
        need.push("dnsmasq");
    }
    for tool in need {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!(
                "{tool} is not installed; run scripts/setup (it installs the Debian packages in .ci/apt-packages)"
            );
        }
    }
    if matches!(opts.firmware, Firmware::Uefi | Firmware::Http)
        && machines.iter().any(|m| m.arch == Arch::Amd64)
        && !Path::new(qemu::OVMF_CODE).exists()
    {
        bail!(
            "{} is missing: install Debian's ovmf package (scripts/setup)",
            qemu::OVMF_CODE
        );
    }
    if machines.iter().any(|m| m.arch == Arch::Arm64) && !Path::new(qemu::AAVMF_CODE).exists() {
        bail!(
            "{} is missing: arm64 machines boot on AAVMF; install Debian's qemu-efi-aarch64 package (scripts/setup)",
            qemu::AAVMF_CODE
        );
    }
    Ok(())
}

/// Writes the lab's cluster.toml: the user's file with `[paths]` made absolute (profiles, ipxe, images, cache
/// from the user's cluster or the overrides; state and secrets inside the lab dir) and `dhcp_mode` set.
fn write_config(opts: &Options, user: &Cluster) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("reading {}", opts.config.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", opts.config.display()))?;
    // The lab's config lives in the lab dir: a path relative to the user's working directory (`-c cluster.toml`
    // gives `./profiles`) would be read relative to the lab dir instead.
    let abs = |p: &Path| -> String {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let images = opts.images.clone().unwrap_or(user.paths.images.clone());
    let cache = opts.cache.clone().unwrap_or(user.paths.cache.clone());
    let paths = toml_edit::table();
    doc["paths"] = paths;
    doc["paths"]["profiles"] = toml_edit::value(abs(&user.paths.profiles));
    doc["paths"]["ipxe"] = toml_edit::value(abs(&user.paths.ipxe));
    doc["paths"]["images"] = toml_edit::value(abs(&images));
    doc["paths"]["cache"] = toml_edit::value(abs(&cache));
    doc["paths"]["state"] = toml_edit::value(abs(&opts.dir.join("state")));
    doc["paths"]["secrets"] = toml_edit::value(abs(&opts.dir.join("secrets")));
    // The lab's network is private: always end iPXE's IPv6 wait there.
    doc["network"]["router_advertisements"] = toml_edit::value(true);
    doc["network"]["dhcp_mode"] = toml_edit::value(match opts.dhcp {
        DhcpMode::Full => "full",
        DhcpMode::Proxy => "proxy",
    });
    let out = opts.dir.join("cluster.toml");
    std::fs::write(&out, doc.to_string()).with_context(|| format!("writing {}", out.display()))?;
    // The artifact lock lives beside the config: let the lab's config see the user's.
    if user.paths.lock.exists() {
        let link = opts.dir.join(
            user.paths
                .lock
                .file_name()
                .unwrap_or_else(|| std::ffi::OsStr::new("imgbuild.lock")),
        );
        let _ = std::fs::remove_file(&link);
        std::fs::copy(&user.paths.lock, &link)
            .with_context(|| format!("copying {}", user.paths.lock.display()))?;
    }
    Ok(out)
}

/// Runs `imgbuild -c <config> <args>` and returns its stdout; on failure the error carries its stderr.
fn imgbuild(exe: &Path, config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "`imgbuild {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An exclusive `flock` on `path` while the value lives (serialises image builds of concurrent labs/tests).
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> anyhow::Result<FileLock> {
        use std::os::fd::AsRawFd;
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking our own descriptor.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Builds (or takes from the cache) the image of `role` for `arch` and returns its id.
pub fn build_image(
    exe: &Path,
    config: &Path,
    cache: &Path,
    role: Role,
    arch: Arch,
    standins: bool,
) -> anyhow::Result<String> {
    let _lock = FileLock::acquire(&cache.join("lab-build.lock"))?;
    let role_s = role.to_string();
    let mut args = vec!["profile", role_s.as_str(), "--json"];
    if arch != Arch::Amd64 {
        args.extend(["--arch", arch.as_str()]);
    }
    if standins {
        args.push("--standins");
    }
    let out = imgbuild(exe, config, &args).map_err(|e| {
        if standins {
            e
        } else {
            e.context(format!(
                "cannot build the real {role} image. Without kubeadm, kubelet and friends (`imgbuild fetch` needs \
                 dl.k8s.io and GitHub, unreachable from here) the lab cannot form a cluster; \
                 `imgbuild lab --standins` boots the labelled stand-in images instead"
            ))
        }
    })?;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("`imgbuild profile {role} --json` printed no JSON report"))?;
    v["id"]
        .as_str()
        .map(str::to_string)
        .context("the build report has no image id")
}

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

fn http_get_in(ns: &str, url: &str) -> anyhow::Result<String> {
    let url = url.to_string();
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok::<_, anyhow::Error>(rt.block_on(crate::status::client::get(&url))?)
    })?
}

impl Lab {
    /// Sets up everything but the VMs: lab dir, config, secrets, images (built or reused) and pins, the
    /// namespace with bridge and taps, dnsmasq (proxy mode) and the server, which it waits for.
    pub fn prepare(opts: Options) -> anyhow::Result<Lab> {
        let user = crate::config::load(&opts.config)?;
        let machines: Vec<Machine> = match &opts.nodes {
            None => user.machines.clone(),
            Some(names) => {
                let mut v = Vec::new();
                for n in names {
                    let m = user.machine_by_hostname(n).with_context(|| {
                        format!(
                            "--nodes: no machine {n:?} in {}; known: {}",
                            opts.config.display(),
                            user.machines
                                .iter()
                                .map(|m| m.hostname.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?;
                    v.push(m.clone());
                }
                v
            }
        };
        if machines.is_empty() {
            bail!("no machines to boot");
        }
        check_tools(&opts, &machines)?;
        // A fresh lab: earlier state, secrets and disks go.
        for sub in ["state", "secrets", "vms"] {
            let p = opts.dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        for sub in ["vms", "state"] {
            std::fs::create_dir_all(opts.dir.join(sub))
                .with_context(|| format!("creating {}", opts.dir.display()))?;
        }
        let config = write_config(&opts, &user)?;
        let cluster = crate::config::load(&config)?;
        imgbuild(&opts.exe, &config, &["secrets", "init"])?;

        // Images: one per role and architecture in use, built under a lock (concurrent labs share the cache),
        // then pinned.
        let mut slots: Vec<(Role, Arch)> = machines.iter().map(|m| (m.role, m.arch)).collect();
        slots.sort_by_key(|(r, a)| (r.to_string(), *a));
        slots.dedup();
        let mut images = Vec::new();
        let mut standins = false;
        for (role, arch) in slots {
            if opts.verbose {
                eprintln!(
                    "lab: building (or reusing) the {role} image for {arch}{}",
                    if opts.standins { " with stand-ins" } else { "" }
                );
            }
            let id = build_image(
                &opts.exe,
                &config,
                &cluster.paths.cache,
                role,
                arch,
                opts.standins,
            )?;
            standins |= report::image_standins(&*crate::image::store::open(&cluster), &id);
            imgbuild(&opts.exe, &config, &["pin", &role.to_string(), &id])?;
            images.push((role, arch, id));
        }

        let accel = qemu::best_accel_cached(&cluster.paths.cache);
        let netns = Netns::create(&opts.prefix)?;
        let net = &cluster.network;
        netns.add_bridge(
            &net.interface,
            &format!("{}/{}", net.server, net.subnet.prefix_len()),
        )?;
        let mut nodes = Vec::new();
        for (i, m) in machines.iter().enumerate() {
            let tap = format!("{}t{i}", opts.prefix);
            netns.add_tap(&tap, &net.interface)?;
            let dir = opts.dir.join("vms").join(&m.hostname);
            let mut disks = vec![dir.join("state.img")];
            if m.role == Role::Storage {
                disks.push(dir.join("longhorn.img"));
            }
            nodes.push(Node {
                machine: m.clone(),
                spec: VmSpec {
                    name: m.hostname.clone(),
                    mac: m.mac,
                    arch: m.arch,
                    tap,
                    firmware: opts.firmware,
                    accel,
                    memory_mb: opts.memory_mb,
                    disks,
                    console_log: dir.join("console.log"),
                    dir,
                },
            });
        }
        let mut lab = Lab {
            children: Children::new(),
            netns,
            server_url: net.http_base(),
            config,
            cluster,
            nodes,
            accel,
            images,
            standins,
            opts,
        };
        lab.start_services()?;
        Ok(lab)
    }

    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let p = self.opts.dir.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))
    }

    fn start_services(&mut self) -> anyhow::Result<()> {
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

    /// The namespace's name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    fn node(&self, host: &str) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.machine.hostname == host)
            .with_context(|| format!("no VM {host} in this lab"))
    }

    /// Powers a VM on (its disks are created blank the first time, kept afterwards).
    pub fn start_vm(&mut self, host: &str) -> anyhow::Result<()> {
        let node = self.node(host)?.clone();
        for (i, d) in node.spec.disks.iter().enumerate() {
            qemu::blank_disk(
                d,
                if i == 0 {
                    STATE_DISK_BYTES
                } else {
                    DATA_DISK_BYTES
                },
            )?;
        }
        let cmd = qemu::command(&self.netns, &node.spec)?;
        self.children.spawn(&format!("vm:{host}"), cmd)?;
        Ok(())
    }

    /// Powers a VM off (kills QEMU); its disks stay.
    pub fn stop_vm(&mut self, host: &str) {
        self.children.stop(&format!("vm:{host}"));
    }

    /// Whether the VM's QEMU is running.
    pub fn vm_running(&mut self, host: &str) -> bool {
        self.children.running(&format!("vm:{host}"))
    }

    /// The server's current report.
    pub fn status(&self) -> anyhow::Result<Report> {
        let body = http_get_in(
            self.netns.name(),
            &format!("{}/api/status", self.server_url),
        )?;
        serde_json::from_str(&body).context("the server's /api/status is not a status report")
    }

    /// Builds (or reuses) the amd64 image of `role` (same stand-in choice as the lab) and returns its id.
    pub fn build(&self, role: Role) -> anyhow::Result<String> {
        build_image(
            &self.opts.exe,
            &self.config,
            &self.cluster.paths.cache,
            role,
            Arch::Amd64,
            self.opts.standins,
        )
    }

    /// Builds the image of `role` from another profiles directory (same cluster, same cache): a second image id
    /// for upgrade / rollback scenarios. The server's configuration is not touched.
    pub fn build_with_profiles(&self, role: Role, profiles: &Path) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(&self.config)?;
        let mut doc: toml_edit::DocumentMut = text.parse()?;
        doc["paths"]["profiles"] = toml_edit::value(profiles.display().to_string());
        let variant = self.opts.dir.join("cluster-variant.toml");
        std::fs::write(&variant, doc.to_string())?;
        build_image(
            &self.opts.exe,
            &variant,
            &self.cluster.paths.cache,
            role,
            Arch::Amd64,
            self.opts.standins,
        )
    }

    /// `imgbuild pin <role> <id>` on the lab's configuration (the running server picks it up).
    pub fn pin(&self, role: Role, id: &str) -> anyhow::Result<()> {
        imgbuild(
            &self.opts.exe,
            &self.config,
            &["pin", &role.to_string(), id],
        )
        .map(|_| ())
    }

    /// Console log path of `host`.
    pub fn console(&self, host: &str) -> PathBuf {
        self.opts.dir.join("vms").join(host).join("console.log")
    }

    /// Waits until `done` holds for every host in `hosts` (checked on each report), a node fails, a VM exits,
    /// or `limit` passes. `min_boot`: a node counts only once its boot number reached it (reboot scenarios).
    pub fn wait(
        &mut self,
        hosts: &[String],
        min_boot: u32,
        limit: Duration,
        done: impl Fn(&NodeView) -> bool,
    ) -> Result<Report, Box<LabFailure>> {
        let start = Instant::now();
        let tty = std::io::stdout().is_terminal();
        let mut last_states: std::collections::BTreeMap<String, String> = Default::default();
        let mut last: Option<Report> = None;
        loop {
            let report = match self.status() {
                Ok(r) => r,
                Err(e) => {
                    if start.elapsed() > limit {
                        return Err(self.failure(
                            None,
                            &format!("server unreachable: {e:#}"),
                            last,
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            let view = |h: &str| report.nodes.iter().find(|n| n.name == h).cloned();
            if self.opts.verbose {
                if tty {
                    print!("\x1b[2J\x1b[H{}", report::table(&report));
                    println!(
                        "elapsed {:.0}s (limit {:.0}s)",
                        start.elapsed().as_secs_f64(),
                        limit.as_secs_f64()
                    );
                } else {
                    for h in hosts {
                        if let Some(n) = view(h) {
                            let s = format!("boot {} {}", n.boot, n.state);
                            if last_states.get(h) != Some(&s) {
                                println!("{:7.1}s {h:<10} {s}", start.elapsed().as_secs_f64());
                                last_states.insert(h.clone(), s);
                            }
                        }
                    }
                }
            }
            let mut all = true;
            for h in hosts {
                let Some(n) = view(h) else {
                    all = false;
                    continue;
                };
                if n.boot >= min_boot {
                    if let Some(reason) = &n.failed {
                        return Err(self.failure(
                            Some(&n),
                            &format!("failed: {reason}"),
                            Some(report),
                        ));
                    }
                    if done(&n) {
                        continue;
                    }
                }
                all = false;
                if !self.vm_running(h) {
                    let n = n.clone();
                    return Err(self.failure(
                        Some(&n),
                        "its VM stopped (rebooted, powered off or crashed) before the last stage",
                        Some(report),
                    ));
                }
            }
            if all {
                return Ok(report);
            }
            if interrupted() {
                return Err(self.failure(
                    None,
                    "interrupted (Ctrl-C / SIGTERM); tearing down",
                    Some(report),
                ));
            }
            if start.elapsed() > limit {
                let stuck = hosts
                    .iter()
                    .filter_map(|h| view(h))
                    .find(|n| !(n.boot >= min_boot && done(n)));
                return Err(self.failure(
                    stuck.as_ref(),
                    &format!("timed out after {:.0} s", limit.as_secs_f64()),
                    Some(report),
                ));
            }
            last = Some(report);
            std::thread::sleep(Duration::from_millis(1000));
        }
    }

    fn failure(
        &self,
        node: Option<&NodeView>,
        why: &str,
        report: Option<Report>,
    ) -> Box<LabFailure> {
        let (name, stage, console) = match node {
            Some(n) => (
                n.name.clone(),
                n.stage.clone().unwrap_or_else(|| "-".into()),
                qemu::console_tail(&self.console(&n.name), 25),
            ),
            None => ("-".into(), "-".into(), String::new()),
        };
        Box::new(LabFailure {
            node: name,
            last_stage: stage,
            reason: why.to_string(),
            console,
            server_log: qemu::console_tail(&self.opts.dir.join("server.log"), 15),
            report: report.map(Box::new),
        })
    }

    /// Boots every VM and waits until all reached `joined` (or fails).
    pub fn boot_all(&mut self) -> Result<Report, Box<LabFailure>> {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.machine.hostname.clone())
            .collect();
        for h in &hosts {
            if let Err(e) = self.start_vm(h) {
                return Err(self.failure(None, &format!("cannot start the VM {h}: {e:#}"), None));
            }
        }
        let limit = self.opts.timeout;
        self.wait(&hosts, 1, limit, |n| n.done)
    }

    /// Stops every process and deletes the namespace now (also what dropping the lab does).
    pub fn teardown(mut self) {
        self.children.stop_all();
    }
}

/// Why a lab run failed: the node, its last stage, and the end of its console.
#[derive(Debug)]
pub struct LabFailure {
    pub node: String,
    pub last_stage: String,
    pub reason: String,
    pub console: String,
    pub server_log: String,
    pub report: Option<Box<Report>>,
}

impl std::fmt::Display for LabFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "node {} {} (last stage: {})",
            self.node, self.reason, self.last_stage
        )?;
        if !self.console.is_empty() {
            writeln!(
                f,
                "--- last lines of {}'s console ---\n{}",
                self.node, self.console
            )?;
        }
        if !self.server_log.is_empty() {
            writeln!(
                f,
                "--- last lines of the server log ---\n{}",
                self.server_log
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for LabFailure {}

/// The summary printed at the end: the table, per-stage durations, and the stand-in warning.
pub fn summary(report: &Report, standins: bool) -> String {
    let mut s = String::new();
    s.push_str(&report::table(report));
    s.push_str("\nper-stage durations (seconds since the previous stage):\n");
    s.push_str(&report::durations(report));
    if standins {
        s.push_str(
            "\nNOTE: these images were built with labelled STAND-IN binaries (kubeadm, kubelet, containerd, ...).\n\
             Every boot stage above really ran, but the cluster did NOT really form: no Kubernetes is running.\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_config_keeps_the_cluster_and_redirects_state() {
        let d = tempfile::tempdir().unwrap();
        let user_cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        let user = crate::config::load(&user_cfg).unwrap();
        let mut o = Options::new(&user_cfg);
        o.dir = d.path().join("lab");
        o.dhcp = DhcpMode::Proxy;
        o.cache = Some(d.path().join("cache"));
        std::fs::create_dir_all(&o.dir).unwrap();
        let p = write_config(&o, &user).unwrap();
        let lab = crate::config::load(&p).unwrap();
        assert_eq!(lab.network.dhcp_mode, DhcpMode::Proxy);
        assert!(lab.network.router_advertisements);
        assert_eq!(lab.paths.state, o.dir.join("state"));
        assert_eq!(lab.paths.secrets, o.dir.join("secrets"));
        assert_eq!(lab.paths.cache, d.path().join("cache"));
        assert_eq!(lab.paths.images, user.paths.images);
        assert_eq!(lab.paths.profiles, user.paths.profiles);
        assert_eq!(lab.machines.len(), user.machines.len());
        // The image inputs (cluster, base, artifacts) are unchanged, so images are shared with the user's.
        assert_eq!(
            serde_json::to_string(&lab.cluster).unwrap(),
            serde_json::to_string(&user.cluster).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&lab.artifacts).unwrap(),
            serde_json::to_string(&user.artifacts).unwrap()
        );
    }

    #[test]
    fn lab_config_paths_are_absolute_when_the_user_config_path_is_relative() {
        // `./scripts/lab` runs `imgbuild -c cluster.toml lab`: every path must still point at the user's files.
        let d = tempfile::tempdir().unwrap();
        let user_cfg = Path::new("cluster.toml");
        let user = crate::config::load(user_cfg).unwrap();
        let mut o = Options::new(user_cfg);
        o.dir = d.path().join("lab");
        std::fs::create_dir_all(&o.dir).unwrap();
        let p = write_config(&o, &user).unwrap();
        let lab = crate::config::load(&p).unwrap();
        for path in [
            &lab.paths.profiles,
            &lab.paths.ipxe,
            &lab.paths.images,
            &lab.paths.cache,
        ] {
            assert!(path.is_absolute(), "{}", path.display());
        }
        assert!(lab.paths.profiles.join("master/profile.toml").is_file());
        assert!(lab.paths.ipxe.is_dir());
        let relative_dir = Options::new(user_cfg);
        assert!(
            relative_dir.dir.is_relative(),
            "the default lab dir is beside the config"
        );
    }

    #[test]
    fn summary_says_plainly_when_standins_were_used() {
        let r = Report {
            cluster: "c".into(),
            generated_ms: 0,
            stages: vec![],
            nodes: vec![],
        };
        assert!(summary(&r, true).contains("the cluster did NOT really form"));
        assert!(!summary(&r, false).contains("NOT really form"));
    }
}
