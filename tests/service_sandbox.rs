//! What `imgbuild.service` asks of the server, checked without systemd (no systemd runs in CI's container): in a
//! network namespace of its own, `imgbuild serve` started as an unprivileged user (`nobody`) holding only
//! `CAP_NET_BIND_SERVICE` and `CAP_NET_RAW` (setpriv, as the unit's `User=`, `AmbientCapabilities=` and
//! `CapabilityBoundingSet=` do) binds DHCP, TFTP, HTTP and router advertisements and serves; it sends `READY=1`
//! on `$NOTIFY_SOCKET` once every listener is bound, `WATCHDOG=1` at half of `$WATCHDOG_USEC`, and
//! `RELOADING=1` … `READY=1` around a SIGHUP; its process has exactly those two capabilities and its own uid.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use imgbuild::vm::netns::{Children, Netns};

const NOBODY: u32 = 65534;

/// The datagrams received within `secs` until one satisfies `done`.
fn until(sock: &UnixDatagram, secs: u64, done: impl Fn(&str) -> bool) -> Vec<String> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(secs) {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let stop = done(&m);
            got.push(m);
            if stop {
                break;
            }
        }
    }
    got
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn root_serve_as_nobody_with_two_capabilities_notifies_ready_watchdog_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = common::write_cluster(dir.path(), false, |t| t);
    for d in ["state", "images", "cache", "secrets"] {
        let p = dir.path().join(d);
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    std::os::unix::fs::chown(&notify_path, Some(NOBODY), Some(NOBODY)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let ns = Netns::create("ibsvc").unwrap();
    ns.add_bridge("br0", "10.77.0.1/24").unwrap();
    let log = dir.path().join("serve.log");
    let mut c = ns.command("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+net_bind_service,+net_raw",
        "--ambient-caps=-all,+net_bind_service,+net_raw",
        "--bounding-set=-all,+net_bind_service,+net_raw",
        "--no-new-privs",
        "--",
        env!("CARGO_BIN_EXE_imgbuild"),
        "-c",
    ])
    .arg(&cfg)
    .arg("serve")
    .env("NOTIFY_SOCKET", &notify_path)
    .env("WATCHDOG_USEC", "1000000")
    .env("NO_COLOR", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    let mut children = Children::new();
    let pid = children.spawn("serve", c).unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();

    let got = until(&notify, 30, |m| m.contains("READY=1"));
    assert!(
        got.iter().any(|m| m.starts_with("READY=1")),
        "no READY=1 within 30 s: {got:?}\n{}",
        read()
    );
    let said = read();
    for l in [
        "HTTP listening",
        "TFTP listening",
        "DHCP server listening",
        "every listener is bound",
    ] {
        assert!(said.contains(l), "{l:?} not logged before READY=1:\n{said}");
    }
    // Router advertisements (raw ICMPv6: CAP_NET_RAW) are not part of readiness: wait for them a little.
    let t0 = Instant::now();
    while !read().contains("sending IPv6 router advertisements") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no router advertisements:\n{}",
            read()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // HTTP answers, as an imgbuild server.
    let out = ns
        .command("timeout")
        .args(["5", "curl", "-sfi", "http://10.77.0.1:8080/healthz"])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.contains("Server: imgbuild/"), "{head}");

    // The process: nobody, exactly CAP_NET_BIND_SERVICE (10) and CAP_NET_RAW (13), nothing it can gain.
    assert!(
        status_field(pid, "Uid")
            .split_whitespace()
            .all(|u| u == "65534"),
        "{}",
        status_field(pid, "Uid")
    );
    assert_eq!(status_field(pid, "CapEff"), "0000000000002400");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000002400");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000002400");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    let got = until(&notify, 10, |m| m == "WATCHDOG=1");
    assert!(
        got.iter().any(|m| m == "WATCHDOG=1"),
        "no watchdog keep-alive: {got:?}"
    );

    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    let got = until(&notify, 10, |m| m.starts_with("READY=1"));
    assert!(got.iter().any(|m| m == "RELOADING=1"), "{got:?}");
    assert!(got.iter().any(|m| m.starts_with("READY=1")), "{got:?}");
    assert!(read().contains("configuration reloaded"), "{}", read());
    children.stop_all();
}
