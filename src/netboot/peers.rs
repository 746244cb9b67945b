//! Which machine a TFTP or HTTP peer address belongs to, for the boot event log.

use std::net::IpAddr;

use super::state::Shared;
use crate::config::MacAddr;

/// The MAC of the machine at `ip`: the inventory machine the DHCP side currently leases `ip` to
/// (`Shared::leases`), else the machine whose inventory address (`Machine::ip`) it is. This is the one place that
/// maps addresses to machines.
pub fn mac_for_ip(shared: &Shared, ip: IpAddr) -> Option<MacAddr> {
    let IpAddr::V4(v4) = ip else { return None };
    let cluster = shared.cluster();
    let now = crate::status::now_ms() / 1000;
    if let Some(mac) = shared.leases.holder(v4, now)
        && cluster.machine_by_mac(mac).is_some()
    {
        return Some(mac);
    }
    cluster.machines.iter().find(|m| m.ip == v4).map(|m| m.mac)
}
