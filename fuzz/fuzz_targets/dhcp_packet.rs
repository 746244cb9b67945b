//! Fuzz target: arbitrary bytes through the whole DHCP packet path (validation, decoding, the core in full,
//! pool and proxy mode, lease changes, reply encoding). It must never panic; every drop must be counted.
//!
//! `cargo +nightly fuzz run dhcp_packet -- -max_total_time=600` (from the repository root).
#![no_main]

use std::sync::OnceLock;

use imgbuild::netboot::dhcp::{DhcpMetrics, LeaseTable, Port, Processed, packet, process};
use libfuzzer_sys::fuzz_target;

fn booters() -> &'static [imgbuild::netboot::boot::Booter; 3] {
    static B: OnceLock<[imgbuild::netboot::boot::Booter; 3]> = OnceLock::new();
    B.get_or_init(imgbuild::netboot::dhcp::fuzzing::booters)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let (sel, buf) = data.split_at(1);
    let booter = &booters()[sel[0] as usize % 3];
    let port = if sel[0] & 0x80 != 0 { Port::Pxe } else { Port::Dhcp };
    let mut table = LeaseTable::default();
    let metrics = DhcpMetrics::default();
    match process(buf, port, booter, &mut table, 1_800_000_000, &metrics) {
        Processed::Dropped(_) => assert_eq!(metrics.dropped_total(), 1),
        Processed::Handled(out) => {
            if let Some(r) = out.reply {
                assert!(!packet::encode(&r.msg).is_empty());
            }
        }
    }
});
