//! Bounded, deterministic fuzzing of the TFTP parser and transfer state machine on stable Rust (fixed seed, run
//! in the normal test suite). The coverage-guided target for nightly is `fuzz/fuzz_targets/tftp_packet.rs`.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::packet::{Mode, Packet, Request};
use super::transfer::{Limits, Outgoing, Transfer};

/// Valid packets to mutate.
fn corpus() -> Vec<Vec<u8>> {
    vec![
        b"\x00\x01snponly.efi\x00octet\x00blksize\x001468\x00windowsize\x004\x00tsize\x000\x00"
            .to_vec(),
        b"\x00\x01undionly.kpxe\x00octet\x00".to_vec(),
        b"\x00\x02x\x00netascii\x00".to_vec(),
        b"\x00\x03\x00\x01hello".to_vec(),
        b"\x00\x04\x12\x34".to_vec(),
        b"\x00\x05\x00\x08refused\x00".to_vec(),
        b"\x00\x06blksize\x00512\x00".to_vec(),
    ]
}

/// Checks one input: no panic, and whatever parses re-encodes to something that parses to the same packet.
pub fn check_packet(data: &[u8]) {
    if let Ok(p) = Packet::parse(data) {
        let again = p.to_bytes();
        let p2 = Packet::parse(&again).expect("an encoded packet parses");
        assert_eq!(p, p2, "round trip of {data:?}");
    }
}

#[test]
fn fuzz_parser_random_and_mutated_inputs() {
    let mut rng = StdRng::seed_from_u64(0x7466_7470);
    let corpus = corpus();
    let mut parsed = 0u32;
    for i in 0..200_000u32 {
        let data: Vec<u8> = if i % 3 == 0 {
            let len = rng.random_range(0..700);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut d = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..5) {
                match rng.random_range(0..4) {
                    0 if !d.is_empty() => {
                        let j = rng.random_range(0..d.len());
                        d[j] ^= 1 << rng.random_range(0..8);
                    }
                    1 if !d.is_empty() => {
                        let n = rng.random_range(0..d.len());
                        d.truncate(n);
                    }
                    2 => {
                        let j = rng.random_range(0..=d.len());
                        d.insert(j, rng.random_range(0..3u8)); // NULs and control bytes are the interesting ones
                    }
                    _ => {
                        let j = rng.random_range(0..=d.len());
                        d.insert(j, rng.random());
                    }
                }
            }
            d
        };
        if Packet::parse(&data).is_ok() {
            parsed += 1;
        }
        check_packet(&data);
    }
    // The mutations must reach the accepting paths too, or this test proves little.
    assert!(parsed > 10_000, "only {parsed} inputs parsed");
}

#[test]
fn fuzz_transfer_state_machine_with_random_client_behaviour() {
    let mut rng = StdRng::seed_from_u64(0x0ac4_0ac4);
    for _ in 0..2_000 {
        let size: u64 = rng.random_range(0..200_000);
        let mut opts = Vec::new();
        if rng.random_bool(0.5) {
            opts.push((
                "blksize".to_string(),
                rng.random_range(0..70_000u32).to_string(),
            ));
        }
        if rng.random_bool(0.5) {
            opts.push((
                "windowsize".to_string(),
                rng.random_range(0..300u32).to_string(),
            ));
        }
        if rng.random_bool(0.3) {
            opts.push((
                "timeout".to_string(),
                rng.random_range(0..300u32).to_string(),
            ));
        }
        let req = Request {
            filename: "f".into(),
            mode: Mode::Octet,
            options: opts,
        };
        let mut now = Instant::now();
        let (mut t, mut out) = Transfer::start(&req, size, &Limits::default(), now);
        let mut highest_sent: u16 = 0;
        for _ in 0..400 {
            for o in &out {
                if let Outgoing::Data { block, range } = o {
                    assert!(range.start <= range.end && range.end <= size);
                    assert!(range.end - range.start <= t.blksize() as u64);
                    highest_sent = *block;
                }
            }
            if t.finished() {
                break;
            }
            out = match rng.random_range(0..10) {
                // Mostly a well-behaved client acknowledging what it got, sometimes a random or stale ACK.
                0..=5 => t.on_packet(
                    &Packet::Ack {
                        block: highest_sent,
                    },
                    now,
                ),
                6 => t.on_packet(
                    &Packet::Ack {
                        block: rng.random(),
                    },
                    now,
                ),
                7 => t.on_packet(&Packet::Ack { block: 0 }, now),
                8 => {
                    now += Duration::from_secs(rng.random_range(0..20));
                    t.on_timeout(now)
                }
                _ => t.on_packet(
                    &Packet::Data {
                        block: 1,
                        data: b"",
                    },
                    now,
                ),
            };
        }
        assert!(t.bytes_acked() <= size);
    }
}
