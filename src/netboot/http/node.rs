//! `GET /api/node/{mac}`: a machine's own facts (host name, address, role, pinned image, state disk), as JSON,
//! over HTTPS only. A node that booted a signed UKI (whose command line names no machine) asks for them after
//! switch-root with the provisioning CA certificate its image carries (`ib_machine_facts` in
//! `profiles/base/imgbuild-lib.sh.j2`), so the answer is authenticated; the node still checks every field's
//! format and applies only its host name. Nothing in it can change what runs: the kernel, initrd and command
//! line are in the signed UKI and the root filesystem is bound to the signed dm-verity root hash. Plain HTTP
//! is refused (403, counted as `plain-http`): an initrd never asks unauthenticated for machine facts any more.
//! A served answer to the machine's own inventory address is recorded as a `node-facts` event of that machine
//! (outside the boot stages: it only shows in the log).

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::app_state::AppState;
use super::reply::{count, peer_of, text};
use super::tls::via_tls;
use crate::config::{MacAddr, Role};
use crate::netboot::boot::Booter;
use crate::status::Source;

/// The event stage a served facts answer is recorded under (not one of the boot stages).
pub const FACTS_STAGE: &str = "node-facts";

/// What a machine learns about itself after boot (`GET /api/node/{mac}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFacts {
    /// The machine's MAC (the node checks it is its own).
    pub mac: MacAddr,
    /// Its host name from the inventory (the node applies it).
    pub hostname: String,
    /// Its role (the node checks it equals the role on its signed command line).
    pub role: Role,
    /// Its inventory address (the node checks DHCP gave it this one).
    pub ip: std::net::Ipv4Addr,
    /// The image pinned for its role and architecture, if any (recorded by the node, informative).
    pub image: Option<String>,
    /// Its state disk (the node checks it equals the one on its signed command line).
    pub state_disk: String,
    /// Whether the initrd may create the state partition on a blank disk (checked like `state_disk`).
    pub init_blank: bool,
    /// Whether it boots its role's signed UKI under Secure Boot.
    pub secure_boot: bool,
}

/// The facts of the inventory machine `mac`, with its pinned image; `None` outside the inventory.
pub fn facts(booter: &Booter, mac: MacAddr) -> Option<NodeFacts> {
    let m = booter.cluster.machine_by_mac(mac)?;
    Some(NodeFacts {
        mac: m.mac,
        hostname: m.hostname.clone(),
        role: m.role,
        ip: m.ip,
        image: booter.pins.get(&(m.role, m.arch)).map(|p| p.id.clone()),
        state_disk: m.state_disk.clone(),
        init_blank: m.init_blank,
        secure_boot: m.secure_boot,
    })
}

/// `GET /api/node/{mac}`: `application/json`, the machine's [`NodeFacts`]; 403 over plain HTTP, 404 for a MAC
/// outside the inventory, each with what to do.
pub async fn node_facts(
    State(st): State<AppState>,
    Path(mac): Path<String>,
    req: Request,
) -> Response {
    if !via_tls(&req) {
        count(&st.node_facts, "plain-http");
        tracing::warn!(%mac, peer = ?peer_of(&req), "machine facts asked over plain HTTP: refused");
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "machine facts are served over HTTPS only (authenticated by the provisioning CA): {}/api/node/<mac>; \
                 a node asking here runs an image from before this change: rebuild and re-pin it",
                st.shared.cluster().network.https_base()
            ),
        );
    }
    let mac: MacAddr = match mac.parse() {
        Ok(m) => m,
        Err(e) => {
            count(&st.node_facts, "bad-request");
            st.metrics.error("bad_request");
            return text(StatusCode::BAD_REQUEST, format!("{e}"));
        }
    };
    let Some(f) = facts(&st.shared.booter(), mac) else {
        count(&st.node_facts, "unknown-mac");
        st.metrics.error("not_found");
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{mac} is not in the inventory: add it as a [[machines]] entry of cluster.toml"
            ),
        );
    };
    count(&st.node_facts, "served");
    let peer = peer_of(&req);
    tracing::info!(%mac, ?peer, host = %f.hostname, "machine facts served over HTTPS");
    if peer == Some(std::net::IpAddr::V4(f.ip)) {
        st.shared.events.record(
            mac,
            FACTS_STAGE,
            format!(
                "served over HTTPS: host {}, address {}, image {}",
                f.hostname,
                f.ip,
                f.image.as_deref().unwrap_or("none pinned")
            ),
            Source::Server,
        );
    }
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(f)).into_response()
}
