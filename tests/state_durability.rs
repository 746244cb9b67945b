//! The server's recorded state under a hostile LAN and a failing disk, with the real server binary in a private
//! network namespace (root) and real curl clients: a corrupt event log line, a full disk while nodes report,
//! rotation, thousands of requests for random MACs, and a secret in a failure report. See docs/security.md,
//! "Recorded state: durability and bounds".

mod common;
mod netboot;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use netboot::*;

const TOKEN: &str = "q7x2kz.9f8e7d6c5b4a3210";

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

/// One node report from `src` (an address on the namespace's `lo`): the HTTP status.
fn report(ns: &Netns, src: &str, mac: &str, stage: &str, detail: &str) -> u16 {
    let out = ns.exec(
        20,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            src,
            "--data-urlencode",
            &format!("mac={mac}"),
            "--data-urlencode",
            &format!("stage={stage}"),
            "--data-urlencode",
            &format!("detail={detail}"),
            &format!("http://{SERVER}:8080/api/events"),
        ],
    );
    text(out.stdout).trim().parse().unwrap_or(0)
}

/// Many requests in one curl: a config file with one section per request; returns each status in order.
fn many(ns: &Netns, dir: &Path, sections: &[String], parallel: bool) -> Vec<u16> {
    let cfg = dir.join(format!("curl-{}.cfg", sections.len()));
    std::fs::write(&cfg, sections.join("next\n")).unwrap();
    let mut argv = vec!["curl", "-s", "-K", cfg.to_str().unwrap()];
    if parallel {
        argv.extend(["-Z", "--parallel-max", "8"]);
    }
    let out = ns.exec(300, &argv);
    text(out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn post_section(src: &str, form: &str) -> String {
    format!(
        "url = \"http://{SERVER}:8080/api/events\"\ninterface = \"{src}\"\ndata = \"{form}\"\n\
         output = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\n"
    )
}

/// The lines of `events.jsonl` in `state`, each checked to be a whole event.
fn log_lines(state: &Path) -> Vec<serde_json::Value> {
    let t = std::fs::read_to_string(state.join("events.jsonl")).unwrap();
    assert!(t.is_empty() || t.ends_with('\n'), "a torn record: {t:?}");
    t.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event ({e}): {l:?}")))
        .collect()
}

fn details(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|e| e["detail"].as_str().map(String::from))
        .collect()
}

fn metric(ns: &Netns, line_start: &str) -> u64 {
    let (_, _, m) = http(ns, &[], "/metrics");
    let m = text(m);
    m.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{m}"))
}

/// Bytes the files under `dir` hold, and the blocks they take (in bytes).
fn usage(dir: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (a, b) = usage(&e.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + m.len(), total.1 + m.blocks() * 512);
        }
    }
    total
}

fn init_done_line() -> String {
    format!(
        "{{\"at_ms\":1000,\"mac\":\"{MASTER1}\",\"stage\":\"init-done\",\"detail\":\"kubeadm init finished\",\
         \"source\":\"node\"}}\n"
    )
}

#[test]
fn root_event_log_corrupt_line_keeps_every_other_event_and_the_barrier() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    // The first master reported init-done in an earlier run: the event log holds its report, and the barrier is
    // the durable server state that report opened (state/barrier.json, `pki::report_state`), which no damage to
    // the event log may close.
    std::fs::write(c.state.join("events.jsonl"), init_done_line()).unwrap();
    std::fs::write(
        c.state.join("barrier.json"),
        format!("{{\"at_ms\":1000,\"mac\":\"{MASTER1}\"}}\n"),
    )
    .unwrap();
    let server = Server::start(&ns, &c);
    let (code, _, _) = http(&ns, &[], "/api/barrier/init-done");
    assert_eq!(code, 200, "{}", server.log_text());
    for i in 0..20 {
        assert_eq!(
            report(&ns, WORKER1_IP, WORKER1, "systemd", &format!("n={i}")),
            200
        );
    }
    drop(server);
    // A line in the middle is damaged (a bad sector, a stray editor).
    let path = c.state.join("events.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 21);
    let mut damaged = lines.clone();
    damaged[10] = format!("{}\u{0}\u{0}garbage", &lines[10][..17]);
    std::fs::write(&path, damaged.join("\n") + "\n").unwrap();

    let server = Server::start(&ns, &c);
    let (code, _, body) = http(&ns, &[], "/api/barrier/init-done");
    assert_eq!(code, 200, "the barrier is kept: {}", text(body));
    let got = details(&log_lines(&c.state));
    let want: Vec<String> = std::iter::once("kubeadm init finished".to_string())
        .chain((0..20).filter(|&i| i != 9).map(|i| format!("n={i}")))
        .collect();
    assert_eq!(got, want, "every other event is kept, in order");
    let aside: Vec<PathBuf> = std::fs::read_dir(&c.state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("events.jsonl.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(&aside[0]).unwrap(),
        format!("{}\n", damaged[10])
    );
    assert!(
        server.log_text().contains("EVENT LOG CORRUPT LINES"),
        "a loud warning"
    );
    assert_eq!(
        metric(
            &ns,
            "imgbuild_event_log_quarantined_total{reason=\"line\"} "
        ),
        1
    );
    // The status table still has worker-1's events (the page and /api/status read the same history).
    let (_, _, st) = http(&ns, &[], "/api/status");
    let st: serde_json::Value = serde_json::from_slice(&st).unwrap();
    let w = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["mac"] == WORKER1)
        .unwrap();
    assert_eq!(w["stage"], "systemd");
}

