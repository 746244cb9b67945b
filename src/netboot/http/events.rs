//! `POST /api/events`: nodes report boot stages (`mac=..&stage=..&detail=..`, form-encoded; busybox
//! `wget --post-data` and curl can send it), optionally signed (`ts`, `ctr`, `sig`).
//!
//! Who may report what is `pki::report_auth::check_report` (pure): unsigned only from the node's own address
//! (its inventory address or its current DHCP lease, `Shared::leases`) and only before it enrolls (a machine
//! without a state disk: also its initrd's stages during its boot), signed with the node's report key otherwise,
//! `init-done` only signed by the first master. An accepted signed report stores its counter (no replay) and an
//! accepted `init-done` opens the durable barrier (`pki::report_state`). A refused report records nothing — no
//! status row, no event line — and is counted in `imgbuild_event_reports_total{outcome}`.

use std::net::IpAddr;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::app_state::AppState;
use super::reply::{NO_PEER, blocking, count, peer_of};
use crate::config::MacAddr;
use crate::pki::report_auth::{self, Accepted, NodeFacts, Report, Signature, check_report};
use crate::pki::state_store::documents;
use crate::status::{EventError, STAGES, STANDIN_STAGE, Source, is_uki_fetch, now_ms};

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
    /// Signed reports: when the node signed it (seconds since the epoch).
    #[serde(default)]
    pub ts: Option<u64>,
    /// Signed reports: the node's report counter.
    #[serde(default)]
    pub ctr: Option<u64>,
    /// Signed reports: hex HMAC-SHA256 over `pki::report_auth::report_message`, keyed with the node's report key.
    #[serde(default)]
    pub sig: Option<String>,
}

/// Longest `detail` kept (the rest is cut, after redaction): the log is for people, not for payloads.
pub const MAX_DETAIL: usize = crate::status::log::MAX_DETAIL;

fn refuse(st: &AppState, status: StatusCode, outcome: &str, msg: String) -> Response {
    count(&st.reports, outcome);
    st.metrics.error("bad_request");
    tracing::debug!("event refused: {msg}");
    (status, format!("{msg}\n")).into_response()
}

/// Validates, authenticates and records one node event.
pub async fn post_event(State(st): State<AppState>, req: Request) -> Response {
    let Some(peer) = peer_of(&req) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, NO_PEER).into_response();
    };
    let form: Result<Form<EventForm>, FormRejection> = Form::from_request(req, &()).await;
    let Form(f) = match form {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                &st,
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!(
                    "expected a form body with fields mac, stage, optional detail (and ts, ctr, sig when signed): {e}"
                ),
            );
        }
    };
    blocking("event", move || record(&st, peer, f)).await
}

