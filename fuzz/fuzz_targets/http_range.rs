//! Fuzz target: arbitrary `Range`, `If-Range` and `If-None-Match` values against arbitrary file sizes through
//! the HTTP range logic (`imgbuild::netboot::http::fuzzing::run_range`): a range served lies inside the file.
//!
//! `cargo +nightly fuzz run http_range -- -runs=1000000` (from the repository root).
#![no_main]

use imgbuild::netboot::http::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzzing::run_range(data);
});