/// A private mount namespace holding a small tmpfs over `dir`, alive until dropped.
struct SmallDisk {
    holder: Child,
}

impl SmallDisk {
    fn new(dir: &Path, size: &str) -> SmallDisk {
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size},mode=0755 imgbuild-test \"$0\" && echo mounted && exec sleep 600"
            ))
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = holder.stdout.take().unwrap();
        let mut buf = [0u8; 8];
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"mounted\n", "tmpfs not mounted");
        SmallDisk { holder }
    }

    /// `dir` as seen inside the namespace.
    fn path(&self, dir: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.holder.id(), dir.display()))
    }

    fn pid(&self) -> String {
        self.holder.id().to_string()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn root_event_log_full_disk_leaves_no_torn_record_and_keeps_every_acknowledged_event() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    let disk = SmallDisk::new(&c.state, "256k");
    let state = disk.path(&c.state);
    let pid = disk.pid();
    let wrap = ["nsenter", "-t", pid.as_str(), "-m"];
    let server = Server::start_wrapped(&ns, &c, &wrap);
    let mut acked = Vec::new();
    let mut post = |i: usize| {
        let d = format!("n={i} {}", "x".repeat(120));
        let code = report(&ns, WORKER1_IP, WORKER1, "systemd", &d);
        assert!(code == 200 || code == 503, "{code}");
        if code == 200 {
            acked.push(d);
        }
        code
    };
    for i in 0..20 {
        assert_eq!(post(i), 200);
    }
    // Fill the disk to the last byte.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(state.join("filler")).unwrap();
        let chunk = vec![0u8; 1024];
        while f.write_all(&chunk).is_ok() {}
        let one = [0u8; 1];
        while f.write_all(&one).is_ok() {}
    }
    let refused = (20..60).map(&mut post).filter(|&c| c == 503).count();
    // The live file's last page may still take a few lines; then every report is refused.
    assert!(
        refused >= 20,
        "reports while the disk is full are refused (503): {refused}"
    );
    std::fs::remove_file(state.join("filler")).unwrap();
    for i in 60..80 {
        assert_eq!(post(i), 200, "space is back");
    }
    assert!(metric(&ns, "imgbuild_event_log_append_errors_total ") >= refused as u64);
    // No torn record anywhere: every line is a whole event, and only the acknowledged ones are there.
    assert_eq!(details(&log_lines(&state)), acked);
    drop(server);
    let server = Server::start_wrapped(&ns, &c, &wrap);
    assert_eq!(
        metric(&ns, "imgbuild_events_kept "),
        acked.len() as u64,
        "{}",
        server.log_text()
    );
    assert_eq!(
        details(&log_lines(&state)),
        acked,
        "the restart loads everything acknowledged"
    );
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains(".corrupt-")),
        "nothing was torn: {names:?}"
    );
    drop(server);
}