fn record(st: &AppState, peer: IpAddr, f: EventForm) -> Response {
    let mac: MacAddr = match f.mac.trim().parse() {
        Ok(m) => m,
        Err(e) => return refuse(st, StatusCode::BAD_REQUEST, "bad-request", e.to_string()),
    };
    let stage = f.stage.trim();
    if stage != "failed" && stage != STANDIN_STAGE && !STAGES.contains(&stage) {
        return refuse(
            st,
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!(
                "unknown stage {stage:?}; valid stages are {}, failed and {STANDIN_STAGE}",
                STAGES.join(", ")
            ),
        );
    }
    let signature = match (f.ts, f.ctr, f.sig.as_deref()) {
        (Some(ts), Some(ctr), Some(sig)) => Some(Signature { ts, ctr, sig }),
        (None, None, None) => None,
        _ => {
            return refuse(
                st,
                StatusCode::BAD_REQUEST,
                "bad-request",
                "a signed report carries all of ts, ctr and sig".into(),
            );
        }
    };
    let shared = &st.shared;
    let cluster = shared.cluster();
    if cluster.machine_by_mac(mac).is_none() {
        // Before any file is read: a flood of reports for random MACs costs nothing but these counters.
        shared
            .events
            .refused_outside_inventory(mac, "a node report");
        let r = report_auth::ReportRefusal::UnknownMac;
        return refuse(st, StatusCode::FORBIDDEN, r.outcome(), r.message(mac, peer));
    }
    let enrolled_at_ms = match documents::enrollment(&*shared.state) {
        Ok(s) => s.enrolled.get(&mac).map(|e| e.at_ms),
        Err(e) => {
            tracing::error!("event from {peer} not checked: {e}");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the server cannot read its enrollment state: {e}\n"),
            )
                .into_response();
        }
    };
    let master_key = if signature.is_some() {
        std::fs::read_to_string(cluster.paths.secrets.join(report_auth::REPORT_KEY_FILE))
            .map(|k| k.trim().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    // Signed as sent; cut only for the log.
    let report = Report {
        mac,
        stage,
        detail: &f.detail,
        peer,
        signature,
    };
    let now = now_ms();
    let checked = shared.reports.with(|inner, rs| {
        let facts = NodeFacts {
            enrolled_at_ms,
            last_ctr: enrolled_at_ms.and_then(|at| inner.last_ctr(mac, at)),
            lease: shared.leases.address_of(mac, now / 1000).map(IpAddr::V4),
            in_initrd: enrolled_at_ms.is_some()
                && report_auth::UNSIGNED_AFTER_ENROLLMENT.contains(&stage)
                && in_initrd(&shared.events.for_mac(mac), now),
        };
        let accepted = check_report(&cluster, &report, &facts, &master_key, now / 1000)?;
        if let (Accepted::Signed { ctr }, Some(at)) = (accepted, enrolled_at_ms) {
            // Durable before the event is recorded: a replay after a restart is still refused.
            if let Err(e) = inner.commit_ctr(rs, mac, at, ctr) {
                tracing::error!("cannot store the report counter of {mac}: {e}");
            }
        }
        if stage == report_auth::INIT_DONE {
            match inner.reach_barrier(rs, mac, now) {
                Ok(_) => tracing::info!(%mac, "init-done accepted: the join barrier is open"),
                Err(e) => tracing::error!("cannot record the init-done barrier: {e}"),
            }
        }
        Ok(accepted)
    });
    match checked {
        Ok(how) => {
            count(
                &st.reports,
                match how {
                    Accepted::Address => "accepted-address",
                    Accepted::Signed { .. } => "accepted-signed",
                },
            );
            // The log redacts secrets, then cuts the detail to MAX_DETAIL bytes (cutting first could split a
            // token); the report is acknowledged only once on disk (the fsync is shared with concurrent reports).
            match shared
                .events
                .record_acked(mac, stage, f.detail, Source::Node)
            {
                Ok(_) => (StatusCode::OK, "recorded\n").into_response(),
                Err(e @ EventError::NotInInventory(_)) => {
                    refuse(st, StatusCode::FORBIDDEN, "unknown-mac", e.to_string())
                }
                Err(e) => {
                    st.metrics.error("event_log");
                    let mut r = (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
                    r.headers_mut().insert(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from_static("5"),
                    );
                    r
                }
            }
        }
        Err(r) => {
            if !matches!(r, report_auth::ReportRefusal::UnknownMac)
                && let Some(n) = shared.events.warn_limit().allow("report-refused")
            {
                tracing::warn!(%mac, %peer, suppressed = n, "{}", r.message(mac, peer));
            }
            refuse(st, StatusCode::FORBIDDEN, r.outcome(), r.message(mac, peer))
        }
    }
}

/// Whether the server sees the node of `events` (its own, oldest first) in its initrd at `now` (ms): the server
/// served it its kernel (a server-observed `kernel`) or its signed UKI (a `bootfile` of `uki.efi`) within
/// [`report_auth::INITRD_WINDOW_MS`], and the node has reported `systemd` (its root filesystem, which holds its
/// report key) in no event since. See [`NodeFacts::in_initrd`].
fn in_initrd(events: &[crate::status::Event], now: u64) -> bool {
    let boot = events.iter().rposition(|e| {
        e.source == Source::Server && (e.stage == "kernel" || is_uki_fetch(&e.stage, &e.detail))
    });
    let Some(i) = boot else { return false };
    now.saturating_sub(events[i].at_ms) <= report_auth::INITRD_WINDOW_MS
        && !events[i..].iter().any(|e| e.stage == "systemd")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Event;

    fn ev(at_ms: u64, stage: &str, detail: &str, source: Source) -> Event {
        Event {
            at_ms,
            mac: "52:54:00:77:00:21".parse().unwrap(),
            stage: stage.into(),
            detail: detail.into(),
            source,
        }
    }

    #[test]
    fn a_node_is_in_its_initrd_from_its_kernel_fetch_until_systemd_or_the_window_ends() {
        let min = 60_000;
        let kernel = ev(0, "kernel", "vmlinuz", Source::Server);
        assert!(!in_initrd(&[], 1), "never booted: never in the initrd");
        assert!(in_initrd(std::slice::from_ref(&kernel), 14 * min));
        assert!(
            !in_initrd(std::slice::from_ref(&kernel), 16 * min),
            "the window ended"
        );
        let up = [kernel.clone(), ev(min, "systemd", "", Source::Node)];
        assert!(
            !in_initrd(&up, 2 * min),
            "its root filesystem (and key) is up"
        );
        // The next boot opens the window again; a UKI fetch counts as a kernel.
        let again = [
            kernel.clone(),
            ev(min, "systemd", "", Source::Node),
            ev(
                30 * min,
                "bootfile",
                "uki.efi of image 0123 via HTTP",
                Source::Server,
            ),
        ];
        assert!(in_initrd(&again, 31 * min));
        // A `kernel` the node itself claims (a forger can post any stage) opens nothing.
        let claimed = [ev(0, "kernel", "", Source::Node)];
        assert!(!in_initrd(&claimed, 1));
        let loader = [ev(0, "bootfile", "snponly.efi via TFTP", Source::Server)];
        assert!(!in_initrd(&loader, 1), "a boot loader is not yet a kernel");
    }
}
