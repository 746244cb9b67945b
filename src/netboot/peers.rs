//! Which machine a TFTP or HTTP peer address belongs to, for the boot event log.

use std::net::IpAddr;

use super::state::Shared;
use crate::config::MacAddr;

/// The MAC of the machine at `ip`: the inventory address of a machine (`Machine::ip`). When the DHCP side keeps
/// a lease table, consult it here first; this is the one place that maps addresses to machines.
pub fn mac_for_ip(shared: &Shared, ip: IpAddr) -> Option<MacAddr> {
    let IpAddr::V4(v4) = ip else { return None };
    shared
        .cluster()
        .machines
        .iter()
        .find(|m| m.ip == v4)
        .map(|m| m.mac)
}
