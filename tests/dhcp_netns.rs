//! DHCP server tests with real clients, in network namespaces each test creates (never a real interface):
//! the real `imgbuild serve` binary runs in a server namespace, clients (Debian's udhcpc and dhclient, a
//! dnsmasq beside us, and a small in-test DHCP client for load and PXE steps) in a client namespace joined
//! by a veth pair. Every namespace and process is removed by a Drop guard, also on failure.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use imgbuild::config::MacAddr;
use imgbuild::netboot::dhcp::Journal;

#[allow(unused)]
mod common;
#[path = "common/dhcp_client.rs"]
mod dhcp_client;

use dhcp_client::{Udhcpc, run};

const BIN: &str = env!("CARGO_BIN_EXE_imgbuild");
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// Two namespaces joined by a veth pair; the server side has 10.77.0.1/24. Removed on drop.
struct Lab {
    srv_ns: String,
    cli_ns: String,
    srv_if: String,
    cli_if: String,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = format!("ibd{}{tag}", std::process::id());
        let lab = Lab {
            srv_ns: format!("{id}s"),
            cli_ns: format!("{id}c"),
            srv_if: format!("{id}s"),
            cli_if: format!("{id}c"),
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
        };
        assert!(lab.srv_if.len() <= 15);
        for ns in [&lab.srv_ns, &lab.cli_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run(&[
            "ip",
            "link",
            "add",
            &lab.srv_if,
            "netns",
            &lab.srv_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.cli_if,
            "netns",
            &lab.cli_ns,
        ]);
        run(&[
            "ip",
            "-n",
            &lab.srv_ns,
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            &lab.srv_if,
        ]);
        run(&["ip", "-n", &lab.srv_ns, "link", "set", &lab.srv_if, "up"]);
        run(&["ip", "-n", &lab.cli_ns, "link", "set", &lab.cli_if, "up"]);
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `cluster.toml` (the example, on our veth, state in the temp dir), edited by `edit`.
    fn write_config(&self, edit: impl Fn(String) -> String) -> PathBuf {
        let iface = format!("interface = \"{}\"", self.srv_if);
        common::write_cluster(self.dir.path(), false, |t| {
            edit(t.replace("interface = \"br0\"", &iface))
        })
    }

    /// Adds `cidr` to the client's interface (an address a test client sends from).
    fn add_client_addr(&self, cidr: &str) {
        run(&[
            "ip",
            "-n",
            &self.cli_ns,
            "addr",
            "add",
            cidr,
            "dev",
            &self.cli_if,
        ]);
    }

    fn set_client_mac(&self, mac: &str) {
        run(&[
            "ip",
            "-n",
            &self.cli_ns,
            "link",
            "set",
            &self.cli_if,
            "address",
            mac,
        ]);
    }

    /// Starts `imgbuild serve` in the server namespace and waits until DHCP listens.
    fn start_server(&mut self, cfg: &Path, log: &str) -> u32 {
        let log_path = self.path(log);
        let logf = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv_ns, BIN, "-v", "-c"])
            .arg(cfg)
            .arg("serve")
            .env("RUST_LOG", "imgbuild=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("DHCP server listening") {
                return pid;
            }
            let exited = self
                .children
                .last_mut()
                .unwrap()
                .try_wait()
                .unwrap()
                .is_some();
            assert!(!exited, "imgbuild serve exited:\n{text}");
            assert!(Instant::now() < deadline, "server not ready:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&mut self, pid: u32, sig: i32) {
        // SAFETY: kill(2) on a PID this test spawned.
        assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
        if sig == libc::SIGKILL
            && let Some(c) = self.children.iter_mut().find(|c| c.id() == pid)
        {
            let _ = c.wait();
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Runs udhcpc once in the client namespace; returns the variables of its `bound` event, if any.
    fn udhcpc(&self, extra: &[&str]) -> Option<BTreeMap<String, String>> {
        let client = Udhcpc {
            ns: &self.cli_ns,
            iface: &self.cli_if,
            timeout_secs: 20,
            tries: 3,
            pause_secs: 1,
        };
        let (bound, ok) = client.once(self.dir.path(), extra);
        if bound.is_some() {
            assert!(ok);
        }
        bound
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill(2) on PIDs this test spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
        for ns in [&self.srv_ns, &self.cli_ns] {
            // Kills nothing else: processes we started are gone; deleting the namespace removes the veth.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns` (setns affects only that thread).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd, for this thread only.
        assert_eq!(
            unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

/// A UDP socket on `port` bound to `iface` (call inside the namespace).
fn client_socket(iface: &str, port: u16) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(iface.as_bytes())).unwrap();
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())
        .unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

fn encode(m: &Message) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut Encoder::new(&mut b)).unwrap();
    b
}

fn request_msg(ty: MessageType, mac: [u8; 6], xid: u32) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    // Broadcast replies: the client socket has no address to receive a unicast to its new one.
    m.set_flags(dhcproto::v4::Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    m
}

/// Waits for a reply with `xid` and type `ty` (other datagrams are skipped) until `deadline`.
fn wait_reply(s: &UdpSocket, xid: u32, ty: MessageType, deadline: Instant) -> Option<Message> {
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf)
            && let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n]))
            && m.xid() == xid
            && m.opts().msg_type() == Some(ty)
        {
            return Some(m);
        }
    }
    None
}

