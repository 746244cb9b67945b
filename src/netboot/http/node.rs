//! `GET /api/node/{mac}`: the per-machine facts of a machine that booted a signed UKI, whose command line names
//! no machine. The answer is the command line the boot decision would give the machine ([`Booter::plan`], the
//! template `ipxe/cmdline.j2`); the initrd takes only its host name, image id, root filesystem URL and state
//! disk from it, each checked against a strict pattern. Nothing in it can change what runs: the kernel, initrd
//! and the root filesystem's dm-verity root hash are in the signed UKI.
//!
//! [`Booter::plan`]: crate::netboot::boot::Booter::plan

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::app_state::AppState;
use crate::config::MacAddr;

/// `GET /api/node/{mac}`: `text/plain`, the machine's command line; 404 with what to do for an unknown or
/// unpinned machine.
pub async fn node_args(State(st): State<AppState>, Path(mac): Path<String>) -> Response {
    let mac: MacAddr = match mac.parse() {
        Ok(m) => m,
        Err(e) => {
            st.metrics.error("bad_request");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    st.pins.refresh(&st.shared);
    match st.shared.booter().plan(mac) {
        Ok(plan) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            format!("{}\n", plan.cmdline),
        )
            .into_response(),
        Err(no) => {
            st.metrics.error("not_found");
            tracing::warn!(%mac, reason = %no, "node settings asked for and refused");
            (StatusCode::NOT_FOUND, format!("{no}\n")).into_response()
        }
    }
}
