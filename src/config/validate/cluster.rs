//! `[cluster]`: name, Kubernetes version, pod and service networks, CNI.

use super::checker::{Checker, Known, Seg, is_hostname, p};
use crate::config::model::{ClusterInfo, Cni, Version};
use crate::config::raw;

/// Checks `[cluster]` and records its version and networks in `known`.
pub(super) fn check(
    c: &mut Checker,
    f: &raw::ClusterRaw,
    known: &mut Known,
) -> Option<ClusterInfo> {
    let kv = c.parse::<Version>(
        &p!["cluster", "kubernetes_version"],
        &f.kubernetes_version,
        "a Kubernetes version of the form x.y.z (for example 1.36.3)",
    );
    let pod = c.cidr(&p!["cluster", "pod_cidr"], &f.pod_cidr);
    let svc = c.cidr(&p!["cluster", "service_cidr"], &f.service_cidr);
    if !is_hostname(&f.name) {
        c.error(
            &p!["cluster", "name"],
            format!(
                "{:?} is not a valid cluster name; use lower-case letters, digits and '-'",
                f.name
            ),
        );
    }
    let cni = c.one_of(
        &p!["cluster", "cni"],
        &f.cni,
        &[("flannel", Cni::Flannel), ("cilium", Cni::Cilium)],
    );
    known.kubernetes_version = kv;
    known.pod_cidr = pod;
    known.service_cidr = svc;
    Some(ClusterInfo {
        name: f.name.clone(),
        kubernetes_version: kv?,
        pod_cidr: pod?,
        service_cidr: svc?,
        domain: f.domain.clone(),
        cni: cni?,
    })
}

/// The pod network must not overlap the provisioning subnet (nodes' own addresses) nor the service network.
pub(super) fn check_ranges(c: &mut Checker, known: &Known) {
    let (subnet, pod, svc) = (known.subnet, known.pod_cidr, known.service_cidr);
    if let (Some(sub), Some(pod)) = (subnet, pod)
        && (sub.contains(&pod.network()) || pod.contains(&sub.network()))
    {
        c.error(
            &p!["cluster", "pod_cidr"],
            format!("{pod} overlaps the provisioning subnet {sub}; pick a range nodes do not use"),
        );
    }
    if let (Some(svc), Some(pod)) = (svc, pod)
        && (svc.contains(&pod.network()) || pod.contains(&svc.network()))
    {
        c.error(
            &p!["cluster", "service_cidr"],
            format!("{svc} overlaps the pod network {pod}"),
        );
    }
}
