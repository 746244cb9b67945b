//! `[[machines]]`: the inventory. Each machine's MAC, hostname, role, architecture, address and disks; no two
//! alike; an odd number of masters.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::checker::{Checker, Known, Seg, is_hostname, p};
use crate::config::mac::MacAddr;
use crate::config::model::{Arch, Machine, Role};
use crate::config::raw;

/// Checks every `[[machines]]` entry (addresses against the network and VIP checked before); returns the valid
/// machines.
pub(super) fn check(
    c: &mut Checker,
    raw_machines: &[raw::MachineRaw],
    known: &Known,
) -> Vec<Machine> {
    let mut seen = Seen::default();
    let machines = raw_machines
        .iter()
        .enumerate()
        .filter_map(|(i, m)| check_machine(c, i, m, known, &mut seen))
        .collect();
    check_masters(c, raw_machines);
    machines
}

/// What the machines before the one being checked use: the index of the first machine with each MAC, address,
/// hostname and relay id.
#[derive(Default)]
struct Seen {
    mac: HashMap<MacAddr, usize>,
    ip: HashMap<Ipv4Addr, usize>,
    host: HashMap<String, usize>,
    relay: HashMap<String, usize>,
}

/// Checks `machines[i]`; the machine when it is valid.
fn check_machine(
    c: &mut Checker,
    i: usize,
    m: &raw::MachineRaw,
    known: &Known,
    seen: &mut Seen,
) -> Option<Machine> {
    let mac = match m.mac.parse::<MacAddr>() {
        Ok(mac) => {
            if let Some(first) = seen.mac.insert(mac, i) {
                c.error(
                    &p!["machines", i, "mac"],
                    format!("duplicate MAC {mac}: machines[{first}] already has it"),
                );
            }
            if mac.0[0] & 1 == 1 {
                c.error(&p!["machines", i, "mac"], format!("{mac} is a multicast address; a NIC's MAC has the lowest bit of the first byte clear"));
            }
            Some(mac)
        }
        Err(e) => {
            c.error(&p!["machines", i, "mac"], e.to_string());
            None
        }
    };
    if !is_hostname(&m.hostname) {
        c.error(
            &p!["machines", i, "hostname"],
            format!(
                "{:?} is not a valid hostname; use 1-63 lower-case letters, digits and '-'",
                m.hostname
            ),
        );
    } else if let Some(first) = seen.host.insert(m.hostname.clone(), i) {
        c.error(
            &p!["machines", i, "hostname"],
            format!(
                "duplicate hostname {:?}: machines[{first}] already has it",
                m.hostname
            ),
        );
    }
    let role = match m.role.parse::<Role>() {
        Ok(r) => Some(r),
        Err(e) => {
            c.error(&p!["machines", i, "role"], e);
            None
        }
    };
    let arch = match m.arch.as_deref().map(str::parse::<Arch>) {
        None => Some(Arch::default()),
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            c.error(&p!["machines", i, "arch"], e);
            None
        }
    };
    let ip = c.ip(&p!["machines", i, "ip"], &m.ip);
    if let Some(ip) = ip {
        if let Some(first) = seen.ip.insert(ip, i) {
            c.error(
                &p!["machines", i, "ip"],
                format!("duplicate address {ip}: machines[{first}] already has it"),
            );
        }
        let relay = known.relay_subnets.iter().find(|r| r.subnet.contains(&ip));
        if let Some(sub) = known.subnet.filter(|_| relay.is_none())
            && (!sub.contains(&ip) || ip == sub.network() || ip == sub.broadcast())
        {
            let more = if known.relay_subnets.is_empty() {
                String::new()
            } else {
                " or a [[network.relay_subnets]] subnet".into()
            };
            c.error(
                &p!["machines", i, "ip"],
                format!("{ip} is not a host address in the provisioning subnet {sub}{more}"),
            );
        }
        if let Some(r) = relay
            && (ip == r.subnet.network() || ip == r.subnet.broadcast() || ip == r.gateway)
        {
            c.error(
                &p!["machines", i, "ip"],
                format!(
                    "{ip} is the network, broadcast or gateway address of the relay subnet {}",
                    r.subnet
                ),
            );
        }
        if let Some(pool) = known
            .unknown_pool
            .iter()
            .chain(relay.and_then(|r| r.unknown_pool.as_ref()))
            .find(|pool| pool.contains(ip))
        {
            c.error(&p!["machines", i, "ip"], format!("{ip} is inside the unknown-machine pool {}-{}; give the machine an address outside it", pool.start, pool.end));
        }
        if Some(ip) == known.server || Some(ip) == known.gateway {
            c.error(
                &p!["machines", i, "ip"],
                format!("{ip} is the server's or the gateway's address"),
            );
        }
        if Some(ip) == known.vip {
            c.error(&p!["control_plane", "vip"], format!("the VIP {ip} is also machines[{i}].ip ({}); the VIP must be an address no machine uses", m.hostname));
        }
    }
    if !m.state_disk.starts_with("/dev/") {
        c.error(&p!["machines", i, "state_disk"], format!("{:?} is not a block device; expected a path such as /dev/vda or /dev/disk/by-id/...", m.state_disk));
    }
    if let Some(rid) = &m.relay_id
        && let Some(first) = seen.relay.insert(rid.clone(), i)
    {
        c.error(
            &p!["machines", i, "relay_id"],
            format!("duplicate relay id {rid:?}: machines[{first}] already has it"),
        );
    }
    Some(Machine {
        mac: mac?,
        hostname: m.hostname.clone(),
        role: role?,
        arch: arch?,
        ip: ip?,
        state_disk: m.state_disk.clone(),
        init_blank: m.init_blank,
        relay_id: m.relay_id.clone(),
        // Resolved against `[secure_boot]` by `secure_boot::resolve_machines`.
        secure_boot: false,
        // Resolved against `[attestation]` by `attestation::resolve_machines`.
        identity: Default::default(),
        ek_sha256: None,
    })
}

/// etcd wants an odd number of masters, and at least one.
fn check_masters(c: &mut Checker, raw_machines: &[raw::MachineRaw]) {
    let masters = raw_machines.iter().filter(|m| m.role == "master").count();
    if masters == 0 {
        c.error(
            &p!["machines"],
            "no machine has role \"master\"; a cluster needs 1 or 3 (or 5) masters for etcd quorum",
        );
    } else if masters % 2 == 0 {
        c.error(&p!["machines"], format!("{masters} masters: an even number gives etcd no better fault tolerance than {} and risks split votes; use an odd number (1, 3, 5)", masters - 1));
    }
}
