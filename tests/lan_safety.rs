//! Safe on a live LAN, in network namespaces this test creates: a dnsmasq already hands out addresses on the
//! wire (a second namespace joined by a veth pair). `imgbuild serve` in full mode probes, finds it and does not
//! answer DHCP, naming dnsmasq's address and `dhcp_mode = "proxy"`; in proxy mode it answers beside it; both in
//! `/metrics`. `imgbuild doctor` on a host with a missing interface, a busy port 67 and world-readable secrets
//! reports all three at once, each with its fix.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use imgbuild::vm::netns::{Children, Netns};

const DNSMASQ_ADDR: &str = "10.77.0.254";

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits (at most 30 s) until `f` is true.
fn wait(what: &str, mut f: impl FnMut() -> bool, log: impl Fn() -> String) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metrics(ns: &Netns) -> String {
    let out = ns
        .command("timeout")
        .args(["5", "curl", "-sf", "http://10.77.0.1:8080/metrics"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn serve(ns: &Netns, dir: &Path, mode: &str, children: &mut Children) -> std::path::PathBuf {
    let cfg_dir = dir.join(mode);
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = common::write_cluster(&cfg_dir, false, |t| {
        t.replace("interface = \"br0\"", "interface = \"veth-srv\"")
            .replace("dhcp_mode = \"full\"", &format!("dhcp_mode = \"{mode}\""))
    });
    let log = cfg_dir.join("serve.log");
    let mut c = ns.command(env!("CARGO_BIN_EXE_imgbuild"));
    c.arg("-c")
        .arg(&cfg)
        .arg("serve")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    children.spawn(mode, c).unwrap();
    log
}

#[test]
fn root_full_mode_does_not_answer_beside_dnsmasq_proxy_mode_does_and_metrics_show_both() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Netns::create("iblan").unwrap();
    let other = Netns::create("iblanx").unwrap();
    srv.ip(&[
        "link",
        "add",
        "veth-srv",
        "type",
        "veth",
        "peer",
        "name",
        "veth-dns",
        "netns",
        other.name(),
    ])
    .unwrap();
    srv.ip(&["addr", "add", "10.77.0.1/24", "dev", "veth-srv"])
        .unwrap();
    srv.ip(&["link", "set", "veth-srv", "up"]).unwrap();
    other
        .ip(&[
            "addr",
            "add",
            &format!("{DNSMASQ_ADDR}/24"),
            "dev",
            "veth-dns",
        ])
        .unwrap();
    other.ip(&["link", "set", "veth-dns", "up"]).unwrap();
    let mut children = Children::new();
    let mut d = other.command("dnsmasq");
    d.args([
        "-k",
        "--port=0",
        "--bind-interfaces",
        "--no-ping",
        "--interface=veth-dns",
        "--dhcp-range=10.77.0.150,10.77.0.199,255.255.255.0,1h",
        "--pid-file=",
        "--leasefile-ro",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    children.spawn("dnsmasq", d).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // Full mode: refuses to answer, names dnsmasq's address and the fix; HTTP keeps serving the finding.
    let log = serve(&srv, dir.path(), "full", &mut children);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait(
        "the probe's finding",
        || read().contains("another DHCP server answers"),
        read,
    );
    let said = read();
    assert!(
        said.contains(&format!("veth-srv: {DNSMASQ_ADDR}")),
        "{said}"
    );
    assert!(said.contains("dhcp_mode = \"proxy\""), "{said}");
    wait(
        "/metrics",
        || metrics(&srv).contains("imgbuild_dhcp_answering"),
        read,
    );
    let m = metrics(&srv);
    assert!(m.contains("imgbuild_dhcp_answering 0"), "{m}");
    assert!(m.contains("imgbuild_dhcp_other_servers 1"), "{m}");
    assert!(
        m.contains(&format!(
            "imgbuild_dhcp_other_server{{address=\"{DNSMASQ_ADDR}\"}} 1"
        )),
        "{m}"
    );
    // The page says it too.
    let page = srv
        .command("timeout")
        .args(["5", "curl", "-sf", "http://10.77.0.1:8080/"])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    assert!(
        page.contains("class=\"lan bad\"") && page.contains(DNSMASQ_ADDR),
        "{page}"
    );
    children.stop("full");

    // Proxy mode: answers beside it.
    let log = serve(&srv, dir.path(), "proxy", &mut children);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait(
        "proxy mode serving",
        || metrics(&srv).contains("imgbuild_dhcp_answering 1"),
        read,
    );
    wait(
        "the probe",
        || metrics(&srv).contains("imgbuild_dhcp_other_servers 1"),
        read,
    );
    let said = read();
    assert!(said.contains("DHCP server listening"), "{said}");
    assert!(!said.contains("another DHCP server answers"), "{said}");
    children.stop_all();
}

#[test]
fn root_doctor_reports_missing_interface_busy_port_67_and_readable_secrets_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create("ibdoc").unwrap();
    let cfg = common::write_cluster(dir.path(), false, |t| {
        t.replace("interface = \"br0\"", "interface = \"nosuch0\"")
    });
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(secrets.join("token.json"), "{}").unwrap();
    std::fs::set_permissions(
        secrets.join("token.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // Something holds UDP port 67 in the namespace.
    let mut children = Children::new();
    let mut holder = ns.command("python3");
    holder
        .args([
            "-c",
            "import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',67)); print('bound',flush=True); time.sleep(60)",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    children.spawn("holder", holder).unwrap();
    let t0 = Instant::now();
    loop {
        let ss = ns.command("ss").args(["-lun"]).output().unwrap();
        if String::from_utf8_lossy(&ss.stdout).contains(":67 ") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "port 67 holder did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ns
        .command(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("-c")
        .arg(&cfg)
        .arg("doctor")
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("[interface] interface \"nosuch0\"") && said.contains("does not exist"),
        "{said}"
    );
    assert!(said.contains("ip -br link"), "{said}");
    assert!(
        said.contains("[port 67/udp] DHCP port 67/udp is not free"),
        "{said}"
    );
    assert!(said.contains("ss -lunpt 'sport = :67'"), "{said}");
    assert!(
        said.contains("[secrets] readable or writable by others"),
        "{said}"
    );
    assert!(said.contains("token.json (644)"), "{said}");
    assert!(said.contains("chmod -R go-rwx"), "{said}");
    let problems = said.matches("\n      fix: ").count();
    assert!(problems >= 3, "{said}");
    children.stop_all();
}
