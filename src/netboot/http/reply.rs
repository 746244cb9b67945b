//! Small pieces the node API routes (`enroll`, `token`, `barrier`) share: plain-text answers, `Retry-After`,
//! the TCP peer address and outcome counters.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::netboot::state::Shared;

/// The `Server` header of every answer: clients (`imgbuild status`, the lab) tell an imgbuild server from another
/// program on the port by it (`status::client`).
pub const SERVER: &str = concat!("imgbuild/", env!("CARGO_PKG_VERSION"));

/// A layer that sets [`SERVER`] on every answer of a router.
pub fn server_header() -> tower_http::set_header::SetResponseHeaderLayer<HeaderValue> {
    tower_http::set_header::SetResponseHeaderLayer::overriding(
        header::SERVER,
        HeaderValue::from_static(SERVER),
    )
}

/// Requests counted by their outcome label (`{outcome="served"}`, ...).
pub type OutcomeCounter = Family<Vec<(String, String)>, Counter>;

/// A new outcome counter, registered as `imgbuild_<name>_total` in the server's registry.
pub fn outcome_counter(shared: &Shared, name: &str, help: &str) -> OutcomeCounter {
    let counter = OutcomeCounter::default();
    shared.register_metrics(|r| r.register(name, help, counter.clone()));
    counter
}

/// Counts one request with outcome `outcome`.
pub fn count(counter: &OutcomeCounter, outcome: &str) {
    counter
        .get_or_create(&vec![("outcome".into(), outcome.into())])
        .inc();
}

/// A plain-text answer: `msg` and a newline.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    msg.push('\n');
    (status, msg).into_response()
}

/// `r` with `Retry-After: secs`.
pub fn retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&secs.to_string()).expect("digits"),
    );
    r
}

/// The TCP peer address of the request (IPv4-mapped addresses as IPv4), if the app is served with connect info.
pub fn peer_of(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_canonical())
}

/// Runs `f` (file I/O under the enrollment lock) on the blocking pool; if the task dies, a 500 saying
/// "`what` task failed".
pub async fn blocking(what: &str, f: impl FnOnce() -> Response + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} task failed: {e}"),
        ),
    }
}

/// Said when a handler that needs the peer address finds none.
pub const NO_PEER: &str = "server misconfigured: the HTTP app is not served with connect info (the TCP peer address); \
                           enrollment needs it";
