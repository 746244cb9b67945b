//! HTTP against the real `imgbuild serve` in a private namespace, with curl: per-machine iPXE scripts, image
//! artifacts (ETag, 304, Range, HEAD), traversal attempts, boot loaders, events, metrics, pins.

mod common;
mod netboot;

use std::time::{Duration, Instant};

use imgbuild::config::Role;
use netboot::*;

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap()
}

#[test]
fn root_http_scripts_per_role_unknown_unpinned_and_live_pin() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let (master, mfiles) = c.make_image(Role::Master, false, "a");
    let (worker, _) = c.make_image(Role::Worker, true, "a");
    let (storage, _) = c.make_image(Role::Storage, false, "a");
    for (role, id) in [("master", &master), ("worker", &worker)] {
        let o = c.imgbuild(&["pin", role, &id[..10]]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = text(o.stdout);
        assert!(
            out.contains(&format!("{role} (amd64): (nothing) -> {id}")),
            "{out}"
        );
        assert!(out.contains("Reboot the"), "{out}");
    }
    // A worker image cannot be pinned for masters.
    let o = c.imgbuild(&["pin", "master", &worker]);
    assert!(!o.status.success());
    assert!(text(o.stderr).contains("it cannot be pinned for role master"));
    let server = Server::start(&ns, &c);

    // master-1: kernel and initrd URLs carry the sha256 of the manifest, the command line the contract.
    let (code, hdr, body) = http(&ns, &[], &format!("/ipxe/{MASTER1}"));
    assert_eq!(code, 200);
    assert_eq!(header(&hdr, "cache-control"), Some("no-store"));
    let s = text(body);
    let ksha = sha256_hex(&mfiles["vmlinuz"]);
    let isha = sha256_hex(&mfiles["initrd.img"]);
    assert!(s.starts_with("#!ipxe\n"), "{s}");
    let kurl = format!("http://10.77.0.1:8080/images/{master}/vmlinuz?sha256={ksha}");
    let iurl = format!("http://10.77.0.1:8080/images/{master}/initrd.img?sha256={isha}");
    let efi_kernel = s
        .lines()
        .find(|l| l.contains("initrd=initrd.img"))
        .expect(&s);
    assert!(
        efi_kernel.starts_with(&format!(
            "kernel --name vmlinuz {kurl} initrd=initrd.img BOOTIF=01-52-54-00-77-00-11 "
        )),
        "{efi_kernel}"
    );
    for arg in [
        "ip=10.77.0.11::10.77.0.1:255.255.255.0:master-1::off",
        "systemd.hostname=master-1",
        "imgbuild.server=http://10.77.0.1:8080",
        "imgbuild.role=master",
        &format!("imgbuild.image={master}"),
        "console=ttyS0,115200",
    ] {
        assert!(efi_kernel.contains(arg), "{arg} missing: {efi_kernel}");
    }
    // The BIOS branch has no initrd= (iPXE's ${platform} is pcbios there).
    let bios_kernel = s
        .lines()
        .filter(|l| l.starts_with("kernel "))
        .find(|l| !l.contains("initrd="))
        .expect(&s);
    assert!(bios_kernel.contains("BOOTIF=01-52-54-00-77-00-11"));
    assert!(s.contains("iseq ${platform} efi"), "{s}");
    assert!(
        s.contains(&format!("initrd --name initrd.img {iurl}")),
        "{s}"
    );
    assert!(s.contains("\nboot "), "{s}");
    assert!(!s.contains("STAND-IN"), "{s}");
    // /boot.ipxe?mac= is the same script.
    let (code, _, body) = http(&ns, &[], &format!("/boot.ipxe?mac={MASTER1}"));
    assert_eq!(code, 200);
    assert_eq!(text(body), s);
    // Without mac=: a script chaining to the per-MAC one.
    let (_, _, body) = http(&ns, &[], "/boot.ipxe");
    assert!(text(body).contains("chain --autofree http://10.77.0.1:8080/ipxe/${net0/mac}"));

    // worker-1: a stand-in image → visible warning in the script and in the server log.
    let (code, _, body) = http(&ns, &[], &format!("/ipxe/{}", WORKER1.replace(':', "-")));
    assert_eq!(code, 200);
    let w = text(body);
    assert!(
        w.contains("WARNING: image") && w.contains("STAND-IN"),
        "{w}"
    );
    assert!(w.contains("imgbuild.standins=1"), "{w}");
    assert!(w.contains("systemd.hostname=worker-1"), "{w}");
    assert!(server.wait_log("serving an image built with labelled STAND-IN binaries"));

    // storage-1: nothing pinned → a message naming the fix, and a retry after a delay.
    let (code, _, body) = http(&ns, &[], &format!("/ipxe/{STORAGE1}"));
    assert_eq!(code, 200);
    let st = text(body);
    assert!(
        st.contains("no amd64 image is pinned for role storage"),
        "{st}"
    );
    assert!(st.contains("imgbuild pin storage <image-id>"), "{st}");
    assert!(st.contains("sleep 30"), "{st}");
    assert!(
        st.contains(&format!(
            "chain --autofree http://10.77.0.1:8080/ipxe/{STORAGE1}"
        )),
        "{st}"
    );
    assert!(!st.contains("kernel "), "{st}");

    // Unknown MAC: the same kind of script, with the inventory hint.
    let (code, _, body) = http(&ns, &[], "/ipxe/52:54:00:99:99:99");
    assert_eq!(code, 200);
    let u = text(body);
    assert!(u.contains("is not in the inventory"), "{u}");
    assert!(
        u.contains("sleep 30") && u.contains("chain --autofree"),
        "{u}"
    );
    // Not a MAC at all.
    let (code, _, body) = http(&ns, &[], "/ipxe/nonsense");
    assert_eq!(code, 400);
    assert!(text(body).contains("is not a MAC address"));

    // Pin storage while the server runs: the next script request boots it (no restart, no SIGHUP).
    let o = c.imgbuild(&["pin", "storage", &storage]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text(o.stdout).contains("storage-1, storage-2"));
    let (_, _, body) = http(&ns, &[], &format!("/ipxe/{STORAGE1}"));
    let st = text(body);
    assert!(
        st.contains(&format!("/images/{storage}/vmlinuz?sha256=")),
        "{st}"
    );
    assert!(server.wait_log("pins changed"));
    // Re-pin master to the same image: nothing changes.
    let o = c.imgbuild(&["pin", "master", &master]);
    assert!(text(o.stdout).contains("already pinned"));
    let o = c.imgbuild(&["pin", "--list"]);
    let l = text(o.stdout);
    assert!(
        l.contains(&master) && l.contains(&storage) && l.contains("STAND-INS"),
        "{l}"
    );

    // Events: ipxe-script for known machines.
    let ev = c.events();
    let scripts: Vec<_> = ev.iter().filter(|e| e["stage"] == "ipxe-script").collect();
    assert!(
        scripts
            .iter()
            .any(|e| e["mac"] == MASTER1 && e["detail"].as_str().unwrap().contains(&master))
    );
    assert!(
        scripts
            .iter()
            .any(|e| e["mac"] == STORAGE1 && e["detail"].as_str().unwrap().contains("waiting"))
    );
}

