//! TFTP against the real `imgbuild serve` in a private namespace, with real clients (curl, atftp).

mod common;
mod netboot;

use std::path::Path;

use netboot::*;

/// An iPXE binaries dir: the real `snponly.efi` and `undionly.kpxe`, a `size`-byte blob as `ipxe.efi`
/// (allowlisted name), and a planted symlink `evil.efi -> /etc/passwd`.
fn ipxe_dir(blob_size: usize) -> (tempfile::TempDir, Vec<u8>) {
    let d = tempfile::tempdir().unwrap();
    for f in ["snponly.efi", "undionly.kpxe"] {
        std::fs::copy(Path::new("/usr/lib/ipxe").join(f), d.path().join(f)).unwrap();
    }
    let mut blob = vec![0u8; blob_size];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(d.path().join("ipxe.efi"), &blob).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("evil.efi")).unwrap();
    (d, blob)
}

fn fetch_curl(ns: &Netns, out: &Path, file: &str, extra: &[&str]) -> std::process::Output {
    let url = format!("tftp://{SERVER}/{file}");
    let mut argv = vec!["curl", "-sS", "-o", out.to_str().unwrap()];
    argv.extend_from_slice(extra);
    argv.push(&url);
    ns.exec(60, &argv)
}

#[test]
fn root_tftp_curl_downloads_real_snponly_byte_identical_and_records_bootfile() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let server = Server::start(&ns, &c);
    let want = std::fs::read("/usr/lib/ipxe/snponly.efi").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("got");
    for extra in [
        &[][..],
        &["--tftp-blksize", "1468"][..],
        &["--tftp-blksize", "8192"][..],
        &["--tftp-blksize", "65464"][..],
        &["--tftp-no-options"][..],
    ] {
        let _ = std::fs::remove_file(&out);
        let o = fetch_curl(&ns, &out, "snponly.efi", extra);
        assert!(
            o.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            std::fs::read(&out).unwrap() == want,
            "{extra:?}: content differs"
        );
    }
    // ipxe.efi in Debian is a symlink to /boot/ipxe.efi: the configured file is resolved, that is fine.
    let o = fetch_curl(&ns, &out, "ipxe.efi", &["--tftp-blksize", "1468"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == std::fs::read("/usr/lib/ipxe/ipxe.efi").unwrap());
    // From worker-1's inventory address: a bootfile event for its MAC.
    let o = fetch_curl(&ns, &out, "undionly.kpxe", &["--interface", WORKER1_IP]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap());
    assert!(server.wait_log("TFTP transfer complete"));
    let t0 = std::time::Instant::now();
    let ev = loop {
        let ev: Vec<_> = c
            .events()
            .into_iter()
            .filter(|e| e["stage"] == "bootfile")
            .collect();
        if !ev.is_empty() || t0.elapsed().as_secs() > 5 {
            break ev;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        ev.len(),
        1,
        "one bootfile event (only worker-1 is in the inventory): {ev:?}"
    );
    assert_eq!(ev[0]["mac"], WORKER1);
    assert!(ev[0]["detail"].as_str().unwrap().contains("undionly.kpxe"));
    // Every iPXE loader is there, and with no arm64 machine in the inventory the server neither makes nor asks
    // for the arm64 GRUB loader (tests/arm64_boot.rs covers it): nothing is reported missing.
    assert!(
        !server.log_text().contains("boot loader MISSING"),
        "{}",
        server.log_text()
    );
    let (_, _, metrics) = http(&ns, &[], "/metrics");
    let m = String::from_utf8(metrics).unwrap();
    assert!(
        m.contains(r#"imgbuild_tftp_requests_total{file="snponly.efi",result="ok"} 5"#),
        "{m}"
    );
}

#[test]
fn root_tftp_atftp_windowsize_and_tsize_on_a_64mib_blob() {
    let (bin, blob) = ipxe_dir(64 << 20);
    let ns = Netns::new();
    let c = ClusterDir::new(Some(bin.path()));
    let server = Server::start(&ns, &c);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("got");
    let outs = out.to_str().unwrap();
    // blksize 512 with a window: 131072 blocks, so block numbers wrap past 65535.
    for opts in [
        vec![
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 64",
            "--option",
            "tsize 0",
        ],
        vec!["--option", "blksize 512", "--option", "windowsize 16"],
    ] {
        let _ = std::fs::remove_file(&out);
        let mut argv = vec!["atftp"];
        argv.extend(opts.iter().copied());
        argv.extend(["-g", "-r", "ipxe.efi", "-l", outs, SERVER]);
        let o = ns.exec(120, &argv);
        assert!(
            o.status.success(),
            "{opts:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            std::fs::read(&out).unwrap() == blob,
            "{opts:?}: content differs"
        );
    }
    let log = server.log_text();
    assert!(log.contains("windowsize=64"), "{log}");
    assert!(log.contains("windowsize=16"), "{log}");
    // curl with a large block size and tsize (curl asks tsize by default).
    let _ = std::fs::remove_file(&out);
    let o = fetch_curl(&ns, &out, "ipxe.efi", &["--tftp-blksize", "65464"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == blob);
}

#[test]
fn root_tftp_refuses_writes_traversal_absolute_symlinks_and_unlisted_names() {
    let (bin, _) = ipxe_dir(1000);
    let ns = Netns::new();
    let c = ClusterDir::new(Some(bin.path()));
    let server = Server::start(&ns, &c);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("got");
    let outs = out.to_str().unwrap();
    for (name, log_reason) in [
        ("../../../etc/passwd", "path traversal refused"),
        ("x/../snponly.efi", "path traversal refused"),
        ("/etc/passwd", "absolute paths are refused"),
        ("/snponly.efi", "absolute paths are refused"),
        ("evil.efi", "file not served"),
        ("ipxe.lkrn", "file not served"),
        ("cluster.toml", "file not served"),
    ] {
        let _ = std::fs::remove_file(&out);
        let o = ns.exec(20, &["atftp", "-g", "-r", name, "-l", outs, SERVER]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !o.status.success() || text.contains("tftp: error"),
            "{name}: {text}"
        );
        let got = std::fs::read(&out).unwrap_or_default();
        assert!(got.is_empty(), "{name}: something was served");
        assert!(
            server.wait_log(&format!("file={name} reason={log_reason}")),
            "{name}: no log line\n{}",
            server.log_text()
        );
    }
    // A write request: refused, and nothing appears in the boot loader directory.
    let src = tmp.path().join("upload");
    std::fs::write(&src, b"malicious").unwrap();
    let url = format!("tftp://{SERVER}/snponly2.efi");
    let o = ns.exec(20, &["curl", "-sS", "-T", src.to_str().unwrap(), &url]);
    // curl's exit code 69 is CURLE_TFTP_PERM: the server answered with an access violation.
    assert_eq!(
        o.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(server.wait_log("TFTP write request refused"));
    assert!(!bin.path().join("snponly2.efi").exists());
    // Malformed datagrams are dropped and counted; the server keeps serving.
    let o = ns.exec(
        10,
        &[
            "python3",
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             for p in [b'', b'\\x00', b'\\x00\\x09zz', b'\\x00\\x01noterm', b'\\x00\\x01f\\x00weird\\x00', b'\\xff'*600]:\n  s.sendto(p,('10.77.0.1',69))",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_file(&out);
    let o = fetch_curl(&ns, &out, "snponly.efi", &[]);
    assert!(o.status.success());
    let (_, _, m) = http(&ns, &[], "/metrics");
    let m = String::from_utf8(m).unwrap();
    let malformed: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix(r#"imgbuild_tftp_errors_total{kind="malformed"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(malformed >= 5, "{m}");
    for kind in ["traversal", "absolute", "not_allowed", "write_refused"] {
        assert!(
            m.contains(&format!("imgbuild_tftp_errors_total{{kind=\"{kind}\"}}")),
            "{kind}: {m}"
        );
    }
}

#[test]
fn root_tftp_serves_100_concurrent_clients() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    // All 100 clients share one address here; a PXE network has one per machine.
    let toml = std::fs::read_to_string(&c.config).unwrap();
    assert!(toml.contains("per_address = 8 "));
    std::fs::write(
        &c.config,
        toml.replace("per_address = 8 ", "per_address = 100 "),
    )
    .unwrap();
    let _server = Server::start(&ns, &c);
    let want = std::fs::read("/usr/lib/ipxe/snponly.efi").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let kids: Vec<_> = (0..100)
        .map(|i| {
            let out = tmp.path().join(format!("got{i}"));
            let url = format!("tftp://{SERVER}/snponly.efi");
            ns.cmd("timeout")
                .args(["60", "curl", "-sS", "--tftp-blksize", "1468", "-o"])
                .arg(&out)
                .arg(&url)
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, mut k) in kids.into_iter().enumerate() {
        assert!(k.wait().unwrap().success(), "client {i}");
        assert!(
            std::fs::read(tmp.path().join(format!("got{i}"))).unwrap() == want,
            "client {i}"
        );
    }
}

#[test]
fn root_tftp_retransmits_with_backoff_to_a_silent_client_and_stops_on_its_error() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let server = Server::start(&ns, &c);
    // A raw client that never acknowledges: block 1 must come again after 1 s, then after 2 s more.
    let script = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(6)
s.sendto(b'\x00\x01snponly.efi\x00octet\x00', ('10.77.0.1', 69))
ts = []
for i in range(3):
    d, a = s.recvfrom(2000)
    ts.append(time.monotonic())
    assert d[:4] == b'\x00\x03\x00\x01', d[:4]
s.sendto(b'\x00\x05\x00\x00client gives up\x00', a)
print(' '.join('%.2f' % (t - ts[0]) for t in ts))
"#;
    let o = ns.exec(20, &["python3", "-c", script]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t: Vec<f64> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        (0.8..1.8).contains(&t[1]),
        "first retransmission after ~1 s: {t:?}"
    );
    assert!(
        (2.6..4.0).contains(&t[2]),
        "second after ~2 s more (backoff): {t:?}"
    );
    assert!(
        server.wait_log("TFTP transfer ended by the client"),
        "{}",
        server.log_text()
    );
    assert!(server.log_text().contains("client gives up"));
    let (_, _, m) = http(&ns, &[], "/metrics");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("imgbuild_tftp_retransmits_total 2"), "{m}");
    assert!(m.contains("imgbuild_tftp_transfers_in_flight 0"), "{m}");
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The value of one metric line (`name{labels} value`) in the server's /metrics text, 0 when absent.
fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn root_tftp_3000_unacknowledged_requests_with_timeout_255_leave_another_host_served_and_descriptors_bounded()
 {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let server = Server::start(&ns, &c);
    let base = fds(server.pid());
    // One host (master-1's address), 3,000 client ports, each asking undionly.kpxe with timeout=255 and never
    // acknowledging; the sockets stay open (no ICMP tells the server they are gone) until we close stdin.
    let script = r#"
import socket, sys
rrq = b'\x00\x01undionly.kpxe\x00octet\x00timeout\x00255\x00blksize\x001468\x00'
socks = []
for i in range(3000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('10.77.0.11', 0))
    s.sendto(rrq, ('10.77.0.1', 69))
    socks.append(s)
print('sent', len(socks), flush=True)
sys.stdin.read()
"#;
    let mut flood = ns
        .cmd("timeout")
        .args(["120", "python3", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "sent 3000");
    // Let the server work through its queue, then count what it holds.
    let mut m = String::new();
    for _ in 0..50 {
        m = String::from_utf8(http(&ns, &[], "/metrics").2).unwrap();
        if metric(&m, "imgbuild_tftp_refused_total{reason=\"per_address\"}") >= 1000.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let held = fds(server.pid());
    // limits.tftp.per_address is 8 (the example's default): 8 transfer sockets, plus a little slack for the
    // runtime and the /metrics connection.
    assert!(
        held <= base + 8 + 4,
        "{held} descriptors with the flood, {base} before"
    );
    assert!(
        metric(&m, "imgbuild_tftp_transfers_in_flight ") <= 8.0,
        "{m}"
    );
    assert!(
        metric(&m, "imgbuild_tftp_refused_total{reason=\"per_address\"}") >= 1000.0,
        "{m}"
    );
    assert!(
        metric(&m, "imgbuild_tftp_timeout_clamped_total ") >= 1.0,
        "{m}"
    );
    // Another host gets undionly.kpxe at once, byte-identical (curl gives up after 5 s).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("got");
    let o = fetch_curl(
        &ns,
        &out,
        "undionly.kpxe",
        &["--interface", WORKER1_IP, "--max-time", "5"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap());
    drop(flood.stdin.take());
    let _ = flood.wait();
}

/// A worker image like `ClusterDir::make_image`'s, with a `uki.efi` of its own (distinct bytes per `salt`).
fn image_with_uki(c: &ClusterDir, salt: &str) -> (String, Vec<u8>) {
    use imgbuild::image::manifest::{FileEntry, Inputs, Manifest};
    use sha2::{Digest, Sha256};
    let (_, mut files) = c.make_image(imgbuild::config::Role::Worker, true, salt);
    files.remove("manifest.json");
    let uki: Vec<u8> = (0..200_000u32)
        .map(|i| (i as u8) ^ salt.as_bytes()[0])
        .collect();
    files.insert("uki.efi".into(), uki.clone());
    let manifest = Manifest {
        format: 1,
        role: imgbuild::config::Role::Worker,
        arch: Default::default(),
        profile: vec!["base".into(), "worker".into()],
        standins: true,
        kernel_args: vec![format!("imgbuild.salt={salt}")],
        inputs: Inputs::default(),
        files: files
            .iter()
            .map(|(n, b)| {
                let sha256 = hex::encode(Sha256::digest(b));
                let entry = FileEntry {
                    size: b.len() as u64,
                    sha256,
                };
                (n.clone(), entry)
            })
            .collect(),
        rootfs_verity: None,
        boot_apps: Default::default(),
    };
    let id = manifest.id();
    let d = c.images.join(&id);
    std::fs::create_dir_all(&d).unwrap();
    for (n, b) in &files {
        std::fs::write(d.join(n), b).unwrap();
    }
    std::fs::write(d.join("manifest.json"), manifest.to_bytes()).unwrap();
    (id, uki)
}

#[test]
fn root_tftp_serves_a_secure_boot_machine_the_uki_pinned_now_after_a_repin() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let text = std::fs::read_to_string(&c.config).unwrap();
    let text = text.replace(
        "[secure_boot]\nenabled = false",
        "[secure_boot]\nenabled = true",
    );
    assert!(text.contains("[secure_boot]\nenabled = true"));
    std::fs::write(&c.config, text).unwrap();
    let (a, uki_a) = image_with_uki(&c, "a");
    let (b, uki_b) = image_with_uki(&c, "b");
    let pin = |id: &str| {
        let o = c.imgbuild(&["pin", "worker", id]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    pin(&a);
    let _server = Server::start(&ns, &c);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("uki");
    let fetch = || {
        let _ = std::fs::remove_file(&out);
        let o = fetch_curl(&ns, &out, "uki.efi", &["--interface", WORKER1_IP]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&out).unwrap()
    };
    assert!(
        fetch() == uki_a,
        "worker-1 did not get the pinned image's UKI"
    );
    // Re-pinned while the server runs: the very next fetch (a PXE boot asks TFTP first, before any HTTP request
    // that would refresh the pins) gets the new image's UKI.
    pin(&b);
    assert!(
        fetch() == uki_b,
        "worker-1 got the UKI pinned before the re-pin"
    );
    pin(&a);
    assert!(fetch() == uki_a, "the rollback's UKI");
}
