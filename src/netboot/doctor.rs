//! `imgbuild doctor`: checks a real host before the first `imgbuild serve` and reports every problem at once,
//! each with its fix — the provisioning interface (exists, up, carries the server's address), the ports the
//! server binds (67, TFTP, HTTP, GRUB's 80 with arm64 machines, 4011 in proxy mode), another DHCP server on the
//! wire ([`super::dhcp::probe`]), the image store and its pins, and the secrets' owner and modes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;

use crate::config::{Arch, Cluster, DhcpMode, Role};
use crate::image::pins::Pins;

/// One problem found, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What was checked: `interface`, `address`, `port 67/udp`, `dhcp`, `pins`, `secrets`.
    pub check: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

fn problem(
    check: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Problem {
    Problem {
        check: check.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The system user the packaged service runs as; secrets must be its own when it exists.
pub const SERVICE_USER: &str = "imgbuild";

/// Runs every check on this host for `cluster` (`config` names the file in the messages). `probe`: whether to
/// broadcast a DHCP probe on the interface (at most [`super::dhcp::probe::WAIT`]).
pub async fn check(cluster: &Cluster, config: &Path, probe: bool) -> Vec<Problem> {
    let net = &cluster.network;
    let iface = net.interface.as_str();
    let cfg = config.display();
    let mut out = Vec::new();
    let sys = Path::new("/sys/class/net").join(iface);
    let exists = sys.exists();
    let mut up = false;
    if !exists {
        out.push(problem(
            "interface",
            format!("interface {iface:?} ([network] interface in {cfg}) does not exist on this host"),
            format!("set [network] interface in {cfg} to the provisioning interface (`ip -br link` lists them), or create it (e.g. a bridge: `ip link add {iface} type bridge`)"),
        ));
    } else {
        let flags = std::fs::read_to_string(sys.join("flags")).unwrap_or_default();
        up = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0) & 1 == 1;
        if !up {
            out.push(problem(
                "interface",
                format!("interface {iface} is down"),
                format!("`ip link set {iface} up` (and make it persistent in /etc/network/interfaces or systemd-networkd)"),
            ));
        }
        let addrs = addresses(iface);
        if !addrs.contains(&net.server) {
            out.push(problem(
                "address",
                format!(
                    "the server address {} ([network] server) is not on {iface} (it has: {})",
                    net.server,
                    if addrs.is_empty() { "none".to_string() } else { addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ") }
                ),
                format!("add it: `ip addr add {}/{} dev {iface}` (persistently in the interface's configuration), or set [network] server in {cfg} to an address {iface} has", net.server, net.subnet.prefix_len()),
            ));
        }
    }
    let mut ports: Vec<(u16, bool, &str)> = vec![
        (67, false, "DHCP"),
        (net.tftp_port, false, "TFTP ([network] tftp_port)"),
        (net.http_port, true, "HTTP ([network] http_port)"),
    ];
    if cluster.has_arch(Arch::Arm64) && net.grub_http_port != net.http_port {
        ports.push((
            net.grub_http_port,
            true,
            "HTTP for GRUB on arm64 machines ([network] grub_http_port)",
        ));
    }
    if net.dhcp_mode == DhcpMode::Proxy {
        ports.push((4011, false, "proxyDHCP"));
    }
    for (port, tcp, what) in ports {
        // Proxy mode shares port 67 with the network's DHCP server on this host (as `serve` does).
        let shared = port == 67 && net.dhcp_mode == DhcpMode::Proxy;
        if let Err(e) = try_bind(port, tcp, shared) {
            let proto = if tcp { "tcp" } else { "udp" };
            let fix = if e.kind() == std::io::ErrorKind::PermissionDenied {
                "run `imgbuild doctor` as root (the service gets CAP_NET_BIND_SERVICE from its unit)".to_string()
            } else {
                format!(
                    "find the program: `ss -lunpt 'sport = :{port}'`; stop it (`systemctl disable --now <unit>`){}",
                    if port == 67 {
                        ", or set dhcp_mode = \"proxy\" in [network] if it is the network's DHCP server on this host"
                    } else {
                        ", or move imgbuild to another port in [network]"
                    }
                )
            };
            out.push(problem(
                format!("port {port}/{proto}"),
                format!("{what} port {port}/{proto} is not free: {e}"),
                fix,
            ));
        }
    }
    if exists && up && probe {
        match super::dhcp::probe::probe(iface, net.server, super::dhcp::probe::WAIT).await {
            Ok(others) if !others.is_empty() && net.dhcp_mode == DhcpMode::Full => out.push(problem(
                "dhcp",
                format!("another DHCP server answers on {iface}: {}", others.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")),
                format!("set dhcp_mode = \"proxy\" in [network] of {cfg} to boot machines beside it, or stop it: in full mode imgbuild will not answer DHCP while it runs"),
            )),
            Ok(others) if others.is_empty() && net.dhcp_mode == DhcpMode::Proxy => out.push(problem(
                "dhcp",
                format!("proxy mode, but no DHCP server answered a probe on {iface}"),
                format!("start the network's DHCP server, or set dhcp_mode = \"full\" in [network] of {cfg}"),
            )),
            Ok(_) => {}
            Err(e) => out.push(problem(
                "dhcp",
                format!("cannot probe {iface} for other DHCP servers: {e}"),
                "run `imgbuild doctor` as root, with UDP port 68 free".to_string(),
            )),
        }
    }
    out.extend(images(cluster));
    out.extend(secrets(&cluster.paths.secrets));
    out
}

/// The IPv4 addresses of `iface`.
fn addresses(iface: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs; we only read it in between.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = &*p;
            if !a.ifa_addr.is_null()
                && (*a.ifa_addr).sa_family as i32 == libc::AF_INET
                && std::ffi::CStr::from_ptr(a.ifa_name).to_bytes() == iface.as_bytes()
            {
                let sin = &*(a.ifa_addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            p = a.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Binds `0.0.0.0:port` (TCP or UDP) and lets go: a busy port fails. `shared`: with SO_REUSEADDR, as a second
/// DHCP server on the same host may.
fn try_bind(port: u16, tcp: bool, shared: bool) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (ty, proto) = if tcp {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    let s = Socket::new(Domain::IPV4, ty, Some(proto))?;
    s.set_reuse_address(shared || tcp)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    if tcp {
        s.listen(1)?;
    }
    Ok(())
}

/// The image store and its pins: every pin names an intact image of its role and arch; every role with
/// machines has a pin.
fn images(cluster: &Cluster) -> Vec<Problem> {
    let mut out = Vec::new();
    let path = Pins::path(cluster);
    let pins = match Pins::load(&path) {
        Ok(p) => p,
        Err(e) => {
            return vec![problem(
                "pins",
                format!("{}: {e}", path.display()),
                "fix or remove the file, then pin again: `imgbuild pin <role> <image-id>`",
            )];
        }
    };
    let store = crate::image::store::open(cluster);
    for (role, arch, id) in pins.iter() {
        match store.manifest(id) {
            Ok(m) if m.role == role && m.arch == arch => {}
            Ok(m) => out.push(problem("pins", format!("{role} on {arch} is pinned to {id}, an image of {} on {}", m.role, m.arch), format!("`imgbuild profile {role} --arch {arch}`, then `imgbuild pin {role} <id>`"))),
            Err(e) => out.push(problem("pins", format!("{role} on {arch} is pinned to {id}: {e}"), format!("rebuild and re-pin: `imgbuild profile {role} --arch {arch}`, then `imgbuild pin {role} <id>` (`imgbuild images` lists the store)"))),
        }
    }
    for role in Role::ALL {
        for arch in Arch::ALL {
            if cluster.machines_with_role(role).any(|m| m.arch == arch)
                && pins.get(role, arch).is_none()
            {
                out.push(problem(
                    "pins",
                    format!(
                        "no {role} image is pinned for {arch}: those machines will be told to wait"
                    ),
                    format!(
                        "`imgbuild profile {role} --arch {arch}`, then `imgbuild pin {role} <id>`"
                    ),
                ));
            }
        }
    }
    out
}

/// The secrets directory: present, 0700, files without group or other access, owned by the service user when
/// it exists.
fn secrets(dir: &Path) -> Vec<Problem> {
    let d = dir.display();
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return vec![problem(
            "secrets",
            format!("{d} does not exist: nodes cannot enroll"),
            format!(
                "`imgbuild secrets init` (as the user that runs the server: `sudo -u {SERVICE_USER} imgbuild secrets init` for the packaged service)"
            ),
        )];
    };
    let mut out = Vec::new();
    let owner = service_uid();
    let mut open = Vec::new();
    let mut foreign = Vec::new();
    let mut look = |p: &Path, m: &std::fs::Metadata| {
        if m.permissions().mode() & 0o077 != 0 {
            open.push(format!(
                "{} ({:o})",
                p.display(),
                m.permissions().mode() & 0o777
            ));
        }
        if owner.is_some_and(|u| m.uid() != u) {
            foreign.push(p.display().to_string());
        }
    };
    look(dir, &meta);
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut stack: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        while let Some(p) = stack.pop() {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            look(&p, &m);
            if m.is_dir()
                && let Ok(rd) = std::fs::read_dir(&p)
            {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    if !open.is_empty() {
        open.sort();
        out.push(problem("secrets", format!("readable or writable by others than their owner: {}", open.join(", ")), format!("`chmod -R go-rwx {d}` (the cluster's CAs and token: the server's user alone may read them)")));
    }
    if !foreign.is_empty() {
        foreign.sort();
        out.push(problem(
            "secrets",
            format!(
                "not owned by the {SERVICE_USER} user the service runs as: {}",
                foreign.join(", ")
            ),
            format!("`chown -R {SERVICE_USER}:{SERVICE_USER} {d}`"),
        ));
    }
    out
}

/// The uid of [`SERVICE_USER`] when that user exists on this host.
fn service_uid() -> Option<u32> {
    let name = std::ffi::CString::new(SERVICE_USER).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we read one field right away.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    (!pw.is_null()).then(|| unsafe { (*pw).pw_uid })
}

/// The report as text: `N problem(s):` then each problem and its fix, or `no problems found`.
pub fn render(problems: &[Problem]) -> String {
    if problems.is_empty() {
        return "no problems found: `imgbuild serve` (or `systemctl enable --now imgbuild`) can start\n".into();
    }
    let mut s = format!("{} problem(s):\n", problems.len());
    for p in problems {
        s.push_str(&format!(
            "  [{}] {}\n      fix: {}\n",
            p.check, p.problem, p.fix
        ));
    }
    s
}
