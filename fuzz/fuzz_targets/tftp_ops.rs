//! Coverage-guided fuzzing of the TFTP server without sockets, as operation sequences (quinn-proto style):
//! requests on the listening port through the request decision, and ACKs, errors, arbitrary datagrams and
//! timeouts through the transfer state machines it starts; invariants are checked after every operation
//! (see `imgbuild::netboot::tftp::fuzz::run_ops`).
//!
//! `cargo +nightly fuzz run tftp_ops -- -max_total_time=600` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    imgbuild::netboot::tftp::fuzz::run_ops(data, &mut Default::default());
});
