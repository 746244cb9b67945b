//! DHCPv4 for PXE: a full server for the inventory (plus an optional pool), or proxyDHCP beside another
//! server; relays; leases that survive kill -9. See `docs/dhcp.md`.
//!
//! - [`packet`]: validation and decoding of datagrams (malformed → dropped and counted).
//! - [`core`]: the sans-IO decision: request + boot decision + lease table + clock → reply + changes.
//! - [`leases`]: the lease table and its fsynced journal `state/dhcp-leases.jsonl`.
//! - [`metrics`]: Prometheus counters.
//! - [`socket`]: the thin tokio loop bound to the provisioning interface.

pub mod core;
pub mod fuzzing;
pub mod leases;
pub mod metrics;
pub mod packet;
pub mod socket;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use self::core::{Context, Destination, Ignored, Outcome, Port, handle};
pub use self::leases::{Journal, LeaseTable};
pub use self::metrics::DhcpMetrics;
use crate::netboot::boot::Booter;
use crate::netboot::state::Shared;

/// The lease journal's file name under `paths.state`.
pub const LEASES_FILE: &str = "dhcp-leases.jsonl";

/// Result of [`process`]: a dropped datagram, or the core's outcome (already applied to the table).
#[derive(Debug)]
pub enum Processed {
    Dropped(packet::Malformed),
    Handled(Box<Outcome>),
}

/// The packet path without sockets: validate and decode `buf`, decide, apply the lease changes to `table`,
/// count in `metrics`. Never panics, whatever the bytes.
pub fn process(
    buf: &[u8],
    port: Port,
    booter: &Booter,
    table: &mut LeaseTable,
    now: u64,
    metrics: &DhcpMetrics,
) -> Processed {
    let msg = match packet::parse(buf) {
        Ok(m) => m,
        Err(why) => {
            metrics.drop(why);
            return Processed::Dropped(why);
        }
    };
    let ty = msg
        .opts()
        .msg_type()
        .map(message_type_label)
        .unwrap_or("unknown");
    metrics.requests.get_or_create(&[("type", ty)]).inc();
    let outcome = handle(
        &msg,
        &Context {
            booter,
            leases: table,
            now,
            port,
        },
    );
    for c in &outcome.changes {
        table.apply(c);
    }
    if let Some(why) = outcome.ignored {
        metrics.ignore(why);
    }
    Processed::Handled(Box::new(outcome))
}

/// The metric label of a message type.
pub fn message_type_label(t: dhcproto::v4::MessageType) -> &'static str {
    use dhcproto::v4::MessageType as T;
    match t {
        T::Discover => "discover",
        T::Offer => "offer",
        T::Request => "request",
        T::Decline => "decline",
        T::Ack => "ack",
        T::Nak => "nak",
        T::Release => "release",
        T::Inform => "inform",
        _ => "other",
    }
}

/// Runs the DHCP server of `imgbuild serve` until it fails.
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    socket::run(shared).await
}
