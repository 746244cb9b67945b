//! `POST /api/events`: nodes report boot stages (`mac=..&stage=..&detail=..`, form-encoded; busybox
//! `wget --post-data` and curl can send it).

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::app_state::AppState;
use crate::config::MacAddr;
use crate::status::{EventError, STAGES, STANDIN_STAGE, Source};

#[derive(Debug, Deserialize)]
/// The form body of `POST /api/events`.
pub struct EventForm {
    /// The reporting node's MAC (any format [`MacAddr`] parses); must be in the inventory.
    pub mac: String,
    /// The boot stage reached: one of [`crate::status::STAGES`], `failed` or `standin`.
    pub stage: String,
    #[serde(default)]
    /// Free text for people (an error message, a version); optional, cut to [`MAX_DETAIL`] bytes.
    pub detail: String,
}

/// Longest `detail` kept (the rest is cut, after redaction): the log is for people, not for payloads.
pub const MAX_DETAIL: usize = crate::status::log::MAX_DETAIL;

fn bad(st: &AppState, msg: String) -> Response {
    st.metrics.error("bad_request");
    if let Some(n) = st.shared.events.warn_limit().allow("event-refused") {
        tracing::warn!(suppressed = n, "event refused: {msg}");
    }
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

/// Validates and records one node event.
pub async fn post_event(
    State(st): State<AppState>,
    form: Result<Form<EventForm>, FormRejection>,
) -> Response {
    let Form(f) = match form {
        Ok(f) => f,
        Err(e) => {
            return bad(
                &st,
                format!("expected a form body with fields mac, stage and optional detail: {e}"),
            );
        }
    };
    let mac: MacAddr = match f.mac.trim().parse() {
        Ok(m) => m,
        Err(e) => return bad(&st, e.to_string()),
    };
    if st.shared.cluster().machine_by_mac(mac).is_none() {
        st.shared
            .events
            .refused_outside_inventory(mac, "a node report");
        return bad(
            &st,
            format!("machine {mac} is not in the inventory (cluster.toml [[machines]])"),
        );
    }
    let stage = f.stage.trim();
    if stage != "failed" && stage != STANDIN_STAGE && !STAGES.contains(&stage) {
        return bad(
            &st,
            format!(
                "unknown stage {stage:?}; valid stages are {}, failed and {STANDIN_STAGE}",
                STAGES.join(", ")
            ),
        );
    }
    // The log redacts secrets, then cuts the detail to MAX_DETAIL bytes (cutting first could split a token).
    let detail = f.detail;
    // Acknowledged only once on disk (the fsync is shared with concurrent reports).
    let (shared, stage) = (st.shared.clone(), stage.to_string());
    let res = tokio::task::spawn_blocking(move || {
        shared
            .events
            .record_acked(mac, &stage, detail, Source::Node)
    })
    .await;
    match res {
        Ok(Ok(_)) => (StatusCode::OK, "recorded\n").into_response(),
        Ok(Err(e @ EventError::NotInInventory(_))) => bad(&st, e.to_string()),
        Ok(Err(e)) => {
            st.metrics.error("event_log");
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
            r
        }
        Err(e) => {
            st.metrics.error("event_log");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("recording the event failed: {e}; retry\n"),
            )
                .into_response()
        }
    }
}
