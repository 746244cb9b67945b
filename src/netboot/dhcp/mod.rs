//! DHCPv4 for PXE: a full server for the inventory (plus an optional pool), or proxyDHCP beside another
//! server; relays; leases that survive kill -9. See `docs/dhcp.md`.
//!
//! Everything but `socket` and `journal` is sans-IO (bytes, state and time in; replies out).
//! Imports run one way:
//! `packet` ← `core` ← `metrics` ← `process` ← `socket`, with `leases` below them all and `journal` (over
//! `leases`) used by `socket` only; `socket` never imports this file.
//!
//! - [`packet`]: validation and decoding of datagrams (malformed → dropped and counted).
//! - [`core`]: the sans-IO decision: request + boot decision + lease table + clock → reply + changes.
//! - [`process`](mod@process): the sans-IO packet path: bytes → [`core`] → lease table updated, metrics
//!   counted, reply encoded and addressed.
//! - [`leases`]: the lease table and the records that change it.
//! - [`journal`]: the fsynced lease journal `state/dhcp-leases.jsonl`, compacted in the background.
//! - [`metrics`]: Prometheus counters.
//! - [`probe`]: is another DHCP server answering on the interface? (full mode then stops answering)
//! - [`socket`]: the thin tokio loop bound to the provisioning interface: moves bytes and time only.
//! - `fuzzing` (feature `fuzzing` or tests only): fixtures and the operation-sequence driver for the fuzz
//!   targets in `fuzz/`.

pub mod core;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod journal;
#[cfg(test)]
mod journal_tests;
pub mod leases;
pub mod metrics;
pub mod packet;
pub mod probe;
pub mod process;
#[cfg(test)]
mod replica_tests;
pub mod socket;
#[cfg(test)]
mod subnet_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use self::core::{Context, Destination, Ignored, Outcome, Port, handle};
pub use self::journal::{Journal, LEASES_FILE};
pub use self::leases::LeaseTable;
pub use self::metrics::{DhcpMetrics, message_type_label};
pub use self::process::{Processed, process};
use crate::netboot::state::Shared;

/// Runs the DHCP server of `imgbuild serve` until it fails.
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    socket::run(shared).await
}
