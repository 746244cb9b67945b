//! Fuzz target: arbitrary bytes as event log files through the loader and the redaction
//! (`imgbuild::status::fuzzing`): every line accounted for, events round-trip, details redacted (idempotent, no
//! token or PEM left), boots per node bounded; one input in 16 also as three files on disk (tmpfs when there is
//! one) opened, repaired, appended to and reopened.
//!
//! `cargo +nightly fuzz run event_log -- -runs=1000000` (from the repository root).
#![no_main]

use std::sync::OnceLock;

use imgbuild::status::fuzzing;
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("imgbuild-fuzz-events")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temp dir")
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    fuzzing::run_parse(data);
    fuzzing::run_redact(data);
    if data.first().is_some_and(|b| b % 16 == 0) {
        fuzzing::run_files(data, dir());
    }
});
