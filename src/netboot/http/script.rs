//! Boot scripts: iPXE's `GET /ipxe/{mac}` and `GET /boot.ipxe?mac=`, GRUB's (arm64) `GET /grub/{mac}`. The boot
//! decision ([`Booter::plan`]) says what a machine boots; the text comes from templates under `ipxe/`, one set
//! per loader (`ipxe` or `grub`):
//!
//! - `ipxe/boot.<loader>.j2`: a machine with a pinned image (context `plan`, `retry_url`, `retry_secs`,
//!   `http_device` — GRUB's `(http,server)`)
//! - `ipxe/unknown.<loader>.j2`: a MAC not in the inventory (context `mac`, `message`, `retry_url`, `retry_secs`)
//! - `ipxe/not-pinned.<loader>.j2`: no image pinned for the role (same context plus `hostname`, `role`, `arch`)
//! - `ipxe/chain.ipxe.j2`: `/boot.ipxe` without `mac=` chains to the per-MAC script (context `server_url`)
//!
//! [`Booter::plan`]: crate::netboot::boot::Booter::plan

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::config::MacAddr;
use crate::netboot::boot::{Loader, NoBoot};
use crate::status::Source;

/// Seconds an unbootable machine waits before asking again.
pub const RETRY_SECS: u32 = 30;

#[derive(Debug, Deserialize)]
pub struct BootQuery {
    pub mac: Option<String>,
}

/// `GET /boot.ipxe?mac=..`; without `mac`, a script that chains to `/ipxe/${mac}`.
pub async fn boot_ipxe(State(st): State<AppState>, Query(q): Query<BootQuery>) -> Response {
    match q.mac {
        Some(mac) => script_for(&st, &mac, Loader::Ipxe),
        None => {
            let cluster = st.shared.cluster();
            let engine = crate::cli::engine_for(&cluster);
            match engine.render(
                "ipxe/chain.ipxe.j2",
                &json!({"server_url": cluster.network.http_base()}),
            ) {
                Ok(text) => ipxe(text),
                Err(e) => template_error(&st, e),
            }
        }
    }
}

/// `GET /ipxe/{mac}`.
pub async fn by_mac(State(st): State<AppState>, Path(mac): Path<String>) -> Response {
    script_for(&st, &mac, Loader::Ipxe)
}

/// `GET /grub/{mac}`: the GRUB configuration of an arm64 machine.
pub async fn grub_by_mac(State(st): State<AppState>, Path(mac): Path<String>) -> Response {
    script_for(&st, &mac, Loader::Grub)
}

/// `GET /grub/by-address`: the GRUB configuration of the inventory machine at the peer's address. GRUB 2.06 does
/// not know its own MAC after a UEFI HTTP Boot on a card it did not configure itself; its address is enough.
pub async fn grub_by_address(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
) -> Response {
    match crate::netboot::peers::mac_for_ip(&st.shared, peer.ip()) {
        Some(mac) => script_for(&st, &mac.to_string(), Loader::Grub),
        None => {
            st.metrics.error("unknown_address");
            tracing::warn!(%peer, "GRUB asked for its config by address, and no machine of the inventory has it");
            (
                StatusCode::NOT_FOUND,
                format!(
                    "echo \"imgbuild: no machine in the inventory has address {}; give the machine its inventory address (full DHCP does) or boot it by PXE\"\n",
                    peer.ip()
                ),
            )
                .into_response()
        }
    }
}

fn ipxe(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

fn template_error(st: &AppState, e: crate::template::TemplateError) -> Response {
    st.metrics.error("template");
    tracing::error!(error = %e, "boot script template failed to render");
    // Both iPXE and GRUB read this: `echo`, `sleep` and `reboot` mean the same to each.
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("#!ipxe\necho imgbuild: server error rendering the boot script - see the server log\nsleep {RETRY_SECS}\nreboot\n"),
    )
        .into_response()
}

fn script_for(st: &AppState, mac_text: &str, loader: Loader) -> Response {
    let mac: MacAddr = match mac_text.parse() {
        Ok(m) => m,
        Err(e) => {
            st.metrics.error("bad_request");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    st.pins.refresh(&st.shared);
    let booter = st.shared.booter();
    let cluster = booter.cluster.clone();
    let engine = crate::cli::engine_for(&cluster);
    let kind = loader.as_str();
    let net = &cluster.network;
    let http_device = net.grub_http_device();
    let retry_url = match loader {
        Loader::Ipxe => format!("{}/ipxe/{mac}", net.http_base()),
        Loader::Grub => format!("{http_device}/grub/{mac}"),
    };
    let rendered = match booter.plan(mac) {
        Ok(plan) => {
            if plan.image.standins {
                tracing::warn!(%mac, host = %plan.machine.hostname, image = %plan.image.id, "serving an image built with labelled STAND-IN binaries");
            }
            if (loader == Loader::Grub) != (plan.machine.arch == crate::config::Arch::Arm64) {
                tracing::warn!(%mac, host = %plan.machine.hostname, arch = %plan.machine.arch, "the {kind} boot script was asked for by a machine whose inventory arch is {}; check its `arch` in cluster.toml", plan.machine.arch);
            }
            tracing::info!(%mac, host = %plan.machine.hostname, image = %plan.image.id, "{kind} boot script served");
            st.shared.events.record(
                mac,
                loader.stage(),
                format!("image {}", plan.image.id),
                Source::Server,
            );
            engine.render(
                &format!("ipxe/boot.{kind}.j2"),
                &json!({"plan": plan, "retry_url": retry_url, "retry_secs": RETRY_SECS,
                        "http_device": http_device}),
            )
        }
        Err(no) => {
            let message = no.to_string();
            tracing::warn!(%mac, "{message}");
            match &no {
                NoBoot::UnknownMachine { .. } => engine.render(
                    &format!("ipxe/unknown.{kind}.j2"),
                    &json!({"mac": mac, "message": message, "retry_url": retry_url, "retry_secs": RETRY_SECS}),
                ),
                NoBoot::NotPinned {
                    hostname,
                    role,
                    arch,
                } => {
                    st.shared.events.record(
                        mac,
                        loader.stage(),
                        format!("waiting: no {arch} image pinned for role {role}"),
                        Source::Server,
                    );
                    engine.render(
                        &format!("ipxe/not-pinned.{kind}.j2"),
                        &json!({"mac": mac, "hostname": hostname, "role": role, "arch": arch,
                                "message": message, "retry_url": retry_url, "retry_secs": RETRY_SECS}),
                    )
                }
            }
        }
    };
    match rendered {
        Ok(text) => ipxe(text),
        Err(e) => template_error(st, e),
    }
}
