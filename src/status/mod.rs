//! Boot events and node status: what the server saw (DHCP, TFTP, HTTP) and what nodes reported, timestamped.
//!
//! Every protocol records into one [`Events`] log; the status table, `/metrics` histograms, the web page and the
//! lab are all views of it. The log is appended to `state/events.jsonl` so a restart keeps the history.
//!
//! - [`event`]: the event model and the log; [`node`]: the per-node boot state machine;
//! - [`report`]: the status table (`imgbuild status`, `/api/status`); [`metrics`]: the stage histograms;
//! - [`client`]: the HTTP client `imgbuild status` uses. The page and `/api/status` themselves are
//!   `netboot::http::status_page`.

pub mod client;
pub mod event;
pub mod metrics;
pub mod node;
pub mod report;

pub use event::{Event, Events, STAGES, STANDIN_STAGE, Source, now_ms};
pub use node::{LAST_STAGE, NodeStatus};
pub use report::Report;
