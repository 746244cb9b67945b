//! `[images.<group>]`: the container images baked into the role images. Each reference must parse and carry a
//! tag (the lock records the digest), each role must exist, a reference is listed once per role, and the
//! Kubernetes control-plane images must be at `cluster.kubernetes_version`.

use std::collections::BTreeMap;

use super::checker::{Checker, Known, Seg, p};
use crate::config::image_ref::ImageRef;
use crate::config::model::{ContainerImage, Role};
use crate::config::raw;

/// The images kubeadm runs at the cluster's Kubernetes version: their tag must be `v<kubernetes_version>`.
const KUBERNETES_IMAGES: &[&str] = &[
    "registry.k8s.io/kube-apiserver",
    "registry.k8s.io/kube-controller-manager",
    "registry.k8s.io/kube-scheduler",
    "registry.k8s.io/kube-proxy",
];

fn role_names() -> Vec<(&'static str, Role)> {
    Role::ALL.iter().map(|r| (r.as_str(), *r)).collect()
}

/// Checks every `[images.<group>]`; returns the images in group order, then file order.
pub(super) fn check(
    c: &mut Checker,
    groups: &BTreeMap<String, raw::ImageGroupRaw>,
    known: &Known,
    kube_vip_image: &str,
) -> Vec<ContainerImage> {
    let mut out: Vec<ContainerImage> = Vec::new();
    // (role, full reference) -> where it was first listed.
    let mut listed: BTreeMap<(Role, String), String> = BTreeMap::new();
    for (group, g) in groups {
        let roles: Vec<Role> = match &g.roles {
            None => Role::ALL.to_vec(),
            Some(names) if names.is_empty() => {
                c.error(
                    &p!["images", group.as_str(), "roles"],
                    "no roles; list the roles whose images carry these images (master, worker, storage), or remove the key for every role",
                );
                continue;
            }
            Some(names) => {
                let mut roles = Vec::new();
                for (i, n) in names.iter().enumerate() {
                    if let Some(r) =
                        c.one_of(&p!["images", group.as_str(), "roles", i], n, &role_names())
                    {
                        roles.push(r);
                    }
                }
                Role::ALL
                    .into_iter()
                    .filter(|r| roles.contains(r))
                    .collect()
            }
        };
        for (i, text) in g.refs.iter().enumerate() {
            let path = p!["images", group.as_str(), "refs", i];
            let reference: ImageRef = match text.parse() {
                Ok(r) => r,
                Err(e) => {
                    c.error(&path, e.to_string());
                    continue;
                }
            };
            if let Some(kv) = known.kubernetes_version
                && KUBERNETES_IMAGES.contains(&reference.name().as_str())
                && reference.tag.trim_start_matches('v') != kv.to_string()
            {
                c.error(
                    &path,
                    format!(
                        "{} is at {}, but cluster.kubernetes_version is {kv}: kubeadm would pull v{kv}; write {}:v{kv}",
                        reference.name(),
                        reference.tag,
                        reference.name()
                    ),
                );
            }
            let mut dup = false;
            for r in &roles {
                let key = (*r, reference.full());
                let here = format!("images.{group}.refs[{i}]");
                if let Some(first) = listed.get(&key) {
                    c.error(
                        &path,
                        format!(
                            "{} is listed twice for role {}: {first} already lists it; remove one",
                            reference.full(),
                            r.as_str()
                        ),
                    );
                    dup = true;
                } else {
                    listed.insert(key, here);
                }
            }
            if !dup {
                out.push(ContainerImage {
                    group: group.clone(),
                    reference,
                    roles: roles.clone(),
                });
            }
        }
    }
    // kube-vip runs as a static pod on the masters: baked images that leave it out would still pull it.
    if out.iter().any(|i| i.roles.contains(&Role::Master))
        && let Ok(vip) = kube_vip_image.parse::<ImageRef>()
        && !out
            .iter()
            .any(|i| i.reference == vip && i.roles.contains(&Role::Master))
    {
        c.error(
            &p!["images"],
            format!(
                "control_plane.kube_vip_image {} is not in any [images.*] group for the master role; the masters would pull it at boot. Add it to a group with roles = [\"master\"]",
                vip.full()
            ),
        );
    }
    out
}
