//! The full-DHCP lab with its server as two replicas behind a DHCP relay (issue 14): a 3-member etcd (TLS) and a
//! 3-node Garage on the servers' segment in the lab's namespace, the images pushed to Garage and pinned in etcd,
//! Debian's `dhcrelay` between the VMs' bridge and the replicas (`imgbuild::vm::lab::replicas`). Here the pieces
//! the test function calls: start the shared region, kill a replica and stop an etcd member and a Garage node
//! while the nodes are in their initrd, read the shared history, and re-pin on one host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use imgbuild::vm::lab::Lab;

use crate::etcd::Etcd;
use crate::garage::Garage;

/// The second replica's `[network] server` (the first is the lab's, 10.77.0.1: the images are built for it).
pub const REPLICA_B: &str = "10.77.0.3";

/// etcd and Garage, kept running for the lab's lifetime.
pub struct Region {
    pub etcd: Etcd,
    pub garage: Garage,
}

/// Starts etcd and Garage at the lab namespace's address on the servers' segment, then the replicas (which push
/// and pin the lab's images), and pushes `also` (images the test pins later).
pub fn start(lab: &mut Lab, dir: &Path, also: &[&str]) -> Region {
    let t0 = Instant::now();
    let shared = lab.shared_address().to_string();
    let etcd = Etcd::start_tls_in(lab.netns(), &shared, 3);
    let garage = Garage::start_at(lab.netns(), &shared);
    let creds = dir.join("s3-credentials");
    garage.write_credentials(&creds);
    // The store over TLS (plain HTTP to another host is refused: validation), through nginx with a
    // certificate from the test CA etcd's helper made for the same address.
    let tls = etcd.tls.as_ref().unwrap();
    let s3 = tls_proxy(lab, dir, &garage.endpoint, &shared, tls);
    let extra = format!(
        "{}dhcp_replicas = [\"{}\", \"{REPLICA_B}\"]\n{}ca = {:?}\n",
        etcd.state_section("/imgbuild/lab/"),
        lab.cluster.network.server,
        garage
            .store_toml(&creds, &dir.join("unused-cache"))
            .replace(&garage.endpoint, &s3),
        tls.ca.display().to_string()
    );
    lab.start_replicas(&extra).unwrap();
    for id in also {
        lab.replica_cli(&["push", id]).unwrap();
    }
    eprintln!(
        "replicas: etcd x3, Garage x3, images pushed and pinned, 2 replicas and the relay up in {:?}",
        t0.elapsed()
    );
    Region { etcd, garage }
}