/// One DORA with the in-test client; returns the acknowledged address.
fn dora(s: &UdpSocket, mac: [u8; 6], xid: u32, timeout: Duration) -> Option<Ipv4Addr> {
    let to = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));
    let deadline = Instant::now() + timeout;
    s.send_to(&encode(&request_msg(MessageType::Discover, mac, xid)), to)
        .ok()?;
    let offer = wait_reply(s, xid, MessageType::Offer, deadline)?;
    let mut req = request_msg(MessageType::Request, mac, xid);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    s.send_to(&encode(&req), to).ok()?;
    wait_reply(s, xid, MessageType::Ack, deadline).map(|a| a.yiaddr())
}

fn pool(start: &str, end: &str) -> impl Fn(String) -> String {
    let line = format!("unknown_pool = {{ start = \"{start}\", end = \"{end}\" }}");
    move |s: String| {
        s.replace(
            "# unknown_pool = { start = \"10.77.0.200\", end = \"10.77.0.250\" }",
            &line,
        )
    }
}

fn events(lab: &Lab) -> String {
    std::fs::read_to_string(lab.path("state/events.jsonl")).unwrap_or_default()
}

#[test]
fn root_netns_udhcpc_and_dhclient_get_inventory_address_and_boot_file_unknown_gets_nothing_and_hot_reload()
 {
    let mut lab = Lab::new("a");
    let cfg = lab.write_config(|s| s);
    let pid = lab.start_server(&cfg, "serve.log");

    // udhcpc as worker-1: its inventory address, hostname, gateway, DNS, lease time and BIOS boot file.
    lab.set_client_mac("52:54:00:77:00:21");
    let env = lab.udhcpc(&[]).expect("udhcpc got no lease");
    assert_eq!(env["ip"], "10.77.0.21");
    assert_eq!(env["hostname"], "worker-1");
    assert_eq!(env["router"].trim(), "10.77.0.1");
    assert_eq!(env["dns"].trim(), "10.77.0.1");
    assert_eq!(env["subnet"], "255.255.255.0");
    assert_eq!(env["lease"], "3600");
    assert_eq!(env["siaddr"], "10.77.0.1");
    assert_eq!(env["boot_file"], "undionly.kpxe");

    // As UEFI x64 PXE firmware (option 60 + 93 = 7): snponly.efi, vendor class echoed.
    let env = lab
        .udhcpc(&["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"])
        .expect("udhcpc (UEFI) got no lease");
    assert_eq!(env["boot_file"], "snponly.efi");
    assert_eq!(env["vendor"].trim_end_matches('\0'), "PXEClient");
    // As iPXE (user class 77): the per-machine script URL.
    let env = lab
        .udhcpc(&["-x", "0x4d:69505845"])
        .expect("udhcpc (iPXE) got no lease");
    assert_eq!(
        env["boot_file"],
        "http://10.77.0.1:8080/ipxe/52:54:00:77:00:21"
    );

    // dhclient as storage-1.
    lab.set_client_mac("52:54:00:77:00:31");
    let conf = lab.path("dhclient.conf");
    std::fs::write(
        &conf,
        "timeout 15;\nretry 1;\nrequest subnet-mask, routers, domain-name-servers, host-name;\n",
    )
    .unwrap();
    let leasefile = lab.path("dhclient.leases");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.cli_ns,
            "dhclient",
            "-4",
            "-d",
            "-1",
            "-cf",
        ])
        .arg(&conf)
        .arg("-lf")
        .arg(&leasefile)
        .arg("-pf")
        .arg(lab.path("dhclient.pid"))
        .args(["-sf", "/bin/true", &lab.cli_if])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.children.push(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let lease = loop {
        let t = std::fs::read_to_string(&leasefile).unwrap_or_default();
        if t.contains("fixed-address") {
            break t;
        }
        assert!(Instant::now() < deadline, "dhclient got no lease");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(lease.contains("fixed-address 10.77.0.31;"), "{lease}");
    assert!(lease.contains("filename \"undionly.kpxe\";"), "{lease}");
    assert!(lease.contains("option host-name \"storage-1\";"), "{lease}");
    let dhclient = lab.children.pop().unwrap();
    lab.children.push(dhclient);
    let dpid = lab.children.last().unwrap().id();
    lab.signal(dpid, libc::SIGKILL);

    // An unknown MAC gets nothing, and is logged once however many times it asks.
    lab.set_client_mac("52:54:00:77:00:99");
    assert!(lab.udhcpc(&[]).is_none(), "an unknown MAC got a lease");
    assert!(lab.udhcpc(&[]).is_none());
    let log = lab.log("serve.log");
    assert_eq!(
        log.matches("not in the inventory: ignored").count(),
        1,
        "{log}"
    );

    // Events recorded for the known machines.
    let ev = events(&lab);
    for stage in ["dhcp-offer", "dhcp-ack"] {
        assert!(
            ev.lines()
                .any(|l| l.contains("52:54:00:77:00:21") && l.contains(stage)),
            "{ev}"
        );
    }
    assert!(!ev.contains("52:54:00:77:00:99"));

    // Hot reload: add the unknown machine to cluster.toml, SIGHUP; it is served, leases are kept.
    let before = std::fs::read_to_string(lab.path("state/dhcp-leases.jsonl")).unwrap();
    assert!(before.contains("10.77.0.21") && before.contains("10.77.0.31"));
    let added = "\n[[machines]]\nmac = \"52:54:00:77:00:99\"\nhostname = \"worker-9\"\nrole = \"worker\"\nip = \"10.77.0.29\"\nstate_disk = \"/dev/vda\"\ninit_blank = true\n";
    lab.write_config(|s| {
        s.replace(
            "\n# Upstream sources",
            &format!("{added}\n# Upstream sources"),
        )
    });
    lab.signal(pid, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.log("serve.log").contains("configuration reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload:\n{}",
            lab.log("serve.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let env = lab
        .udhcpc(&[])
        .expect("added machine got no lease after reload");
    assert_eq!(env["ip"], "10.77.0.29");
    assert_eq!(env["hostname"], "worker-9");
    // worker-1's lease survived the reload: it renews (INIT-REBOOT) its address.
    lab.set_client_mac("52:54:00:77:00:21");
    let env = lab
        .udhcpc(&["-r", "10.77.0.21"])
        .expect("renew after reload");
    assert_eq!(env["ip"], "10.77.0.21");
    let after = std::fs::read_to_string(lab.path("state/dhcp-leases.jsonl")).unwrap();
    for line in before.lines() {
        let mac = &line[line.find("\"mac\"").unwrap()..][..27];
        assert!(after.contains(mac), "lease {line} lost by reload");
    }
    // A node's unsigned report is taken from the address of its current lease even when that is no longer its
    // inventory address: worker-1 moves to 10.77.0.121 in cluster.toml (reload) while it still holds its lease
    // of 10.77.0.21; a report from 10.77.0.21 is recorded, one from 10.77.0.99 is refused and names both.
    lab.write_config(|s| s.replace("ip = \"10.77.0.21\"", "ip = \"10.77.0.121\""));
    lab.signal(pid, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab
        .log("serve.log")
        .matches("configuration reloaded")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "no second reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    for a in ["10.77.0.21/24", "10.77.0.99/24"] {
        lab.add_client_addr(a);
    }
    let report = |src: &str| {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.cli_ns,
                "curl",
                "-sS",
                "--max-time",
                "10",
            ])
            .args(["--interface", src, "-w", " %{http_code}", "--data"])
            .arg("mac=52:54:00:77:00:21&stage=initrd&detail=from-lease")
            .arg("http://10.77.0.1:8080/api/events")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let from_lease = report("10.77.0.21");
    assert!(from_lease.ends_with(" 200"), "{from_lease}");
    let other = report("10.77.0.99");
    assert!(other.ends_with(" 403"), "{other}");
    assert!(
        other.contains("its address is 10.77.0.121 (or 10.77.0.21, its current DHCP lease)"),
        "{other}"
    );
    // The process served all of this without restarting.
    assert_eq!(
        lab.log("serve.log")
            .matches("DHCP server listening")
            .count(),
        1
    );
}

#[test]
fn root_netns_proxy_mode_beside_dnsmasq() {
    let mut lab = Lab::new("p");
    let cfg = lab.write_config(|s| s.replace("dhcp_mode = \"full\"", "dhcp_mode = \"proxy\""));
    // dnsmasq: the "router's" full DHCP server, same interface, addresses .100-.150, no boot information.
    let dnslog = lab.path("dnsmasq.log");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.srv_ns,
            "dnsmasq",
            "-k",
            "--port=0",
            "--bind-interfaces",
        ])
        .arg(format!("--interface={}", lab.srv_if))
        .args([
            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
            "--no-ping",
            "--dhcp-authoritative",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            lab.path("dnsmasq.leases").display()
        ))
        .arg("--pid-file=")
        .arg(format!("--log-facility={}", dnslog.display()))
        .arg("--log-dhcp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.children.push(child);
    std::thread::sleep(Duration::from_millis(300));
    lab.start_server(&cfg, "serve.log");

    // A plain client (not PXE) gets its address from dnsmasq and nothing from us.
    lab.set_client_mac("52:54:00:77:00:12");
    let env = lab.udhcpc(&[]).expect("no lease from dnsmasq");
    let ip: Ipv4Addr = env["ip"].parse().unwrap();
    assert!((100..=150).contains(&ip.octets()[3]), "{ip}");
    assert!(env.get("boot_file").is_none_or(|f| f.is_empty()));

    // A PXE client, as a PXE ROM does it: DISCOVER with option 60/93/97, collect every offer.
    let iface = lab.cli_if.clone();
    let known = [0x52, 0x54, 0x00, 0x77, 0x00, 0x13];
    let unknown = [0x52, 0x54, 0x00, 0x77, 0x00, 0x98];
    let (offers, unknown_offers, dnsmasq_ack, pxe_ack) = in_netns(&lab.cli_ns, move || {
        let s = client_socket(&iface, 68);
        let bcast = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));
        let pxe = |ty, mac: [u8; 6], xid| {
            let mut m = request_msg(ty, mac, xid);
            let o = m.opts_mut();
            o.insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
            ));
            o.insert(DhcpOption::ClientSystemArchitecture(Architecture(0)));
            o.insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
            m
        };
        let collect = |xid| {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(1500);
            while let Some(m) = wait_reply(&s, xid, MessageType::Offer, deadline) {
                got.push(m);
            }
            got
        };
        s.send_to(&encode(&pxe(MessageType::Discover, known, 0x100)), bcast)
            .unwrap();
        let offers = collect(0x100);
        s.send_to(&encode(&pxe(MessageType::Discover, unknown, 0x200)), bcast)
            .unwrap();
        let unknown_offers = collect(0x200);
        // Take dnsmasq's address.
        let addr = offers
            .iter()
            .find(|o| !o.yiaddr().is_unspecified())
            .map(|o| o.yiaddr());
        let mut dnsmasq_ack = None;
        let mut pxe_ack = None;
        if let Some(addr) = addr {
            let mut req = pxe(MessageType::Request, known, 0x101);
            req.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
            req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
            s.send_to(&encode(&req), bcast).unwrap();
            dnsmasq_ack = wait_reply(
                &s,
                0x101,
                MessageType::Ack,
                Instant::now() + Duration::from_secs(2),
            );
            // Configure it, then ask the boot server on 4011 (unicast from the new address).
            let o = Command::new("ip")
                .args(["addr", "add", &format!("{addr}/24"), "dev", &iface])
                .output()
                .unwrap();
            assert!(o.status.success());
            let mut req = pxe(MessageType::Request, known, 0x102);
            req.set_ciaddr(addr);
            s.send_to(
                &encode(&req),
                SocketAddr::from(SocketAddrV4::new(SERVER, 4011)),
            )
            .unwrap();
            pxe_ack = wait_reply(
                &s,
                0x102,
                MessageType::Ack,
                Instant::now() + Duration::from_secs(2),
            );
        }
        (offers, unknown_offers, dnsmasq_ack, pxe_ack)
    });
    let ours: Vec<&Message> = offers
        .iter()
        .filter(|o| o.yiaddr().is_unspecified())
        .collect();
    let theirs: Vec<&Message> = offers
        .iter()
        .filter(|o| !o.yiaddr().is_unspecified())
        .collect();
    assert_eq!(
        theirs.len(),
        1,
        "one address offer from dnsmasq: {offers:?}"
    );
    assert_eq!(ours.len(), 1, "one proxy offer from us: {offers:?}");
    let proxy = ours[0];
    assert_eq!(
        proxy.fname_str().unwrap().unwrap().trim_end_matches('\0'),
        "undionly.kpxe"
    );
    assert_eq!(proxy.siaddr(), SERVER);
    assert_eq!(
        proxy.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert!(proxy.opts().get(OptionCode::VendorExtensions).is_some());
    assert!(proxy.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(theirs[0].fname().is_none_or(|f| f.iter().all(|b| *b == 0)));
    // The unknown PXE client only hears dnsmasq.
    assert_eq!(unknown_offers.len(), 1, "{unknown_offers:?}");
    assert!(!unknown_offers[0].yiaddr().is_unspecified());
    // Address from dnsmasq, boot file from us on 4011.
    let ack = dnsmasq_ack.expect("no ACK from dnsmasq");
    assert!(!ack.yiaddr().is_unspecified());
    let pxe_ack = pxe_ack.expect("no ACK on port 4011");
    assert_eq!(pxe_ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        pxe_ack.fname_str().unwrap().unwrap().trim_end_matches('\0'),
        "undionly.kpxe"
    );
    // Events are recorded just after the reply is sent: allow the server a moment under load.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ev = loop {
        let ev = events(&lab);
        if (ev.contains("52:54:00:77:00:13")
            && ev.contains("dhcp-offer")
            && ev.contains("dhcp-ack"))
            || Instant::now() > deadline
        {
            break ev;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        ev.contains("52:54:00:77:00:13") && ev.contains("dhcp-offer") && ev.contains("dhcp-ack"),
        "{ev}"
    );
    assert!(
        !ev.contains("52:54:00:77:00:12"),
        "a non-PXE client was answered: {ev}"
    );
    assert!(
        !std::fs::read_to_string(lab.path("state/dhcp-leases.jsonl"))
            .unwrap_or_default()
            .contains("grant"),
        "a proxy grants no lease"
    );
}

/// The lease journal after a crash: every ACK the client received is there, with its address; no address
/// is held twice.
fn check_journal(lab: &Lab, acked: &BTreeMap<[u8; 6], Ipv4Addr>) {
    let path = lab.path("state/dhcp-leases.jsonl");
    let (_, table) = Journal::open(&path, imgbuild::netboot::dhcp::socket::unix_now()).unwrap();
    for (mac, ip) in acked {
        let l = table
            .lease(MacAddr(*mac))
            .unwrap_or_else(|| panic!("lease of {} lost", MacAddr(*mac)));
        assert_eq!(l.ip, *ip);
    }
    let mut ips: Vec<Ipv4Addr> = table.leases().map(|l| l.ip).collect();
    let n = ips.len();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), n, "an address is leased twice");
    // The file itself: one line per lease after compaction, no address twice.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            seen.insert(v["ip"].as_str().unwrap().to_string()),
            "doubled: {line}"
        );
    }
}

