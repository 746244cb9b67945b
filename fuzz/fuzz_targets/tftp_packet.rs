//! Coverage-guided fuzzing of the TFTP packet parser: `cargo +nightly fuzz run tftp_packet` (see docs/tftp-http.md).
//! Property: parsing never panics, and a parsed packet re-encodes to bytes that parse to the same packet.
#![no_main]

use imgbuild::netboot::tftp::packet::Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::parse(data) {
        let again = p.to_bytes();
        assert_eq!(Packet::parse(&again).expect("re-encoded packet parses"), p);
    }
});