/// nginx terminating TLS in front of the object store at `shared:3943` (a process of the lab, stopped with it).
/// Returns its URL.
fn tls_proxy(
    lab: &mut Lab,
    dir: &Path,
    backend: &str,
    shared: &str,
    tls: &crate::etcd::Tls,
) -> String {
    let conf = dir.join("s3-proxy.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/s3-proxy.pid;\n\
             error_log {d}/s3-proxy-error.log;\nevents {{ worker_connections 512; }}\nhttp {{\n\
             access_log off;\n server {{\n  listen {shared}:3943 ssl;\n  ssl_certificate {cert};\n\
             ssl_certificate_key {key};\n  client_max_body_size 0;\n  proxy_request_buffering off;\n\
             proxy_buffering off;\n  location / {{\n   proxy_pass {backend};\n   proxy_http_version 1.1;\n\
             proxy_set_header Host $http_host;\n  }}\n }}\n}}\n",
            d = dir.display(),
            cert = tls.server_cert.display(),
            key = tls.server_key.display(),
        ),
    )
    .unwrap();
    let url = format!("https://{shared}:3943");
    lab.spawn_in_netns(
        "s3-tls-proxy",
        "nginx",
        &[
            "-c".into(),
            conf.display().to_string(),
            "-e".into(),
            dir.join("s3-proxy-error.log").display().to_string(),
        ],
        &dir.join("s3-proxy.log"),
    )
    .unwrap();
    let t0 = Instant::now();
    loop {
        let ok = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.netns(),
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                "--cacert",
            ])
            .arg(&tls.ca)
            .arg(format!("{url}/"))
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return url;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15) && lab.process_running("s3-tls-proxy"),
            "nginx in front of the object store did not answer {url}: {}",
            std::fs::read_to_string(dir.join("s3-proxy-error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every event in the shared history (etcd), read with the product's state backend from the lab's namespace.
pub fn shared_events(lab: &Lab) -> Vec<serde_json::Value> {
    let cluster = imgbuild::config::load(&lab.replicas[0].config).unwrap();
    imgbuild::vm::lab::in_netns(lab.netns(), move || {
        let state = imgbuild::pki::state_store::open(&cluster, "lab-test").unwrap();
        state
            .events(1_000_000)
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    })
    .unwrap()
}

/// Waits for the first node to report from its initrd, then kills the replica that node booted from (SIGKILL:
/// the one whose history has the report) and stops etcd member 2 and Garage node 2. The root filesystem is fetched
/// ~10 s (under TCG) after the initrd's first report, so the nodes that replica served are caught between `initrd`
/// and `rootfs-verified`; which replica it is depends on whose DHCP offer the firmware took first, so either may
/// be killed. Returns the killed replica's index and the hosts it served an initrd to that had no root
/// filesystem yet (they must fetch theirs from the other replica).
pub fn kill_mid_boot(lab: &mut Lab, region: &mut Region, hosts: &[String]) -> (usize, Vec<String>) {
    let t0 = Instant::now();
    let macs: Vec<(String, String)> = hosts
        .iter()
        .map(|h| {
            let m = lab.cluster.machine_by_hostname(h).unwrap().mac.to_string();
            (h.clone(), format!("\"mac\":\"{m}\""))
        })
        .collect();
    let reported = |log: &str, mac: &str, stage: &str| {
        log.lines().any(|l| {
            l.contains(mac)
                && l.contains(&format!("\"stage\":\"{stage}\""))
                && l.contains("\"source\":\"node\"")
        })
    };
    // Each replica's own history file (replica A's state is the lab's state directory, B's its own).
    let files: Vec<std::path::PathBuf> = lab
        .replicas
        .iter()
        .map(|r| {
            imgbuild::config::load(&r.config)
                .unwrap()
                .paths
                .state
                .join("events.jsonl")
        })
        .collect();
    let (killed, on_killed) = loop {
        let logs: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        let first = logs
            .iter()
            .position(|log| macs.iter().any(|(_, m)| reported(log, m, "initrd")));
        if let Some(i) = first {
            let on: Vec<String> = macs
                .iter()
                .filter(|(_, m)| {
                    reported(&logs[i], m, "initrd") && !reported(&logs[i], m, "rootfs-verified")
                })
                .map(|(h, _)| h.clone())
                .collect();
            break (i, on);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no node reached its initrd within 600 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    lab.kill_replica(killed);
    // The lab's own view of the boot (status, the page) from the survivor from now on.
    lab.server_url = lab.replicas[1 - killed].url(&lab.cluster.network);
    region.etcd.kill(2);
    region.garage.stop_node(2);
    eprintln!(
        "{:?} after the start: killed {} (SIGKILL) with {} in their initrd from it; stopped etcd member 2 and Garage node 2",
        t0.elapsed(),
        lab.replicas[killed].name,
        on_killed.join(", ")
    );
    (killed, on_killed)
}

/// No node enrolled twice and no address went to two machines, from the shared history: each host's `enrolled`
/// once, and each address acknowledged by any replica to one MAC only (its inventory address).
pub fn assert_once(lab: &Lab, hosts: &[&str]) {
    let evs = shared_events(lab);
    let mut acked: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in evs.iter().filter(|e| e["stage"] == "dhcp-ack") {
        let detail = e["detail"].as_str().unwrap_or("");
        // A ProxyDHCP ack carries no address (none in this lab).
        let Some(ip) = detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ip="))
        else {
            continue;
        };
        acked
            .entry(ip.to_string())
            .or_default()
            .insert(e["mac"].as_str().unwrap_or("").to_string());
    }
    for (ip, macs) in &acked {
        assert_eq!(macs.len(), 1, "{ip} was acknowledged to {macs:?}");
    }
    let replicas: BTreeSet<&str> = evs.iter().filter_map(|e| e["replica"].as_str()).collect();
    for h in hosts {
        let m = lab.cluster.machine_by_hostname(h).unwrap();
        let mac = m.mac.to_string();
        assert!(
            acked
                .get(&m.ip.to_string())
                .is_some_and(|s| s.contains(&mac)),
            "{h}: no dhcp-ack of {} in the shared history: {acked:?}",
            m.ip
        );
        let enrolled = evs
            .iter()
            .filter(|e| {
                e["mac"] == mac.as_str()
                    && e["stage"] == "enrolled"
                    && e["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("enrollment bundle served"))
            })
            .count();
        assert_eq!(
            enrolled, 1,
            "{h} enrolled {enrolled} times (shared history)"
        );
    }
    eprintln!(
        "shared history: {} events from {replicas:?}; {} addresses acknowledged, each to one machine",
        evs.len(),
        acked.len()
    );
}

/// The bootstrap token as the replicas see it (the shared state: the one master-1 renewed and published), as
/// JSON.
pub fn shared_token(lab: &Lab) -> (String, String) {
    let cluster = imgbuild::config::load(&lab.replicas[0].config).unwrap();
    imgbuild::vm::lab::in_netns(lab.netns(), move || {
        let state = imgbuild::pki::state_store::open(&cluster, "lab-test").unwrap();
        let t =
            imgbuild::pki::state_store::documents::token(&*state, &cluster.paths.secrets).unwrap();
        (t.token.clone(), serde_json::to_string(&t).unwrap())
    })
    .unwrap()
}

/// The killed replica started again (it learns the pin from etcd's watch), `imgbuild pin worker <id>` on one host
/// (the CLI with replica A's cluster.toml, against etcd), then the other replica killed and worker-1 power-cycled
/// with its disk kept: the restarted replica alone serves it the new image (and the node API), and it reaches
/// `joined` without joining again. Returns the replica that served its kernel.
pub fn repin_and_reboot(lab: &mut Lab, id: &str, killed: usize) -> String {
    let b = killed;
    lab.start_replica(b).unwrap();
    let t0 = Instant::now();
    lab.replica_cli(&["pin", "worker", id]).unwrap();
    lab.kill_replica(1 - b);
    lab.server_url = lab.replicas[b].url(&lab.cluster.network);
    let host = "worker-1".to_string();
    lab.stop_vm(&host);
    lab.start_vm(&host).unwrap();
    let report = lab
        .wait(
            std::slice::from_ref(&host),
            2,
            Duration::from_secs(8 * 60),
            |n| n.done,
        )
        .unwrap_or_else(|f| panic!("{f}"));
    let n = report.nodes.iter().find(|n| n.name == host).unwrap();
    assert_eq!(
        n.image.as_deref(),
        Some(id),
        "worker-1 did not boot the re-pinned image"
    );
    assert_eq!(n.joins, 1, "worker-1 joined again after the re-pin reboot");
    let mac = lab
        .cluster
        .machine_by_hostname(&host)
        .unwrap()
        .mac
        .to_string();
    let served = shared_events(lab)
        .into_iter()
        .rev()
        .find(|e| e["mac"] == mac.as_str() && e["stage"] == "kernel")
        .unwrap();
    let replica = served["replica"].as_str().unwrap_or("").to_string();
    assert_eq!(replica, lab.replicas[b].name, "{served}");
    eprintln!(
        "re-pin: worker-1 booted {} from {replica} and reached joined again in {:?} (no second join)",
        &id[..16],
        t0.elapsed()
    );
    // The etcd requests each replica made for the whole run (docs/scale-state.md's writes per boot).
    for r in &lab.replicas {
        let text = super::metrics_at(lab, &r.url(&lab.cluster.network));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("imgbuild_state_requests"))
            .collect();
        eprintln!("{} (since its restart for B): {lines:?}", r.name);
    }
    replica
}
