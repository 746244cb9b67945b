//! Boot events and node status: what the server saw (DHCP, TFTP, HTTP) and what nodes reported, timestamped.
//!
//! Every protocol records into one [`Events`] log; the status table, `/metrics` histograms, the web page and the
//! lab are all views of it. The log is appended to `state/events.jsonl` so a restart keeps the history; it is
//! bounded, redacted and repaired as `docs/security.md` ("Recorded state: durability and bounds") says.
//!
//! - [`event`]: the event model; [`log`]: the log ([`Events`]); [`journal`]: its files on disk (load, repair,
//!   append, rotate); [`history`]: the bounded history in memory; [`redact`]: secrets out of details;
//!   [`warn_limit`]: rate-limited warnings; [`node`]: the per-node boot state machine;
//! - [`report`]: the status table (`imgbuild status`, `/api/status`); [`metrics`]: the stage histograms;
//! - [`client`]: the HTTP client `imgbuild status` uses. The page and `/api/status` themselves are
//!   `netboot::http::status_page`.

pub mod client;
pub mod event;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hint;
pub mod history;
pub mod journal;
pub mod log;
pub mod metrics;
pub mod node;
pub mod redact;
pub mod report;
pub mod warn_limit;

pub use event::{Event, STAGES, STANDIN_STAGE, Source, is_uki_fetch, now_ms};
pub use log::{EventError, EventStats, Events};
pub use node::{LAST_STAGE, NodeStatus};
pub use report::Report;