#[test]
fn root_random_macs_leave_no_trace_rotation_bounds_the_log_and_secrets_are_redacted() {
    let ns = Netns::new();
    let c = ClusterDir::new(None);
    // A small log, to see it rotate.
    let mut cfg = std::fs::read_to_string(&c.config).unwrap();
    cfg = cfg
        .replacen("file_bytes = 1048576", "file_bytes = 8192", 1)
        .replacen("files = 4  ", "files = 3  ", 1);
    assert!(cfg.contains("file_bytes = 8192") && cfg.contains("files = 3  "));
    std::fs::write(&c.config, cfg).unwrap();
    let server = Server::start(&ns, &c);
    let before = usage(&c.state);

    // 4,000 requests for random MACs from a host outside the inventory: enrollment and node reports.
    let mut sections = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut macs = BTreeSet::new();
    for i in 0..4000 {
        let b = next().to_be_bytes();
        let mac = format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4]
        );
        macs.insert(mac.clone());
        sections.push(if i % 2 == 0 {
            format!(
                "url = \"http://{SERVER}:8080/api/enroll/{mac}\"\noutput = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\n"
            )
        } else {
            let stage = ["init-done", "failed", "joined", "ipxe-script"][i % 4];
            post_section(SERVER, &format!("mac={mac}&stage={stage}&detail=spoofed"))
        });
    }
    let t0 = Instant::now();
    let codes = many(&ns, c.dir.path(), &sections, true);
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(codes.len(), 4000);
    assert!(
        codes.iter().all(|&c| c == 400 || c == 403 || c == 404),
        "{codes:?}"
    );
    let after = usage(&c.state);
    eprintln!(
        "4000 random-MAC requests in {secs:.1} s; state {before:?} -> {after:?} (bytes, allocated)"
    );
    assert!(
        after.0 < before.0 + 64 * 1024 && after.1 < before.1 + 64 * 1024,
        "{before:?} -> {after:?}"
    );
    let (_, _, st) = http(&ns, &[], "/api/status");
    let st: serde_json::Value = serde_json::from_slice(&st).unwrap();
    let rows = st["nodes"].as_array().unwrap();
    let inventory = imgbuild::config::load(&c.config).unwrap().machines.len();
    assert_eq!(
        rows.len(),
        inventory,
        "no status row for a MAC outside the inventory"
    );
    assert!(
        rows.iter()
            .all(|r| !macs.contains(r["mac"].as_str().unwrap()))
    );
    assert!(
        log_lines(&c.state)
            .iter()
            .all(|e| !macs.contains(e["mac"].as_str().unwrap()))
    );
    // The 2,000 node reports reach the event log's refusal; the 2,000 enrollment requests came over plain HTTP
    // and are refused before their MAC is looked at (the bundle is HTTPS only), counted as such.
    assert_eq!(
        metric(
            &ns,
            "imgbuild_events_refused_total{reason=\"not_in_inventory\"} "
        ),
        2000
    );
    assert_eq!(
        metric(
            &ns,
            "imgbuild_enroll_requests_total{outcome=\"plain-http\"} "
        ),
        2000
    );
    let (_, _, barrier) = http(&ns, &[], "/api/barrier/init-done");
    assert!(
        text(barrier).contains("waiting"),
        "the barrier stays closed"
    );

    // A failing token renewal reports its command line, token included; kubeadm's join line too.
    let failure = format!(
        "token-renew --publish {TOKEN} failed: token is not valid yet (clock skew); \
         kubeadm join 10.77.0.10:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:{} \
         -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
        "ab".repeat(32)
    );
    assert_eq!(report(&ns, MASTER1_IP, MASTER1, "failed", &failure), 200);
    let (_, _, st) = http(&ns, &[], "/api/status");
    let (_, _, page) = http(&ns, &[], "/");
    let log = std::fs::read_to_string(c.state.join("events.jsonl")).unwrap();
    for (what, t) in [
        ("events.jsonl", log),
        ("/api/status", text(st)),
        ("the page", text(page)),
        ("the server log", server.log_text()),
    ] {
        assert!(
            !t.contains(TOKEN) && !t.contains("q7x2kz"),
            "a token in {what}"
        );
        assert!(
            !t.contains("MIIEvQ") && !t.contains("ab".repeat(32).as_str()),
            "a secret in {what}"
        );
        if what == "events.jsonl" || what == "/api/status" {
            assert!(
                t.contains("token-renew --publish [redacted]"),
                "{what}: {t}"
            );
        }
    }

    // Rotation: 600 reports of ~200 bytes through an 8 KiB × 3 log; the newest are kept, the disk stays bounded.
    let sections: Vec<String> = (0..600)
        .map(|i| {
            post_section(
                WORKER1_IP,
                &format!(
                    "mac={WORKER1}&stage=systemd&detail=r={i:04} {}",
                    "y".repeat(120)
                ),
            )
        })
        .collect();
    let codes = many(&ns, c.dir.path(), &sections, false);
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
    let bytes = |k: &str| {
        std::fs::metadata(c.state.join(format!("events.jsonl{k}")))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let total = bytes("") + bytes(".1") + bytes(".2");
    assert!(total <= 3 * (8192 + 512), "{total}");
    assert!(!c.state.join("events.jsonl.3").exists());
    assert!(metric(&ns, "imgbuild_event_log_rotations_total ") >= 10);
    assert!(metric(&ns, "imgbuild_event_log_bytes ") <= 3 * (8192 + 512));
    let mut kept: Vec<String> = [".2", ".1", ""]
        .iter()
        .flat_map(|k| {
            std::fs::read_to_string(c.state.join(format!("events.jsonl{k}")))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(&l).ok()?["detail"]
                .as_str()?
                .strip_prefix("r=")
                .map(|d| d[..4].to_string())
        })
        .collect();
    assert_eq!(
        kept.last().map(String::as_str),
        Some("0599"),
        "the newest report is kept"
    );
    let n = kept.len();
    kept.dedup();
    assert_eq!(kept.len(), n);
    let first: usize = kept[0].parse().unwrap();
    assert_eq!(
        kept,
        (first..600).map(|i| format!("{i:04}")).collect::<Vec<_>>(),
        "the newest history, none missing"
    );
    // Restart: the history in memory is what the files hold.
    let lines: u64 = [".2", ".1", ""]
        .iter()
        .map(|k| {
            std::fs::read_to_string(c.state.join(format!("events.jsonl{k}")))
                .unwrap_or_default()
                .lines()
                .count() as u64
        })
        .sum();
    drop(server);
    let _server = Server::start(&ns, &c);
    assert_eq!(metric(&ns, "imgbuild_events_kept "), lines);
}
