//! The admin kubeconfig for the user: a client certificate `CN=kubernetes-admin, O=kubeadm:cluster-admins`
//! (the group kubeadm ≥ 1.29 binds to cluster-admin) signed by the cluster CA, pointing at the VIP.

use base64::Engine as _;
use serde::Serialize;

use super::ca;
use super::secrets::Secrets;
use crate::config::Cluster;
use crate::template::Engine;

/// The template the kubeconfig is rendered from.
pub const TEMPLATE: &str = "profiles/pki/admin-kubeconfig.yaml.j2";

#[derive(Serialize)]
struct Ctx<'a> {
    cluster: &'a Cluster,
    server: String,
    ca_data: String,
    cert_data: String,
    key_data: String,
    user: &'a str,
}

/// Renders an admin kubeconfig with a fresh client certificate.
pub fn admin(cluster: &Cluster, secrets: &Secrets, engine: &Engine) -> anyhow::Result<String> {
    let cl = ca::client_cert(&secrets.ca, "kubernetes-admin", &["kubeadm:cluster-admins"])?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let ctx = Ctx {
        cluster,
        server: format!(
            "https://{}:{}",
            cluster.control_plane.vip, cluster.control_plane.port
        ),
        ca_data: b64(&secrets.ca.cert_pem),
        cert_data: b64(&cl.cert_pem),
        key_data: b64(&cl.key_pem),
        user: "kubernetes-admin",
    };
    Ok(engine.render(TEMPLATE, &ctx)?)
}
