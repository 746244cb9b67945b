//! Fuzz target: arbitrary node requests (`POST /api/events`, `POST /api/token`, `GET /api/enroll/{mac}`) from
//! inventory and stranger addresses through the whole HTTP application over one server state
//! (`imgbuild::netboot::http::fuzzing::run_forms`): no 5xx but 503, only inventory MACs recorded, no token or
//! PEM block in any detail, the event log within its cap.
//!
//! `cargo +nightly fuzz run node_forms -- -runs=1000000` (from the repository root).
#![no_main]

use std::sync::OnceLock;

use imgbuild::netboot::http::fuzzing::{self, FormFixture};
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static FormFixture {
    static F: OnceLock<FormFixture> = OnceLock::new();
    F.get_or_init(fuzzing::form_fixture)
}

fuzz_target!(|data: &[u8]| {
    fuzzing::run_forms(fixture(), data);
});
