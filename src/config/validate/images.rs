//! `[images.<group>]`: the container images baked into the role images. Each reference must parse and carry a
//! tag (the lock records the digest), each role must exist, a reference is listed once per role, and the
//! Kubernetes control-plane images must be at `cluster.kubernetes_version`. One pause image, listed for every
//! role (each runs containerd), is containerd's sandbox image: the templates get it as `cluster.sandbox_image`.

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

/// Whether `r` is a pause image (the repository's last component is `pause`: `registry.k8s.io/pause`, or a
/// mirror's `registry.example/k8s/pause`).
fn is_pause(r: &ImageRef) -> bool {
    r.repository.rsplit('/').next() == Some("pause")
}

/// Checks every `[images.<group>]`; returns the images in group order, then file order, and containerd's sandbox
/// image (the one pause image, full reference; `None` after a problem).
pub(super) fn check(
    c: &mut Checker,
    groups: &BTreeMap<String, raw::ImageGroupRaw>,
    known: &Known,
    kube_vip_image: &str,
) -> (Vec<ContainerImage>, Option<String>) {
    let mut out: Vec<ContainerImage> = Vec::new();
    // The first pause image and where it is listed.
    let mut pause: Option<(ImageRef, String)> = None;
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
            if is_pause(&reference) {
                match &pause {
                    Some((first, at)) if *first != reference => c.error(
                        &path,
                        format!(
                            "a second pause image {}: containerd runs every pod of the cluster in one sandbox image, and {at} already lists {}; list one pause image (kubeadm's, `kubeadm config images list` prints it)",
                            reference.full(),
                            first.full()
                        ),
                    ),
                    Some(_) => {}
                    None => pause = Some((reference.clone(), format!("images.{group}.refs[{i}]"))),
                }
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
    let sandbox = sandbox_image(c, &out, pause.map(|(r, _)| r), known);
    (out, sandbox)
}

/// The images of kubeadm's own list besides pause: a cluster that bakes any of them means to form without a
/// registry, so its sandbox image must be baked too.
const KUBEADM_IMAGES: &[&str] = &[
    "registry.k8s.io/kube-apiserver",
    "registry.k8s.io/kube-controller-manager",
    "registry.k8s.io/kube-scheduler",
    "registry.k8s.io/kube-proxy",
    "registry.k8s.io/etcd",
    "registry.k8s.io/coredns/coredns",
];

/// The sandbox image of a cluster that bakes none of kubeadm's images and lists no pause image (its nodes pull
/// kubeadm's images at boot, and this with them): kubeadm's pause for the pinned Kubernetes 1.36.
const UNBAKED_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10.2";

/// containerd's sandbox image: the pause image, which every role runs containerd with and so must carry.
fn sandbox_image(
    c: &mut Checker,
    images: &[ContainerImage],
    pause: Option<ImageRef>,
    known: &Known,
) -> Option<String> {
    let example = match known.kubernetes_version {
        Some(v) => format!(
            "`kubeadm config images list --kubernetes-version {v}` prints it, such as registry.k8s.io/pause:3.10.2"
        ),
        None => {
            "`kubeadm config images list` prints it, such as registry.k8s.io/pause:3.10.2".into()
        }
    };
    let Some(pause) = pause else {
        let Some(kubeadm) = images
            .iter()
            .find(|i| KUBEADM_IMAGES.contains(&i.reference.name().as_str()))
        else {
            return Some(UNBAKED_SANDBOX_IMAGE.to_string());
        };
        c.error(
            &p!["images"],
            format!(
                "no pause image is listed, but kubeadm's images are baked ({} in [images.{}]): every role runs containerd, whose sandbox (pause) image would then be pulled at boot; list kubeadm's pause image ({example}) in a group for every role, such as [images.node] without `roles`",
                kubeadm.reference.full(),
                kubeadm.group
            ),
        );
        return None;
    };
    let missing: Vec<&str> = Role::ALL
        .into_iter()
        .filter(|r| {
            !images
                .iter()
                .any(|i| i.reference == pause && i.roles.contains(r))
        })
        .map(|r| r.as_str())
        .collect();
    if !missing.is_empty() {
        c.error(
            &p!["images"],
            format!(
                "the pause image {} is not listed for role {}: every role runs containerd with it as its sandbox image and would pull it at boot; list it in a group whose roles include {} (e.g. [images.node] without `roles`)",
                pause.full(),
                missing.join(", "),
                missing.join(" and ")
            ),
        );
        return None;
    }
    Some(pause.full())
}