#[test]
fn root_netns_leases_survive_kill_9_mid_load() {
    let mut lab = Lab::new("k");
    let cfg = lab.write_config(pool("10.77.0.100", "10.77.0.250"));
    lab.add_client_addr("10.77.0.254/24");
    let mut acked: BTreeMap<[u8; 6], Ipv4Addr> = BTreeMap::new();
    let mut next = 0u16;
    for round in 0..3 {
        let pid = lab.start_server(&cfg, &format!("serve{round}.log"));
        // After a restart, every earlier client is offered its own address again.
        let earlier: Vec<([u8; 6], Ipv4Addr)> = acked.iter().map(|(m, i)| (*m, *i)).collect();
        let iface = lab.cli_if.clone();
        let again = in_netns(&lab.cli_ns, move || {
            let s = client_socket(&iface, 68);
            earlier
                .iter()
                .take(20)
                .enumerate()
                .map(|(i, (m, ip))| {
                    (
                        dora(&s, *m, 0x9000_0000 + i as u32, Duration::from_secs(2)),
                        *ip,
                    )
                })
                .collect::<Vec<_>>()
        });
        for (got, want) in again {
            assert_eq!(
                got,
                Some(want),
                "round {round}: address changed after a restart"
            );
        }
        // Load: DORAs as fast as the server answers; kill -9 after 30 ACKs, while requests are in flight.
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (count.clone(), stop.clone());
        let iface = lab.cli_if.clone();
        let cli_ns = lab.cli_ns.clone();
        let start = next;
        let loader = std::thread::spawn(move || {
            in_netns(&cli_ns, move || {
                let s = client_socket(&iface, 68);
                let mut got = Vec::new();
                let mut n = start;
                while !s2.load(Ordering::SeqCst) && n < start + 45 {
                    let mac = [0x02, 0xbd, 0, 0, (n >> 8) as u8, n as u8];
                    if let Some(ip) = dora(&s, mac, 0x1000 + n as u32, Duration::from_millis(500)) {
                        got.push((mac, ip));
                        c2.fetch_add(1, Ordering::SeqCst);
                    }
                    n += 1;
                }
                (got, n)
            })
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while count.load(Ordering::SeqCst) < 30 {
            assert!(Instant::now() < deadline, "load stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        lab.signal(pid, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(600));
        stop.store(true, Ordering::SeqCst);
        let (got, n) = loader.join().unwrap();
        next = n;
        for (m, ip) in got {
            assert!(acked.insert(m, ip).is_none());
        }
        check_journal(&lab, &acked);
    }
    assert!(acked.len() >= 90);
}

#[test]
fn root_netns_malformed_packets_are_dropped_and_counted_while_serving_continues() {
    let mut lab = Lab::new("m");
    let cfg = lab.write_config(pool("10.77.0.100", "10.77.0.250"));
    lab.add_client_addr("10.77.0.5/24");
    lab.start_server(&cfg, "serve.log");
    let iface = lab.cli_if.clone();
    let (ok_before, ok_after, relayed) = in_netns(&lab.cli_ns, move || {
        let s = client_socket(&iface, 68);
        let mac = [0x02, 0xbd, 0, 0, 0, 1];
        let ok_before = dora(&s, mac, 1, Duration::from_secs(3));
        let good = encode(&request_msg(
            MessageType::Discover,
            [0x02, 0xbd, 0, 0, 0, 2],
            2,
        ));
        let bcast = SocketAddr::from(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67));
        let mut bad: Vec<Vec<u8>> = vec![
            good[..100].to_vec(), // truncated
            {
                let mut b = good.clone();
                b.resize(4000, 7);
                b
            }, // oversize
            {
                let mut b = good.clone();
                b[236] = 0;
                b
            }, // bad magic cookie
            {
                let mut b = good.clone();
                b[0] = 2;
                b
            }, // wrong op
        ];
        let mut b = good[..240].to_vec();
        b.extend_from_slice(&[53, 1, 1, 55, 250, 1]); // option length past the end
        bad.push(b);
        for _ in 0..10 {
            for p in &bad {
                s.send_to(p, bcast).unwrap();
            }
        }
        let ok_after = dora(&s, [0x02, 0xbd, 0, 0, 0, 3], 3, Duration::from_secs(3));
        // A relay agent at 10.77.0.5: the answer comes back to it on port 67.
        let relay = client_socket(&iface, 67);
        let mut m = request_msg(MessageType::Discover, [0x02, 0xbd, 0, 0, 0, 4], 4);
        m.set_giaddr(Ipv4Addr::new(10, 77, 0, 5));
        relay
            .send_to(&encode(&m), SocketAddr::from(SocketAddrV4::new(SERVER, 67)))
            .unwrap();
        let relayed = wait_reply(
            &relay,
            4,
            MessageType::Offer,
            Instant::now() + Duration::from_secs(2),
        );
        (ok_before, ok_after, relayed)
    });
    assert!(ok_before.is_some() && ok_after.is_some(), "serving stopped");
    let relayed = relayed.expect("no offer to the relay");
    assert_eq!(relayed.giaddr(), Ipv4Addr::new(10, 77, 0, 5));
    std::thread::sleep(Duration::from_millis(200));
    let log = lab.log("serve.log");
    for reason in [
        "truncated",
        "oversize",
        "bad_magic_cookie",
        "wrong_op",
        "bad_option_length",
    ] {
        let n = log
            .lines()
            .filter(|l| {
                l.contains("dropped a malformed DHCP datagram")
                    && l.contains(&format!("reason={reason}"))
            })
            .count();
        assert_eq!(n, 10, "{reason}: {n} drops logged\n{log}");
    }
    // The same counts in the Prometheus metrics served at /metrics.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.srv_ns,
            "curl",
            "-sS",
            "--max-time",
            "5",
        ])
        .arg("http://10.77.0.1:8080/metrics")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for reason in [
        "truncated",
        "oversize",
        "bad_magic_cookie",
        "wrong_op",
        "bad_option_length",
    ] {
        let line = format!("imgbuild_dhcp_dropped_total{{reason=\"{reason}\"}} 10");
        assert!(text.contains(&line), "{line} not in /metrics:\n{text}");
    }
    assert!(
        text.contains("imgbuild_dhcp_replies_total{type=\"ack\"} 2"),
        "{text}"
    );
}

/// A small tmpfs mounted on a directory (the state directory of the full-disk test); lazily unmounted on drop.
struct Tmpfs(std::ffi::CString);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(dir).unwrap();
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let fs = std::ffi::CString::new("tmpfs").unwrap();
        let opts = std::ffi::CString::new(["mode=0755,size=", size].concat()).unwrap();
        // SAFETY: mount(2) with valid C strings; the target is this test's own temp directory.
        let rc = unsafe {
            libc::mount(
                fs.as_ptr(),
                target.as_ptr(),
                fs.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs(target)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // SAFETY: umount2(2) of the mount made above.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Fills the file system of `path` (a file there, written until ENOSPC).
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
}

/// The (MAC, address) pairs a load thread got ACKs for.
type Acks = Arc<std::sync::Mutex<Vec<([u8; 6], Ipv4Addr)>>>;

#[test]
fn root_netns_full_disk_during_load_loses_no_acked_lease() {
    let mut lab = Lab::new("f");
    let state = lab.path("state");
    let _tmpfs = Tmpfs::mount(&state, "1m");
    let cfg = lab.write_config(pool("10.77.0.100", "10.77.0.250"));
    lab.add_client_addr("10.77.0.254/24");
    let pid = lab.start_server(&cfg, "serve0.log");
    // Load: DORAs with new MACs, one after another, until told to stop; every ACK is remembered.
    let attempts = Arc::new(AtomicUsize::new(0));
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // The load holds at 20 ACKs until the disk is full: on a loaded machine this thread could otherwise take the
    // whole pool (151 addresses) before the filler is written, leaving nothing to commit on the full disk (the
    // cause of this test's failures in the full suite).
    let filled = Arc::new(AtomicBool::new(false));
    let (a2, k2, s2, f2) = (attempts.clone(), acks.clone(), stop.clone(), filled.clone());
    let (iface, cli_ns) = (lab.cli_if.clone(), lab.cli_ns.clone());
    let loader = std::thread::spawn(move || {
        in_netns(&cli_ns, move || {
            let s = client_socket(&iface, 68);
            let mut n = 0u16;
            while !s2.load(Ordering::SeqCst) && n < 2000 {
                if k2.lock().unwrap().len() >= 20 && !f2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let mac = [0x02, 0xbd, 0xf0, 0, (n >> 8) as u8, n as u8];
                if let Some(ip) = dora(&s, mac, 0x5000 + u32::from(n), Duration::from_millis(300)) {
                    k2.lock().unwrap().push((mac, ip));
                }
                a2.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
        })
    });
    let acked = |k: &Acks| k.lock().unwrap().len();
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            if Instant::now() > deadline {
                let log = lab.log("serve0.log");
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "timed out waiting for {what}; {} ACKs; server log ends:\n{}",
                    acked(&acks),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("20 ACKs", &|| acked(&acks) >= 20);
    // The disk fills during the load: commits fail (some part-way), ACKs are withheld.
    fill(&state.join("filler"));
    filled.store(true, Ordering::SeqCst);
    wait("a failed journal commit", &|| {
        lab.log("serve0.log").contains("withholding the ACKs")
    });
    let at = attempts.load(Ordering::SeqCst);
    wait("more requests on the full disk", &|| {
        attempts.load(Ordering::SeqCst) >= at + 10
    });
    // A real client while the disk is full: no lease.
    lab.set_client_mac("02:bd:ff:00:00:01");
    assert!(lab.udhcpc(&[]).is_none(), "a lease ACKed on a full disk");
    // Space returns: the load goes on and is acknowledged again, without a restart.
    std::fs::remove_file(state.join("filler")).unwrap();
    let before = acked(&acks);
    wait("ACKs after space returned", &|| acked(&acks) >= before + 20);
    let env = lab
        .udhcpc(&[])
        .expect("udhcpc got no lease after space returned");
    stop.store(true, Ordering::SeqCst);
    loader.join().unwrap();
    let mut all: BTreeMap<[u8; 6], Ipv4Addr> = acks.lock().unwrap().iter().copied().collect();
    all.insert(
        [0x02, 0xbd, 0xff, 0, 0, 1],
        env["ip"].parse().expect("udhcpc's address"),
    );
    // No torn record between good ones: every line of the journal as written reads.
    let journal = std::fs::read_to_string(state.join("dhcp-leases.jsonl")).unwrap();
    for line in journal.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "torn journal line {line:?}"
        );
    }
    assert!(
        lab.log("serve0.log")
            .contains("lease journal cut back to its last good record"),
        "{}",
        lab.log("serve0.log")
    );
    // Restart: every ACKed lease is there, each client gets its own address again.
    lab.signal(pid, libc::SIGKILL);
    lab.start_server(&cfg, "serve1.log");
    assert!(
        !lab.log("serve1.log")
            .contains("unreadable lease journal line"),
        "{}",
        lab.log("serve1.log")
    );
    let again = lab
        .udhcpc(&[])
        .expect("udhcpc got no lease after the restart");
    assert_eq!(again["ip"], env["ip"]);
    check_journal(&lab, &all);
    assert!(all.len() >= 41, "{} leases", all.len());
}
