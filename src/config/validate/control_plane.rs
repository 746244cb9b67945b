//! `[control_plane]`: the API server's VIP and port, and how kube-vip announces the VIP.

use super::checker::{Checker, Known, Seg, p};
use crate::config::model::{ControlPlane, KubeVipMode};
use crate::config::raw;

/// Checks `[control_plane]` (the VIP against the network checked before) and records the VIP in `known`.
pub(super) fn check(
    c: &mut Checker,
    cp: &raw::ControlPlaneRaw,
    known: &mut Known,
) -> Option<ControlPlane> {
    let vip = c.ip(&p!["control_plane", "vip"], &cp.vip);
    let api_port = c.port(&p!["control_plane", "port"], cp.port);
    let kvm = c.one_of(
        &p!["control_plane", "kube_vip_mode"],
        &cp.kube_vip_mode,
        &[("arp", KubeVipMode::Arp), ("bgp", KubeVipMode::Bgp)],
    );
    if let (Some(vip), Some(sub)) = (vip, known.subnet) {
        if !sub.contains(&vip) {
            c.error(&p!["control_plane", "vip"], format!("the VIP {vip} is outside the provisioning subnet {sub}; the nodes must reach it on their own link"));
        }
        if Some(vip) == known.server || Some(vip) == known.gateway {
            c.error(
                &p!["control_plane", "vip"],
                format!("the VIP {vip} is already the server's or the gateway's address"),
            );
        }
        if let Some(pool) = &known.unknown_pool
            && pool.contains(vip)
        {
            c.error(
                &p!["control_plane", "vip"],
                format!(
                    "the VIP {vip} is inside the unknown-machine pool {}-{}",
                    pool.start, pool.end
                ),
            );
        }
    }
    if !cp.interface.is_empty()
        && (cp.interface.len() > 15
            || cp.interface.contains('/')
            || cp.interface.chars().any(char::is_whitespace))
    {
        c.error(
            &p!["control_plane", "interface"],
            format!(
                "{:?} is not a network interface name (1-15 characters, no '/' or space); leave it out to use \
                 the NIC each master booted from",
                cp.interface
            ),
        );
    }
    known.vip = vip;
    Some(ControlPlane {
        vip: vip?,
        port: api_port?,
        kube_vip_mode: kvm?,
        interface: cp.interface.clone(),
        kube_vip_image: cp.kube_vip_image.clone(),
    })
}
