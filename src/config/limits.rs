//! `[limits]`: the bounds the server's listeners keep against a careless or hostile LAN, one sub-table per
//! concern (`[limits.tftp]`, `[limits.dhcp]`, `[limits.events]`, `[limits.http]`). Every sub-table and every key has a safe default, so a `cluster.toml`
//! without `[limits]` is bounded too. What each limit protects is in docs/tftp-http.md.

use std::time::Duration;

use serde::Serialize;

/// `[limits]`: one field per sub-table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    /// `[limits.tftp]`: transfers in flight and their timers.
    pub tftp: TftpLimits,
    /// `[limits.dhcp]`: DECLINE state.
    pub dhcp: DhcpLimits,
    /// `[limits.events]`: the event log and the status table.
    pub events: EventLimits,
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

/// `[limits.tftp]`: what one client or a flood of spoofed requests may hold of the TFTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TftpLimits {
    /// Transfers in flight at once, all clients together (each holds a socket).
    pub transfers: usize,
    /// Transfers in flight at once from one client address.
    pub per_address: usize,
    /// The largest retransmission timeout granted to a client's `timeout` option.
    pub max_client_timeout: Duration,
    /// The longest a transfer may last, start to end.
    pub lifetime: Duration,
}

impl Default for TftpLimits {
    fn default() -> Self {
        TftpLimits {
            transfers: 512,
            per_address: 8,
            max_client_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(300),
        }
    }
}

/// `[limits.dhcp]`: how much DECLINE state clients can make the server keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpLimits {
    /// Addresses kept out of use after DECLINEs at once (further DECLINEs are counted and ignored).
    pub declined: usize,
    /// How long a declined address is kept out of use, in seconds.
    pub decline_hold_secs: u64,
}

impl Default for DhcpLimits {
    fn default() -> Self {
        DhcpLimits {
            declined: 1024,
            decline_hold_secs: 600,
        }
    }
}

/// `[limits.events]`: how much the server's recorded state (`state/events.jsonl` and the status table) may
/// hold, and how often it is made durable. See `docs/security.md`, "Recorded state: durability and bounds".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventLimits {
    /// Rotate `events.jsonl` when it reaches this many bytes (default 1 MiB).
    pub file_bytes: u64,
    /// Event log files kept, the live one included (default 4): the log never holds more than
    /// `files × file_bytes` bytes.
    pub files: u32,
    /// The longest an event the server observed waits for its fsync (default 200 ms).
    pub fsync_interval_ms: u64,
    /// The most events written between two fsyncs (default 256).
    pub fsync_batch: u32,
    /// Boots of each node kept in the history (default 10); older boots are dropped from memory at once and
    /// from disk when their file rotates out.
    pub boots_per_node: u32,
    /// The most rows of the status table (default 512): the inventory's rows always, then MACs from older logs.
    pub status_rows: u32,
    /// Warnings of one kind logged per minute (default 10); the rest are counted and summarised.
    pub warnings_per_minute: u32,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            file_bytes: 1 << 20,
            files: 4,
            fsync_interval_ms: 200,
            fsync_batch: 256,
            boots_per_node: 10,
            status_rows: 512,
            warnings_per_minute: 10,
        }
    }
}