#[test]
fn root_http_artifacts_etag_304_range_head_and_events() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let (id, files) = c.make_image(Role::Master, false, "b");
    let _server = Server::start(&ns, &c);
    let k = &files["vmlinuz"];
    let ksha = sha256_hex(k);
    let path = format!("/images/{id}/vmlinuz");

    // Full GET from master-1's address: byte-identical, immutable caching, strong ETag = sha256.
    let (code, hdr, body) = http(&ns, &["--interface", MASTER1_IP], &path);
    assert_eq!(code, 200);
    assert!(body == *k);
    assert_eq!(header(&hdr, "etag"), Some(format!("\"{ksha}\"").as_str()));
    assert_eq!(
        header(&hdr, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(header(&hdr, "accept-ranges"), Some("bytes"));
    assert!(
        header(&hdr, "last-modified").is_none(),
        "no mtime-based validators"
    );
    // The URL form the script uses, with the matching digest; a wrong digest is a 404.
    let (code, _, body) = http(&ns, &[], &format!("{path}?sha256={ksha}"));
    assert_eq!(code, 200);
    assert!(body == *k);
    let (code, _, _) = http(&ns, &[], &format!("{path}?sha256={}", "0".repeat(64)));
    assert_eq!(code, 404);

    // If-None-Match → 304 with no body.
    let inm = format!("If-None-Match: \"{ksha}\"");
    let (code, hdr, body) = http(&ns, &["-H", &inm], &path);
    assert_eq!(code, 304);
    assert!(body.is_empty());
    assert_eq!(header(&hdr, "etag"), Some(format!("\"{ksha}\"").as_str()));
    let (code, _, _) = http(&ns, &["-H", "If-None-Match: \"other\""], &path);
    assert_eq!(code, 200);

    // Range: 206 with the exact bytes, suffix range, 416 beyond the end, If-Range with another tag → 200.
    let (code, hdr, body) = http(&ns, &["-r", "1000-1999"], &path);
    assert_eq!(code, 206);
    assert!(body == k[1000..2000]);
    assert_eq!(
        header(&hdr, "content-range"),
        Some(format!("bytes 1000-1999/{}", k.len()).as_str())
    );
    let (code, _, body) = http(&ns, &["-H", "Range: bytes=-100"], &path);
    assert_eq!(code, 206);
    assert!(body == k[k.len() - 100..]);
    let (code, hdr, _) = http(&ns, &["-H", "Range: bytes=99999999-"], &path);
    assert_eq!(code, 416);
    assert_eq!(
        header(&hdr, "content-range"),
        Some(format!("bytes */{}", k.len()).as_str())
    );
    let (code, _, body) = http(
        &ns,
        &["-H", "Range: bytes=0-9", "-H", "If-Range: \"old\""],
        &path,
    );
    assert_eq!(code, 200);
    assert!(body == *k);

    // HEAD: headers and length, no body.
    let (code, hdr, body) = http(&ns, &["-I"], &path);
    assert_eq!(code, 200);
    // curl -I writes the headers where the body would go: nothing more than them.
    assert!(
        body.len() < 1024 && body.starts_with(b"HTTP/1.1 200"),
        "{}",
        body.len()
    );
    assert_eq!(
        header(&hdr, "content-length"),
        Some(k.len().to_string().as_str())
    );

    // The other artifacts, manifest included (its ETag is the image id).
    for f in ["initrd.img", "rootfs.squashfs", "manifest.json"] {
        let (code, hdr, body) = http(&ns, &[], &format!("/images/{id}/{f}"));
        assert_eq!(code, 200, "{f}");
        assert!(body == files[f], "{f}");
        let tag = if f == "manifest.json" {
            id.clone()
        } else {
            sha256_hex(&files[f])
        };
        assert_eq!(
            header(&hdr, "etag"),
            Some(format!("\"{tag}\"").as_str()),
            "{f}"
        );
    }
    // A range larger than one chunk, from an odd offset: its first 64 KiB are read with the open, the rest are
    // slices of the mapped file (netboot::http::mapped), which must start where the read ended.
    let r = &files["rootfs.squashfs"];
    let (code, _, body) = http(
        &ns,
        &["-r", &format!("70001-{}", r.len() - 2)],
        &format!("/images/{id}/rootfs.squashfs"),
    );
    assert_eq!(code, 206);
    assert!(body == r[70001..r.len() - 1], "{} bytes", body.len());
    // Events: the full kernel sent to master-1's address; ranges and other peers record nothing.
    let ev = c.events();
    let kernel: Vec<_> = ev.iter().filter(|e| e["stage"] == "kernel").collect();
    assert_eq!(kernel.len(), 1, "{ev:?}");
    assert_eq!(kernel[0]["mac"], MASTER1);
    let (_, _, m) = http(&ns, &[], "/metrics");
    let m = text(m);
    assert!(
        m.contains(r#"imgbuild_http_requests_total{route="/images/{id}/{file}",status="206"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"imgbuild_http_requests_total{route="/images/{id}/{file}",status="304"} 1"#),
        "{m}"
    );
    assert!(
        m.contains("imgbuild_http_sent_bytes_total{route=\"/images/{id}/{file}\"}"),
        "{m}"
    );
    assert!(m.contains("imgbuild_http_transfers_in_flight 0"), "{m}");
}

#[test]
fn root_http_refuses_traversal_symlinks_and_damaged_images() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let (id, files) = c.make_image(Role::Worker, false, "c");
    // An image whose rootfs is a symlink (to a file with the right content, so only the symlink is wrong).
    let (lid, _) = c.make_image(Role::Worker, false, "d");
    let outside = c.dir.path().join("outside.bin");
    std::fs::rename(c.images.join(&lid).join("rootfs.squashfs"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, c.images.join(&lid).join("rootfs.squashfs")).unwrap();
    // A whole image directory that is a symlink to a valid image elsewhere.
    let (sid, _) = c.make_image(Role::Worker, false, "e");
    let elsewhere = c.dir.path().join("elsewhere");
    std::fs::rename(c.images.join(&sid), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, c.images.join(&sid)).unwrap();
    // A tampered image: the manifest no longer hashes to the id.
    let (tid, _) = c.make_image(Role::Worker, false, "f");
    let mp = c.images.join(&tid).join("manifest.json");
    let mut m = std::fs::read(&mp).unwrap();
    m.extend_from_slice(b" ");
    std::fs::write(&mp, m).unwrap();
    // A file that is not an artifact.
    std::fs::write(c.images.join(&id).join("secret"), b"no").unwrap();
    // A grown artifact (size differs from the manifest).
    let (gid, _) = c.make_image(Role::Worker, false, "g");
    std::fs::write(c.images.join(&gid).join("initrd.img"), b"short").unwrap();
    let server = Server::start(&ns, &c);

    let ok = http(&ns, &[], &format!("/images/{id}/vmlinuz"));
    assert_eq!(ok.0, 200);
    assert!(ok.2 == files["vmlinuz"]);
    for p in [
        format!("/images/{id}/../../cluster.toml"),
        format!("/images/{id}/%2e%2e/%2e%2e/cluster.toml"),
        "/images/%2e%2e/cluster.toml".to_string(),
        format!("/images/{id}/..%2f..%2fcluster.toml"),
        "/images/..%2f..%2f..%2fetc/passwd".to_string(),
        "/images/../../etc/passwd".to_string(),
        format!("/images/{id}/secret"),
        format!("/images/{id}/%2e%2e"),
        format!("/images/{lid}/rootfs.squashfs"),
        format!("/images/{sid}/vmlinuz"),
        format!("/images/{sid}/manifest.json"),
        format!("/images/{}/vmlinuz", "a".repeat(64)),
        format!("/images/{}/vmlinuz", &id[..63]),
        format!("/images/{}/vmlinuz", id.to_uppercase()),
        "/images/x/vmlinuz".to_string(),
    ] {
        let (code, _, body) = http(&ns, &[], &p);
        assert!(code == 404 || code == 400, "{p}: {code}");
        let b = String::from_utf8_lossy(&body);
        assert!(
            !b.contains("[cluster]") && !b.contains("root:"),
            "{p}: leaked {b}"
        );
    }
    assert!(server.wait_log("is a symlink or not a regular file; refusing to serve it"));
    assert!(server.wait_log("is a symlink or not a directory"));
    // Damaged store: a server error naming the problem, never the content.
    let (code, _, body) = http(&ns, &[], &format!("/images/{tid}/vmlinuz"));
    assert_eq!(code, 500);
    assert!(String::from_utf8_lossy(&body).contains("hashes to"));
    let (code, _, body) = http(&ns, &[], &format!("/images/{gid}/initrd.img"));
    assert_eq!(code, 500);
    assert!(String::from_utf8_lossy(&body).contains("its manifest says"));
    let (_, _, m) = http(&ns, &[], "/metrics");
    let m = text(m);
    for kind in ["traversal", "symlink", "store_damaged", "not_found"] {
        assert!(
            m.contains(&format!("imgbuild_http_errors_total{{kind=\"{kind}\"}}")),
            "{kind}: {m}"
        );
    }
}

#[test]
fn root_http_boot_loaders_health_metrics_and_event_validation() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let _server = Server::start(&ns, &c);
    // UEFI HTTP Boot fetches the allowlisted loaders; nothing else.
    let (code, _, body) = http(&ns, &["--interface", WORKER1_IP], "/boot/snponly.efi");
    assert_eq!(code, 200);
    assert!(body == std::fs::read("/usr/lib/ipxe/snponly.efi").unwrap());
    let boot: Vec<_> = c
        .events()
        .into_iter()
        .filter(|e| e["stage"] == "bootfile")
        .collect();
    assert_eq!(boot.len(), 1, "{boot:?}");
    assert_eq!(boot[0]["mac"], WORKER1);
    assert_eq!(boot[0]["detail"], "snponly.efi via HTTP");
    for p in [
        "/boot/ipxe.lkrn",
        "/boot/..%2f..%2fetc%2fpasswd",
        "/boot/%2e%2e",
        "/boot/../etc/passwd",
    ] {
        let (code, _, body) = http(&ns, &[], p);
        assert_eq!(code, 404, "{p}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{p}");
    }
    let (code, _, body) = http(&ns, &[], "/healthz");
    assert_eq!((code, text(body).as_str()), (200, "ok\n"));
    // Other modules' routes are merged into the same app (enrollment's barrier: not reached yet).
    let (code, hdr, _) = http(&ns, &[], "/api/barrier/init-done");
    assert_eq!(code, 503);
    assert!(header(&hdr, "retry-after").is_some(), "{hdr}");

    let post = |form: &str| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b");
        let o = ns.exec(
            10,
            &[
                "curl",
                "-s",
                "-o",
                out.to_str().unwrap(),
                "-w",
                "%{http_code}",
                "--interface",
                WORKER1_IP,
                "--data",
                form,
                &format!("http://{SERVER}:8080/api/events"),
            ],
        );
        (
            String::from_utf8_lossy(&o.stdout)
                .parse::<u16>()
                .unwrap_or(0),
            std::fs::read_to_string(&out).unwrap_or_default(),
        )
    };
    assert_eq!(
        post(&format!(
            "mac={WORKER1}&stage=rootfs-verified&detail=sha256+ok"
        ))
        .0,
        200
    );
    assert_eq!(
        post(&format!("mac={WORKER1}&stage=failed&detail=disk")).0,
        200
    );
    // A stand-in binary's report is logged, outside the boot stages.
    assert_eq!(
        post(&format!(
            "mac={WORKER1}&stage=standin&detail=STAND-IN+kubelet%3A+would+register"
        ))
        .0,
        200
    );
    // A MAC outside the inventory: refused (403), nothing recorded, counted.
    let (code, msg) = post("mac=52:54:00:99:99:99&stage=systemd");
    assert_eq!(code, 403);
    assert!(msg.contains("not in the inventory"), "{msg}");
    let (code, msg) = post(&format!("mac={WORKER1}&stage=partying"));
    assert_eq!(code, 400);
    assert!(
        msg.contains("unknown stage") && msg.contains("rootfs-verified") && msg.contains("failed"),
        "{msg}"
    );
    let (code, msg) = post("mac=zz&stage=systemd");
    assert_eq!(code, 400);
    assert!(msg.contains("is not a MAC address"), "{msg}");
    let (code, msg) = post("stage=systemd");
    assert_eq!(code, 400);
    assert!(msg.contains("mac, stage"), "{msg}");
    let ev = c.events();
    let node: Vec<_> = ev.iter().filter(|e| e["source"] == "node").collect();
    assert_eq!(node.len(), 3, "{ev:?}");
    assert_eq!(node[0]["stage"], "rootfs-verified");
    assert_eq!(node[0]["detail"], "sha256 ok");
    assert_eq!(node[1]["stage"], "failed");
    assert_eq!(node[2]["stage"], "standin");
    assert_eq!(node[2]["detail"], "STAND-IN kubelet: would register");

    let (code, hdr, m) = http(&ns, &[], "/metrics");
    assert_eq!(code, 200);
    assert!(
        header(&hdr, "content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let m = text(m);
    assert!(
        m.contains(r#"imgbuild_http_requests_total{route="/api/events",status="400"} 3"#),
        "{m}"
    );
    assert!(
        m.contains(r#"imgbuild_http_requests_total{route="/boot/{name}",status="200"} 1"#),
        "{m}"
    );
    assert!(
        m.contains("# TYPE imgbuild_tftp_transfers_in_flight gauge"),
        "{m}"
    );
    assert!(
        m.contains(r#"imgbuild_http_errors_total{kind="bad_request"} 4"#),
        "{m}"
    );
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
}

/// `[limits.http]` against a flood: 3,000 idle connections from one address (a python client that connects and
/// sends nothing). Another address still gets `/healthz` at once, the server holds a bounded number of
/// descriptors, the refused connections are told 503 and counted, the admitted idle ones are closed by the
/// header timeout and counted, and a body over `max_body_bytes` gets 413 and is counted.
#[test]
fn root_http_limits_idle_flood_from_one_address() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let toml = std::fs::read_to_string(&c.config).unwrap();
    let toml = toml
        .replace("header_timeout = \"10s\"", "header_timeout = \"5s\"")
        .replace("max_body_bytes = 1048576", "max_body_bytes = 4096");
    assert!(toml.contains("header_timeout = \"5s\""), "example changed");
    std::fs::write(&c.config, toml).unwrap();
    let server = Server::start(&ns, &c);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .count()
    };
    let fds_before = fds();

    // The flood: 3,000 connections from WORKER1_IP, held open (sending nothing) until stdin closes.
    let flood = r#"
import select, socket, sys
socks = []
for i in range(3000):
    s = socket.socket()
    s.bind((sys.argv[1], 0))
    s.connect((sys.argv[2], 8080))
    socks.append(s)
print("connected", flush=True)
sys.stdin.readline()
# Every connection ends: refused ones with a 503, admitted ones at the header timeout.
n503 = neof = 0
p = select.poll()
left = {s.fileno(): s for s in socks}
for fd in left:
    p.register(fd, select.POLLIN)
while left:
    ready = p.poll(20000)
    if not ready:
        break
    for fd, _ in ready:
        b = left[fd].recv(64)
        if b.startswith(b"HTTP/1.1 503"):
            n503 += 1
        elif not b:
            neof += 1
        p.unregister(fd)
        del left[fd]
print(n503, neof, len(left), flush=True)
sys.stdin.read()
"#;
    let mut child = ns
        .cmd("timeout")
        .args(["120", "python3", "-c", flood, WORKER1_IP, SERVER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "connected", "the flood client: {line:?}");

    // Another host: /healthz within a second, while the 3,000 are open.
    // curl's -m 1 is the issue's "under a second" (a bound on the client, not a benchmark).
    let o = ns.exec(
        5,
        &[
            "curl",
            "-sf",
            "--interface",
            MASTER1_IP,
            "-m",
            "1",
            &format!("http://{SERVER}:8080/healthz"),
        ],
    );
    assert!(o.status.success(), "healthz during the flood: {o:?}");
    // Once the server has taken all 3,000 from its backlog: bounded descriptors (the per-address cap of 64 plus a
    // margin, not 3,000), the rest refused and counted.
    let metric = |m: &str, name: &str| -> u64 {
        m.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0) as u64
    };
    let t0 = Instant::now();
    let m = loop {
        let during = fds();
        assert!(
            during < fds_before + 64 + 16,
            "{during} descriptors open (before the flood {fds_before})"
        );
        let m = text(http(&ns, &[], "/metrics").2);
        let refused = metric(
            &m,
            "imgbuild_http_refused_total{reason=\"max_connections_per_address\"}",
        );
        if refused + metric(&m, "imgbuild_http_connections_accepted_total") >= 3000 {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "flood not taken in:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let open = metric(&m, "imgbuild_http_connections_open");
    assert!(open <= 66, "too many connections held ({open}):\n{m}");

    // Every flood connection ends: the refused ones were told 503, the admitted ones closed at the header timeout.
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        n.len() == 3 && n[2] == 0 && n[0] + n[1] == 3000,
        "503s, closes, left: {line:?}"
    );
    // Each admitted one frees its place at the header timeout, so a slow flood is admitted 64 at a time.
    assert!(n[0] >= 2000, "503s, closes, left: {line:?}");

    // The admitted idle connections were closed by the header timeout (5 s here), counted.
    let t0 = Instant::now();
    loop {
        let (_, _, m) = http(&ns, &[], "/metrics");
        let m = text(m);
        let timeouts = m
            .lines()
            .find_map(|l| l.strip_prefix("imgbuild_http_refused_total{reason=\"header_timeout\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if timeouts == n[1] && m.contains("imgbuild_http_connections_open 1") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the admitted connections were not closed:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stdin);
    let _ = child.wait();

    // A body over max_body_bytes (4 KiB here): 413, counted.
    let big = format!("mac={MASTER1}&stage=failed&detail={}", "x".repeat(8192));
    let (code, _, _) = http(&ns, &["--data-binary", &big], "/api/events");
    assert_eq!(code, 413);
    let (_, _, m) = http(&ns, &[], "/metrics");
    assert!(
        text(m).contains("imgbuild_http_refused_total{reason=\"max_body_bytes\"} 1"),
        "body cap not counted"
    );
}
