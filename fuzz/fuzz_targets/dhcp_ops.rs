//! Fuzz target: sequences of DHCP requests (every message type, inventory and unknown machines, PXE options,
//! relays, mutated and raw datagrams) through the sans-IO packet path on one lease table with the clock
//! moving on, as the socket loop runs them; the lease table must stay consistent with the journal records
//! (see `imgbuild::netboot::dhcp::fuzzing::run_ops`).
//!
//! `cargo +nightly fuzz run dhcp_ops -- -max_total_time=600` (from the repository root).
#![no_main]

use std::sync::OnceLock;

use imgbuild::netboot::boot::Booter;
use imgbuild::netboot::dhcp::fuzzing;
use libfuzzer_sys::fuzz_target;

fn booters() -> &'static [Booter; 3] {
    static B: OnceLock<[Booter; 3]> = OnceLock::new();
    B.get_or_init(fuzzing::booters)
}

fuzz_target!(|data: &[u8]| {
    fuzzing::run_ops(data, booters(), &mut Default::default());
});
