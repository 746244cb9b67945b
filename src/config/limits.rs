//! `[limits]`: the bounds the server's listeners keep against a careless or hostile LAN, one sub-table per
//! protocol (`[limits.http]`, ...). Every sub-table and every key has a safe default, so a `cluster.toml`
//! without `[limits]` is bounded too. What each limit protects is in docs/tftp-http.md.

use std::time::Duration;

use serde::Serialize;

/// `[limits]`: one field per protocol's sub-table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    /// `[limits.http]`: connection caps and timeouts of the HTTP listeners.
    pub http: HttpLimits,
}

/// `[limits.http]`: what one HTTP listener (plain or TLS) allows. A connection over a cap is accepted and closed
/// at once (so the backlog never fills for others); a timeout closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HttpLimits {
    /// Connections open at once, over all HTTP listeners (`max_connections`, default 1024).
    pub max_connections: u32,
    /// Connections open at once from one client address (`max_connections_per_address`, default 64).
    pub max_connections_per_address: u32,
    /// Time from the connection (or the end of the previous response) to a request's complete header
    /// (`header_timeout`, default 10 s).
    pub header_timeout: Duration,
    /// Time a connection may move no byte in either direction (`idle_timeout`, default 60 s).
    pub idle_timeout: Duration,
    /// Time from a request's header to the end of its body (`body_timeout`, default 30 s).
    pub body_timeout: Duration,
    /// Time one write to the client may make no progress (`write_timeout`, default 60 s).
    pub write_timeout: Duration,
    /// Largest request body accepted, in bytes (`max_body_bytes`, default 1 MiB).
    pub max_body_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            max_connections_per_address: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            max_body_bytes: 1 << 20,
        }
    }
}
