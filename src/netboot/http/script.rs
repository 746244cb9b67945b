//! Boot scripts: iPXE's `GET /ipxe/{mac}` and `GET /boot.ipxe?mac=`, GRUB's (arm64) `GET /grub/{mac}`. The boot
//! decision ([`Booter::plan`]) says what a machine boots; the text comes from templates under `ipxe/`, one set
//! per loader (`ipxe` or `grub`):
//!
//! - `ipxe/boot.<loader>.j2`: a machine with a pinned image (context `plan`, `retry_url`, `retry_secs`,
//!   `http_device` — GRUB's `(http,server)`)
//! - `ipxe/unknown.<loader>.j2`: a MAC not in the inventory (context `mac`, `message`, `retry_url`, `retry_secs`)
//! - `ipxe/not-pinned.<loader>.j2`: no image pinned for the role (same context plus `hostname`, `role`, `arch`)
//! - `ipxe/chain.ipxe.j2`: `/boot.ipxe` without `mac=` chains to the per-MAC script (context `server_url`)
//! - built into the server: `ipxe/server-error.j2` (a template failed to render) and
//!   `ipxe/unknown-address.grub.j2` (`GET /grub/by-address` from an address no machine has)
//!
//! [`Booter::plan`]: crate::netboot::boot::Booter::plan

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::app_state::AppState;
use crate::config::{Arch, MacAddr};
use crate::netboot::boot::{Loader, NoBoot};
use crate::status::Source;
use crate::template::{self, Engine, TemplateError};

/// Seconds an unbootable machine waits before asking again.
pub const RETRY_SECS: u32 = 30;

#[derive(Debug, Deserialize)]
/// The query of `GET /boot.ipxe`.
pub struct BootQuery {
    /// The client's MAC (iPXE's `${mac}`); absent, the answer is a script that chains to `/ipxe/${mac}`.
    pub mac: Option<String>,
}

/// `GET /boot.ipxe?mac=..`; without `mac`, a script that chains to `/ipxe/${mac}`.
pub async fn boot_ipxe(State(st): State<AppState>, Query(q): Query<BootQuery>) -> Response {
    match q.mac {
        Some(mac) => script_for(&st, &mac, Loader::Ipxe),
        None => {
            let cluster = st.shared.cluster();
            let engine = template::engine_for(&cluster);
            match engine.render(
                "ipxe/chain.ipxe.j2",
                &json!({"server_url": cluster.network.http_base()}),
            ) {
                Ok(text) => ipxe(text),
                Err(e) => template_error(&st, &engine, e),
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
            let engine = template::engine_for(&st.shared.cluster());
            (
                StatusCode::NOT_FOUND,
                builtin(
                    &engine,
                    template::UNKNOWN_ADDRESS_TEMPLATE,
                    &json!({"address": peer.ip()}),
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

/// Renders one of the templates compiled into the server (the fallback answers). They render with the context
/// their callers give (unit-tested); should one not, the failure is logged and the body is empty.
fn builtin(engine: &Engine, name: &str, ctx: &serde_json::Value) -> String {
    engine.render(name, ctx).unwrap_or_else(|e| {
        tracing::error!(error = %e, "built-in template failed to render");
        String::new()
    })
}

fn template_error(st: &AppState, engine: &Engine, e: TemplateError) -> Response {
    st.metrics.error("template");
    tracing::error!(error = %e, "boot script template failed to render");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        builtin(
            engine,
            template::SERVER_ERROR_TEMPLATE,
            &json!({"retry_secs": RETRY_SECS}),
        ),
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
    let booter = st.shared.booter();
    let cluster = booter.cluster.clone();
    let engine = template::engine_for(&cluster);
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
            if (loader == Loader::Grub) != (plan.machine.arch == Arch::Arm64) {
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
                NoBoot::Template(e) => Err(e.clone()),
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
        Err(e) => template_error(st, &engine, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in fallback answers, byte for byte as the literals before them.
    #[test]
    fn fallback_scripts_are_exact() {
        let d = tempfile::tempdir().unwrap();
        // Whatever the ipxe/ directory holds (here: nothing), the built-in texts render.
        let engine = Engine::new(&d.path().join("profiles"), &d.path().join("ipxe"));
        assert_eq!(
            builtin(
                &engine,
                template::SERVER_ERROR_TEMPLATE,
                &json!({"retry_secs": RETRY_SECS})
            ),
            "#!ipxe\necho imgbuild: server error rendering the boot script - see the server log\nsleep 30\nreboot\n"
        );
        assert_eq!(
            builtin(
                &engine,
                template::UNKNOWN_ADDRESS_TEMPLATE,
                &json!({"address": "10.77.0.99".parse::<std::net::IpAddr>().unwrap()})
            ),
            "echo \"imgbuild: no machine in the inventory has address 10.77.0.99; give the machine its inventory \
             address (full DHCP does) or boot it by PXE\"\n"
        );
    }
}
