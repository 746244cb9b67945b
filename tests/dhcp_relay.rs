//! DHCP through a real relay to two server replicas, in network namespaces this test creates (never a real
//! interface): a hub namespace holds two bridges, the nodes' segment and the servers' segment; Debian's
//! `dhcrelay` (isc-dhcp-relay) sits on both and forwards to both replicas, adding option 82; two real
//! `imgbuild serve` processes (each with its own `[network] server` and state, the same inventory) answer on the
//! servers' segment; a real udhcpc on the nodes' segment gets its inventory address through the relay. Then the
//! replica that acknowledged is killed with SIGKILL, and the client gets the same address from the other one.
//! Every namespace and process is removed by a Drop guard, also on failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused)]
mod common;
#[path = "common/dhcp_client.rs"]
mod dhcp_client;

use dhcp_client::{Udhcpc, run};

const BIN: &str = env!("CARGO_BIN_EXE_imgbuild");
const WORKER1: &str = "52:54:00:77:00:21";

struct Lab {
    id: String,
    dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Lab {
    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.id)
    }

    /// A veth from namespace `ns` (named `inner` there, with `addr` if given) to bridge `br` in the hub.
    fn plug(&self, ns: &str, inner: &str, br: &str, addr: Option<&str>, mac: Option<&str>) {
        let outer = format!("{}{ns}{inner}h", self.id);
        let tmp = format!("{}{ns}{inner}t", self.id);
        let hub = self.ns("h");
        run(&[
            "ip", "-n", &hub, "link", "add", &outer, "type", "veth", "peer", "name", &tmp,
        ]);
        run(&["ip", "-n", &hub, "link", "set", &tmp, "netns", &self.ns(ns)]);
        run(&["ip", "-n", &self.ns(ns), "link", "set", &tmp, "name", inner]);
        if let Some(m) = mac {
            run(&["ip", "-n", &self.ns(ns), "link", "set", inner, "address", m]);
        }
        if let Some(a) = addr {
            run(&["ip", "-n", &self.ns(ns), "addr", "add", a, "dev", inner]);
        }
        run(&["ip", "-n", &self.ns(ns), "link", "set", inner, "up"]);
        run(&["ip", "-n", &hub, "link", "set", &outer, "master", br, "up"]);
    }

    /// The namespaces of one test, named `<tag><pid>…` (`tag`: one letter per test).
    fn new(tag: &str) -> Lab {
        let lab = Lab {
            id: format!("i{tag}{}", std::process::id() % 1_000_000),
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
        };
        for n in ["h", "c", "r", "a", "b"] {
            let ns = lab.ns(n);
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            run(&["ip", "netns", "add", &ns]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let hub = lab.ns("h");
        for br in ["brn", "brs"] {
            run(&["ip", "-n", &hub, "link", "add", br, "type", "bridge"]);
            run(&["ip", "-n", &hub, "link", "set", br, "up"]);
        }
        // The node, on the nodes' segment, with worker-1's MAC.
        lab.plug("c", "eth0", "brn", None, Some(WORKER1));
        // The relay: 10.77.0.2 on the nodes' side (its giaddr; /32 so it owns no route there), 10.77.0.250/24
        // on the servers' side (the replicas reach 10.77.0.2 through it: Linux answers ARP for any local address).
        lab.plug("r", "rdown", "brn", Some("10.77.0.2/32"), None);
        lab.plug("r", "rup", "brs", Some("10.77.0.250/24"), None);
        // The replicas.
        lab.plug("a", "prov", "brs", Some("10.77.0.1/24"), None);
        lab.plug("b", "prov", "brs", Some("10.77.0.3/24"), None);
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self, name: &str, ns: &str, argv: &[&str]) -> u32 {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(argv)
            .env("RUST_LOG", "imgbuild=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push((name.to_string(), child));
        pid
    }

    /// Debian's dhcrelay between the two segments, forwarding to `servers` with option 82 added (circuit id: the
    /// downstream interface's name; the relay checks it comes back).
    fn relay(&mut self, servers: &[&str]) {
        let pf = self.path("dhcrelay.pid");
        let pf = pf.to_str().unwrap().to_string();
        let mut argv = vec![
            "dhcrelay", "-4", "-d", "-a", "-pf", &pf, "-id", "rdown", "-iu", "rup",
        ];
        argv.extend_from_slice(servers);
        self.spawn("relay", "r", &argv);
        std::thread::sleep(Duration::from_millis(500));
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// A replica: the example cluster on interface `prov` with `server`, its own state; waits until DHCP listens.
    fn replica(&mut self, name: &str, server: &str) -> u32 {
        self.replica_in(name, server, "full")
    }

    /// [`Lab::replica`] in `[network] dhcp_mode` `mode` (`full` or `proxy`).
    fn replica_in(&mut self, name: &str, server: &str, mode: &str) -> u32 {
        let d = self.path(name);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = common::write_cluster(&d, false, |t| {
            let t = t
                .replace("interface = \"br0\"", "interface = \"prov\"")
                .replace("server = \"10.77.0.1\"", &format!("server = \"{server}\""))
                .replacen(
                    "dhcp_mode = \"full\"",
                    &format!("dhcp_mode = \"{mode}\""),
                    1,
                );
            assert!(
                t.contains(&format!("dhcp_mode = \"{mode}\"")),
                "the example has dhcp_mode"
            );
            t
        });
        let pid = self.spawn(name, name, &[BIN, "-c", cfg.to_str().unwrap(), "serve"]);
        let t0 = Instant::now();
        while !self.log(name).contains("DHCP server listening") {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{name} not up:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pid
    }

    /// udhcpc once on the node; the variables of its `bound` event, if any.
    fn udhcpc(&self) -> Option<BTreeMap<String, String>> {
        let ns = self.ns("c");
        let client = Udhcpc {
            ns: &ns,
            iface: "eth0",
            timeout_secs: 30,
            tries: 5,
            pause_secs: 2,
        };
        client.once(self.dir.path(), &[]).0
    }

    /// The events a replica recorded for worker-1 (`state/events.jsonl`): (stage, detail).
    fn events(&self, name: &str) -> Vec<(String, String)> {
        std::fs::read_to_string(self.path(name).join("state/events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["mac"] == WORKER1)
            .map(|v| {
                (
                    v["stage"].as_str().unwrap_or("").into(),
                    v["detail"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    }

    fn kill(&mut self, name: &str) {
        if let Some((_, c)) = self.children.iter_mut().find(|(n, _)| n == name) {
            // SAFETY: kill(2) on a PID this test spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            // SAFETY: kill(2) on PIDs this test spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
        for n in ["c", "r", "a", "b", "h"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .output();
        }
    }
}

#[test]
fn root_netns_relay_forwards_to_two_replicas_inventory_address_survives_a_killed_replica() {
    let mut lab = Lab::new("r");
    lab.replica("a", "10.77.0.1");
    lab.replica("b", "10.77.0.3");
    lab.relay(&["10.77.0.1", "10.77.0.3"]);

    let t0 = Instant::now();
    let env = lab.udhcpc().unwrap_or_else(|| {
        panic!(
            "no lease through the relay\nrelay:\n{}\na:\n{}\nb:\n{}",
            lab.log("relay"),
            lab.log("a"),
            lab.log("b")
        )
    });
    eprintln!("lease through the relay in {:?}", t0.elapsed());
    assert_eq!(
        env.get("ip").map(String::as_str),
        Some("10.77.0.21"),
        "{env:?}"
    );
    let first = env["serverid"].clone();
    assert!(
        ["10.77.0.1", "10.77.0.3"].contains(&first.as_str()),
        "{env:?}"
    );
    // Both replicas offered (through the relay, option 82 read back as the relay id); one acknowledged.
    let t0 = Instant::now();
    let acked = loop {
        let (ea, eb) = (lab.events("a"), lab.events("b"));
        let offered = |e: &[(String, String)]| {
            e.iter().any(|(s, d)| {
                s == "dhcp-offer" && d.contains("ip=10.77.0.21") && d.contains("relay_id=rdown")
            })
        };
        let acks = |e: &[(String, String)]| e.iter().filter(|(s, _)| s == "dhcp-ack").count();
        if offered(&ea) && offered(&eb) && acks(&ea) + acks(&eb) == 1 {
            break if acks(&ea) == 1 { "a" } else { "b" };
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "expected an offer from each replica and one ack:\na {ea:?}\nb {eb:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        first,
        if acked == "a" {
            "10.77.0.1"
        } else {
            "10.77.0.3"
        }
    );

    // The replica that acknowledged is killed: the node gets the same address from the other one.
    lab.kill(acked);
    let env = lab.udhcpc().expect("a lease from the surviving replica");
    assert_eq!(env.get("ip").map(String::as_str), Some("10.77.0.21"));
    assert_ne!(env["serverid"], first, "the other replica answered");
}

/// ProxyDHCP replicas behind a relay: the site's own DHCP server hands out addresses (not in this test: the
/// full-mode test above has the address half), the relay forwards a PXE ROM's DISCOVER to both replicas, and
/// each answers through the relay with the same boot information for the inventory machine (its own server id).
#[test]
fn root_netns_relay_forwards_a_pxe_discover_to_two_proxydhcp_replicas_and_both_answer_through_it() {
    let mut lab = Lab::new("p");
    lab.replica_in("a", "10.77.0.1", "proxy");
    lab.replica_in("b", "10.77.0.3", "proxy");
    lab.relay(&["10.77.0.1", "10.77.0.3"]);
    // udhcpc as a BIOS PXE ROM announces itself: vendor class PXEClient, client architecture 0 (option 93),
    // UNDI 2.1 (option 94). No server here offers an address, so it never binds: only the offers matter.
    let ns = lab.ns("c");
    let client = Udhcpc {
        ns: &ns,
        iface: "eth0",
        timeout_secs: 3,
        tries: 1,
        pause_secs: 2,
    };
    let pxe = [
        "-V",
        "PXEClient:Arch:00000:UNDI:002001",
        "-x",
        "0x5d:0000",
        "-x",
        "0x5e:010201",
    ];
    let t0 = Instant::now();
    let (offer_a, offer_b) = loop {
        let _ = client.once(lab.dir.path(), &pxe);
        let offer = |name: &str| {
            lab.events(name)
                .into_iter()
                .find_map(|(s, d)| (s == "dhcp-offer" && d.contains("relay_id=rdown")).then_some(d))
        };
        if let (Some(a), Some(b)) = (offer("a"), offer("b")) {
            break (a, b);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "expected a proxy offer through the relay from each replica\nrelay:\n{}\na:\n{}\nb:\n{}",
            lab.log("relay"),
            lab.log("a"),
            lab.log("b")
        );
    };
    // The same boot information from both (no address: the site's server gives it), and option 82 read back.
    let boot = |d: &str| {
        d.split_whitespace()
            .find(|w| w.starts_with("boot="))
            .map(str::to_string)
    };
    eprintln!("proxy offers through the relay: a: {offer_a}; b: {offer_b}");
    assert!(boot(&offer_a).is_some(), "{offer_a}");
    assert_eq!(boot(&offer_a), boot(&offer_b), "{offer_a} / {offer_b}");
    // And the relay carried both answers back to the node's segment.
    let relay = lab.log("relay");
    assert!(
        relay.matches("Forwarded BOOTREPLY").count() >= 2,
        "the relay forwards both proxy offers:\n{relay}"
    );
}
